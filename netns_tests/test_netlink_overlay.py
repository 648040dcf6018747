"""The overlay half of the netlink seam against the real kernel, inside namespaces the test
creates: vxlan devices, FDB entries, permanent neighbours and onlink routes (what flanneld's vxlan
backend programs per remote host).  `ip -j` / `bridge -j` are the independent witnesses."""

from __future__ import annotations

import json
import select
import socket
import struct
import subprocess
import time
from typing import Any

import pytest

from podnet import execs
from podnet.errors import AlreadyExists, NetlinkFailure, NotFound
from podnet.netlink import RTPROT_PODNET_FLANNEL, Fdb, Neighbour, Netlink, netns_fd
from podnet.testing.harness import Topology
from podnet.tun import TunDevice, open_tun

VTEP = "flannel.1"
MAC_A, MAC_B = "02:aa:00:00:00:01", "02:bb:00:00:00:02"


def ip_json(ns: str, *argv: str) -> Any:
    return json.loads(execs.run(["ip", "-j", *argv], netns=ns).stdout or "[]")


def bridge_fdb(ns: str, dev: str) -> list[dict[str, Any]]:
    return json.loads(execs.run(["bridge", "-j", "fdb", "show", "dev", dev], netns=ns).stdout or "[]")


def underlay(nl: Netlink, ip: str) -> None:
    """A veth (u0/u1, both here) with `ip` on u0: the vxlan device's `dev` and `local`."""
    nl.add_veth_pair("u0", "u1")
    nl.ensure_addr("u0", f"{ip}/24")
    nl.set_up("u0")
    nl.set_up("u1")


def test_vxlan_create_adopt_and_recreate(topo: Topology) -> None:
    ns = topo.new_netns("vx")
    with Netlink.open(ns) as nl:
        underlay(nl, "192.168.77.1")
        link = nl.ensure_vxlan(VTEP, vni=1, local="192.168.77.1", dev="u0", mtu=1450, mac=MAC_A)
        assert (link.kind, link.mtu, link.mac, link.up) == ("vxlan", 1450, MAC_A, True)
        assert link.vxlan is not None
        assert (link.vxlan.vni, link.vxlan.port, link.vxlan.local, link.vxlan.learning) == (
            1, 8472, "192.168.77.1", False)
        assert link.vxlan.link == nl.require_link("u0").index
        info = ip_json(ns, "-d", "link", "show", "dev", VTEP)[0]["linkinfo"]["info_data"]
        assert (info["id"], info["port"], info["local"], info["learning"]) == (1, 8472, "192.168.77.1", False)
        # Same settings: adopted as is (a restarted daemon keeps the MAC its peers know).
        assert nl.ensure_vxlan(VTEP, vni=1, local="192.168.77.1", dev="u0") == link
        # MTU/MAC are fixed in place, on the same device.
        nl.set_down(VTEP)
        fixed = nl.ensure_vxlan(VTEP, vni=1, local="192.168.77.1", dev="u0", mtu=1400, mac=MAC_B)
        assert (fixed.index, fixed.mtu, fixed.mac, fixed.up) == (link.index, 1400, MAC_B, True)
        # A different VNI, port or local address: deleted and recreated.
        indexes = {link.index}
        for change in ({"vni": 2}, {"vni": 2, "port": 4789}, {"vni": 2, "port": 4789, "local": None}):
            spec: dict[str, Any] = {"vni": 1, "local": "192.168.77.1", **change}
            again = nl.ensure_vxlan(VTEP, dev="u0", **spec)
            assert again.index not in indexes and again.vxlan is not None
            assert (again.vxlan.vni, again.vxlan.port, again.vxlan.local) == (
                spec["vni"], spec.get("port", 8472), spec["local"])
            indexes.add(again.index)
        assert [x.name for x in nl.list_links() if x.kind == "vxlan"] == [VTEP]


def test_vxlan_replaces_a_non_vxlan_device_of_its_name(topo: Topology) -> None:
    ns = topo.new_netns("vn")
    with Netlink.open(ns) as nl:
        nl.ensure_bridge(VTEP)
        link = nl.ensure_vxlan(VTEP, vni=3, local=None, dev=None)
        assert link.kind == "vxlan" and link.vxlan is not None and link.vxlan.link == 0
        with pytest.raises(NotFound):
            nl.ensure_vxlan("vx9", vni=3, local=None, dev="nope0")


def test_fdb_ensure_list_delete_idempotent(topo: Topology) -> None:
    ns = topo.new_netns("fd")
    with Netlink.open(ns) as nl:
        underlay(nl, "192.168.77.1")
        nl.ensure_vxlan(VTEP, vni=1, local="192.168.77.1", dev="u0")
        assert nl.list_fdb(VTEP) == []
        nl.ensure_fdb(VTEP, MAC_B, "192.168.77.2")
        nl.ensure_fdb(VTEP, MAC_B, "192.168.77.2")
        nl.ensure_fdb(VTEP, MAC_A, "192.168.77.3")
        assert sorted(nl.list_fdb(VTEP)) == [Fdb(MAC_A, "192.168.77.3", True),
                                             Fdb(MAC_B, "192.168.77.2", True)]
        witness = {(e["mac"], e["dst"], e["state"], tuple(e["flags"])) for e in bridge_fdb(ns, VTEP)}
        assert witness == {(MAC_B, "192.168.77.2", "permanent", ("self",)),
                           (MAC_A, "192.168.77.3", "permanent", ("self",))}
        # Replace converges a VTEP whose host moved to one new destination.
        nl.ensure_fdb(VTEP, MAC_B, "192.168.77.9")
        assert sorted(nl.list_fdb(VTEP))[1] == Fdb(MAC_B, "192.168.77.9", True)
        assert nl.list_fdb("u0") == [] or all(e.dst is None for e in nl.list_fdb("u0"))
        nl.delete_fdb(VTEP, MAC_B, "192.168.77.9")
        nl.delete_fdb(VTEP, MAC_B, "192.168.77.9")
        nl.delete_fdb(VTEP, MAC_A)
        nl.delete_fdb(VTEP, MAC_A)
        assert nl.list_fdb(VTEP) == [] and bridge_fdb(ns, VTEP) == []
        nl.delete_fdb("nope0", MAC_A)
        assert nl.list_fdb("nope0") == []
        with pytest.raises(NotFound):
            nl.ensure_fdb("nope0", MAC_A, "192.168.77.2")


def test_neighbour_permanent_ensure_list_delete(topo: Topology) -> None:
    ns = topo.new_netns("nb")
    with Netlink.open(ns) as nl:
        nl.ensure_vxlan(VTEP, vni=1, local=None, dev=None)
        nl.ensure_neighbour(VTEP, "10.244.2.0", MAC_B)
        nl.ensure_neighbour(VTEP, "10.244.2.0", MAC_B)
        nl.ensure_neighbour(VTEP, "10.244.3.0", MAC_B)
        nl.ensure_neighbour(VTEP, "10.244.3.0", MAC_A)  # replaced in place
        got = sorted(nl.list_neighbours(VTEP))
        assert [(n.ip, n.mac, n.permanent) for n in got] == [
            ("10.244.2.0", MAC_B, True), ("10.244.3.0", MAC_A, True)]
        witness = {(e["dst"], e["lladdr"], tuple(e["state"]))
                   for e in ip_json(ns, "neigh", "show", "dev", VTEP)}
        assert witness == {("10.244.2.0", MAC_B, ("PERMANENT",)), ("10.244.3.0", MAC_A, ("PERMANENT",))}
        nl.ensure_neighbour(VTEP, "fd00::2", MAC_B)
        # (An up device also holds the kernel's NOARP multicast entries, e.g. ff02::16 for MLD.)
        six = [n for n in nl.list_neighbours(VTEP, family=10) if n.permanent]
        assert six == [Neighbour("fd00::2", MAC_B, 0x80)]
        for ip in ("10.244.2.0", "10.244.2.0", "10.244.3.0", "fd00::2", "fd00::2"):
            nl.delete_neighbour(VTEP, ip)
        assert nl.list_neighbours(VTEP) == []
        assert not [n for n in nl.list_neighbours(VTEP, family=10) if n.permanent]
        nl.delete_neighbour("nope0", "10.244.2.0")
        assert nl.list_neighbours("nope0") == []


def test_onlink_route_via_the_vxlan_device(topo: Topology) -> None:
    ns = topo.new_netns("ol")
    with Netlink.open(ns) as nl:
        nl.ensure_vxlan(VTEP, vni=1, local=None, dev=None)
        nl.ensure_addr(VTEP, "10.244.1.0/32")
        # No address covers 10.244.2.0: only onlink makes it a usable gateway.
        with pytest.raises(NetlinkFailure):
            nl.ensure_route("10.244.2.0/24", gateway="10.244.2.0", dev=VTEP)
        for _ in range(2):
            nl.ensure_route("10.244.2.0/24", gateway="10.244.2.0", dev=VTEP, onlink=True,
                            proto=RTPROT_PODNET_FLANNEL)
        ours = [r for r in nl.list_routes() if r.proto == RTPROT_PODNET_FLANNEL]
        assert len(ours) == 1 and ours[0].onlink
        assert (ours[0].dst, ours[0].gateway, ours[0].oif) == (
            "10.244.2.0/24", "10.244.2.0", nl.require_link(VTEP).index)
        seen = ip_json(ns, "route", "show", "10.244.2.0/24")[0]
        assert ("onlink" in seen["flags"], str(seen["protocol"])) == (True, str(RTPROT_PODNET_FLANNEL))
        nl.delete_route("10.244.2.0/24", gateway="10.244.2.0", dev=VTEP)
        assert not [r for r in nl.list_routes() if r.proto == RTPROT_PODNET_FLANNEL]


def vtep_host(nl: Netlink, own_ip: str, own_subnet: str, peer: tuple[str, str, str]) -> None:
    """flanneld's vxlan programming for one host and one remote: device, /32 address, then
    neighbour, FDB entry and onlink route (route last, or the kernel would ARP)."""
    peer_ip, peer_subnet, peer_mac = peer
    nl.ensure_vxlan(VTEP, vni=1, local=own_ip, dev="eth0", mtu=1450,
                    mac=MAC_A if own_subnet.startswith("10.244.1.") else MAC_B)
    nl.ensure_addr(VTEP, own_subnet)
    gateway = peer_subnet.split("/")[0]
    nl.ensure_neighbour(VTEP, gateway, peer_mac)
    nl.ensure_fdb(VTEP, peer_mac, peer_ip)
    nl.ensure_route(peer_subnet.replace(".0/32", ".0/24"), gateway=gateway, dev=VTEP, onlink=True,
                    proto=RTPROT_PODNET_FLANNEL)


def test_two_namespaces_ping_through_vxlan_over_a_veth(topo: Topology) -> None:
    a, b = topo.new_netns("pa"), topo.new_netns("pb")
    with netns_fd(b) as fd, Netlink.open(a) as nl:
        nl.add_veth_pair("eth0", "eth0", peer_netns_fd=fd)
    for ns, ip in ((a, "192.168.77.1"), (b, "192.168.77.2")):
        with Netlink.open(ns) as nl:
            nl.ensure_addr("eth0", f"{ip}/24")
            nl.set_up("eth0")
    with Netlink.open(a) as nl:
        vtep_host(nl, "192.168.77.1", "10.244.1.0/32", ("192.168.77.2", "10.244.2.0/32", MAC_B))
    with Netlink.open(b) as nl:
        vtep_host(nl, "192.168.77.2", "10.244.2.0/32", ("192.168.77.1", "10.244.1.0/32", MAC_A))
    ping = execs.run(["ping", "-c", "3", "-i", "0.2", "-W", "2", "10.244.2.0"], netns=a, check=False)
    assert ping.returncode == 0, ping.stdout + ping.stderr
    # The replies came back through b's VTEP: its vxlan device counted the encapsulated packets.
    stats = ip_json(b, "-s", "link", "show", "dev", VTEP)[0]["stats64"]
    assert stats["rx"]["packets"] >= 1 and stats["tx"]["packets"] >= 1
    # 1450 MTU: a 1422-byte payload + 28 bytes of headers fits with DF set, 1423 does not.
    df_ok = execs.run(["ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1422", "10.244.2.0"],
                      netns=a, check=False)
    df_big = execs.run(["ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1423", "10.244.2.0"],
                       netns=a, check=False)
    assert (df_ok.returncode, df_big.returncode != 0) == (0, True), df_ok.stdout + df_big.stdout


# ------------------------------------------------------------------------------ tun
def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_reply(request: bytes) -> bytes:
    """The ICMP echo reply to an IPv4 echo request: addresses swapped, type 0, checksums redone."""
    ihl = (request[0] & 0x0F) * 4
    header = bytearray(request[:ihl])
    header[12:16], header[16:20] = request[16:20], request[12:16]
    header[10:12] = b"\0\0"
    header[10:12] = struct.pack("!H", checksum(bytes(header)))
    icmp = bytearray(request[ihl:])
    icmp[0], icmp[2:4] = 0, b"\0\0"
    icmp[2:4] = struct.pack("!H", checksum(bytes(icmp)))
    return bytes(header + icmp)


def read_echo_request(tun: TunDevice, dst: str, timeout: float = 5.0) -> bytes:
    """The next IPv4 ICMP echo request to `dst` read from `tun` (skipping e.g. IPv6 MLD)."""
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        if not select.select([tun], [], [], remaining)[0]:
            break
        packet = tun.read()
        if packet[0] >> 4 == 4 and packet[9] == 1 and socket.inet_ntoa(packet[16:20]) == dst \
                and packet[(packet[0] & 0x0F) * 4] == 8:
            return packet
    raise AssertionError(f"no echo request to {dst} on {tun.name} within {timeout}s")


def test_tun_open_configure_and_close(topo: Topology) -> None:
    ns = topo.new_netns("tn")
    with open_tun("flannel0", netns=ns) as tun:
        assert tun.name == "flannel0" and tun.fileno() >= 0
        with Netlink.open(ns) as nl:
            link = nl.require_link("flannel0")
            assert link.kind == "tun" and not link.up
            nl.set_link("flannel0", mtu=1472, state="up")
            assert nl.require_link("flannel0").mtu == 1472
        info = ip_json(ns, "-d", "link", "show", "dev", "flannel0")[0]
        assert info["linkinfo"]["info_data"]["type"] == "tun"
        assert info["linkinfo"]["info_data"]["pi"] is False
        with pytest.raises(AlreadyExists):
            open_tun("flannel0", netns=ns)
        with open_tun("tun%d", netns=ns) as numbered:
            assert numbered.name == "tun0"
    # Closing the only fd removes a non-persistent device.
    with Netlink.open(ns) as nl:
        assert nl.get_link("flannel0") is None and nl.get_link("tun0") is None
    with pytest.raises(ValueError):
        open_tun("x" * 16)


def test_tun_packets_are_read_and_written(topo: Topology) -> None:
    """A ping through the TUN device, answered by the test: what the kernel routes to the device
    is read from the fd, and what is written to the fd is received by the kernel."""
    ns = topo.new_netns("tp")
    with open_tun("flannel0", netns=ns) as tun:
        with Netlink.open(ns) as nl:
            nl.ensure_addr("flannel0", "10.9.0.1/24")
            nl.set_up("flannel0")
        ping = topo.spawn(ns, ["ping", "-c", "1", "-W", "5", "10.9.0.2"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        request = read_echo_request(tun, "10.9.0.2")
        assert socket.inet_ntoa(request[12:16]) == "10.9.0.1"
        assert tun.write(echo_reply(request)) == len(request)
        assert ping.wait(timeout=10) == 0
