"""Kernel change events that mean "something of ours went away": sync now, not at the next resync.

Upstream's vxlan backend watches links and recreates flannel.<VNI> when it is deleted; its
host-gw backend re-checks routes every 10 s.  Here one rtnetlink multicast socket wakes the sync
when a flannel-owned route (by protocol), a neighbour/FDB entry or address on an owned device, or
an owned device itself is deleted.  Everything else (pod ARP churn on cni0, other daemons'
routes) is ignored, so pod traffic does not turn into syncs.  Our own deletions wake one more
sync, which finds nothing to do.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from flanneld.backend.base import ROUTE_PROTO
from podnet import netlink, rtnl

GROUPS = netlink.RTMGRP_LINK | netlink.RTMGRP_NEIGH | netlink.RTMGRP_IPV4_IFADDR | netlink.RTMGRP_IPV4_ROUTE


def touches_ours(msg_type: int, payload: bytes, names: frozenset[str], indexes: frozenset[int]) -> bool:
    """Pure: whether one rtnetlink event deletes something flanneld owns."""
    if msg_type == rtnl.RTM_DELROUTE:
        return netlink.parse_route(payload).proto == ROUTE_PROTO
    if msg_type == rtnl.RTM_DELNEIGH:  # ARP entries and (AF_BRIDGE) FDB entries
        return netlink.parse_neigh(payload)[1] in indexes
    if msg_type == rtnl.RTM_DELADDR:
        return netlink.parse_addr(payload)[1] in indexes
    if msg_type == rtnl.RTM_DELLINK:
        return netlink.parse_link(payload).name in names
    return False


class KernelWatch:
    """Call `on_change()` when an owned kernel object is deleted; the owned devices are set
    (swapped whole) by the syncing thread after each apply."""

    def __init__(self, on_change: Callable[[], None]) -> None:
        self.on_change = on_change
        self.names: frozenset[str] = frozenset()
        self.indexes: frozenset[int] = frozenset()

    def set_devices(self, devices: dict[str, int]) -> None:
        self.names, self.indexes = frozenset(devices), frozenset(devices.values())

    def run(self, stop: threading.Event) -> None:
        """Until `stop`; the subscription is made here, in the daemon's own network namespace."""
        netlink.listen(GROUPS, stop, self._on_messages)

    def _on_messages(self, msgs: list[rtnl.Message] | None) -> None:
        if msgs is None:  # ENOBUFS: events were lost; a sync re-reads everything
            self.on_change()
            return
        names, indexes = self.names, self.indexes
        if any(touches_ours(m.type, m.payload, names, indexes) for m in msgs):
            self.on_change()
