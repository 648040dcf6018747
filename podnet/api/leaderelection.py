"""Lease-based leader election (client-go's tools/leaderelection over a coordination.k8s.io/v1 Lease).

Two replicas of the scheduler or of the controller manager may run; only the one holding the Lease
`<namespace>/<name>` acts.  This module holds the upstream flags (`--leader-elect*`) both mains share.
"""

from __future__ import annotations

import argparse
import socket
import uuid
from dataclasses import dataclass

from podnet.flags import duration

__all__ = ["LeaderElectionConfig", "add_leader_election_flags", "config_from_args", "default_identity",
           "parse_bool"]

# upstream's JitterFactor: retries sleep retry-period * [1, 1.2), so the renew deadline must exceed it
JITTER_FACTOR = 1.2


@dataclass(frozen=True)
class LeaderElectionConfig:
    name: str
    namespace: str = "kube-system"
    identity: str = ""
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    enabled: bool = True

    def validate(self) -> None:
        """upstream NewLeaderElector's checks: a standby waits lease-duration, the leader gives up
        after renew-deadline, so the leader must give up before anyone may take over."""
        if self.lease_duration <= self.renew_deadline:
            raise ValueError("leader-elect-lease-duration must be greater than leader-elect-renew-deadline")
        if self.renew_deadline <= JITTER_FACTOR * self.retry_period:
            raise ValueError("leader-elect-renew-deadline must be greater than "
                             f"leader-elect-retry-period*{JITTER_FACTOR}")
        if self.retry_period <= 0:
            raise ValueError("leader-elect-retry-period must be greater than zero")
        if not self.name or not self.namespace:
            raise ValueError("leader-elect-resource-name and -namespace must not be empty")


def parse_bool(text: str) -> bool:
    """Go's strconv.ParseBool, which pflag uses for `--flag=value` booleans."""
    value = text.strip()
    if value in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if value in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise argparse.ArgumentTypeError(f"invalid boolean {text!r} (want true or false)")


def add_leader_election_flags(parser: argparse.ArgumentParser, default_name: str) -> None:
    """The upstream `--leader-elect*` flags, defaults as kube-scheduler/kube-controller-manager."""
    group = parser.add_argument_group("leader election")
    # a bare `--leader-elect` means true, as a Go bool flag; `--leader-elect=false` turns it off
    group.add_argument("--leader-elect", type=parse_bool, nargs="?", const=True, default=True,
                       metavar="BOOL", help="hold a Lease before acting, so replicas can run (default true)")
    group.add_argument("--leader-elect-lease-duration", type=duration, default=15.0,
                       help="how long a standby waits after the last observed renewal before taking over")
    group.add_argument("--leader-elect-renew-deadline", type=duration, default=10.0,
                       help="how long the leader retries renewing before it gives up leadership")
    group.add_argument("--leader-elect-retry-period", type=duration, default=2.0,
                       help="interval between acquire/renew attempts")
    group.add_argument("--leader-elect-resource-name", default=default_name, help="name of the Lease")
    group.add_argument("--leader-elect-resource-namespace", default="kube-system",
                       help="namespace of the Lease")


def default_identity() -> str:
    """upstream's "<hostname>_<uuid>": unique per process even for two replicas on one host."""
    return f"{socket.gethostname()}_{uuid.uuid4()}"


def config_from_args(args: argparse.Namespace, identity: str | None = None) -> LeaderElectionConfig:
    """The config from parsed flags; ValueError when the durations are inconsistent."""
    config = LeaderElectionConfig(
        name=args.leader_elect_resource_name, namespace=args.leader_elect_resource_namespace,
        identity=identity or default_identity(), lease_duration=args.leader_elect_lease_duration,
        renew_deadline=args.leader_elect_renew_deadline, retry_period=args.leader_elect_retry_period,
        enabled=args.leader_elect)
    if config.enabled:
        config.validate()
    return config
