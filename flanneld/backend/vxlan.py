"""The vxlan backend: one kernel VXLAN device, programmed per remote lease (FL pkg/backend/vxlan).

Per remote host: a permanent neighbour entry (remote subnet address -> remote VtepMAC), an FDB
entry (VtepMAC -> remote PublicIP) and an onlink route `<subnet> via <subnet address> dev
flannel.<VNI>`.  The kernel then encapsulates in UDP/8472 without flooding or learning.  With
DirectRouting, a peer whose PublicIP is on our underlay's L2 gets a plain route via PublicIP
instead (no encapsulation at all).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from typing import Any

from flanneld.backend.base import (
    LOG,
    Applied,
    Desired,
    FdbSpec,
    Iface,
    LeaseLike,
    NeighSpec,
    NetlinkSeam,
    RouteSpec,
    apply_desired,
    remote_leases,
)

DEFAULT_VNI = 1
DEFAULT_PORT = 8472  # what the kernel picks for dstport 0 (and flannel's "Port": 0)
VXLAN_OVERHEAD = 50  # outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8


def random_mac() -> str:
    """A locally administered unicast MAC.  Generated before the device is created and passed
    in, so udev/systemd's MACAddressPolicy cannot rewrite it afterwards (flannel PR #1485)."""
    raw = bytearray(os.urandom(6))
    raw[0] = (raw[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in raw)


class VxlanBackend:
    type_name = "vxlan"

    def __init__(self, config: Mapping[str, Any], previous_mac: str | None = None) -> None:
        self.vni = int(config.get("VNI") or DEFAULT_VNI)
        self.port = int(config.get("Port") or DEFAULT_PORT)
        self.direct_routing = bool(config.get("DirectRouting", False))
        self.device = f"flannel.{self.vni}"
        self.iface: Iface | None = None
        # The MAC of our previous lease: a restart keeps the VtepMAC peers already programmed.
        self._mac = previous_mac

    def mtu(self, iface: Iface) -> int:
        return iface.mtu - VXLAN_OVERHEAD

    def restore(self, backend_data: Mapping[str, Any]) -> None:
        mac = backend_data.get("VtepMAC")
        if isinstance(mac, str) and mac and int(backend_data.get("VNI") or DEFAULT_VNI) == self.vni:
            self._mac = mac.lower()

    def prepare(self, nl: NetlinkSeam, own_ip: str, iface: Iface) -> dict[str, Any]:
        """Create or adopt flannel.<VNI> (the netlink seam recreates it when VNI, port or local
        address differ) and keep its MAC stable: our previous lease's (restore()), else the
        existing device's, else a fresh random one."""
        self.iface = iface
        if self._mac is None:
            existing = nl.get_link(self.device)
            self._mac = existing.mac if existing is not None and existing.mac else random_mac()
        link = nl.ensure_vxlan(self.device, vni=self.vni, port=self.port, local=own_ip, dev=iface.name,
                               mtu=self.mtu(iface), mac=self._mac, learning=False)
        if link.mac != self._mac:
            LOG.warning("%s has MAC %s, wanted %s; setting it", self.device, link.mac, self._mac)
            nl.set_link(self.device, address=self._mac)
        if not link.up:
            nl.set_up(self.device)
        return {"VNI": self.vni, "VtepMAC": self._mac}

    def desired(self, own: LeaseLike, leases: Mapping[ipaddress.IPv4Network, LeaseLike]) -> Desired:
        return vxlan_desired(self.device, own, leases, self.iface if self.direct_routing else None)

    def apply(self, nl: NetlinkSeam, desired: Desired) -> Applied:
        return apply_desired(nl, desired)

    def close(self) -> None:
        """Nothing to stop: the device stays (a restart adopts it; pods keep their traffic)."""


def vxlan_desired(device: str, own: LeaseLike, leases: Mapping[ipaddress.IPv4Network, LeaseLike],
                  direct: Iface | None) -> Desired:
    """Pure.  `direct`: the underlay interface when DirectRouting is on, else None."""
    routes: set[RouteSpec] = set()
    neighbours: set[NeighSpec] = set()
    fdb: set[FdbSpec] = set()
    problems: list[str] = []
    for lease in remote_leases(own, leases, "vxlan"):
        subnet = str(lease.subnet)
        if direct is not None and direct.on_link(lease.public_ip):
            routes.add(RouteSpec(subnet, lease.public_ip, direct.name))
            continue
        mac = str(lease.backend_data.get("VtepMAC") or "").lower()
        if not mac:
            problems.append(f"lease {subnet} of {lease.public_ip} has no VtepMAC")
            continue
        gateway = str(lease.subnet.network_address)
        neighbours.add(NeighSpec(device, gateway, mac))
        fdb.add(FdbSpec(device, mac, lease.public_ip))
        routes.add(RouteSpec(subnet, gateway, device, onlink=True))
    # Upstream puts the subnet's network address on the device as a /32: it is the source of
    # packets the host itself sends into the overlay, and what peers' neighbour entries name.
    address = {device: f"{own.subnet.network_address}/32"}
    return Desired(frozenset(routes), frozenset(neighbours), frozenset(fdb), (device,), address,
                   tuple(problems))
