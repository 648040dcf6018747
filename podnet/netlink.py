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
import os
import select
import socket
import time
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
IFF_PROMISC = 0x100
RTMGRP_LINK = 0x1
NETLINK_ROUTE = 0
# IFLA_BRPORT_MODE is the hairpin flag ("hairpin on" in `bridge -d link`).
BRPORT_MODE_HAIRPIN = 1
BRIDGE_VLAN_INFO_PVID = 0x2
BRIDGE_VLAN_INFO_UNTAGGED = 0x4


@contextmanager
def netns_fd(netns: str | None = None) -> Iterator[int]:
    """An open fd of `netns` (None = the calling thread's own), for IFLA_NET_NS_FD."""
    path = netns_mod.path_of(netns) if netns else "/proc/thread-self/ns/net"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise NotFound(f"network namespace {netns} does not exist") from exc
    try:
        yield fd
    finally:
        os.close(fd)


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
    oper_state: str = ""  # IFLA_OPERSTATE: "UP", "DOWN", "LOWERLAYERDOWN", "UNKNOWN", ...
    promisc: bool = False


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
        oper_state=str(_attr(msg, "IFLA_OPERSTATE", "")),
        promisc=bool(msg["flags"] & IFF_PROMISC),
    )


def _drain(sock: socket.socket) -> None:
    """Discard queued event messages: they are only a wake-up, the state is re-read."""
    while True:
        try:
            sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:  # ENOBUFS: events overflowed; re-reading the state covers it
            return


class Netlink:
    """Idempotent link/address/route operations in one network namespace."""

    def __init__(self, ipr: Any, netns: str | None = None) -> None:
        self._ipr = ipr
        self._netns = netns  # where event sockets must be opened (see wait_oper_up)

    @classmethod
    @contextmanager
    def open(cls, netns: str | None = None) -> Iterator[Netlink]:
        """A Netlink bound to `netns` (name or path; None = the calling thread's namespace)."""
        from pyroute2 import IPRoute  # lazy: see the module docstring

        with netns_mod.enter(netns):
            ipr = IPRoute()
        try:
            yield cls(ipr, netns)
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
        """The link called `name`, or None when there is none."""
        return self._get_link(ifname=name)

    def get_link_by_index(self, index: int) -> Link | None:
        return self._get_link(index=index)

    def _get_link(self, **key: Any) -> Link | None:
        from pyroute2 import NetlinkError

        try:
            msgs = self._ipr.link("get", **key)
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
        """`ip link set`: state="up", master=<index>, mtu=..., address=..., etc.

        The device is named by IFLA_IFNAME (ifi_index 0), which the kernel resolves itself: one
        round trip instead of a lookup first (each costs ~0.8 ms through pyroute2).
        """
        self._call(f"set link {name}", self._ipr.link, "set", ifname=name, **attrs)

    def set_up(self, name: str) -> None:
        self.set_link(name, state="up")

    def set_down(self, name: str) -> None:
        self.set_link(name, state="down")

    def set_bridge_port(self, name: str, **attrs: Any) -> None:
        """Bridge port flags (IFLA_BRPORT_*), e.g. mode=1 for hairpin, learning=0."""
        link = self.require_link(name)
        self._call(f"set brport {name}", self._ipr.brport, "set", index=link.index, **attrs)

    def set_promisc(self, name: str, on: bool = True) -> None:
        """`ip link set <name> promisc on|off` (IFF_PROMISC; the kernel counts promiscuity, but a
        flag change through RTM_NEWLINK is idempotent)."""
        self.set_link(name, flags=IFF_PROMISC if on else 0, change=IFF_PROMISC)

    def set_hairpin(self, name: str, on: bool = True) -> None:
        """Hairpin on a bridge port: frames may go back out of the port they came in on, so a pod
        reaches itself through a service IP that DNATs back to it."""
        self.set_bridge_port(name, mode=BRPORT_MODE_HAIRPIN if on else 0)

    def bridge_port_info(self, name: str) -> dict[str, Any]:
        """The IFLA_BRPORT_* attributes of a bridge port, lower-case without the prefix
        (e.g. {"mode": 1, "state": 3, "learning": 1, ...}); {} when `name` is not a port."""
        link = self.require_link(name)
        for msg in self._call(f"show brport {name}", self._ipr.brport, "show", index=link.index):
            info = msg.get_attr("IFLA_PROTINFO")
            if msg["index"] == link.index and info is not None:
                return {k[len("IFLA_BRPORT_"):].lower(): v for k, v in info["attrs"]}
        return {}

    def set_vlan_filtering(self, bridge: str, on: bool = True) -> None:
        """Bridge VLAN filtering (needs CONFIG_BRIDGE_VLAN_FILTERING; EOPNOTSUPP without it)."""
        link = self.require_link(bridge)
        self._call(f"set vlan_filtering on {bridge}", self._ipr.link, "set", index=link.index,
                   kind="bridge", br_vlan_filtering=1 if on else 0)

    def add_port_vlan(self, name: str, vid: int, *, pvid: bool = True, untagged: bool = True,
                      self_: bool = False) -> None:
        """`bridge vlan add vid <vid> dev <name> [pvid] [untagged] [self]` (idempotent in the kernel).

        `self_` programs the bridge device's own VLAN table (needed for a gateway on <br>.<vid>).
        """
        link = self.require_link(name)
        flags = (BRIDGE_VLAN_INFO_PVID if pvid else 0) | (BRIDGE_VLAN_INFO_UNTAGGED if untagged else 0)
        spec: dict[str, Any] = {"index": link.index, "vlan_info": {"vid": vid, "flags": flags}}
        if self_:
            spec["vlan_flags"] = "self"
        self._call(f"add vlan {vid} to {name}", self._ipr.vlan_filter, "add", **spec)

    def ensure_vlan_link(self, name: str, parent: str, vid: int) -> Link:
        """An 802.1Q sub-interface `name` on `parent` (needs CONFIG_VLAN_8021Q)."""
        link = self.get_link(name)
        if link is None:
            parent_link = self.require_link(parent)
            with suppress(AlreadyExists):
                self._call(f"add vlan link {name}", self._ipr.link, "add", ifname=name, kind="vlan",
                           link=parent_link.index, vlan_id=vid)
            link = self.require_link(name)
        if link.kind != "vlan":
            raise AlreadyExists(f"{name} exists and is a {link.kind or 'non-vlan'} link, not a vlan")
        return link

    def wait_oper_up(self, name: str, timeout: float = 5.0) -> Link:
        """Block until `name` is operationally up; woken by RTM_NEWLINK events, not fixed sleeps.

        The kernel updates IFLA_OPERSTATE asynchronously (linkwatch), and a bridge port starts
        forwarding only once it is up: the reference bridge polls it with 0/50/500/1000/1000 ms
        sleeps.  The event socket is subscribed before the first look, so no change is missed.
        """
        with netns_mod.enter(self._netns):
            events = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                   NETLINK_ROUTE)
        try:
            events.bind((0, RTMGRP_LINK))
            events.setblocking(False)
            deadline = time.monotonic() + timeout
            while True:
                link = self.require_link(name)
                # UNKNOWN: drivers without carrier reporting (dummy, tun) are as up as they get.
                if link.oper_state in ("UP", "UNKNOWN"):
                    return link
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise NetlinkFailure(f"wait for {name} up", errno.ETIMEDOUT,
                                         f"still {link.oper_state or 'unknown'} after {timeout}s")
                if select.select([events], [], [], remaining)[0]:
                    _drain(events)
        finally:
            events.close()

    def delete_link(self, name: str) -> bool:
        """Delete a link by name (IFLA_IFNAME, one round trip); False (not an error) when it is
        already gone."""
        return self._delete_link(name, ifname=name)

    def delete_link_index(self, index: int) -> bool:
        return self._delete_link(f"index {index}", index=index)

    def _delete_link(self, what: str, **spec: Any) -> bool:
        from pyroute2 import NetlinkError

        try:
            self._ipr.link("del", **spec)
        except NetlinkError as exc:
            if _errno(exc) in _GONE:
                return False
            raise NetlinkFailure(f"delete link {what}", _errno(exc) or 0, str(exc)) from exc
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
        """Add an address; success when the same address/prefix is already there (the kernel
        answers EEXIST exactly then: the same address with another prefix is another address)."""
        iface = ipaddress.ip_interface(cidr)
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
