"""The netlink seam: links, addresses, routes and neighbours over pyroute2.

One `Netlink` object owns one rtnetlink socket bound to one network namespace (opened inside
`podnet.netns.enter`, so it is safe to use from any thread).  Every `ensure_*` succeeds when the
object already exists with the same spec; every `delete_*` succeeds when it is already gone; other
errno values become podnet.errors exceptions.  pyroute2 is imported lazily: it costs ~150-190 ms,
and CNI executables must not pay that on paths that never touch the kernel.
"""

from __future__ import annotations

import errno
import ipaddress
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from podnet import netns as netns_mod
from podnet.errors import AlreadyExists, NetlinkFailure, NotFound

# errno values that mean "already gone" for a delete.
_GONE = {errno.ENODEV, errno.ESRCH, errno.EADDRNOTAVAIL, errno.ENOENT}
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RT_SCOPE_HOST = 254


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str
    mac: str
    mtu: int
    up: bool
    master: int
    peer_index: int  # IFLA_LINK: for a veth, the peer's index in the peer's namespace


@dataclass(frozen=True)
class Route:
    dst: str  # CIDR, "0.0.0.0/0" for default
    gateway: str | None
    oif: int | None
    table: int
    scope: int
    priority: int | None


def _errno(exc: BaseException) -> int | None:
    code = getattr(exc, "code", None)
    return code if isinstance(code, int) else None


def _attr(msg: Any, name: str, default: Any = None) -> Any:
    value = msg.get_attr(name)
    return default if value is None else value


def _to_link(msg: Any) -> Link:
    info = msg.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else ""
    return Link(
        index=msg["index"],
        name=_attr(msg, "IFLA_IFNAME", ""),
        kind=kind or "",
        mac=_attr(msg, "IFLA_ADDRESS", ""),
        mtu=_attr(msg, "IFLA_MTU", 0),
        up=bool(msg["flags"] & 1),
        master=_attr(msg, "IFLA_MASTER", 0),
        peer_index=_attr(msg, "IFLA_LINK", 0),
    )


class Netlink:
    """Idempotent link/address/route operations in one network namespace."""

    def __init__(self, ipr: Any) -> None:
        self._ipr = ipr

    @classmethod
    @contextmanager
    def open(cls, netns: str | None = None) -> Iterator[Netlink]:
        """A Netlink bound to `netns` (name or path; None = the calling thread's namespace)."""
        from pyroute2 import IPRoute  # lazy: see the module docstring

        with netns_mod.enter(netns):
            ipr = IPRoute()
        try:
            yield cls(ipr)
        finally:
            ipr.close()

    def _call(self, op: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from pyroute2 import NetlinkError

        try:
            return fn(*args, **kwargs)
        except NetlinkError as exc:
            code = _errno(exc)
            if code in (errno.ENODEV, errno.ENOENT):
                raise NotFound(f"{op}: {exc}") from exc
            if code == errno.EEXIST:
                raise AlreadyExists(f"{op}: {exc}") from exc
            raise NetlinkFailure(op, code or 0, str(exc)) from exc

    # ----------------------------------------------------------------- links
    def get_link(self, name: str) -> Link | None:
        from pyroute2 import NetlinkError

        try:
            msgs = self._ipr.link("get", ifname=name)
        except NetlinkError as exc:
            if _errno(exc) in _GONE:
                return None
            raise NetlinkFailure("get_link", _errno(exc) or 0, str(exc)) from exc
        return _to_link(msgs[0]) if msgs else None

    def get_link_by_index(self, index: int) -> Link | None:
        from pyroute2 import NetlinkError

        try:
            msgs = self._ipr.link("get", index=index)
        except NetlinkError as exc:
            if _errno(exc) in _GONE:
                return None
            raise NetlinkFailure("get_link", _errno(exc) or 0, str(exc)) from exc
        return _to_link(msgs[0]) if msgs else None

    def require_link(self, name: str) -> Link:
        link = self.get_link(name)
        if link is None:
            raise NotFound(f"link {name} does not exist")
        return link

    def list_links(self) -> list[Link]:
        return [_to_link(m) for m in self._ipr.get_links()]

    def ensure_bridge(self, name: str, *, mtu: int | None = None, vlan_filtering: bool = False) -> Link:
        """Create the bridge if missing; tolerate a concurrent creator (EEXIST) and reuse it."""
        link = self.get_link(name)
        if link is None:
            spec: dict[str, Any] = {"ifname": name, "kind": "bridge"}
            if mtu:
                spec["mtu"] = mtu
            if vlan_filtering:
                spec["br_vlan_filtering"] = 1
            # Another ADD may create it between our get and add (plugins#366): reuse theirs.
            with suppress(AlreadyExists):
                self._call("add bridge", self._ipr.link, "add", **spec)
            link = self.require_link(name)
        if link.kind != "bridge":
            raise AlreadyExists(f"{name} exists and is a {link.kind or 'non-bridge'} link, not a bridge")
        return link

    def add_veth_pair(self, name: str, peer: str, *, peer_netns_fd: int | None = None,
                      mtu: int | None = None, mac: str | None = None) -> Link:
        """Create veth `name` here with its peer `peer`, the peer moved into `peer_netns_fd`."""
        peer_spec: dict[str, Any] = {"ifname": peer}
        if peer_netns_fd is not None:
            peer_spec["net_ns_fd"] = peer_netns_fd
        spec: dict[str, Any] = {"ifname": name, "kind": "veth", "peer": peer_spec}
        if mtu:
            spec["mtu"] = mtu
            peer_spec["mtu"] = mtu
        if mac:
            spec["address"] = mac
        self._call("add veth", self._ipr.link, "add", **spec)
        return self.require_link(name)

    def set_link(self, name: str, **attrs: Any) -> None:
        """`ip link set`: state="up", master=<index>, mtu=..., address=..., etc."""
        link = self.require_link(name)
        self._call(f"set link {name}", self._ipr.link, "set", index=link.index, **attrs)

    def set_up(self, name: str) -> None:
        self.set_link(name, state="up")

    def set_down(self, name: str) -> None:
        self.set_link(name, state="down")

    def set_bridge_port(self, name: str, **attrs: Any) -> None:
        """Bridge port flags (IFLA_BRPORT_*), e.g. mode=1 for hairpin, learning=0."""
        link = self.require_link(name)
        self._call(f"set brport {name}", self._ipr.brport, "set", index=link.index, **attrs)

    def delete_link(self, name: str) -> bool:
        """Delete a link by name; False (not an error) when it is already gone."""
        link = self.get_link(name)
        if link is None:
            return False
        return self.delete_link_index(link.index)

    def delete_link_index(self, index: int) -> bool:
        from pyroute2 import NetlinkError

        try:
            self._ipr.link("del", index=index)
        except NetlinkError as exc:
            if _errno(exc) in _GONE:
                return False
            raise NetlinkFailure("delete link", _errno(exc) or 0, str(exc)) from exc
        return True

    # ------------------------------------------------------------- addresses
    def list_addrs(self, name: str, family: int | None = None) -> list[str]:
        """Addresses on a link as CIDR strings ("10.1.0.2/24")."""
        link = self.get_link(name)
        if link is None:
            return []
        kwargs: dict[str, Any] = {"index": link.index}
        if family:
            kwargs["family"] = family
        out = []
        for msg in self._ipr.get_addr(**kwargs):
            out.append(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}")
        return out

    def ensure_addr(self, name: str, cidr: str) -> None:
        """Add an address; success when the same address/prefix is already there."""
        iface = ipaddress.ip_interface(cidr)
        if str(iface) in {str(ipaddress.ip_interface(a)) for a in self.list_addrs(name)}:
            return
        link = self.require_link(name)
        with suppress(AlreadyExists):
            self._call(f"add address {cidr} to {name}", self._ipr.addr, "add", index=link.index,
                       address=str(iface.ip), prefixlen=iface.network.prefixlen)

    def delete_addr(self, name: str, cidr: str) -> None:
        from pyroute2 import NetlinkError

        link = self.get_link(name)
        if link is None:
            return
        iface = ipaddress.ip_interface(cidr)
        try:
            self._ipr.addr("del", index=link.index, address=str(iface.ip),
                           prefixlen=iface.network.prefixlen)
        except NetlinkError as exc:
            if _errno(exc) not in _GONE:
                raise NetlinkFailure("delete address", _errno(exc) or 0, str(exc)) from exc

    # ---------------------------------------------------------------- routes
    def _route_spec(self, dst: str, gateway: str | None, dev: str | None, scope: int | None,
                    table: int | None, priority: int | None, **extra: Any) -> dict[str, Any]:
        net = ipaddress.ip_network(dst, strict=False)
        spec: dict[str, Any] = {"dst": str(net.network_address), "dst_len": net.prefixlen,
                                "family": 10 if net.version == 6 else 2}
        if gateway:
            spec["gateway"] = gateway
        if dev:
            spec["oif"] = self.require_link(dev).index
        if scope is not None:
            spec["scope"] = scope
        if table is not None:
            spec["table"] = table
        if priority is not None:
            spec["priority"] = priority
        spec.update({k: v for k, v in extra.items() if v is not None})
        return spec

    def ensure_route(self, dst: str, *, gateway: str | None = None, dev: str | None = None,
                     scope: int | None = None, table: int | None = None,
                     priority: int | None = None, **extra: Any) -> None:
        """`ip route replace`: idempotent, and converges a route whose nexthop changed."""
        spec = self._route_spec(dst, gateway, dev, scope, table, priority, **extra)
        self._call(f"replace route {dst}", self._ipr.route, "replace", **spec)

    def add_route(self, dst: str, *, gateway: str | None = None, dev: str | None = None,
                  scope: int | None = None, table: int | None = None,
                  priority: int | None = None, **extra: Any) -> None:
        """`ip route add`: AlreadyExists when a route to dst already exists."""
        spec = self._route_spec(dst, gateway, dev, scope, table, priority, **extra)
        self._call(f"add route {dst}", self._ipr.route, "add", **spec)

    def delete_route(self, dst: str, *, gateway: str | None = None, dev: str | None = None,
                     table: int | None = None) -> None:
        from pyroute2 import NetlinkError

        try:
            spec = self._route_spec(dst, gateway, dev, None, table, None)
        except NotFound:
            return
        try:
            self._ipr.route("del", **spec)
        except NetlinkError as exc:
            if _errno(exc) not in _GONE:
                raise NetlinkFailure("delete route", _errno(exc) or 0, str(exc)) from exc

    def list_routes(self, family: int = 2, table: int | None = 254) -> list[Route]:
        """Routes of one family (2 = IPv4, 10 = IPv6) in `table` (main by default)."""
        out = []
        kwargs: dict[str, Any] = {"family": family}
        if table is not None:
            kwargs["table"] = table
        for msg in self._ipr.get_routes(**kwargs):
            dst = msg.get_attr("RTA_DST") or ("0.0.0.0" if family == 2 else "::")
            out.append(Route(
                dst=f"{dst}/{msg['dst_len']}",
                gateway=msg.get_attr("RTA_GATEWAY"),
                oif=msg.get_attr("RTA_OIF"),
                table=msg.get_attr("RTA_TABLE") or msg["table"],
                scope=msg["scope"],
                priority=msg.get_attr("RTA_PRIORITY"),
            ))
        return out
