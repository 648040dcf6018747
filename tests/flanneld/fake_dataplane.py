"""Fakes of the seams flanneld's backends and daemon use: FakeNetlink (links, addresses, routes,
neighbours, FDB in memory, with the kernel's replace/delete semantics) and FakeSubnetManager
(a lease table the test edits)."""

from __future__ import annotations

import dataclasses
import ipaddress
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

NUD_PERMANENT = 0x80
RTNH_F_ONLINK = 4


@dataclass(frozen=True)
class FLink:
    index: int
    name: str
    kind: str
    mac: str
    mtu: int
    up: bool = False
    vxlan: Any = None


@dataclass(frozen=True)
class FRoute:
    dst: str
    gateway: str | None
    oif: int | None
    proto: int = 3
    flags: int = 0
    scope: int = 0
    table: int = 254

    @property
    def onlink(self) -> bool:
        return bool(self.flags & RTNH_F_ONLINK)


@dataclass(frozen=True)
class FFdb:
    mac: str
    dst: str | None
    permanent: bool


@dataclass(frozen=True)
class FNeigh:
    ip: str
    mac: str
    state: int

    @property
    def permanent(self) -> bool:
        return bool(self.state & NUD_PERMANENT)


class FakeNetlink:
    def __init__(self) -> None:
        self.links: dict[str, FLink] = {}
        self.addrs: dict[str, set[str]] = {}
        self.routes: dict[str, FRoute] = {}  # by dst (main table, one route per dst)
        self.fdb: dict[str, set[FFdb]] = {}
        self.neigh: dict[str, dict[str, FNeigh]] = {}
        self.calls: list[str] = []  # mutating calls, in order
        self._next = 1
        self.fail: Callable[[str], bool] = lambda call: False

    def _mutate(self, call: str) -> None:
        if self.fail(call):
            raise OSError(f"injected failure: {call}")
        self.calls.append(call)

    # links
    def add_link(self, name: str, kind: str = "veth", mac: str = "02:00:00:00:00:01", mtu: int = 1500,
                 up: bool = True, addrs: tuple[str, ...] = ()) -> FLink:
        link = FLink(self._next, name, kind, mac, mtu, up)
        self._next += 1
        self.links[name] = link
        self.addrs[name] = set(addrs)
        return link

    def get_link(self, name: str) -> FLink | None:
        return self.links.get(name)

    def list_links(self) -> list[FLink]:
        return list(self.links.values())

    def set_up(self, name: str) -> None:
        self._mutate(f"up {name}")
        self.links[name] = dataclasses.replace(self.links[name], up=True)

    def set_link(self, name: str, **attrs: Any) -> None:
        self._mutate(f"set {name} {sorted(attrs.items())}")
        changes = {"mac" if k == "address" else k: v for k, v in attrs.items()}
        self.links[name] = dataclasses.replace(self.links[name], **changes)

    def delete_link(self, name: str) -> None:
        link = self.links.pop(name)
        self.addrs.pop(name, None)
        self.fdb.pop(name, None)
        self.neigh.pop(name, None)
        self.routes = {d: r for d, r in self.routes.items() if r.oif != link.index}

    def ensure_vxlan(self, name: str, *, vni: int, port: int = 8472, local: str | None,
                     dev: str | None, mtu: int | None = None, mac: str | None = None,
                     learning: bool = False) -> FLink:
        spec = (vni, port, local, dev, learning)
        link = self.links.get(name)
        if link is not None and link.vxlan != spec:
            self._mutate(f"recreate vxlan {name}")
            self.delete_link(name)
            link = None
        if link is None:
            self._mutate(f"add vxlan {name}")
            link = self.add_link(name, "vxlan", mac or "02:aa:aa:aa:aa:aa", mtu or 1450, up=False)
            link = self.links[name] = dataclasses.replace(link, vxlan=spec)
        if (mac and link.mac != mac) or (mtu and link.mtu != mtu):
            link = self.links[name] = dataclasses.replace(link, mac=mac or link.mac, mtu=mtu or link.mtu)
        return link

    # addresses
    def list_addrs(self, name: str, family: int | None = None) -> list[str]:
        return sorted(self.addrs.get(name, set()))

    def ensure_addr(self, name: str, cidr: str) -> None:
        self._mutate(f"addr add {cidr} {name}")
        self.addrs[name].add(cidr)

    def delete_addr(self, name: str, cidr: str) -> None:
        self._mutate(f"addr del {cidr} {name}")
        self.addrs.get(name, set()).discard(cidr)

    # routes
    def list_routes(self, family: int = 2, table: int | None = 254) -> list[FRoute]:
        return list(self.routes.values())

    def ensure_route(self, dst: str, *, gateway: str | None = None, dev: str | None = None,
                     scope: int | None = None, table: int | None = None, priority: int | None = None,
                     **extra: Any) -> None:
        self._mutate(f"route replace {dst} via {gateway} dev {dev}")
        oif = self.links[dev].index if dev else None
        flags = RTNH_F_ONLINK if extra.get("onlink") else 0
        self.routes[dst] = FRoute(dst, gateway, oif, extra.get("proto", 3), flags, scope or 0)

    def delete_route(self, dst: str, *, gateway: str | None = None, dev: str | None = None,
                     table: int | None = None) -> None:
        self._mutate(f"route del {dst}")
        self.routes.pop(dst, None)

    def add_foreign_route(self, dst: str, gateway: str | None, dev: str) -> None:
        self.routes[dst] = FRoute(dst, gateway, self.links[dev].index, proto=2)

    # fdb / neighbours
    def list_fdb(self, dev: str) -> list[FFdb]:
        return sorted(self.fdb.get(dev, set()), key=str)

    def ensure_fdb(self, dev: str, mac: str, dst: str) -> None:
        self._mutate(f"fdb replace {mac} {dst} {dev}")
        entries = {f for f in self.fdb.get(dev, set()) if f.mac != mac}
        self.fdb[dev] = entries | {FFdb(mac, dst, True)}

    def delete_fdb(self, dev: str, mac: str, dst: str | None = None) -> None:
        self._mutate(f"fdb del {mac} {dst} {dev}")
        self.fdb[dev] = {f for f in self.fdb.get(dev, set()) if not (f.mac == mac and dst in (None, f.dst))}

    def list_neighbours(self, dev: str, family: int = 2) -> list[FNeigh]:
        return list(self.neigh.get(dev, {}).values())

    def ensure_neighbour(self, dev: str, ip: str, mac: str) -> None:
        self._mutate(f"neigh replace {ip} {mac} {dev}")
        self.neigh.setdefault(dev, {})[ip] = FNeigh(ip, mac, NUD_PERMANENT)

    def delete_neighbour(self, dev: str, ip: str) -> None:
        self._mutate(f"neigh del {ip} {dev}")
        self.neigh.get(dev, {}).pop(ip, None)


@dataclass(frozen=True)
class L:
    """A lease as FB's flanneld.lease.Lease (the fields backends and the daemon read)."""

    subnet: ipaddress.IPv4Network
    public_ip: str
    backend_type: str = "vxlan"
    backend_data: dict[str, Any] = field(default_factory=dict)
    expiration: float | None = None


def lease(cidr: str, public_ip: str, backend_type: str = "vxlan", mac: str | None = None,
          **kw: Any) -> L:
    data = {"VNI": 1, "VtepMAC": mac} if mac else {}
    return L(ipaddress.IPv4Network(cidr), public_ip, backend_type, data, **kw)


@dataclass
class FakeNetConfig:
    network: ipaddress.IPv4Network = field(default_factory=lambda: ipaddress.IPv4Network("10.244.0.0/16"))
    backend: dict[str, Any] = field(default_factory=lambda: {"Type": "vxlan"})


class FakeSubnetManager:
    """Leases in a dict the test edits; `acquire` hands out `next_subnet` (or `previous`)."""

    def __init__(self, next_subnet: str = "10.244.1.0/24", ttl: float | None = None,
                 now: Callable[[], float] = lambda: 0.0) -> None:
        self.config = FakeNetConfig()
        self.table: dict[ipaddress.IPv4Network, L] = {}
        self.next_subnet = ipaddress.IPv4Network(next_subnet)
        self.ttl = ttl
        self.now = now
        self.own: L | None = None
        self.acquired: list[tuple[str, str, dict[str, Any], ipaddress.IPv4Network | None]] = []
        self.renewed: list[L] = []
        self.fail_renew = False
        self.on_change: Callable[[], None] = lambda: None

    def network_config(self) -> FakeNetConfig:
        return self.config

    def _expiry(self) -> float | None:
        return None if self.ttl is None else self.now() + self.ttl

    def acquire(self, public_ip: str, backend_type: str, backend_data: dict[str, Any],
                previous: ipaddress.IPv4Network | None) -> L:
        self.acquired.append((public_ip, backend_type, dict(backend_data), previous))
        subnet = previous if previous is not None and previous not in self.table else self.next_subnet
        self.own = L(subnet, public_ip, backend_type, dict(backend_data), self._expiry())
        self.table[subnet] = self.own
        return self.own

    def stored_backend_data(self, public_ip: str, backend_type: str) -> dict[str, Any]:
        for lease in self.table.values():
            if lease.public_ip == public_ip and lease.backend_type == backend_type:
                return dict(lease.backend_data)
        return {}

    def renew(self, lease: L) -> L:
        if self.fail_renew:
            raise OSError("etcd unavailable")
        self.own = dataclasses.replace(lease, expiration=self._expiry())
        self.table[lease.subnet] = self.own
        self.renewed.append(self.own)
        return self.own

    def leases(self) -> dict[ipaddress.IPv4Network, L]:
        return dict(self.table)

    def run_watch(self, on_change: Callable[[], None], stop: threading.Event) -> None:
        self.on_change = on_change
        on_change()
        stop.wait()

    def own_lease_lost(self) -> bool:
        return self.own is not None and self.own.subnet not in self.table

    def put(self, lease: L) -> None:
        self.table[lease.subnet] = lease
        self.on_change()

    def remove(self, subnet: str) -> None:
        self.table.pop(ipaddress.IPv4Network(subnet), None)
        self.on_change()
