"""The flannel test harness and the hand-configured dataplanes bench/flannel_dataplane.py compares
flanneld's backends with: etcd in the fabric namespace reachable from simulated hosts, pods on
three hosts over plain routes and over a hand-built kernel vxlan with upstream flannel's layout."""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Iterator
from itertools import permutations
from pathlib import Path

import pytest

from netns_tests.flannel_fixtures import (
    PREFIX,
    UNDERLAY_MTU,
    VXLAN_OVERHEAD,
    FlannelCluster,
    configure_routed,
    configure_vxlan,
    gateway_of,
    ping_loss,
    pod_subnet,
)
from podnet.testing.etcd import ETCD
from podnet.testing.harness import Pod, Topology
from podnet.testing.wait import wait_until

IP_UDP_ICMP = 28  # ping -s payload + 8 ICMP + 20 IPv4 = packet size


@pytest.fixture
def cluster(topo: Topology, tmp_path: Path) -> Iterator[FlannelCluster]:
    if not os.path.exists(ETCD):
        pytest.skip("etcd missing: apt-get install etcd-server")
    c = FlannelCluster(topo, tmp_path)
    try:
        yield c
    finally:
        if c.etcd is not None:  # before the topology removes its namespace
            c.etcd.cleanup()


def three_hosts_with_pods(topo: Topology, mtu: int) -> list[Pod]:
    pods = []
    for index in range(1, 4):
        host = topo.add_host()
        subnet = pod_subnet(index)
        pods.append(topo.add_pod(host, f"p{index}", str(subnet.network_address + 10),
                                 gateway_of(subnet), mtu=mtu))
        pods[-1].run("ip", "link", "set", "eth0", "mtu", str(mtu))
    return pods


def assert_full_mesh(pods: list[Pod], size: int) -> None:
    """Every pod pings every other pod with DF-set packets of exactly `size` bytes."""
    for src, dst in permutations(pods, 2):
        out = src.run("ping", "-c", "2", "-i", "0.05", "-W", "2", "-M", "do", "-s",
                      str(size - IP_UDP_ICMP), dst.ip, check=False).stdout
        assert ping_loss(out) == 0.0, f"{src.ip} -> {dst.ip}:\n{out}"


def test_etcd_in_fabric_reachable_from_hosts_and_test(cluster: FlannelCluster) -> None:
    etcd = cluster.start_etcd()
    host = cluster.add_host().host
    kv = etcd.kv()
    rev = kv.put(f"{PREFIX}/config", '{"Network":"10.244.0.0/16"}')
    assert kv.get(f"{PREFIX}/config") == '{"Network":"10.244.0.0/16"}'
    # A simulated host reads the key over the fabric (its own socket, its own namespace).
    script = ("import urllib.request,json,base64;"
              f"r=urllib.request.urlopen(urllib.request.Request('{etcd.endpoint}/v3/kv/range',"
              f"data=json.dumps({{'key':base64.b64encode(b'{PREFIX}/config').decode()}}).encode()));"
              "print(base64.b64decode(json.loads(r.read())['kvs'][0]['value']).decode())")
    assert host.run(sys.executable, "-c", script).stdout.strip() == '{"Network":"10.244.0.0/16"}'
    lease = kv.grant(60)
    kv.put(f"{PREFIX}/subnets/10.244.1.0-24", "{}", lease=lease)
    assert kv.lease_of(f"{PREFIX}/subnets/10.244.1.0-24") == lease
    assert kv.compact() > rev
    kv.revoke(lease)
    assert kv.get_prefix(f"{PREFIX}/subnets/") == {}


def test_daemon_spawned_in_host_netns_and_killed_by_pid(topo: Topology, tmp_path: Path) -> None:
    host = topo.add_host()
    proc = topo.spawn_on(host, ["sleep", "60"], log_path=str(tmp_path / "log"))
    # nsenter execs the program after setns, so the recorded PID ends up in the host namespace.
    want = os.stat(host.path).st_ino
    wait_until(lambda: os.stat(f"/proc/{proc.pid}/ns/net").st_ino == want, 5, "setns")
    topo.kill(proc)
    assert proc.returncode == -9


def test_hand_routed_three_hosts_full_mesh(topo: Topology) -> None:
    pods = three_hosts_with_pods(topo, UNDERLAY_MTU)
    configure_routed([p.host for p in pods], [pod_subnet(i) for i in range(1, 4)])
    assert_full_mesh(pods, UNDERLAY_MTU)
    # host-to-pod across hosts
    out = pods[0].host.run("ping", "-c", "1", "-W", "2", pods[2].ip, check=False).stdout
    assert ping_loss(out) == 0.0, out


def test_hand_vxlan_three_hosts_full_mesh_mtu_sized(topo: Topology) -> None:
    mtu = UNDERLAY_MTU - VXLAN_OVERHEAD
    pods = three_hosts_with_pods(topo, mtu)
    configure_vxlan([p.host for p in pods], [pod_subnet(i) for i in range(1, 4)])
    assert_full_mesh(pods, mtu)
    # The traffic really is encapsulated: one byte more than the vxlan MTU cannot leave with DF.
    too_big = pods[0].run("ping", "-c", "1", "-W", "1", "-M", "do", "-s",
                          str(mtu + 1 - IP_UDP_ICMP), pods[1].ip, check=False)
    assert too_big.returncode != 0
    route = pods[0].host.run("ip", "route", "get", pods[1].ip).stdout
    assert "dev flannel.1" in route, route
    fdb = pods[0].host.run("bridge", "fdb", "show", "dev", "flannel.1").stdout
    assert f"dst {pods[1].host.ip}" in fdb, fdb


def test_loopback_forward_reaches_the_test_namespace(topo: Topology) -> None:
    """What kube-mode flanneld uses to reach the API server on the test's 127.0.0.1."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def answer() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"hello " + conn.recv(100))
    threading.Thread(target=answer, daemon=True).start()
    try:
        host = topo.add_host()
        topo.forward_loopback(host, port)
        script = (f"import socket;c=socket.create_connection(('127.0.0.1',{port}),timeout=5);"
                  "c.sendall(b'host');c.shutdown(socket.SHUT_WR);print(c.recv(100).decode())")
        assert host.run(sys.executable, "-c", script).stdout.strip() == "hello host"
    finally:
        server.close()
