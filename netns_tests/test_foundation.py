"""The foundation seams against the real kernel, inside namespaces the test creates."""

from __future__ import annotations

import threading

import pytest

from podnet import execs, netns, sysctl
from podnet.errors import AlreadyExists, NotFound
from podnet.netlink import Netlink
from podnet.testing.harness import Topology


def test_enter_is_per_thread_and_restores(topo: Topology) -> None:
    ns = topo.new_netns("a")
    seen: dict[str, bool] = {}

    def worker() -> None:
        with netns.enter(ns):
            seen["inside"] = netns.is_own_netns(ns)
        seen["after"] = netns.is_own_netns(ns)

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == {"inside": True, "after": False}
    assert not netns.is_own_netns(ns)


def test_enter_missing_netns_is_not_found() -> None:
    with pytest.raises(NotFound), netns.enter("/run/netns/podnet-test-does-not-exist"):
        pass


def test_create_and_delete_are_idempotent(topo: Topology) -> None:
    name = topo.new_netns("idem")
    assert netns.create(name) == netns.path_of(name)
    netns.delete(name)
    netns.delete(name)
    assert not netns.exists(name)


def test_netlink_ensure_and_delete_are_idempotent(topo: Topology) -> None:
    ns = topo.new_netns("nl")
    with Netlink.open(ns) as nl:
        br = nl.ensure_bridge("pbr0")
        assert nl.ensure_bridge("pbr0").index == br.index
        nl.set_up("pbr0")
        nl.ensure_addr("pbr0", "10.9.0.1/24")
        nl.ensure_addr("pbr0", "10.9.0.1/24")
        assert nl.list_addrs("pbr0", family=2) == ["10.9.0.1/24"]
        nl.ensure_route("10.8.0.0/16", gateway="10.9.0.254", dev="pbr0")
        nl.ensure_route("10.8.0.0/16", gateway="10.9.0.254", dev="pbr0")
        assert [r.dst for r in nl.list_routes() if r.dst == "10.8.0.0/16"] == ["10.8.0.0/16"]
        nl.delete_route("10.8.0.0/16")
        nl.delete_route("10.8.0.0/16")
        nl.delete_addr("pbr0", "10.9.0.1/24")
        nl.delete_addr("pbr0", "10.9.0.1/24")
        assert nl.delete_link("pbr0") is True
        assert nl.delete_link("pbr0") is False
        assert nl.get_link("pbr0") is None


def test_netlink_refuses_a_non_bridge_under_a_bridge_name(topo: Topology) -> None:
    ns = topo.new_netns("nb")
    with Netlink.open(ns) as nl:
        nl.add_veth_pair("notbr", "notbr-p")
        with pytest.raises(AlreadyExists):
            nl.ensure_bridge("notbr")


def test_veth_peer_lands_in_the_other_namespace(topo: Topology) -> None:
    a, b = topo.new_netns("va"), topo.new_netns("vb")
    import os

    fd = os.open(netns.path_of(b), os.O_RDONLY)
    try:
        with Netlink.open(a) as nl:
            nl.add_veth_pair("in-a", "in-b", peer_netns_fd=fd, mtu=1400)
    finally:
        os.close(fd)
    with Netlink.open(b) as nl:
        peer = nl.require_link("in-b")
        assert peer.mtu == 1400 and peer.kind == "veth"


def test_sysctl_writes_into_the_entered_namespace(topo: Topology) -> None:
    ns = topo.new_netns("sc")
    with netns.enter(ns):
        sysctl.write("net.ipv4.ip_forward", 1)
        assert sysctl.read("net.ipv4.ip_forward") == "1"
    out = execs.run(["sysctl", "-n", "net.ipv4.ip_forward"], netns=ns).stdout.strip()
    assert out == "1"


def test_topology_hosts_reach_each_other(topo: Topology) -> None:
    h1, h2 = topo.add_host(), topo.add_host()
    assert h1.run("ping", "-c1", "-W2", h2.ip).returncode == 0
