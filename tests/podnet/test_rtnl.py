"""The rtnetlink codec without a kernel: golden bytes for what we send, hand-built answers for
what we parse, and the request loop against a scripted socket."""

from __future__ import annotations

import errno
import socket
import struct
import sys

import pytest

from podnet import netlink, rtnl
from podnet.errors import AlreadyExists, NetlinkFailure, NotFound

LE = sys.byteorder == "little"
pytestmark = pytest.mark.skipif(not LE, reason="golden bytes are little-endian")


def hdr(length: int, kind: int, flags: int, seq: int) -> bytes:
    return struct.pack("<IHHII", length, kind, flags, seq, 0)


# ------------------------------------------------------------------------ packing
def test_attr_is_padded_to_four_bytes_but_counts_only_its_payload() -> None:
    assert rtnl.attr_str(rtnl.IFLA_IFNAME, "eth0") == b"\x09\x00\x03\x00eth0\x00\x00\x00\x00"
    assert rtnl.attr_u32(rtnl.IFLA_MTU, 1400) == b"\x08\x00\x04\x00\x78\x05\x00\x00"
    assert rtnl.attr_u8(7, 1) == b"\x05\x00\x07\x00\x01\x00\x00\x00"
    assert rtnl.attr_u16(1, 100) == b"\x06\x00\x01\x00\x64\x00\x00\x00"


def test_nested_sets_nla_f_nested_only_when_asked() -> None:
    child = rtnl.attr_u8(4, 1)
    assert rtnl.nested(12, child) == b"\x0c\x00\x0c\x00" + child
    assert rtnl.nested(12, child, flag=True) == b"\x0c\x00\x0c\x80" + child


def test_message_header_golden() -> None:
    msg = rtnl.message(rtnl.RTM_GETLINK, rtnl.NLM_F_REQUEST, 7, rtnl.ifinfomsg(index=3))
    assert msg == (hdr(32, 18, 1, 7)
                   + b"\x00\x00\x00\x00" + b"\x03\x00\x00\x00" + b"\x00" * 8)


def test_fixed_headers_golden() -> None:
    assert rtnl.ifinfomsg(rtnl.AF_BRIDGE, 5, 1, 1) == bytes([7, 0, 0, 0, 5, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0])
    assert rtnl.ifaddrmsg(socket.AF_INET, 24, 9) == bytes([2, 24, 0, 0, 9, 0, 0, 0])
    assert rtnl.rtmsg(socket.AF_INET, 16, protocol=3, rtype=1) == bytes(
        [2, 16, 0, 0, 254, 3, 0, 1, 0, 0, 0, 0])
    # Tables above 255 do not fit rtm_table: RT_TABLE_COMPAT there, the real one in RTA_TABLE.
    assert rtnl.rtmsg(socket.AF_INET, table=1000)[4] == 252


def test_set_link_body_up_and_master_in_one_message() -> None:
    body = netlink.set_link_body("veth1", {"master": 5, "state": "up"})
    assert body == (bytes([0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0])
                    + b"\x0a\x00\x03\x00veth1\x00\x00\x00"
                    + b"\x08\x00\x0a\x00\x05\x00\x00\x00")


def test_set_link_body_down_promisc_mtu_mac() -> None:
    body = netlink.set_link_body("br0", {"state": "down", "flags": 0x100, "change": 0x100,
                                         "mtu": 9000, "address": "02:AA:bb:00:00:01"})
    family, _type, index, flags, change = rtnl.IFINFOMSG.unpack_from(body)
    assert (family, index, flags, change) == (0, 0, 0x100, 0x101)
    a = rtnl.attrs(body, rtnl.IFINFOMSG.size)
    assert rtnl.cstr(a[rtnl.IFLA_IFNAME]) == "br0"
    assert rtnl.u32(a[rtnl.IFLA_MTU]) == 9000
    assert a[rtnl.IFLA_ADDRESS] == bytes.fromhex("02aabb000001")


def test_set_link_body_rejects_what_it_cannot_send() -> None:
    with pytest.raises(TypeError, match="txqlen"):
        netlink.set_link_body("x", {"txqlen": 5})
    with pytest.raises(ValueError):
        netlink.set_link_body("x", {"state": "sideways"})


def test_veth_body_nests_the_peer_as_a_whole_ifinfomsg() -> None:
    body = netlink.veth_body("eth0", "vethab", peer_netns_fd=9, mtu=1400, mac="02:00:00:00:00:01")
    a = rtnl.attrs(body, rtnl.IFINFOMSG.size)
    assert rtnl.cstr(a[rtnl.IFLA_IFNAME]) == "eth0"
    assert rtnl.u32(a[rtnl.IFLA_MTU]) == 1400
    assert rtnl.mac_text(a[rtnl.IFLA_ADDRESS]) == "02:00:00:00:00:01"
    info = rtnl.attrs(a[rtnl.IFLA_LINKINFO])
    assert rtnl.cstr(info[rtnl.IFLA_INFO_KIND]) == "veth"
    peer = rtnl.attrs(info[rtnl.IFLA_INFO_DATA])[rtnl.VETH_INFO_PEER]
    assert peer[:rtnl.IFINFOMSG.size] == rtnl.ifinfomsg()
    pa = rtnl.attrs(peer, rtnl.IFINFOMSG.size)
    assert rtnl.cstr(pa[rtnl.IFLA_IFNAME]) == "vethab"
    assert rtnl.u32(pa[rtnl.IFLA_NET_NS_FD]) == 9
    assert rtnl.u32(pa[rtnl.IFLA_MTU]) == 1400
    assert rtnl.IFLA_ADDRESS not in pa  # the MAC is the container side's only


def test_veth_body_minimal_has_no_optional_attributes() -> None:
    body = netlink.veth_body("a", "b", peer_netns_fd=None, mtu=None, mac=None)
    a = rtnl.attrs(body, rtnl.IFINFOMSG.size)
    assert set(a) == {rtnl.IFLA_IFNAME, rtnl.IFLA_LINKINFO}


def test_addr_body_ipv4_gets_a_broadcast_below_slash_31() -> None:
    body = netlink.addr_body(4, "10.1.0.5/24")
    assert body[:8] == bytes([2, 24, 0, 0, 4, 0, 0, 0])
    a = rtnl.attrs(body, rtnl.IFADDRMSG.size)
    assert a[rtnl.IFA_LOCAL] == a[rtnl.IFA_ADDRESS] == bytes([10, 1, 0, 5])
    assert a[rtnl.IFA_BROADCAST] == bytes([10, 1, 0, 255])
    assert rtnl.IFA_BROADCAST not in rtnl.attrs(netlink.addr_body(4, "10.1.0.5/31"), 8)
    assert rtnl.IFA_BROADCAST not in rtnl.attrs(netlink.addr_body(4, "10.1.0.5/24", delete=True), 8)


def test_addr_body_ipv6() -> None:
    body = netlink.addr_body(2, "fd00::5/64")
    assert body[:8] == bytes([10, 64, 0, 0, 2, 0, 0, 0])
    a = rtnl.attrs(body, rtnl.IFADDRMSG.size)
    assert a[rtnl.IFA_ADDRESS] == socket.inet_pton(socket.AF_INET6, "fd00::5")
    assert rtnl.IFA_BROADCAST not in a


def test_route_body_add_golden() -> None:
    body = netlink.route_body("10.8.0.0/16", gateway="10.9.0.254", oif=3, scope=None, table=None,
                              priority=None)
    assert body == (bytes([2, 16, 0, 0, 254, 3, 0, 1, 0, 0, 0, 0])
                    + b"\x08\x00\x0f\x00\xfe\x00\x00\x00"  # RTA_TABLE 254
                    + b"\x08\x00\x01\x00\x0a\x08\x00\x00"  # RTA_DST 10.8.0.0
                    + b"\x08\x00\x05\x00\x0a\x09\x00\xfe"  # RTA_GATEWAY
                    + b"\x08\x00\x04\x00\x03\x00\x00\x00")  # RTA_OIF 3


def test_route_body_default_route_has_no_dst_and_delete_matches_any_scope() -> None:
    body = netlink.route_body("0.0.0.0/0", gateway="10.0.0.1", oif=None, scope=None, table=None,
                              priority=7, delete=True)
    family, dst_len, _s, _t, table, proto, scope, rtype, _f = rtnl.RTMSG.unpack_from(body)
    assert (family, dst_len, table, proto, scope, rtype) == (2, 0, 254, 0, rtnl.RT_SCOPE_NOWHERE, 0)
    a = rtnl.attrs(body, rtnl.RTMSG.size)
    assert rtnl.RTA_DST not in a and rtnl.u32(a[rtnl.RTA_PRIORITY]) == 7


def test_route_body_extras() -> None:
    body = netlink.route_body("fd00::/64", gateway=None, oif=2, scope=rtnl.RT_SCOPE_LINK,
                              table=1000, priority=None, extra={"proto": 4, "prefsrc": "fd00::1"})
    family, dst_len, _s, _t, table, proto, scope, _type, _f = rtnl.RTMSG.unpack_from(body)
    assert (family, dst_len, table, proto, scope) == (10, 64, 252, 4, rtnl.RT_SCOPE_LINK)
    a = rtnl.attrs(body, rtnl.RTMSG.size)
    assert rtnl.u32(a[rtnl.RTA_TABLE]) == 1000
    assert a[rtnl.RTA_PREFSRC] == socket.inet_pton(socket.AF_INET6, "fd00::1")
    with pytest.raises(TypeError, match="encap"):
        netlink.route_body("fd00::/64", gateway=None, oif=2, scope=None, table=None,
                           priority=None, extra={"encap": {}})


# ------------------------------------------------------------------------ parsing
def link_payload(index: int = 4, flags: int = 0x1103, *, kind: str = "veth", oper: int = 6) -> bytes:
    return (rtnl.ifinfomsg(index=index, flags=flags)
            + rtnl.attr_str(rtnl.IFLA_IFNAME, "veth1")
            + rtnl.attr(rtnl.IFLA_ADDRESS, bytes.fromhex("0a58ac100002"))
            + rtnl.attr_u32(rtnl.IFLA_MTU, 1500)
            + rtnl.attr_u32(rtnl.IFLA_MASTER, 2)
            + rtnl.attr_u32(rtnl.IFLA_LINK, 9)
            + rtnl.attr_u8(rtnl.IFLA_OPERSTATE, oper)
            + rtnl.attr(rtnl.IFLA_LINKINFO, rtnl.attr_str(rtnl.IFLA_INFO_KIND, kind)))


def test_parse_link() -> None:
    link = netlink.parse_link(link_payload())
    assert link == netlink.Link(index=4, name="veth1", kind="veth", mac="0a:58:ac:10:00:02", mtu=1500,
                                up=True, master=2, peer_index=9, oper_state="UP", promisc=True)


def test_parse_link_minimal_and_oper_states() -> None:
    payload = rtnl.ifinfomsg(index=1) + rtnl.attr_str(rtnl.IFLA_IFNAME, "lo")
    assert netlink.parse_link(payload) == netlink.Link(1, "lo", "", "", 0, False, 0, 0, "", False)
    assert netlink.parse_link(link_payload(oper=2)).oper_state == "DOWN"
    assert netlink.parse_link(link_payload(oper=3)).oper_state == "LOWERLAYERDOWN"
    assert netlink.parse_link(link_payload(oper=0)).oper_state == "UNKNOWN"


def test_parse_addr_prefers_the_local_address() -> None:
    v4 = (rtnl.ifaddrmsg(socket.AF_INET, 24, 3)
          + rtnl.attr(rtnl.IFA_ADDRESS, bytes([10, 0, 0, 9]))
          + rtnl.attr(rtnl.IFA_LOCAL, bytes([10, 0, 0, 2])))
    assert netlink.parse_addr(v4) == (2, 3, "10.0.0.2/24")
    v6 = rtnl.ifaddrmsg(socket.AF_INET6, 128, 1) + rtnl.attr(rtnl.IFA_ADDRESS, bytes(15) + b"\x01")
    assert netlink.parse_addr(v6) == (10, 1, "::1/128")


def test_parse_route() -> None:
    payload = (rtnl.rtmsg(socket.AF_INET, 0, protocol=3, scope=0, rtype=1)
               + rtnl.attr_u32(rtnl.RTA_TABLE, 254) + rtnl.attr(rtnl.RTA_GATEWAY, bytes([10, 0, 0, 1]))
               + rtnl.attr_u32(rtnl.RTA_OIF, 2) + rtnl.attr_u32(rtnl.RTA_PRIORITY, 100))
    assert netlink.parse_route(payload) == netlink.Route("0.0.0.0/0", "10.0.0.1", 2, 254, 0, 100)
    v6 = rtnl.rtmsg(socket.AF_INET6, 64, table=5) + rtnl.attr(rtnl.RTA_DST, bytes([0xfd] + [0] * 15))
    assert netlink.parse_route(v6) == netlink.Route("fd00::/64", None, None, 5, 0, None)


def test_parse_brport() -> None:
    protinfo = rtnl.nested(rtnl.IFLA_PROTINFO, rtnl.attr_u8(1, 3), rtnl.attr_u16(2, 32),
                           rtnl.attr_u32(3, 2), rtnl.attr_u8(4, 1), rtnl.attr_u8(8, 0), flag=True)
    payload = rtnl.ifinfomsg(rtnl.AF_BRIDGE, 7) + rtnl.attr_str(rtnl.IFLA_IFNAME, "v") + protinfo
    assert netlink.parse_brport(payload) == (7, {"state": 3, "priority": 32, "cost": 2, "mode": 1,
                                                 "learning": 0})
    assert netlink.parse_brport(rtnl.ifinfomsg(rtnl.AF_BRIDGE, 2)) == (2, {})


def test_split_messages_walks_aligned_messages_and_rejects_truncation() -> None:
    one = rtnl.message(rtnl.RTM_NEWLINK, rtnl.NLM_F_MULTI, 5, b"abcde")  # 21 bytes, padded to 24
    data = one + b"\0\0\0" + rtnl.message(rtnl.NLMSG_DONE, rtnl.NLM_F_MULTI, 5, b"\0\0\0\0")
    msgs = rtnl.split_messages(data)
    assert [(m.type, m.seq, m.payload) for m in msgs] == [(16, 5, b"abcde"), (3, 5, b"\0\0\0\0")]
    with pytest.raises(ValueError):
        rtnl.split_messages(one[:-2])


def error_payload(code: int, text: str = "", capped: bool = True) -> tuple[bytes, int]:
    echoed = hdr(40, rtnl.RTM_NEWLINK, 5, 1)
    if not capped:
        echoed += b"\0" * 24
    payload = struct.pack("<i", -code) + echoed
    flags = rtnl.NLM_F_CAPPED if capped else 0
    if text:
        payload += rtnl.attr_str(rtnl.NLMSGERR_ATTR_MSG, text)
        flags |= rtnl.NLM_F_ACK_TLVS
    return payload, flags


def test_parse_error_with_extended_ack() -> None:
    assert rtnl.parse_error(*error_payload(0)) == (0, "")
    assert rtnl.parse_error(*error_payload(17, "Link exists")) == (17, "Link exists")
    assert rtnl.parse_error(*error_payload(22, "bad attr", capped=False)) == (22, "bad attr")
    assert rtnl.parse_error(*error_payload(19)) == (19, "")


def test_rtnl_error_carries_errno_and_kernel_text() -> None:
    exc = rtnl.RtnlError(errno.EEXIST, "Link exists")
    assert exc.errno == errno.EEXIST and "File exists" in str(exc) and "Link exists" in str(exc)


@pytest.mark.parametrize(("code", "kind"), [(errno.ENODEV, NotFound), (errno.ENOENT, NotFound),
                                             (errno.EEXIST, AlreadyExists),
                                             (errno.EPERM, NetlinkFailure)])
def test_errno_translation(code: int, kind: type[Exception]) -> None:
    exc = netlink._failure("op", rtnl.RtnlError(code))
    assert isinstance(exc, kind)
    if isinstance(exc, NetlinkFailure):
        assert exc.errno == code


# ------------------------------------------------------------------ request loop
class ScriptedSocket:
    """Stands in for the kernel end: records what is sent, answers from a script per request."""

    def __init__(self, answers: list[list[bytes]]) -> None:
        self.answers = answers  # per request: datagrams, seq patched in
        self.sent: list[bytes] = []
        self.queue: list[bytes] = []

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        seq = struct.unpack_from("<I", data, 8)[0]
        for dgram in self.answers.pop(0):
            patched = b""
            for msg in rtnl.split_messages(dgram):
                mseq = seq if msg.seq == 0 else msg.seq  # seq 0 = "the current request"
                patched += rtnl.message(msg.type, msg.flags, mseq, msg.payload)
                patched += b"\0" * (rtnl.align(len(patched)) - len(patched))
            self.queue.append(patched)
        return len(data)

    def recv(self, _size: int, _flags: int = 0) -> bytes:
        return self.queue.pop(0)

    def close(self) -> None:
        pass


def scripted(answers: list[list[bytes]]) -> tuple[rtnl.Socket, ScriptedSocket]:
    sock = rtnl.Socket.__new__(rtnl.Socket)
    fake = ScriptedSocket(answers)
    sock._sock = fake  # type: ignore[assignment]
    sock._seq = 0
    return sock, fake


def ack(code: int = 0, seq: int = 0) -> bytes:
    return rtnl.message(rtnl.NLMSG_ERROR, rtnl.NLM_F_CAPPED, seq,
                        struct.pack("<i", -code) + hdr(16, 0, 0, 0))


def test_ack_request_sets_flags_and_returns_on_ack() -> None:
    sock, fake = scripted([[ack()]])
    sock.ack(rtnl.RTM_NEWLINK, b"body", rtnl.NLM_F_CREATE)
    assert struct.unpack_from("<IHH", fake.sent[0]) == (20, 16, rtnl.NLM_F_REQUEST | rtnl.NLM_F_ACK
                                                        | rtnl.NLM_F_CREATE)


def test_error_answer_raises_and_stale_answers_are_skipped() -> None:
    sock, _ = scripted([[ack(seq=999) + ack(errno.EEXIST)]])
    with pytest.raises(rtnl.RtnlError) as info:
        sock.ack(rtnl.RTM_NEWLINK, b"")
    assert info.value.errno == errno.EEXIST


def test_get_returns_the_single_answer_without_waiting_for_an_ack() -> None:
    answer = rtnl.message(rtnl.RTM_NEWLINK, 0, 0, link_payload())
    sock, _ = scripted([[answer]])
    msgs = sock.request(rtnl.RTM_GETLINK, b"")
    assert netlink.parse_link(msgs[0].payload).name == "veth1"


def test_dump_spans_datagrams_until_done() -> None:
    part = rtnl.message(rtnl.RTM_NEWLINK, rtnl.NLM_F_MULTI, 0, link_payload(1))
    done = rtnl.message(rtnl.NLMSG_DONE, rtnl.NLM_F_MULTI, 0, b"\0\0\0\0")
    sock, fake = scripted([[part + part, part + done]])
    assert len(sock.dump(rtnl.RTM_GETLINK, b"")) == 3
    assert struct.unpack_from("<H", fake.sent[0], 6)[0] == rtnl.NLM_F_REQUEST | rtnl.NLM_F_DUMP


def test_dump_restarts_when_interrupted_and_raises_a_failed_done() -> None:
    intr = rtnl.message(rtnl.RTM_NEWLINK, rtnl.NLM_F_MULTI | rtnl.NLM_F_DUMP_INTR, 0, link_payload(1))
    part = rtnl.message(rtnl.RTM_NEWLINK, rtnl.NLM_F_MULTI, 0, link_payload(2))
    done = rtnl.message(rtnl.NLMSG_DONE, rtnl.NLM_F_MULTI, 0, b"\0\0\0\0")
    sock, fake = scripted([[intr + done], [part + done]])
    assert [netlink.parse_link(m.payload).index for m in sock.dump(rtnl.RTM_GETLINK, b"")] == [2]
    assert len(fake.sent) == 2
    failed = rtnl.message(rtnl.NLMSG_DONE, rtnl.NLM_F_MULTI, 0, struct.pack("<i", -errno.EBUSY))
    sock, _ = scripted([[failed]])
    with pytest.raises(rtnl.RtnlError):
        sock.dump(rtnl.RTM_GETLINK, b"")


def test_sequence_numbers_increase_per_request() -> None:
    sock, fake = scripted([[ack()], [ack()]])
    sock.ack(rtnl.RTM_DELLINK, b"")
    sock.ack(rtnl.RTM_DELLINK, b"")
    assert [struct.unpack_from("<I", m, 8)[0] for m in fake.sent] == [1, 2]
