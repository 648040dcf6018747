"""The host-gw backend: a plain route to each remote subnet via the remote host's PublicIP
(FL pkg/backend/hostgw).  No encapsulation, so every host must be on the same L2: a peer that is
not is refused clearly (logged, counted) instead of being given a route the kernel would reject
or, worse, send to the default gateway."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from flanneld.backend.base import (
    Applied,
    Desired,
    Iface,
    LeaseLike,
    NetlinkSeam,
    RouteSpec,
    apply_desired,
    remote_leases,
)
from podnet.errors import PodnetError


class HostGwBackend:
    type_name = "host-gw"

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.iface: Iface | None = None

    def mtu(self, iface: Iface) -> int:
        return iface.mtu

    def restore(self, backend_data: Mapping[str, Any]) -> None:
        """host-gw leases carry no BackendData."""

    def prepare(self, nl: NetlinkSeam, own_ip: str, iface: Iface) -> dict[str, Any]:
        """Upstream refuses to start when the PublicIP is not the interface's own address (a NATed
        host): peers would route to an address that does not reach us."""
        if own_ip != iface.ip:
            raise PodnetError(f"host-gw: public IP {own_ip} is not the address of {iface.name} "
                              f"({iface.ip}); peers could not route to it")
        self.iface = iface
        return {}

    def desired(self, own: LeaseLike, leases: Mapping[ipaddress.IPv4Network, LeaseLike]) -> Desired:
        if self.iface is None:
            raise PodnetError("host-gw: desired() before prepare()")
        return hostgw_desired(self.iface, own, leases)

    def apply(self, nl: NetlinkSeam, desired: Desired) -> Applied:
        return apply_desired(nl, desired)

    def close(self) -> None:
        """Routes stay: a restart adopts them."""


def hostgw_desired(iface: Iface, own: LeaseLike,
                   leases: Mapping[ipaddress.IPv4Network, LeaseLike]) -> Desired:
    """Pure: one route per remote lease on our L2; the others are problems."""
    routes: set[RouteSpec] = set()
    problems: list[str] = []
    for lease in remote_leases(own, leases, "host-gw"):
        if not iface.on_link(lease.public_ip):
            problems.append(f"host-gw: peer {lease.public_ip} ({lease.subnet}) is not on the same "
                            f"L2 network as {iface.name}; no route (use vxlan across L3)")
            continue
        routes.add(RouteSpec(str(lease.subnet), lease.public_ip, iface.name))
    return Desired(routes=frozenset(routes), problems=tuple(problems))
