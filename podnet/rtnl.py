"""A stdlib-only rtnetlink (NETLINK_ROUTE) codec and request socket.

Why not pyroute2 here: one pyroute2 request costs ~0.5 ms (its per-socket asyncio machinery), a
raw request+parse ~0.02 ms, and importing pyroute2 costs 150-250 ms per CNI exec (docs/BENCHMARKS.md).
This module packs the fixed headers (nlmsghdr, ifinfomsg, ifaddrmsg, rtmsg) and the TLV attributes
with `struct`, sends one request, and parses the answer: an ACK, an NLMSG_ERROR (raised as
`RtnlError` with the errno and the kernel's extended-ack text), or a multi-part dump.

It is a codec, not a model: podnet.netlink maps these messages to Link/Route and to the
podnet.errors vocabulary.  Values are host byte order (netlink's "native" order) except where
the kernel says otherwise (addresses are raw bytes).

The socket is bound to the network namespace of the thread that creates it: create it inside
`podnet.netns.enter(...)` to talk to another namespace.
"""

from __future__ import annotations

import _socket as socket  # not `socket`: its enums cost ~1.5 ms per CNI exec
import errno as errno_mod
import os
import struct
import sys
from collections.abc import Iterable
from contextlib import suppress

# ------------------------------------------------------------------ protocol constants
NETLINK_ROUTE = 0
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10  # do not echo our whole request back inside an error
NETLINK_EXT_ACK = 11  # the kernel's error text (NLMSGERR_ATTR_MSG)

NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 1, 2, 3, 4
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_ROOT, NLM_F_MATCH = 0x100, 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE = 0x100, 0x200, 0x400
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200  # flags of an NLMSG_ERROR answer
NLMSGERR_ATTR_MSG = 1
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
RTMGRP_LINK = 0x1

AF_UNSPEC, AF_INET, AF_BRIDGE, AF_INET6 = 0, 2, 7, 10

IFF_UP, IFF_PROMISC = 0x1, 0x100
IFLA_ADDRESS, IFLA_BROADCAST, IFLA_IFNAME, IFLA_MTU, IFLA_LINK = 1, 2, 3, 4, 5
IFLA_MASTER, IFLA_PROTINFO, IFLA_OPERSTATE, IFLA_LINKINFO = 10, 12, 16, 18
IFLA_AF_SPEC, IFLA_NET_NS_FD, IFLA_EXT_MASK = 26, 28, 29
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFLA_BR_VLAN_FILTERING = 7
# IFLA_VXLAN_* (linux/if_link.h).  PORT is big-endian; LOCAL/GROUP are raw address bytes.
IFLA_VXLAN_ID, IFLA_VXLAN_GROUP, IFLA_VXLAN_LINK, IFLA_VXLAN_LOCAL = 1, 2, 3, 4
IFLA_VXLAN_LEARNING, IFLA_VXLAN_PORT, IFLA_VXLAN_LOCAL6 = 7, 15, 17
IFLA_VLAN_ID = 1
IFLA_BRIDGE_FLAGS, IFLA_BRIDGE_VLAN_INFO = 0, 2
BRIDGE_FLAGS_SELF = 2
RTEXT_FILTER_SKIP_STATS = 1 << 3  # a link answer without its ~1 KiB of counters
OPER_STATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")

IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST = 1, 2, 4

RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_PREFSRC, RTA_TABLE = 1, 4, 5, 6, 7, 15
RT_TABLE_MAIN = 254
RTPROT_BOOT = 3  # what `ip route` and the reference plugins (vishvananda/netlink) use
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_HOST, RT_SCOPE_NOWHERE = 0, 253, 254, 255
# rtm_flags: "the gateway is on this link even though no address covers it" (`ip route ... onlink`),
# how an overlay routes a remote subnet via the remote VTEP's /32 address.
RTNH_F_ONLINK = 0x4

# Neighbours and FDB entries (linux/neighbour.h): ndmsg + NDA_* attributes.
NDA_DST, NDA_LLADDR, NDA_PORT, NDA_VNI, NDA_IFINDEX, NDA_MASTER = 1, 2, 6, 7, 8, 9
NUD_INCOMPLETE, NUD_REACHABLE, NUD_STALE, NUD_DELAY, NUD_PROBE = 0x01, 0x02, 0x04, 0x08, 0x10
NUD_FAILED, NUD_NOARP, NUD_PERMANENT = 0x20, 0x40, 0x80
NTF_SELF, NTF_MASTER = 0x02, 0x04  # an FDB entry of the device itself / of its bridge master

# IFLA_BRPORT_* (linux/if_link.h), index = attribute type; "" = not decoded by name.
BRPORT_NAMES = (
    "", "state", "priority", "cost", "mode", "guard", "protect", "fast_leave", "learning",
    "unicast_flood", "proxyarp", "learning_sync", "proxyarp_wifi", "root_id", "bridge_id",
    "designated_port", "designated_cost", "id", "no", "topology_change_ack", "config_pending",
    "message_age_timer", "forward_delay_timer", "hold_timer", "flush", "multicast_router", "pad",
    "mcast_flood", "mcast_to_ucast", "vlan_tunnel", "bcast_flood", "group_fwd_mask",
    "neigh_suppress", "isolated", "backup_port", "mrp_ring_open", "mrp_in_open",
    "mcast_eht_hosts_limit", "mcast_eht_hosts_cnt", "locked", "mab", "mcast_n_groups",
    "mcast_max_groups", "neigh_vlan_suppress", "backup_nhid",
)
# The port flags one may set, with their wire format (u8 unless noted).
BRPORT_SETTABLE = {
    "state": "B", "priority": "H", "cost": "I", "mode": "B", "guard": "B", "protect": "B",
    "fast_leave": "B", "learning": "B", "unicast_flood": "B", "proxyarp": "B", "mcast_flood": "B",
    "mcast_to_ucast": "B", "bcast_flood": "B", "group_fwd_mask": "H", "neigh_suppress": "B",
    "isolated": "B", "locked": "B",
}

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_NLATTR = struct.Struct("=HH")  # len, type
IFINFOMSG = struct.Struct("=BxHiII")  # family, (pad), type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
NDMSG = struct.Struct("=BxxxiHBB")  # family, (pad 3), ifindex, state, flags, type
_ERRNO = struct.Struct("=i")
_U16, _U32 = struct.Struct("=H"), struct.Struct("=I")
_RECV_SIZE = 1 << 16  # the kernel sizes dump skbs at most 32 KiB: one datagram always fits


class RtnlError(OSError):
    """An NLMSG_ERROR answer: `errno` is positive; `ext_msg` is the kernel's extended-ack text."""

    def __init__(self, code: int, ext_msg: str = "") -> None:
        text = os.strerror(code) + (f" ({ext_msg})" if ext_msg else "")
        super().__init__(code, text)
        self.ext_msg = ext_msg


class Message:
    """One parsed netlink message: its header fields and payload (fixed header + attributes).
    A plain class: a dataclass costs ~0.5 ms to define, paid by every CNI exec."""

    __slots__ = ("flags", "payload", "seq", "type")

    def __init__(self, type: int, flags: int, seq: int, payload: bytes) -> None:
        self.type, self.flags, self.seq, self.payload = type, flags, seq, payload

    def __repr__(self) -> str:
        return f"Message(type={self.type}, flags={self.flags:#x}, seq={self.seq}, {len(self.payload)} bytes)"


# ------------------------------------------------------------------------- packing
def align(n: int) -> int:
    return (n + 3) & ~3


def attr(kind: int, payload: bytes) -> bytes:
    """One TLV attribute, padded to 4 bytes (the padding is not counted in its length)."""
    size = _NLATTR.size + len(payload)
    return _NLATTR.pack(size, kind) + payload + b"\0" * (align(size) - size)


def nested(kind: int, *children: bytes, flag: bool = False) -> bytes:
    """A nested attribute; `flag` sets NLA_F_NESTED (which IFLA_PROTINFO needs: without it the
    bridge reads the payload as the legacy one-byte STP state)."""
    return attr(kind | (NLA_F_NESTED if flag else 0), b"".join(children))


def attr_u8(kind: int, value: int) -> bytes:
    return attr(kind, bytes((value,)))


def attr_u16(kind: int, value: int) -> bytes:
    return attr(kind, _U16.pack(value))


def attr_u32(kind: int, value: int) -> bytes:
    return attr(kind, _U32.pack(value))


def attr_str(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


def message(msg_type: int, flags: int, seq: int, body: bytes) -> bytes:
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type, flags, seq, 0) + body


def ifinfomsg(family: int = AF_UNSPEC, index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return IFINFOMSG.pack(family, 0, index, flags, change)


def ifaddrmsg(family: int, prefixlen: int = 0, index: int = 0, scope: int = 0) -> bytes:
    return IFADDRMSG.pack(family, prefixlen, 0, scope, index)


def rtmsg(family: int, dst_len: int = 0, *, table: int = RT_TABLE_MAIN, protocol: int = 0,
          scope: int = 0, rtype: int = 0, flags: int = 0) -> bytes:
    # rtm_table is a u8: tables above 255 go in RTA_TABLE as well (the caller adds it).
    return RTMSG.pack(family, dst_len, 0, 0, table if table < 256 else 252, protocol, scope, rtype,
                      flags)


def ndmsg(family: int, index: int = 0, *, state: int = 0, flags: int = 0) -> bytes:
    """The neighbour/FDB header: AF_INET/AF_INET6 for ARP/ND entries, AF_BRIDGE for FDB entries."""
    return NDMSG.pack(family, index, state, flags, 0)


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


# ------------------------------------------------------------------------- parsing
def split_messages(data: bytes) -> list[Message]:
    """The netlink messages of one datagram."""
    out = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, flags, seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            raise ValueError(f"truncated netlink message at {offset}: length {length}")
        out.append(Message(kind, flags, seq, data[offset + _NLMSGHDR.size:offset + length]))
        offset += align(length)
    return out


def attrs(data: bytes, offset: int = 0) -> dict[int, bytes]:
    """The attributes from `offset` on, by type (NLA_F_* flags masked off; the last one wins)."""
    out: dict[int, bytes] = {}
    end = len(data)
    while offset + _NLATTR.size <= end:
        length, kind = _NLATTR.unpack_from(data, offset)
        if length < _NLATTR.size:
            break
        out[kind & NLA_TYPE_MASK] = data[offset + _NLATTR.size:offset + length]
        offset += align(length)
    return out


def u32(raw: bytes) -> int:
    return int(_U32.unpack_from(raw)[0])


def uint(raw: bytes) -> int:
    """An unsigned attribute of any of the kernel's widths (u8/u16/u32/u64)."""
    return int.from_bytes(raw, sys.byteorder)


def cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode()


def parse_error(payload: bytes, flags: int) -> tuple[int, str]:
    """An NLMSG_ERROR payload: (positive errno or 0 for an ACK, extended-ack message)."""
    code = -_ERRNO.unpack_from(payload)[0]
    if not code or not flags & NLM_F_ACK_TLVS:
        return code, ""
    # After the error: the offending request's header, plus its payload unless capped.
    req_len = _NLMSGHDR.unpack_from(payload, _ERRNO.size)[0]
    skip = _ERRNO.size + (_NLMSGHDR.size if flags & NLM_F_CAPPED else align(req_len))
    msg = attrs(payload, skip).get(NLMSGERR_ATTR_MSG)
    return code, cstr(msg) if msg else ""


# --------------------------------------------------------------------------- socket
class Socket:
    """One NETLINK_ROUTE socket: requests with ACK, single answers and dumps, in lock step.

    Not thread-safe (like any request/answer stream): one user at a time.
    """

    def __init__(self, groups: int = 0) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                   NETLINK_ROUTE)
        try:
            for option in (NETLINK_CAP_ACK, NETLINK_EXT_ACK):
                with suppress(OSError):  # older kernels: plain errno answers
                    self._sock.setsockopt(SOL_NETLINK, option, 1)
            self._sock.bind((0, groups))
        except BaseException:
            self._sock.close()
            raise
        self._seq = 0

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    def recv_messages(self, flags: int = 0) -> list[Message]:
        """The messages of the next datagram (multicast subscribers read events with this)."""
        return split_messages(self._sock.recv(_RECV_SIZE, flags))

    def _send(self, msg_type: int, flags: int, body: bytes) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        self._sock.send(message(msg_type, flags, self._seq, body))
        return self._seq

    def request(self, msg_type: int, body: bytes, flags: int = 0) -> list[Message]:
        """Send one request and return its answers: the object for a GET, every part for a dump
        (NLM_F_DUMP), [] for a change sent with NLM_F_ACK (see `ack`); RtnlError for an error."""
        seq = self._send(msg_type, NLM_F_REQUEST | flags, body)
        out: list[Message] = []
        while True:
            for msg in self.recv_messages():
                if msg.seq != seq:
                    continue  # a late answer to an earlier, abandoned request
                if msg.type == NLMSG_ERROR:
                    code, text = parse_error(msg.payload, msg.flags)
                    if code:
                        raise RtnlError(code, text)
                    return out
                if msg.type == NLMSG_DONE:
                    # A dump that failed part-way ends with a negative errno in DONE.
                    code = -_ERRNO.unpack_from(msg.payload)[0] if len(msg.payload) >= 4 else 0
                    if code > 0:
                        raise RtnlError(code)
                    return out
                out.append(msg)
                if not msg.flags & NLM_F_MULTI and not flags & NLM_F_ACK:
                    return out

    def ack(self, msg_type: int, body: bytes, flags: int = 0) -> None:
        """A change (NEW/DEL/SET): returns once the kernel has ACKed it."""
        self.request(msg_type, body, flags | NLM_F_ACK)

    def dump(self, msg_type: int, body: bytes) -> list[Message]:
        """A dump; restarted when the kernel flags it inconsistent (NLM_F_DUMP_INTR: the table
        changed while it was read)."""
        for _ in range(5):
            msgs = self.request(msg_type, body, NLM_F_DUMP)
            if not any(m.flags & NLM_F_DUMP_INTR for m in msgs):
                return msgs
        raise RtnlError(errno_mod.EINTR, "dump kept changing under us")

    def __enter__(self) -> Socket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def payloads_of(msgs: Iterable[Message], msg_type: int) -> list[bytes]:
    return [m.payload for m in msgs if m.type == msg_type]
