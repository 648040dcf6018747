"""flanneld end to end (etcd mode): real `python -m flanneld` per simulated host, real etcd in the
fabric namespace, pods on each host's cni0 addressed from its subnet.env.

Issue 5 "Tests": pods on three hosts reach each other for every backend (ICMP, TCP, UDP,
MTU-sized with DF), host-to-pod and pod-to-host; masquerade only for traffic leaving the pod
network; a 4th host's routes everywhere within 1 s and gone everywhere when its lease goes.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
import time
from collections.abc import Iterator
from itertools import permutations
from pathlib import Path

import pytest

from netns_tests.flannel_fixtures import (
    PREFIX,
    FlannelCluster,
    FlannelHost,
    echo,
    link_mac,
    ping_loss,
    start_echo,
)
from podnet import execs, netns
from podnet.testing import cnirun
from podnet.testing.etcd import ETCD
from podnet.testing.harness import Pod, Topology
from podnet.testing.wait import wait_until

IP_ICMP = 28
RESYNC = "1s"


@pytest.fixture
def cluster(topo: Topology, tmp_path: Path) -> Iterator[FlannelCluster]:
    if not os.path.exists(ETCD):
        pytest.skip("etcd missing: apt-get install etcd-server")
    c = FlannelCluster(topo, tmp_path)
    try:
        yield c
    finally:
        for fh in c.hosts:  # daemons first, so none logs errors about a vanished etcd
            c.kill_flanneld(fh)
        if c.etcd is not None:
            c.etcd.cleanup()


def boot(cluster: FlannelCluster, backend: dict[str, object], hosts: int = 3,
         *extra: str) -> list[FlannelHost]:
    cluster.start_etcd()
    cluster.write_config(backend)
    fhs = [cluster.add_host() for _ in range(hosts)]
    for fh in fhs:
        cluster.start_flanneld(fh, "--resync-period", RESYNC, *extra, wait=False)
    for fh in fhs:
        cluster.wait_ready(fh)
    return fhs


def wait_mesh(pods: list[Pod], timeout: float = 10.0) -> None:
    for src, dst in permutations(pods, 2):
        wait_until(lambda s=src, d=dst: s.run("ping", "-c1", "-W1", d.ip,
                                              check=False).returncode == 0,
                   timeout, f"{src.ip} -> {dst.ip}")


def peer_routes(fh: FlannelHost, subnet: ipaddress.IPv4Network) -> list[str]:
    return [line for line in fh.routes().splitlines() if line.startswith(f"{subnet} ")]


@pytest.mark.parametrize("backend", ["vxlan", "host-gw", "udp"])
def test_three_hosts_pods_reach_each_other(cluster: FlannelCluster, backend: str) -> None:
    fhs = boot(cluster, {"Type": backend})
    subnets = [fh.subnet() for fh in fhs]
    assert len(set(subnets)) == 3 and all(
        s.subnet_of(ipaddress.IPv4Network("10.244.0.0/16")) for s in subnets)
    pods = [cluster.add_pod(fh) for fh in fhs]
    mtu = int(fhs[0].subnet_env()["FLANNEL_MTU"])
    assert mtu == {"vxlan": 1450, "host-gw": 1500, "udp": 1472}[backend]
    wait_mesh(pods)
    servers = {pod.ip: start_echo(cluster.topo, pod.name) for pod in pods}
    assert servers
    for src, dst in permutations(pods, 2):
        out = src.run("ping", "-c", "2", "-i", "0.05", "-W", "2", "-M", "do", "-s",
                      str(mtu - IP_ICMP), dst.ip, check=False).stdout
        assert ping_loss(out) == 0.0, f"MTU-sized ICMP {src.ip} -> {dst.ip}:\n{out}"
        # pod-to-pod is never NATed: the server sees the client pod's own address
        assert echo(src, dst.ip, 256 * 1024, "tcp") == (src.ip, 256 * 1024)
        assert echo(src, dst.ip, mtu - IP_ICMP, "udp") == (src.ip, mtu - IP_ICMP)
    # host-to-pod across hosts, and pod-to-other-host
    assert echo(fhs[0].host, pods[2].ip, 4096, "tcp")[1] == 4096
    out = pods[0].run("ping", "-c1", "-W2", fhs[1].host.ip, check=False).stdout
    assert ping_loss(out) == 0.0, out


def test_masquerade_only_leaving_the_pod_network(cluster: FlannelCluster) -> None:
    fhs = boot(cluster, {"Type": "vxlan"}, 2, "--ip-masq")
    assert fhs[0].subnet_env()["FLANNEL_IPMASQ"] == "true"
    pods = [cluster.add_pod(fh) for fh in fhs]
    wait_mesh(pods)
    start_echo(cluster.topo, pods[1].name)
    start_echo(cluster.topo, fhs[1].host.name)
    assert echo(pods[0], pods[1].ip, 1000, "tcp") == (pods[0].ip, 1000)  # pod-to-pod: as is
    assert echo(pods[0], pods[1].ip, 1000, "udp") == (pods[0].ip, 1000)
    # leaving the flannel network: masqueraded to the host's address
    assert echo(pods[0], fhs[1].host.ip, 1000, "tcp") == (fhs[0].host.ip, 1000)
    nat = fhs[0].host.run("iptables-save", "-t", "nat").stdout
    assert "FLANNEL-POSTRTG" in nat, nat


def test_fourth_host_joins_within_1s_and_leaves_everywhere(cluster: FlannelCluster) -> None:
    fhs = boot(cluster, {"Type": "vxlan"})
    assert cluster.etcd is not None
    kv = cluster.etcd.kv()
    before = set(kv.get_prefix(f"{PREFIX}/subnets/"))
    fourth = cluster.add_host()
    cluster.start_flanneld(fourth, "--resync-period", RESYNC, wait=False)
    new: list[str] = []
    wait_until(lambda: bool(new.extend(set(kv.get_prefix(f"{PREFIX}/subnets/")) - before) or new),
               20, "the 4th host's lease", 0.005)
    seen = time.monotonic()
    subnet = ipaddress.IPv4Network(new[0].rsplit("/", 1)[1].replace("-", "/"))
    wait_until(lambda: all(peer_routes(fh, subnet) for fh in fhs), 1.0,
               f"route to {subnet} on every host", 0.01)
    joined = time.monotonic() - seen
    cluster.wait_ready(fourth)
    assert fourth.subnet() == subnet and joined < 1.0
    mac = link_mac(fourth.host, "flannel.1")
    # The host leaves: its daemon dies (flanneld never deletes its own lease) and the lease
    # expires; revoking its etcd lease is that expiry, seen by the watchers as a DELETE.
    cluster.kill_flanneld(fourth)
    etcd_lease = kv.lease_of(new[0])
    assert etcd_lease  # flanneld attaches its key to an etcd lease (24 h TTL)
    kv.revoke(etcd_lease)

    def gone() -> bool:
        return all(not peer_routes(fh, subnet)
                   and mac not in fh.host.run("bridge", "fdb", "show", "dev", "flannel.1").stdout
                   and mac not in fh.host.run("ip", "neigh", "show", "dev", "flannel.1").stdout
                   for fh in fhs)
    wait_until(gone, 5, f"{subnet}'s route, FDB and neighbour removed everywhere")

    # A lease deleted outright (an operator's `etcdctl del`) goes the same way.
    key = f"{PREFIX}/subnets/10.244.250.0-24"
    kv.put(key, json.dumps({"PublicIP": "10.250.0.250", "BackendType": "vxlan",
                            "BackendData": {"VNI": 1, "VtepMAC": "0e:00:00:00:03:01"}}))
    other = ipaddress.IPv4Network("10.244.250.0/24")
    wait_until(lambda: all(peer_routes(fh, other) for fh in fhs), 5, "the operator's lease")
    assert kv.delete(key) == 1
    wait_until(lambda: not any(peer_routes(fh, other) for fh in fhs), 5, "deleted lease's route")


def test_flannel_cni_plugin_on_flanneld_subnet_env(cluster: FlannelCluster, cni_bin: Path,
                                                   tmp_path: Path) -> None:
    """The whole node path: flanneld writes subnet.env, the installed `flannel` CNI plugin (exec'd
    in the host namespace as a runtime would) wires pods from it, pods on two hosts talk."""
    fhs = boot(cluster, {"Type": "vxlan"}, 2)
    pods: list[tuple[str, str]] = []  # (pod netns, its address)
    for fh in fhs:
        d = tmp_path / f"cni-{fh.host.name}"
        conf = {"cniVersion": "1.0.0", "name": "cbr0", "type": "flannel",
                "subnetFile": str(fh.subnet_file), "dataDir": str(d / "flannel"),
                "ipam": {"dataDir": str(d / "ipam")},
                "delegate": {"hairpinMode": True, "isDefaultGateway": True,
                             "stateDir": str(d / "state")}}
        runtime = cnirun.Runtime({"cniVersion": "1.0.0", "name": "cbr0", "plugins": [conf]},
                                 [str(cni_bin)])
        att = cnirun.Attachment(container_id=f"c{fh.host.name[-1]}",
                                netns=cluster.topo.add_pod_netns(f"{fh.host.name[-2:]}c"))
        with netns.enter(fh.host.name):
            result = runtime.add(att)
        ip = result["ips"][0]["address"].split("/")[0]
        assert ipaddress.IPv4Address(ip) in fh.subnet()
        mtu = execs.run(["ip", "-j", "link", "show", "eth0"], netns=att.netns).stdout
        assert json.loads(mtu)[0]["mtu"] == int(fh.subnet_env()["FLANNEL_MTU"])
        pods.append((att.netns, ip))
    a_ns, b_ip = pods[0][0], pods[1][1]
    wait_until(lambda: execs.run(["ping", "-c1", "-W1", b_ip], netns=a_ns,
                                 check=False).returncode == 0, 10, "CNI pod to CNI pod")
    out = execs.run(["ping", "-c", "2", "-i", "0.05", "-M", "do", "-s",
                     str(int(fhs[0].subnet_env()["FLANNEL_MTU"]) - IP_ICMP), b_ip],
                    netns=a_ns, check=False).stdout
    assert ping_loss(out) == 0.0, out


def http_get(fh: FlannelHost, url: str) -> tuple[int, str]:
    """GET from inside the host's namespace (the daemon listens there)."""
    script = ("import sys,urllib.request,urllib.error\n"
              "try:\n r=urllib.request.urlopen(sys.argv[1],timeout=3); print(r.status); "
              "print(r.read().decode())\n"
              "except urllib.error.HTTPError as e:\n print(e.code)\n")
    out = fh.host.run(sys.executable, "-c", script, url).stdout
    status, _, body = out.partition("\n")
    return int(status), body


def test_host_gw_refuses_off_l2_peer_and_reports_it(cluster: FlannelCluster) -> None:
    fhs = boot(cluster, {"Type": "host-gw"}, 2, "--healthz-port", "8471")
    assert cluster.etcd is not None
    # A peer whose PublicIP is not on eth0's subnet: host-gw cannot reach it without a tunnel.
    cluster.etcd.kv().put(f"{PREFIX}/subnets/10.244.251.0-24", json.dumps(
        {"PublicIP": "192.168.77.5", "BackendType": "host-gw", "BackendData": {}}))
    far = ipaddress.IPv4Network("10.244.251.0/24")
    wait_until(lambda: "flannel_peer_errors 1" in http_get(fhs[0], "http://127.0.0.1:8471/metrics")[1],
               5, "the off-L2 peer counted as a problem")
    assert not peer_routes(fhs[0], far)
    assert "not on the same L2" in cluster.log_tail(fhs[0])
    # The on-L2 peer is still routed directly via its PublicIP, and the daemon is healthy/ready.
    assert f"via {fhs[1].host.ip} dev eth0" in peer_routes(fhs[0], fhs[1].subnet())[0]
    assert http_get(fhs[0], "http://127.0.0.1:8471/healthz")[0] == 200
    assert http_get(fhs[0], "http://127.0.0.1:8471/readyz")[0] == 200
    metrics = http_get(fhs[0], "http://127.0.0.1:8471/metrics")[1]
    assert "flannel_leases 3" in metrics and "flannel_reconcile_total" in metrics, metrics


def test_vxlan_direct_routing_uses_plain_routes_on_the_same_l2(cluster: FlannelCluster) -> None:
    fhs = boot(cluster, {"Type": "vxlan", "DirectRouting": True}, 2)
    assert cluster.etcd is not None
    cluster.etcd.kv().put(f"{PREFIX}/subnets/10.244.252.0-24", json.dumps(
        {"PublicIP": "192.168.78.5", "BackendType": "vxlan",
         "BackendData": {"VNI": 1, "VtepMAC": "0e:00:00:00:04:01"}}))
    wait_until(lambda: bool(peer_routes(fhs[0], ipaddress.IPv4Network("10.244.252.0/24"))), 5,
               "the off-L2 peer's route")
    same_l2 = peer_routes(fhs[0], fhs[1].subnet())[0]
    assert f"via {fhs[1].host.ip} dev eth0" in same_l2, same_l2  # no encapsulation on one L2
    far = peer_routes(fhs[0], ipaddress.IPv4Network("10.244.252.0/24"))[0]
    assert "dev flannel.1" in far and "onlink" in far, far  # across L3: still vxlan
    pods = [cluster.add_pod(fh) for fh in fhs]
    wait_mesh(pods)
    out = pods[0].run("ping", "-c", "2", "-i", "0.05", "-M", "do", "-s",
                      str(int(fhs[0].subnet_env()["FLANNEL_MTU"]) - IP_ICMP), pods[1].ip,
                      check=False).stdout
    assert ping_loss(out) == 0.0, out
