"""The overlay half of the rtnetlink codec without a kernel: vxlan IFLA_INFO_DATA, neighbour and
FDB messages (ndmsg + NDA_*), and RTNH_F_ONLINK routes; golden bytes for what we send,
hand-built answers for what we parse."""

from __future__ import annotations

import struct
import sys

import pytest

from podnet import netlink, rtnl, tun

LE = sys.byteorder == "little"
pytestmark = pytest.mark.skipif(not LE, reason="golden bytes are little-endian")


def nla(kind: int, payload: bytes) -> bytes:
    """An attribute built independently of rtnl.attr (length, type, payload, zero padding)."""
    size = 4 + len(payload)
    return struct.pack("<HH", size, kind) + payload + b"\0" * ((-size) % 4)


# ---------------------------------------------------------------------------- vxlan
def test_vxlan_body_golden() -> None:
    body = netlink.vxlan_body("flannel.1", vni=1, port=8472, local="10.250.0.11", link=3,
                              mtu=1450, mac="02:aa:bb:cc:dd:01", learning=False)
    data = (nla(1, struct.pack("<I", 1))  # IFLA_VXLAN_ID
            + nla(15, b"\x21\x18")  # IFLA_VXLAN_PORT 8472, big-endian on the wire
            + nla(7, b"\x00")  # IFLA_VXLAN_LEARNING off
            + nla(4, bytes([10, 250, 0, 11]))  # IFLA_VXLAN_LOCAL
            + nla(3, struct.pack("<I", 3)))  # IFLA_VXLAN_LINK
    linkinfo = nla(18, nla(1, b"vxlan\0") + nla(2, data))
    assert body == (struct.pack("<BxHiII", 0, 0, 0, 0, 0)
                    + nla(3, b"flannel.1\0") + nla(4, struct.pack("<I", 1450))
                    + nla(1, bytes.fromhex("02aabbccdd01")) + linkinfo)


def test_vxlan_body_minimal_and_ipv6_local() -> None:
    body = netlink.vxlan_body("vx0", vni=4096, port=4789, local=None, link=0, mtu=None, mac=None,
                              learning=True)
    data = nla(1, struct.pack("<I", 4096)) + nla(15, b"\x12\xb5") + nla(7, b"\x01")
    assert body.endswith(nla(18, nla(1, b"vxlan\0") + nla(2, data)))
    v6 = netlink.vxlan_body("vx6", vni=1, port=8472, local="fd00::1", link=0, mtu=None, mac=None,
                            learning=False)
    assert nla(17, bytes.fromhex("fd000000000000000000000000000001")) in v6  # IFLA_VXLAN_LOCAL6


def vxlan_link_payload(data: bytes, index: int = 5) -> bytes:
    info = nla(18, nla(1, b"vxlan\0") + nla(2, data))
    return (struct.pack("<BxHiII", 0, 1, index, 0x1043, 0) + nla(3, b"flannel.1\0")
            + nla(1, bytes.fromhex("02aabbccdd01")) + nla(4, struct.pack("<I", 1450)) + info)


def test_parse_link_decodes_vxlan_info_data() -> None:
    data = (nla(1, struct.pack("<I", 7)) + nla(3, struct.pack("<I", 2))
            + nla(4, bytes([192, 168, 1, 5])) + nla(7, b"\x00") + nla(15, b"\x21\x18"))
    link = netlink.parse_link(vxlan_link_payload(data))
    assert (link.kind, link.mac, link.mtu, link.up) == ("vxlan", "02:aa:bb:cc:dd:01", 1450, True)
    assert link.vxlan == netlink.Vxlan(vni=7, port=8472, local="192.168.1.5", link=2, learning=False)


def test_parse_vxlan_defaults_when_attributes_are_absent() -> None:
    assert netlink.parse_vxlan(b"") == netlink.Vxlan(vni=0, port=0, local=None, link=0, learning=False)
    six = netlink.parse_vxlan(nla(17, bytes.fromhex("fd000000000000000000000000000001")) + nla(7, b"\x01"))
    assert (six.local, six.learning) == ("fd00::1", True)


def test_non_vxlan_links_carry_no_vxlan_info() -> None:
    payload = struct.pack("<BxHiII", 0, 1, 3, 0, 0) + nla(3, b"br0\0") + nla(18, nla(1, b"bridge\0"))
    assert netlink.parse_link(payload).vxlan is None


# ----------------------------------------------------------------- neighbours and fdb
def test_ndmsg_layout() -> None:
    assert rtnl.NDMSG.size == 12
    assert rtnl.ndmsg(rtnl.AF_BRIDGE, 4, state=0x80, flags=2) == struct.pack("<BxxxiHBB", 7, 4, 0x80, 2, 0)


def test_fdb_entry_body_golden() -> None:
    body = netlink.neigh_body(rtnl.AF_BRIDGE, 4, ip="10.250.0.12", mac="02:aa:bb:cc:dd:02",
                              state=rtnl.NUD_PERMANENT, flags=rtnl.NTF_SELF)
    assert body == (struct.pack("<BxxxiHBB", 7, 4, 0x80, 0x02, 0)
                    + nla(1, bytes([10, 250, 0, 12]))  # NDA_DST: the remote VTEP
                    + nla(2, bytes.fromhex("02aabbccdd02")))  # NDA_LLADDR


def test_neighbour_bodies_golden() -> None:
    add = netlink.neigh_body(rtnl.AF_INET, 4, ip="10.244.2.0", mac="02:aa:bb:cc:dd:02",
                             state=rtnl.NUD_PERMANENT)
    assert add == (struct.pack("<BxxxiHBB", 2, 4, 0x80, 0, 0) + nla(1, bytes([10, 244, 2, 0]))
                   + nla(2, bytes.fromhex("02aabbccdd02")))
    delete = netlink.neigh_body(rtnl.AF_INET6, 9, ip="fd00::2", mac=None)
    assert delete == (struct.pack("<BxxxiHBB", 10, 9, 0, 0, 0)
                      + nla(1, bytes.fromhex("fd000000000000000000000000000002")))


def test_parse_neigh_of_an_fdb_and_an_arp_answer() -> None:
    fdb = (struct.pack("<BxxxiHBB", 7, 4, 0x80, 0x02, 0) + nla(2, bytes.fromhex("02aabbccdd02"))
           + nla(1, bytes([10, 250, 0, 12])) + nla(3, b"\0" * 16))  # NDA_CACHEINFO is skipped
    assert netlink.parse_neigh(fdb) == (7, 4, 0x80, 0x02, "10.250.0.12", "02:aa:bb:cc:dd:02")
    failed = struct.pack("<BxxxiHBB", 2, 4, 0x20, 0, 1) + nla(1, bytes([10, 0, 0, 9]))
    assert netlink.parse_neigh(failed) == (2, 4, 0x20, 0, "10.0.0.9", "")


def test_neighbour_permanent_flag() -> None:
    assert netlink.Neighbour("10.0.0.1", "02:00:00:00:00:01", rtnl.NUD_PERMANENT).permanent
    assert not netlink.Neighbour("10.0.0.1", "02:00:00:00:00:01", rtnl.NUD_REACHABLE).permanent


# ------------------------------------------------------------------------- onlink
def test_route_body_onlink_sets_rtnh_f_onlink_and_proto() -> None:
    body = netlink.route_body("10.244.2.0/24", gateway="10.244.2.0", oif=4, scope=None, table=None,
                              priority=None, extra={"proto": netlink.RTPROT_PODNET_FLANNEL},
                              onlink=True)
    assert body[:12] == struct.pack("<BBBBBBBBI", 2, 24, 0, 0, 254, 151, 0, 1, 0x4)
    assert body[12:] == (nla(15, struct.pack("<I", 254)) + nla(1, bytes([10, 244, 2, 0]))
                         + nla(5, bytes([10, 244, 2, 0])) + nla(4, struct.pack("<I", 4)))
    plain = netlink.route_body("10.244.2.0/24", gateway="10.244.2.0", oif=4, scope=None,
                               table=None, priority=None)
    assert struct.unpack_from("<I", plain, 8)[0] == 0


def test_parse_route_exposes_proto_and_onlink() -> None:
    payload = (struct.pack("<BBBBBBBBI", 2, 24, 0, 0, 254, 151, 0, 1, 0x4 | 0x10)
               + nla(1, bytes([10, 244, 2, 0])) + nla(5, bytes([10, 244, 2, 0]))
               + nla(4, struct.pack("<I", 4)))
    route = netlink.parse_route(payload)
    assert (route.dst, route.gateway, route.oif) == ("10.244.2.0/24", "10.244.2.0", 4)
    assert (route.proto, route.onlink, route.flags) == (netlink.RTPROT_PODNET_FLANNEL, True, 0x14)
    plain = netlink.parse_route(struct.pack("<BBBBBBBBI", 2, 0, 0, 0, 254, 3, 0, 1, 0))
    assert (plain.dst, plain.proto, plain.onlink) == ("0.0.0.0/0", rtnl.RTPROT_BOOT, False)


def test_vxlan_adoption_compares_what_decides_the_traffic() -> None:
    want = netlink.Vxlan(vni=1, port=8472, local="10.0.0.1", link=2, learning=False)
    assert netlink._vxlan_matches(want._replace(learning=True), want)
    assert not netlink._vxlan_matches(None, want)
    for change in ({"vni": 2}, {"port": 4789}, {"local": "10.0.0.2"}, {"link": 3}):
        assert not netlink._vxlan_matches(want._replace(**change), want), change


# ---------------------------------------------------------------------------- tun
def test_tun_ifreq_layout_and_name_limit() -> None:
    assert tun._IFREQ.size == 40  # struct ifreq on Linux: 16-byte name + 24-byte union
    packed = tun._IFREQ.pack(b"flannel0", tun.IFF_TUN | tun.IFF_NO_PI)
    assert packed[:16] == b"flannel0" + b"\0" * 8 and packed[16:18] == b"\x01\x10"
    with pytest.raises(ValueError):
        tun.open_tun("a" * 16)
