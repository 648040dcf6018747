"""What every backend shares: the desired kernel state as pure data, and one diff-and-apply.

A backend turns (own lease, all leases) into `Desired` with a pure function (table-tested), and
`apply` makes the kernel match it: it reads the ACTUAL entries flanneld owns, adds what is
missing, fixes what is wrong and deletes owned entries no lease wants any more.  Upstream applies
lease events one by one and never garbage-collects, so a restart after a missed Removed event
leaves stale routes forever (flannel-io/flannel#2554); diffing against the full lease set on every
sync fixes that and makes tampering (a hand-deleted route or FDB entry) heal on the next resync.

Ownership: a route is ours when its rtm_protocol is RTPROT_PODNET_FLANNEL; neighbour and FDB
entries are ours when they are permanent entries on a device flanneld created (flannel.<VNI>).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from podnet import netlink
from podnet.log import get_logger

LOG = get_logger("flanneld.backend")
ROUTE_PROTO: int = netlink.RTPROT_PODNET_FLANNEL


class LeaseLike(Protocol):
    """The fields of flanneld.lease.Lease a backend reads (FB's frozen dataclass)."""

    @property
    def subnet(self) -> ipaddress.IPv4Network: ...
    @property
    def public_ip(self) -> str: ...
    @property
    def backend_type(self) -> str: ...
    @property
    def backend_data(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Iface:
    """The external (underlay) interface: its name, the address we use on it, MTU and the
    networks it is directly attached to (for "is this peer on the same L2?")."""

    name: str
    ip: str
    mtu: int
    networks: tuple[ipaddress.IPv4Network, ...] = ()

    def on_link(self, ip: str) -> bool:
        addr = ipaddress.ip_address(ip)
        return any(addr in net for net in self.networks)


@dataclass(frozen=True, order=True)
class RouteSpec:
    dst: str
    gateway: str | None
    dev: str
    onlink: bool = False


@dataclass(frozen=True, order=True)
class NeighSpec:
    dev: str
    ip: str
    mac: str


@dataclass(frozen=True, order=True)
class FdbSpec:
    dev: str
    mac: str
    dst: str


@dataclass(frozen=True)
class Desired:
    """The kernel state flanneld wants.  `devices` are the devices whose permanent neighbour and
    FDB entries flanneld owns; `addresses` maps an owned device to its only address.  `problems`
    are peers that could not be programmed, with the reason (logged and counted, not fatal)."""

    routes: frozenset[RouteSpec] = frozenset()
    neighbours: frozenset[NeighSpec] = frozenset()
    fdb: frozenset[FdbSpec] = frozenset()
    devices: tuple[str, ...] = ()
    addresses: Mapping[str, str] = field(default_factory=dict)
    problems: tuple[str, ...] = ()
    tunnels: Mapping[str, str] = field(default_factory=dict)  # udp: subnet -> PublicIP


@dataclass
class Applied:
    """What one apply changed (counts feed the metrics and the tests' "no-op resync" checks)."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed)


class ApplyError(Exception):
    """Some entries could not be programmed; the rest were (the runner retries with backoff)."""


class NetlinkSeam(Protocol):
    """The podnet.netlink.Netlink calls backends make (FakeNetlink in the tests has the same)."""

    def get_link(self, name: str) -> Any: ...
    def list_links(self) -> list[Any]: ...
    def set_up(self, name: str) -> None: ...
    def set_link(self, name: str, **attrs: Any) -> None: ...
    def ensure_vxlan(self, name: str, *, vni: int, port: int = ..., local: str | None,
                     dev: str | None, mtu: int | None = None, mac: str | None = None,
                     learning: bool = False) -> Any: ...
    def list_addrs(self, name: str, family: int | None = None) -> list[str]: ...
    def ensure_addr(self, name: str, cidr: str) -> None: ...
    def delete_addr(self, name: str, cidr: str) -> None: ...
    def list_routes(self, family: int = 2, table: int | None = 254) -> list[Any]: ...
    def ensure_route(self, dst: str, *, gateway: str | None = None, dev: str | None = None,
                     scope: int | None = None, table: int | None = None,
                     priority: int | None = None, **extra: Any) -> None: ...
    def delete_route(self, dst: str, *, gateway: str | None = None, dev: str | None = None,
                     table: int | None = None) -> None: ...
    def list_fdb(self, dev: str) -> list[Any]: ...
    def ensure_fdb(self, dev: str, mac: str, dst: str) -> None: ...
    def delete_fdb(self, dev: str, mac: str, dst: str | None = None) -> None: ...
    def list_neighbours(self, dev: str, family: int = 2) -> list[Any]: ...
    def ensure_neighbour(self, dev: str, ip: str, mac: str) -> None: ...
    def delete_neighbour(self, dev: str, ip: str) -> None: ...


class Backend(Protocol):
    """One flannel backend (vxlan, host-gw, udp)."""

    type_name: str  # the lease's BackendType

    def mtu(self, iface: Iface) -> int:
        """FLANNEL_MTU: what pods may send so the encapsulated packet fits the underlay."""
        ...

    def restore(self, backend_data: Mapping[str, Any]) -> None:
        """Before the first prepare: the BackendData of our previous lease (vxlan reuses its
        VtepMAC, so peers' neighbour/FDB entries stay valid across a reboot)."""
        ...

    def prepare(self, nl: NetlinkSeam, own_ip: str, iface: Iface) -> dict[str, Any]:
        """Create/adopt the backend's devices (idempotent); the lease's BackendData."""
        ...

    def desired(self, own: LeaseLike, leases: Mapping[ipaddress.IPv4Network, LeaseLike]) -> Desired:
        """Pure: the routes/neighbours/FDB entries for the current lease set."""
        ...

    def apply(self, nl: NetlinkSeam, desired: Desired) -> Applied: ...

    def close(self) -> None: ...


# ------------------------------------------------------------------------------ the apply
def apply_desired(nl: NetlinkSeam, desired: Desired) -> Applied:
    """Make the owned kernel state equal `desired`.  Order as upstream's Added handling, where
    it matters: neighbour and FDB entries before the route (a route first would make the kernel
    ARP for the gateway), routes removed before their neighbour/FDB entries.  One failing entry
    does not stop the others (upstream's Removed handling does not bail out either)."""
    done = Applied()
    _apply_addresses(nl, desired, done)
    stale_routes, missing_routes = _route_diff(nl, desired)
    for route in stale_routes:
        _try(done, done.removed, f"route {route.dst} via {route.gateway}",
             lambda r=route: nl.delete_route(r.dst, gateway=r.gateway, dev=r.dev))
    for dev in desired.devices:
        _apply_neighbours(nl, dev, desired, done)
        _apply_fdb(nl, dev, desired, done)
    for route in missing_routes:
        _try(done, done.added, f"route {route.dst} via {route.gateway} dev {route.dev}",
             lambda r=route: _ensure_route(nl, r))
    if done.errors:
        raise ApplyError("; ".join(done.errors))
    return done


def _ensure_route(nl: NetlinkSeam, route: RouteSpec) -> None:
    extra: dict[str, Any] = {"proto": ROUTE_PROTO}
    if route.onlink:
        extra["onlink"] = True
    # A gateway-less route (udp: the Network via flannel0) is scope link, as `ip route` makes it.
    scope = None if route.gateway else netlink.RT_SCOPE_LINK
    nl.ensure_route(route.dst, gateway=route.gateway, dev=route.dev, scope=scope, **extra)


def _try(done: Applied, log: list[str], what: str, action: Any) -> None:
    try:
        action()
    except Exception as exc:  # collected: the other entries still get programmed
        done.errors.append(f"{what}: {exc}")
        LOG.warning("%s: %s", what, exc)
        return
    log.append(what)


def actual_routes(nl: NetlinkSeam) -> set[RouteSpec]:
    """The routes flanneld owns (by rtm_protocol), with the device by name."""
    names = {link.index: link.name for link in nl.list_links()}
    out = set()
    for route in nl.list_routes(netlink.AF_INET):
        if route.proto != ROUTE_PROTO:
            continue
        out.add(RouteSpec(route.dst, route.gateway, names.get(route.oif, ""), bool(route.onlink)))
    return out


def _route_diff(nl: NetlinkSeam, desired: Desired) -> tuple[list[RouteSpec], list[RouteSpec]]:
    """(stale, missing).  A route whose dst is still wanted with another nexthop is not stale:
    the replace converges it in place, so its traffic never sees a gap."""
    actual = actual_routes(nl)
    wanted_dsts = {r.dst for r in desired.routes}
    stale = sorted(r for r in actual if r.dst not in wanted_dsts)
    missing = sorted(r for r in desired.routes if r not in actual)
    return stale, missing


def _apply_addresses(nl: NetlinkSeam, desired: Desired, done: Applied) -> None:
    """Each owned device carries exactly its one address (a subnet change leaves none behind)."""
    for dev, cidr in desired.addresses.items():
        have = set(nl.list_addrs(dev, netlink.AF_INET))
        for old in sorted(have - {cidr}):
            _try(done, done.removed, f"address {old} on {dev}", lambda o=old, d=dev: nl.delete_addr(d, o))
        if cidr not in have:
            _try(done, done.added, f"address {cidr} on {dev}", lambda d=dev, c=cidr: nl.ensure_addr(d, c))


def _apply_neighbours(nl: NetlinkSeam, dev: str, desired: Desired, done: Applied) -> None:
    want = {(n.ip, n.mac) for n in desired.neighbours if n.dev == dev}
    have = {(n.ip, n.mac.lower()) for n in nl.list_neighbours(dev) if n.permanent}
    wanted_ips = {ip for ip, _ in want}
    for ip, mac in sorted(have - want):
        if ip not in wanted_ips:  # a changed MAC is replaced below, not deleted first
            _try(done, done.removed, f"neighbour {ip} ({mac}) on {dev}",
                 lambda i=ip: nl.delete_neighbour(dev, i))
    for ip, mac in sorted(want - have):
        _try(done, done.added, f"neighbour {ip} -> {mac} on {dev}",
             lambda i=ip, m=mac: nl.ensure_neighbour(dev, i, m))


def _apply_fdb(nl: NetlinkSeam, dev: str, desired: Desired, done: Applied) -> None:
    want = {(f.mac, f.dst) for f in desired.fdb if f.dev == dev}
    have = {(f.mac.lower(), f.dst) for f in nl.list_fdb(dev) if f.permanent and f.dst}
    for mac, dst in sorted(have - want):
        _try(done, done.removed, f"fdb {mac} dst {dst} on {dev}",
             lambda m=mac, d=dst: nl.delete_fdb(dev, m, d))
    for mac, dst in sorted(want - have):
        _try(done, done.added, f"fdb {mac} dst {dst} on {dev}",
             lambda m=mac, d=dst: nl.ensure_fdb(dev, m, d))


def remote_leases(own: LeaseLike, leases: Mapping[ipaddress.IPv4Network, LeaseLike],
                  backend_type: str) -> Iterable[LeaseLike]:
    """Other hosts' leases of our backend type, in subnet order.  A lease holding our own
    PublicIP under another subnet is a leftover of ours (never route to ourselves)."""
    for subnet in sorted(leases):
        lease = leases[subnet]
        if subnet == own.subnet or lease.public_ip == own.public_ip:
            continue
        if lease.backend_type != backend_type:
            LOG.debug("ignoring lease %s: backend %s, not %s", subnet, lease.backend_type, backend_type)
            continue
        yield lease
