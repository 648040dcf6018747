"""`podnet up --nodes 2` / `podnet status` / `podnet down` as a user runs them (the real CLI, real
etcd, apiserver, scheduler, controller manager, flanneld and CNI daemons in namespaces): kubectl
reaches the API server on the root namespace's loopback, pods wired by each node's installed CNI
config reach each other across nodes, and `down` leaves the root namespace's links and nft tables,
the namespace list and the process table as they were.

The first test runs without the kubelet (--no-kubelet: `up` registers the Nodes itself) and wires
pods through each node's conflist directly; the second runs the kubelets (when installed).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from netns_tests.apiserver_fixtures import kubectl_binary
from netns_tests.cluster_fixtures import NETEXEC
from netns_tests.podnet_cli import PODNET, podnet, root_snapshot
from podnet import execs, netns
from podnet.api.client import PODS, Client
from podnet.api.kubeconfig import load_kubeconfig
from podnet.cluster import plan as P
from podnet.cluster import up
from podnet.cluster.manifest import Manifest, is_alive
from podnet.cniruntime import Attachment, CniConfig, CniRuntime
from podnet.testing.etcd import EtcdProcess, free_port
from podnet.testing.harness import Topology
from podnet.testing.wait import wait_until

# The container sees the host's root filesystem but not every mount (its /tmp is its own), so
# it runs the host's python with an inline server rather than this checkout's `podnet agnhost`.
SHELL = 'echo started netexec-{}; exec /usr/bin/python3 -c "$0"'


def test_up_status_kubectl_pods_and_down_leaves_nothing(state_dir: Path, topo: Topology) -> None:
    prefix = P.prefix_for(str(state_dir))
    before = root_snapshot(prefix)
    port = free_port()
    res = podnet("up", "--nodes", "2", "--no-kubelet", "--state-dir", str(state_dir),
                 "--api-port", str(port), "--timeout", "60")
    assert res.returncode == 0, res.stderr
    assert f"export KUBECONFIG={state_dir / 'kubeconfig'}" in res.stdout
    assert "2/2 nodes networked" in res.stderr
    manifest = Manifest.load(state_dir / "manifest.json")
    assert all(is_alive(p) for p in manifest.processes)
    assert {p.name for p in manifest.processes} >= {
        "etcd", "apiserver", "api-forwarder", "scheduler", "controller-manager",
        "node-1/flanneld", "node-2/flanneld", "node-1/cni-daemon", "node-2/cni-daemon"}

    again = podnet("up", "--nodes", "1", "--no-kubelet", "--state-dir", str(state_dir))
    assert again.returncode == 1 and "already up" in again.stderr

    subnets = check_status(state_dir)
    check_kubectl(state_dir, subnets)
    check_pods_across_nodes(state_dir, topo)

    res = podnet("down", "--state-dir", str(state_dir))
    assert res.returncode == 0, res.stderr
    assert not any(is_alive(p) for p in manifest.processes)
    assert not state_dir.exists()
    assert not (Path(P.RUN_ROOT) / prefix).exists()
    assert root_snapshot(prefix) == before
    assert "no cluster" in podnet("down", "--state-dir", str(state_dir)).stderr


def check_status(state_dir: Path) -> dict[str, str]:
    res = podnet("status", "--state-dir", str(state_dir), "-o", "json")
    assert res.returncode == 0, res.stdout + res.stderr
    data = json.loads(res.stdout)
    assert {h["name"] for h in data["health"] if h["ok"]} == {
        "etcd", "apiserver", "node-1/flanneld", "node-2/flanneld"}
    subnets = {n["metadata"]["name"]: n["spec"]["podCIDR"] for n in data["nodes"]}
    assert sorted(subnets) == ["node-1", "node-2"] and len(set(subnets.values())) == 2
    text = podnet("status", "--state-dir", str(state_dir)).stdout
    for name, subnet in subnets.items():
        assert name in text and subnet in text
    return subnets


def check_kubectl(state_dir: Path, subnets: dict[str, str]) -> None:
    kubectl = kubectl_binary(31) or kubectl_binary(33)
    if kubectl is None:
        return
    res = execs.run([kubectl, "--kubeconfig", str(state_dir / "kubeconfig"), "get", "nodes", "-o",
                     "jsonpath={range .items[*]}{.metadata.name}={.spec.podCIDR} {end}"])
    assert sorted(res.stdout.split()) == sorted(f"{n}={s}" for n, s in subnets.items())


def check_pods_across_nodes(state_dir: Path, topo: Topology) -> None:
    """One pod per node through the node's own conflist and plugins (as its runtime would run
    them, from inside the node's namespace); agnhost netexec in one, connect/ping from the other."""
    plan = P.make_plan(str(state_dir), 2)
    pods = []
    for node in plan.nodes:
        path = topo.add_pod_netns(f"p{node.index}")
        runtime = CniRuntime([str(node.cni_bin_dir)], cache_dir=str(node.dir / "cni" / "cache"))
        net = CniConfig.load(str(node.cni_conf_dir))
        att = Attachment(container_id=f"upt{node.index}", netns=path)
        with netns.enter(node.netns):
            result = runtime.add(net, att)
        ip = result["ips"][0]["address"].split("/")[0]
        pods.append((path, ip, runtime, net, att, node))
    (src, _, *_), (dst, dst_ip, *_) = pods
    server = topo.spawn(dst, [PODNET, "agnhost", "netexec", "--http-port", "8080", "--udp-port", "8081"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: execs.run([PODNET, "agnhost", "connect", f"{dst_ip}:8080", "--timeout", "1"],
                                     netns=src, check=False).returncode == 0, 20, "pod-to-pod TCP")
        assert execs.run([PODNET, "agnhost", "connect", f"{dst_ip}:8081", "--protocol", "udp"],
                         netns=src, check=False).returncode == 0
        assert execs.run(["ping", "-c1", "-W2", dst_ip], netns=src, check=False).returncode == 0
    finally:
        topo.kill(server)
        for _path, _ip, runtime, net, att, node in pods:
            with netns.enter(node.netns):
                runtime.delete(net, att)


@pytest.mark.skipif(not up.kubelet_available(), reason="podnet-kubelet is not installed")
def test_kubelets_run_pods_across_nodes_and_down_removes_them_without_the_api(
        state_dir: Path) -> None:
    """Pods bound to each node run `podnet agnhost netexec` and reach each other; then the API
    server dies, so `down` cannot drain: it still removes the pods' containers and sandboxes."""
    prefix = P.prefix_for(str(state_dir))
    before = root_snapshot(prefix)
    res = podnet("up", "--nodes", "2", "--state-dir", str(state_dir), "--api-port", str(free_port()),
                 "--timeout", "60")
    assert res.returncode == 0, res.stderr
    assert "2/2 nodes Ready" in res.stderr
    client = Client.from_config(load_kubeconfig(state_dir / "kubeconfig"))
    try:
        for i in (1, 2):
            command = ["/bin/sh", "-c", SHELL.format(i), NETEXEC]
            client.create(PODS, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"netexec-{i}"},
                                 "spec": {"nodeName": f"node-{i}", "terminationGracePeriodSeconds": 1,
                                          "containers": [{"name": "netexec", "image": "agnhost",
                                                          "command": command}]}},
                          "default")
        ips = {i: wait_pod_ip(client, f"netexec-{i}") for i in (1, 2)}
    finally:
        client.close()
    assert ips[1] != ips[2]
    text = podnet("status", "--state-dir", str(state_dir)).stdout
    assert f"ip {ips[1]}" in text and f"ip {ips[2]}" in text
    sandboxes = {i: sandbox_netns(state_dir, f"node-{i}") for i in (1, 2)}
    wait_until(lambda: execs.run([PODNET, "agnhost", "connect", f"{ips[2]}:8080", "--timeout", "1"],
                                 netns=sandboxes[1], check=False).returncode == 0, 45, "pod-to-pod TCP")
    hostname = execs.run(["curl", "-s", f"http://{ips[2]}:8080/hostname"], netns=sandboxes[1]).stdout
    assert hostname == "netexec-2"  # the pod's UTS namespace carries its name, as upstream
    kubectl = kubectl_binary(33) or kubectl_binary(31)
    if kubectl is not None:  # kubectl -> apiserver pods/log -> the node's kubelet on :10250
        logs = execs.run([kubectl, "--kubeconfig", str(state_dir / "kubeconfig"), "logs", "netexec-1"])
        assert logs.stdout.startswith("started netexec-1\n")
    pids = [pid for name in sandboxes.values()
            for pid in execs.run(["ip", "netns", "pids", name]).stdout.split()]
    assert pids

    apiserver = Manifest.load(state_dir / "manifest.json").process("apiserver")
    assert apiserver is not None
    os.kill(apiserver.pid, signal.SIGKILL)
    res = podnet("down", "--state-dir", str(state_dir))
    assert res.returncode == 0, res.stderr
    assert "API server unreachable" in res.stderr
    for name in sandboxes.values():
        assert not netns.exists(name)
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    assert root_snapshot(prefix) == before


def wait_pod_ip(client: Client, name: str) -> str:
    def running() -> bool:
        st = client.get(PODS, name, "default").get("status") or {}
        return st.get("phase") == "Running" and bool(st.get("podIP"))
    wait_until(running, 30, f"pod {name} Running")
    return str(client.get(PODS, name, "default")["status"]["podIP"])


def sandbox_netns(state_dir: Path, node: str) -> str:
    """The pod's network namespace, from the kubelet's sandbox record on that node."""
    records = list((state_dir / "nodes" / node / "kubelet" / "sandboxes").glob("*.json"))
    assert len(records) == 1
    return str(json.loads(records[0].read_text())["netns"])


def test_external_etcd_and_host_gw(state_dir: Path, tmp_path: Path) -> None:
    """--etcd-servers on the root namespace's loopback (relayed into the control-plane namespace):
    the cluster's objects land in that etcd, and `down` leaves the etcd itself running."""
    etcd = EtcdProcess(str(tmp_path / "etcd"))
    try:
        etcd.start()
        res = podnet("up", "--nodes", "2", "--no-kubelet", "--flannel-backend", "host-gw",
                     "--state-dir", str(state_dir), "--etcd-servers", etcd.endpoint,
                     "--api-port", str(free_port()), "--timeout", "60")
        assert res.returncode == 0, res.stderr
        manifest = Manifest.load(state_dir / "manifest.json")
        assert manifest.process("etcd") is None and manifest.process("etcd-relay-0") is not None
        keys = list(etcd.kv().get_prefix("/registry/"))
        assert all(any(k.endswith(f"/{n}") for k in keys) for n in ("node-1", "node-2"))
        node1 = P.make_plan(str(state_dir), 2).nodes[0]
        routes = execs.run(["ip", "route"], netns=node1.netns).stdout
        subnet2 = json.loads(podnet("status", "--state-dir", str(state_dir), "-o", "json").stdout
                             )["nodes"][1]["spec"]["podCIDR"]
        assert f"{subnet2} via 10.250.0.12 dev eth0" in routes  # host-gw: a plain route, no vxlan
        assert podnet("down", "--state-dir", str(state_dir)).returncode == 0
        assert etcd.is_healthy()
    finally:
        etcd.cleanup()


def test_a_failed_up_removes_what_it_created(state_dir: Path) -> None:
    """Nodes not up in time (--timeout 0: flanneld cannot have written subnet.env yet): `up` says
    so, exits 1 and undoes everything from its manifest."""
    prefix = P.prefix_for(str(state_dir))
    before = root_snapshot(prefix)
    res = podnet("up", "--nodes", "1", "--no-kubelet", "--state-dir", str(state_dir),
                 "--api-port", str(free_port()), "--timeout", "0")
    assert res.returncode == 1
    assert "nodes not up after 0s: node-1" in res.stderr and "removing what was created" in res.stderr
    assert not state_dir.exists()
    assert root_snapshot(prefix) == before
