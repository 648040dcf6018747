"""The SubnetManager seam the daemon drives, shared by the etcd and Kubernetes managers."""

from __future__ import annotations

import threading
from collections.abc import Callable
from ipaddress import IPv4Network
from typing import Any, Protocol

from flanneld.config import NetworkConfig
from flanneld.lease import Lease

__all__ = ["LeaseLost", "SubnetError", "SubnetManager"]


class SubnetError(Exception):
    """Acquiring or renewing a lease failed for a reason a retry will not fix by itself."""


class LeaseLost(SubnetError):
    """Our lease disappeared (deleted, expired, taken over): the daemon must acquire again."""


class SubnetManager(Protocol):
    def network_config(self) -> NetworkConfig: ...

    def acquire(self, public_ip: str, backend_type: str, backend_data: dict[str, Any],
                previous: IPv4Network | None) -> Lease:
        """Our lease: the one held for public_ip if compatible, else `previous` if free, else new."""
        ...

    def stored_backend_data(self, public_ip: str, backend_type: str) -> dict[str, Any]:
        """What this host last published for `backend_type` (e.g. its VtepMAC, to keep it across a
        reboot); {} when nothing was."""
        ...

    def renew(self, lease: Lease) -> Lease:
        """A fresh TTL for our lease (etcd: new 24 h lease + put; kube: no TTL, nothing to do)."""
        ...

    def leases(self) -> dict[IPv4Network, Lease]:
        """The watch cache: every host's lease, ours included."""
        ...

    def run_watch(self, on_change: Callable[[], None], stop: threading.Event) -> None:
        """Keep leases() current until `stop` is set; on_change() after every change or re-list."""
        ...

    def own_lease_lost(self) -> bool:
        """True once the watch cache shows our acquired lease gone (or owned by another host)."""
        ...
