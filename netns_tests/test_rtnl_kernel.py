"""The raw rtnetlink seam (podnet.netlink over podnet.rtnl) against the real kernel, inside
namespaces the test creates; `ip -j` is the independent witness of what the kernel holds."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from podnet import execs, netns
from podnet.errors import AlreadyExists, NetlinkFailure, NotFound
from podnet.netlink import Netlink, netns_fd
from podnet.testing.harness import Topology

REPO = Path(__file__).resolve().parent.parent


def ip_json(ns: str, *argv: str) -> Any:
    return json.loads(execs.run(["ip", "-j", *argv], netns=ns).stdout or "[]")


def ip_link(ns: str, name: str) -> dict[str, Any]:
    return ip_json(ns, "-d", "link", "show", "dev", name)[0]


def test_links_get_list_and_missing(topo: Topology) -> None:
    ns = topo.new_netns("rl")
    with Netlink.open(ns) as nl:
        lo = nl.require_link("lo")
        assert (lo.index, lo.up, lo.mac, lo.kind) == (1, True, "00:00:00:00:00:00", "")
        assert nl.get_link_by_index(lo.index) == lo
        assert nl.get_link("nope0") is None and nl.get_link_by_index(9999) is None
        with pytest.raises(NotFound):
            nl.require_link("nope0")
        assert [link.name for link in nl.list_links()] == ["lo"]


def test_bridge_with_mtu_and_vlan_filtering(topo: Topology) -> None:
    ns = topo.new_netns("rb")
    with Netlink.open(ns) as nl:
        br = nl.ensure_bridge("rbr0", mtu=1400)
        assert (br.kind, br.mtu) == ("bridge", 1400)
        assert nl.ensure_bridge("rbr0").index == br.index
        try:
            nl.set_vlan_filtering("rbr0")
        except NetlinkFailure as exc:
            pytest.skip(f"no bridge VLAN filtering in this kernel: {exc}")
        assert ip_link(ns, "rbr0")["linkinfo"]["info_data"]["vlan_filtering"] == 1
        nl.set_vlan_filtering("rbr0", on=False)
        assert ip_link(ns, "rbr0")["linkinfo"]["info_data"]["vlan_filtering"] == 0
        nl.ensure_bridge("rbr1", vlan_filtering=True)
        assert ip_link(ns, "rbr1")["linkinfo"]["info_data"]["vlan_filtering"] == 1


def test_veth_pair_across_namespaces_with_mac_and_mtu(topo: Topology) -> None:
    a, b = topo.new_netns("va"), topo.new_netns("vb")
    with netns_fd(b) as fd, Netlink.open(a) as nl:
        link = nl.add_veth_pair("eth0", "vpeer", peer_netns_fd=fd, mtu=1450, mac="02:11:22:33:44:55")
        assert (link.kind, link.mtu, link.mac) == ("veth", 1450, "02:11:22:33:44:55")
        with pytest.raises(AlreadyExists):
            nl.add_veth_pair("eth0", "vpeer2", peer_netns_fd=fd)
    with Netlink.open(b) as nl:
        peer = nl.require_link("vpeer")
        assert (peer.kind, peer.mtu, peer.peer_index) == ("veth", 1450, link.index)
    assert link.peer_index == peer.index
    assert execs.run(["ip", "link", "show", "vpeer"], netns=a, check=False).returncode != 0


def test_set_link_master_up_mtu_mac_promisc(topo: Topology) -> None:
    ns = topo.new_netns("sl")
    with Netlink.open(ns) as nl:
        br = nl.ensure_bridge("sbr0")
        nl.add_veth_pair("sv0", "sv1")
        nl.set_link("sv0", master=br.index, state="up")
        nl.set_link("sv1", mtu=1300, address="02:00:00:00:00:09")
        nl.set_up("sv1")
        v0, v1 = nl.require_link("sv0"), nl.require_link("sv1")
        assert v0.master == br.index and v0.up
        assert (v1.mtu, v1.mac, v1.up) == (1300, "02:00:00:00:00:09", True)
        assert nl.wait_oper_up("sv0", timeout=5).oper_state == "UP"
        nl.set_promisc("sbr0")
        nl.set_promisc("sbr0")  # idempotent
        assert nl.require_link("sbr0").promisc
        assert "PROMISC" in ip_link(ns, "sbr0")["flags"]
        nl.set_promisc("sbr0", on=False)
        assert not nl.require_link("sbr0").promisc
        nl.set_link("sv0", master=0)
        assert nl.require_link("sv0").master == 0
        nl.set_down("sv1")
        assert not nl.require_link("sv1").up
        with pytest.raises(NotFound):
            nl.set_up("nope0")


def test_hairpin_and_bridge_port_flags(topo: Topology) -> None:
    ns = topo.new_netns("hp")
    with Netlink.open(ns) as nl:
        br = nl.ensure_bridge("hbr0")
        nl.add_veth_pair("hv0", "hv1")
        assert nl.bridge_port_info("hv0") == {}
        nl.set_link("hv0", master=br.index)
        assert nl.bridge_port_info("hv0")["mode"] == 0
        nl.set_hairpin("hv0")
        assert nl.bridge_port_info("hv0")["mode"] == 1
        assert ip_json(ns, "-d", "link", "show", "dev", "hv0")[0]["linkinfo"]["info_slave_data"]["hairpin"]
        nl.set_bridge_port("hv0", learning=0)
        info = nl.bridge_port_info("hv0")
        assert (info["learning"], info["mode"]) == (0, 1)
        nl.set_hairpin("hv0", on=False)
        assert nl.bridge_port_info("hv0")["mode"] == 0


def test_port_vlan_and_vlan_link(topo: Topology) -> None:
    ns = topo.new_netns("vl")
    with Netlink.open(ns) as nl:
        try:
            br = nl.ensure_bridge("vbr0", vlan_filtering=True)
        except NetlinkFailure as exc:
            pytest.skip(f"no bridge VLAN filtering: {exc}")
        nl.add_veth_pair("vv0", "vv1")
        nl.set_link("vv0", master=br.index)
        nl.add_port_vlan("vv0", 100, pvid=True, untagged=True)
        nl.add_port_vlan("vv0", 100, pvid=True, untagged=True)  # idempotent in the kernel
        shown = execs.run(["bridge", "vlan", "show", "dev", "vv0"], netns=ns).stdout
        assert "100 PVID Egress Untagged" in shown
        nl.add_port_vlan("vbr0", 100, pvid=False, untagged=False, self_=True)
        shown = execs.run(["bridge", "vlan", "show", "dev", "vbr0"], netns=ns).stdout
        assert "100" in shown
        try:
            link = nl.ensure_vlan_link("vbr0.100", "vbr0", 100)
        except NetlinkFailure as exc:
            pytest.skip(f"no 802.1Q: {exc}")
        assert link.kind == "vlan" and link.peer_index == br.index
        assert nl.ensure_vlan_link("vbr0.100", "vbr0", 100).index == link.index
        assert ip_link(ns, "vbr0.100")["linkinfo"]["info_data"]["id"] == 100
        with pytest.raises(AlreadyExists):
            nl.ensure_vlan_link("vv1", "vbr0", 101)


def test_vlan_calls_succeed_or_fail_with_eopnotsupp(topo: Topology) -> None:
    """Without CONFIG_BRIDGE_VLAN_FILTERING / CONFIG_VLAN_8021Q (as on some CI kernels) every VLAN
    call must fail with EOPNOTSUPP, which the bridge plugin turns into error code 7."""
    ns = topo.new_netns("vo")
    with Netlink.open(ns) as nl:
        nl.ensure_bridge("obr0")
        nl.add_veth_pair("ov0", "ov1")
        nl.set_link("ov0", master=nl.require_link("obr0").index)
        calls = [lambda: nl.set_vlan_filtering("obr0"),
                 lambda: nl.add_port_vlan("ov0", 100),
                 lambda: nl.ensure_vlan_link("obr0.100", "obr0", 100)]
        for call in calls:
            try:
                call()
            except NetlinkFailure as exc:
                assert exc.errno == errno.EOPNOTSUPP, exc


def test_wait_oper_up_is_woken_by_the_peer_and_times_out(topo: Topology) -> None:
    ns = topo.new_netns("wo")
    with Netlink.open(ns) as nl:
        nl.add_veth_pair("wv0", "wv1")
        nl.set_up("wv0")
        with pytest.raises(NetlinkFailure) as info:
            nl.wait_oper_up("wv0", timeout=0.2)  # the peer is down: LOWERLAYERDOWN
        assert info.value.errno == errno.ETIMEDOUT

        def later() -> None:
            time.sleep(0.2)
            with Netlink.open(ns) as other:
                other.set_up("wv1")

        t = threading.Thread(target=later)
        started = time.monotonic()
        t.start()
        assert nl.wait_oper_up("wv0", timeout=5).oper_state == "UP"
        t.join()
        assert time.monotonic() - started < 2  # an event woke it, not a poll interval


def test_delete_link_by_name_and_index(topo: Topology) -> None:
    ns = topo.new_netns("dl")
    with Netlink.open(ns) as nl:
        nl.add_veth_pair("dv0", "dv1")
        assert nl.delete_link("dv0") is True
        assert nl.get_link("dv1") is None  # one end takes the other
        assert nl.delete_link("dv0") is False
        link = nl.ensure_bridge("dbr0")
        assert nl.delete_link_index(link.index) is True
        assert nl.delete_link_index(link.index) is False


def test_unlink_returns_once_the_link_is_unlisted(topo: Topology) -> None:
    ns = topo.new_netns("ul")
    with Netlink.open(ns) as nl:
        br = nl.ensure_bridge("ubr0")
        nl.add_veth_pair("uv0", "uv1")
        nl.set_link("uv1", master=br.index, state="up")
        nl.set_up("uv0")
        nl.ensure_addr("uv0", "10.9.0.2/24")
        assert nl.unlink(nl.require_link("uv0").index) is True
        # Gone from every view at once: both ends, the address, the bridge port; names free.
        assert nl.get_link("uv0") is None and nl.get_link("uv1") is None
        assert not [link for link in nl.list_links() if link.master == br.index]
        assert "10.9.0.2" not in execs.run(["ip", "addr"], netns=ns).stdout
        nl.add_veth_pair("uv0", "uv1")
        assert nl.unlink(nl.require_link("uv1").index) is True
        assert nl.unlink(99999) is False  # already gone
        with pytest.raises(NetlinkFailure):
            nl.unlink(nl.require_link("lo").index)  # the kernel refuses: the error comes through


def test_unlink_leaks_no_descriptor_or_thread(topo: Topology) -> None:
    """The CNI daemon calls it for every DEL: sockets, pipe ends and helpers must all go."""
    ns = topo.new_netns("uf")
    with Netlink.open(ns) as nl:
        nl.add_veth_pair("lv0", "lv1")
        nl.unlink(nl.require_link("lv0").index)  # warm-up: lazily opened descriptors
        assert helpers_done()
        fds = len(os.listdir("/proc/self/fd"))
        for _ in range(5):
            nl.add_veth_pair("lv0", "lv1")
            nl.unlink(nl.require_link("lv0").index)
        nl.unlink(99999)
        assert helpers_done()
        assert len(os.listdir("/proc/self/fd")) == fds


def helpers_done(timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while any(t.name.startswith("unlink-") for t in threading.enumerate()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_addresses_v4_and_v6(topo: Topology) -> None:
    ns = topo.new_netns("ad")
    with Netlink.open(ns) as nl:
        nl.ensure_bridge("abr0")
        nl.set_up("abr0")
        nl.ensure_addr("abr0", "10.9.0.1/24")
        nl.ensure_addr("abr0", "10.9.0.1/24")
        nl.ensure_addr("abr0", "fd00:9::1/64")
        assert nl.list_addrs("abr0", family=2) == ["10.9.0.1/24"]
        assert "fd00:9::1/64" in nl.list_addrs("abr0", family=10)
        assert set(nl.list_addrs("abr0")) >= {"10.9.0.1/24", "fd00:9::1/64"}
        shown = ip_json(ns, "addr", "show", "dev", "abr0")[0]["addr_info"]
        info = [a for a in shown if a["family"] == "inet"]
        assert info[0]["broadcast"] == "10.9.0.255"  # like the reference's netlink library
        assert nl.list_addrs("nope0") == []
        with pytest.raises(NotFound):
            nl.ensure_addr("nope0", "10.9.0.1/24")
        nl.delete_addr("abr0", "10.9.0.1/24")
        nl.delete_addr("abr0", "10.9.0.1/24")
        nl.delete_addr("abr0", "fd00:9::1/64")
        nl.delete_addr("nope0", "10.9.0.1/24")
        assert nl.list_addrs("abr0", family=2) == []
        assert "fd00:9::1/64" not in nl.list_addrs("abr0", family=10)


def test_routes_replace_add_delete_list(topo: Topology) -> None:
    ns = topo.new_netns("rt")
    with Netlink.open(ns) as nl:
        nl.ensure_bridge("rbr0")
        nl.set_up("rbr0")
        nl.ensure_addr("rbr0", "10.9.0.1/24")
        nl.ensure_addr("rbr0", "fd00:9::1/64")
        nl.ensure_route("10.8.0.0/16", gateway="10.9.0.254", dev="rbr0")
        nl.ensure_route("10.8.0.0/16", gateway="10.9.0.253", dev="rbr0")  # converges the nexthop
        got = [r for r in nl.list_routes() if r.dst == "10.8.0.0/16"]
        assert [(r.gateway, r.table) for r in got] == [("10.9.0.253", 254)]
        with pytest.raises(AlreadyExists):
            nl.add_route("10.8.0.0/16", gateway="10.9.0.254", dev="rbr0")
        nl.add_route("0.0.0.0/0", gateway="10.9.0.254", dev="rbr0", priority=50)
        default = [r for r in nl.list_routes() if r.dst == "0.0.0.0/0"]
        assert [(r.gateway, r.priority) for r in default] == [("10.9.0.254", 50)]
        nl.add_route("10.7.0.0/16", dev="rbr0", scope=253, table=100)
        assert [r.dst for r in nl.list_routes(table=100)] == ["10.7.0.0/16"]
        assert "10.7.0.0/16" in [r.dst for r in nl.list_routes(table=None)]
        nl.add_route("fd00:8::/64", gateway="fd00:9::fe", dev="rbr0")
        assert "fd00:8::/64" in [r.dst for r in nl.list_routes(family=10)]
        via = nl.get_route("10.8.1.1")
        assert via is not None and (via.gateway, via.oif) == ("10.9.0.253", nl.require_link("rbr0").index)
        assert nl.get_route("fd00:8::1") is not None
        shown = ip_json(ns, "route", "show", "10.8.0.0/16")
        assert shown[0].get("protocol", "boot") == "boot"  # ip -j omits the default
        for dst, table in (("10.8.0.0/16", None), ("0.0.0.0/0", None), ("10.7.0.0/16", 100),
                           ("fd00:8::/64", None)):
            nl.delete_route(dst, table=table)
            nl.delete_route(dst, table=table)
        nl.delete_route("10.6.0.0/16", dev="nope0")
        assert not [r for r in nl.list_routes(table=None)
                    if r.dst in ("10.8.0.0/16", "0.0.0.0/0", "10.7.0.0/16")]
        with pytest.raises(NotFound):
            nl.add_route("10.5.0.0/16", dev="nope0")
        assert nl.get_route("10.5.0.1") is None  # no default route left: unreachable


def test_socket_stays_in_the_namespace_it_was_opened_in(topo: Topology) -> None:
    a, b = topo.new_netns("sa"), topo.new_netns("sb")
    with Netlink.open(a) as nl:
        with netns.enter(b):  # the calling thread moves; the socket does not
            nl.ensure_bridge("stay0")
        seen: list[bool] = []
        t = threading.Thread(target=lambda: seen.append(nl.get_link("stay0") is not None))
        t.start()
        t.join()
        assert seen == [True]
    assert execs.run(["ip", "link", "show", "stay0"], netns=a).returncode == 0
    assert execs.run(["ip", "link", "show", "stay0"], netns=b, check=False).returncode != 0


def test_a_thread_starts_in_its_creators_namespace(topo: Topology) -> None:
    """bridge DEL relies on it: its nft helper thread must act in the host netns it was started
    from, not in the process's original one."""
    ns = topo.new_netns("th")
    seen: list[bool] = []
    with netns.enter(ns):
        t = threading.Thread(target=lambda: seen.append(netns.is_own_netns(ns)))
        t.start()
        t.join()
    assert seen == [True]


def test_errors_carry_errno_and_kernel_text(topo: Topology) -> None:
    ns = topo.new_netns("er")
    with Netlink.open(ns) as nl:
        nl.ensure_bridge("ebr0")
        with pytest.raises(NetlinkFailure) as info:
            nl.set_link("ebr0", mtu=10)  # below the minimum MTU
        assert info.value.errno == errno.EINVAL
        assert "mtu" in str(info.value).lower()


IN_PROCESS_ADD_DEL = """
import json, os, sys
from podnet import netns
from cni import entry
host, pod, cni_bin, work = sys.argv[1:5]
conf = {"cniVersion": "1.1.0", "name": "nopr", "type": "bridge", "bridge": "cni0", "isGateway": True,
        "hairpinMode": True, "stateDir": work + "/state",
        "ipam": {"type": "host-local", "dataDir": work + "/ipam", "ranges": [[{"subnet": "10.66.0.0/24"}]],
                 "routes": [{"dst": "0.0.0.0/0"}]}}
stdin = json.dumps(conf).encode()
base = {"CNI_CONTAINERID": "c1", "CNI_NETNS": pod, "CNI_IFNAME": "eth0", "CNI_PATH": cni_bin}
with netns.enter(host):
    rc, out = entry.run_local("bridge", {**base, "CNI_COMMAND": "ADD"}, stdin)
    assert rc == 0, out
    conf["prevResult"] = json.loads(out)
    rc, out = entry.run_local("bridge", {**base, "CNI_COMMAND": "CHECK"}, json.dumps(conf).encode())
    assert rc == 0, out
    del conf["prevResult"]
    rc, out = entry.run_local("bridge", {**base, "CNI_COMMAND": "DEL"}, stdin)
    assert rc == 0, out
    gc = {**conf, "cni.dev/valid-attachments": []}
    rc, out = entry.run_local("bridge", {**base, "CNI_COMMAND": "GC"}, json.dumps(gc).encode())
    assert rc == 0, out
    rc, out = entry.run_local("loopback", {**base, "CNI_COMMAND": "ADD"}, stdin)
    assert rc == 0, out
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "pyroute2")))
"""


def test_cni_bridge_add_check_del_gc_never_imports_pyroute2(topo: Topology, cni_bin: Path,
                                                             tmp_path: Path) -> None:
    host, pod = topo.add_host(), topo.add_pod_netns("np")
    proc = subprocess.run([sys.executable, "-c", IN_PROCESS_ADD_DEL, host.path, pod, str(cni_bin),
                           str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
