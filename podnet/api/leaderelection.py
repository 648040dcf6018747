"""Lease-based leader election (client-go's tools/leaderelection over a coordination.k8s.io/v1 Lease).

Two replicas of the scheduler or of the controller manager may run; only the one holding the Lease
`<namespace>/<name>` acts.  The rules, as client-go's:

* acquire: create the Lease, or update it (with the resourceVersion read, so a racing writer gets a
  409 and loses) when it is released (holderIdentity empty), expired, or already ours.  A change of
  holder bumps leaseTransitions; acquireTime/renewTime are RFC3339 with microseconds (MicroTime).
* expiry is judged by the LOCAL time at which this process last saw the lease record change, plus
  leaseDurationSeconds; the holder's renewTime is never compared with our clock, since the two
  hosts' clocks may disagree.
* the leader renews every retry period; when it cannot renew within the renew deadline (measured
  from its last successful renewal) it has lost leadership: its work is stopped and the process
  exits non-zero (upstream logs "leaderelection lost" and exits).
* a clean stop releases the lease (holderIdentity "", client-go's ReleaseOnCancel) once the work
  has stopped, so a standby takes over at its next retry instead of after the lease duration.
"""

from __future__ import annotations

import argparse
import datetime as dt
import enum
import http.client
import logging
import math
import random
import socket
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from podnet.api.client import LEASES, ApiError, Client, HttpTransport, Resource
from podnet.api.kubeconfig import KubeConfig
from podnet.flags import duration
from podnet.reconcile import Clock, SystemClock

__all__ = ["LeaderElectionConfig", "LeaderElector", "LeaseApi", "Outcome", "add_leader_election_flags",
           "config_from_args", "default_identity", "election_client", "micro_time", "parse_bool",
           "run_with_leader_election"]

log = logging.getLogger("podnet.leaderelection")

Obj = dict[str, Any]

# upstream's JitterFactor: an acquire retry sleeps retry-period * (1 + 1.2 * rand), and the renew
# deadline must exceed retry-period * 1.2
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


def election_client(kubeconfig: KubeConfig, config: LeaderElectionConfig, user_agent: str) -> Client:
    """A client of its own for the lease: the work's requests never queue ahead of a renewal, and
    its socket timeout is a fraction of the renew deadline, so a hung API server cannot keep a
    renewal blocked past the point where a standby may take over (client-go bounds each attempt
    by the renew deadline the same way)."""
    transport = HttpTransport(kubeconfig.server, kubeconfig.ssl_context(), pool_size=1,
                              timeout=max(0.1, config.renew_deadline / 2))
    return Client(transport, token=kubeconfig.bearer_token, user_agent=f"{user_agent}/leader-election")


def micro_time(when: dt.datetime) -> str:
    """metav1.MicroTime's RFC3339 form with microseconds, in UTC."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class LeaseApi(Protocol):
    """The part of podnet.api.client.Client the elector uses (unit tests fake this seam)."""

    def get(self, res: Resource, name: str, namespace: str | None = None) -> Obj: ...

    def create(self, res: Resource, obj: Mapping[str, Any], namespace: str | None = None) -> Obj: ...

    def update(self, res: Resource, obj: Mapping[str, Any], namespace: str | None = None) -> Obj: ...


class Outcome(enum.Enum):
    STOPPED = "stopped"  # asked to stop (or the work ended) while still leading
    LOST = "lost"  # could not renew within the deadline, or another holder took the lease


# what a failed request looks like: the server's answer, or no answer at all
_REQUEST_ERRORS = (ApiError, OSError, http.client.HTTPException)


class LeaderElector:
    """One candidate.  `observed` is the last Lease spec seen and `observed_at` the local clock
    reading when it last changed; `renewed_at` is when our last successful write started."""

    def __init__(self, api: LeaseApi, config: LeaderElectionConfig, *, clock: Clock | None = None,
                 wall: Callable[[], dt.datetime] = _utcnow, jitter: Callable[[], float] = random.random
                 ) -> None:
        self.api, self.config = api, config
        self.clock: Clock = clock or SystemClock()
        self.wall, self.jitter = wall, jitter
        self.lease: Obj | None = None
        self.observed: Obj = {}
        self.observed_at = 0.0
        self.renewed_at = 0.0

    @property
    def holder(self) -> str:
        return str(self.observed.get("holderIdentity") or "")

    def is_leader(self) -> bool:
        return self.holder == self.config.identity

    # ------------------------------------------------------------------ one attempt
    def try_acquire_or_renew(self) -> bool:
        """One get + create/update; True when we hold the lease afterwards."""
        now, stamp = self.clock.now(), micro_time(self.wall())
        try:
            lease = self.api.get(LEASES, self.config.name, self.config.namespace)
        except ApiError as e:
            if not e.not_found:
                log.warning("reading lease %s: %s", self._lease_name(), e)
                return False
            return self._write(now, self._fresh_lease(stamp), create=True)
        except _REQUEST_ERRORS as e:
            log.warning("reading lease %s: %s", self._lease_name(), e)
            return False
        self._observe(lease, now)
        if self._held_by_other(now):
            return False
        return self._write(now, {**lease, "spec": self._desired_spec(stamp)}, create=False)

    def _fresh_lease(self, stamp: str) -> Obj:
        self.observed, self.lease = {}, None
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.config.name, "namespace": self.config.namespace},
                "spec": {**self._desired_spec(stamp), "leaseTransitions": 0}}

    def _observe(self, lease: Obj, now: float) -> None:
        """Restart the expiry countdown only when the record changed (client-go compares the raw
        record), so a holder that stopped renewing expires lease-duration after we saw its last
        renewal, whatever its renewTime says."""
        spec = dict(lease.get("spec") or {})
        if spec != self.observed:
            if str(spec.get("holderIdentity") or "") != self.holder:
                log.info("lease %s now held by %r", self._lease_name(), spec.get("holderIdentity") or "")
            self.observed, self.observed_at = spec, now
        self.lease = lease

    def _held_by_other(self, now: float) -> bool:
        if not self.holder or self.is_leader():
            return False
        return now < self.observed_at + self._observed_duration()

    def _observed_duration(self) -> float:
        seconds = self.observed.get("leaseDurationSeconds")
        return float(seconds) if isinstance(seconds, int) and seconds > 0 else self.config.lease_duration

    def _desired_spec(self, stamp: str) -> Obj:
        old = self.observed
        spec: Obj = {**old, "holderIdentity": self.config.identity, "renewTime": stamp,
                     # rounded up: a standby must never think the lease ends before the holder does
                     "leaseDurationSeconds": math.ceil(self.config.lease_duration)}
        if self.is_leader():
            spec["acquireTime"] = old.get("acquireTime") or stamp
            spec["leaseTransitions"] = int(old.get("leaseTransitions") or 0)
        else:
            spec["acquireTime"] = stamp
            spec["leaseTransitions"] = int(old.get("leaseTransitions") or 0) + 1
        return spec

    def _write(self, now: float, lease: Obj, *, create: bool) -> bool:
        try:
            if create:
                written = self.api.create(LEASES, lease, self.config.namespace)
            else:
                written = self.api.update(LEASES, lease, self.config.namespace)
        except _REQUEST_ERRORS as e:
            # 409: another candidate wrote the lease since we read it; it won this round
            log.info("writing lease %s failed: %s", self._lease_name(), e)
            return False
        self._observe(written, now)
        self.renewed_at = now
        return True

    def _lease_name(self) -> str:
        return f"{self.config.namespace}/{self.config.name}"

    # ------------------------------------------------------------------ loops
    def acquire(self, stop: threading.Event) -> bool:
        """Retry every retry-period (jittered, as JitterUntil) until we hold the lease; False if
        `stop` was set first."""
        log.info("attempting to acquire leader lease %s as %s", self._lease_name(), self.config.identity)
        while not stop.is_set():
            if self.try_acquire_or_renew():
                log.info("became leader: %s holds lease %s", self.config.identity, self._lease_name())
                return True
            delay = self.config.retry_period * (1.0 + JITTER_FACTOR * self.jitter())
            if self.clock.wait(stop, delay):
                break
        return False

    def renew(self, stop: threading.Event, keep_going: Callable[[], bool] = lambda: True) -> Outcome:
        """Renew every retry-period while leading, until `stop` is set or `keep_going()` is False."""
        while True:
            if self.clock.wait(stop, self.config.retry_period) or not keep_going():
                return Outcome.STOPPED
            outcome = self._renew_before_deadline(stop)
            if outcome is not None:
                return outcome

    def _renew_before_deadline(self, stop: threading.Event) -> Outcome | None:
        """Retry a failed renewal until the deadline; None when renewed."""
        while True:
            remaining = self.renewed_at + self.config.renew_deadline - self.clock.now()
            if remaining <= 0:
                return Outcome.LOST
            if self.try_acquire_or_renew():
                return None
            if self.holder and not self.is_leader():
                return Outcome.LOST  # someone else holds it now: we lost it for certain
            if self.clock.wait(stop, min(self.config.retry_period, remaining)):
                return Outcome.STOPPED

    def release(self) -> bool:
        """Give the lease up (holderIdentity "", lease 1 s, as client-go's release) if we hold it."""
        if not self.is_leader() or self.lease is None:
            return False
        stamp = micro_time(self.wall())
        spec = {**self.observed, "holderIdentity": "", "leaseDurationSeconds": 1,
                "acquireTime": stamp, "renewTime": stamp}
        try:
            released = self.api.update(LEASES, {**self.lease, "spec": spec}, self.config.namespace)
        except _REQUEST_ERRORS as e:
            log.warning("releasing lease %s failed: %s", self._lease_name(), e)
            return False
        self._observe(released, self.clock.now())
        log.info("released lease %s", self._lease_name())
        return True


class _Work:
    """The caller's work on a thread of its own, stopped through `leading` when leadership ends."""

    def __init__(self, work: Callable[[threading.Event], None]) -> None:
        self.leading = threading.Event()
        self.failed = False
        self.thread = threading.Thread(target=self._run, args=(work,), name="leader-work", daemon=True)

    def _run(self, work: Callable[[threading.Event], None]) -> None:
        try:
            work(self.leading)
        except Exception:
            log.exception("work under leadership failed")
            self.failed = True

    def alive(self) -> bool:
        return self.thread.is_alive()


class _Watchdog:
    """Stops the work at the renew deadline even while a renewal request still hangs (a stalled API
    server): client-go cancels the request at the deadline; we cannot cancel a blocking call, so
    this thread stops the work on time instead and the loop reports the loss once the call
    returns.  Real time only (a FakeClock's wait would move time for every thread)."""

    def __init__(self, elector: LeaderElector, job: _Work) -> None:
        self.elector, self.job = elector, job
        self.fired = False
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="leader-watchdog", daemon=True)

    def _run(self) -> None:
        clock, deadline = self.elector.clock, self.elector.config.renew_deadline
        while not self.done.is_set():
            remaining = self.elector.renewed_at + deadline - clock.now()
            if remaining <= 0:
                log.error("no renewal within the renew deadline; stopping the work")
                self.fired = True
                self.job.leading.set()
                return
            clock.wait(self.done, remaining)


def run_with_leader_election(api: LeaseApi, config: LeaderElectionConfig,
                             work: Callable[[threading.Event], None], stop: threading.Event, *,
                             clock: Clock | None = None) -> int:
    """Run `work(event)` only while holding the lease; the event is set when it must wind down.

    Returns the process exit code: 0 after a clean stop (the lease released once the work has
    stopped), 1 when leadership was lost (the caller exits at once, as upstream does, rather than
    keep acting beside the new leader) or the work failed.  With leader election off, `work(stop)`
    runs at once in this thread."""
    if not config.enabled:
        work(stop)
        return 0
    elector = LeaderElector(api, config, clock=clock)
    if not elector.acquire(stop):
        return 0
    job = _Work(work)
    watchdog = _Watchdog(elector, job)
    job.thread.start()
    if clock is None:
        watchdog.thread.start()
    outcome = elector.renew(stop, keep_going=job.alive)
    job.leading.set()
    watchdog.done.set()
    if outcome is Outcome.LOST or watchdog.fired:
        log.error("lost leadership of lease %s/%s (leaderelection lost); exiting",
                  config.namespace, config.name)
        return 1
    _release_after(elector, job)
    return 1 if job.failed else 0


def _release_after(elector: LeaderElector, job: _Work) -> None:
    """Release only once the work has really stopped, and only while the lease is surely still
    ours (before the renew deadline): releasing with work still running could let a new leader
    act beside it (client-go's ReleaseOnCancel has the same precondition)."""
    remaining = elector.renewed_at + elector.config.renew_deadline - elector.clock.now()
    job.thread.join(max(0.0, remaining))
    if job.alive():
        log.warning("work did not stop within the renew deadline; leaving the lease to expire")
        return
    elector.release()
