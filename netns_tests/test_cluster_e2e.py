"""End to end: a 3-node cluster (real etcd, API server, scheduler, controller manager; per node a
real podnet-kubelet and flanneld in a simulated host namespace, pods wired by the flannel CNI
conflist) driven with the real kubectl.

One cluster per module (starting it costs seconds); the tests run in file order and each leaves
the replication controller whole for the next: the RC's 6 pods spread and get IPs from their
node's podCIDR, every pod and node host reach each other over TCP and UDP, `kubectl logs` and
readiness (Endpoints) work, a kubelet killed with -9 adopts its pods, a dead node's pods come back
on the others (timed), its kubelet coming back finishes what was deleted meanwhile, and scaling to
zero leaves no pod network behind.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from netns_tests.cluster_fixtures import (
    HTTP_PORT,
    Cluster,
    Node,
    cluster,
    http_get,
    netexec_container,
    start_host_server,
)
from podnet import netns
from podnet.api.client import ENDPOINTS, NODES, PODS
from podnet.testing.wait import wait_until

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(importlib.util.find_spec("controlplane.kubelet.__main__") is None,
                       reason="podnet-kubelet (controlplane.kubelet) is not built"),
]
RC = "web"
SELECTOR = f"app={RC}"
REPLICAS = 6


def rc_manifest(replicas: int) -> dict[str, Any]:
    labels = {"app": RC}
    return {"apiVersion": "v1", "kind": "ReplicationController", "metadata": {"name": RC},
            "spec": {"replicas": replicas, "selector": labels, "template": {
                "metadata": {"labels": labels},
                "spec": {"terminationGracePeriodSeconds": 2,
                         "containers": [netexec_container()]}}}}


SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": RC},
           "spec": {"selector": {"app": RC}, "ports": [{"port": 80, "targetPort": HTTP_PORT}]}}


@pytest.fixture(scope="module")
def kube(tmp_path_factory: pytest.TempPathFactory, cni_bin: Path) -> Iterator[Cluster]:
    with cluster(tmp_path_factory.mktemp("cluster"), cni_bin) as c:
        for node in c.nodes:
            start_host_server(c, node)
        manifest = tmp_path_factory.mktemp("manifests") / "web.json"
        manifest.write_text(json.dumps({"apiVersion": "v1", "kind": "List",
                                        "items": [rc_manifest(REPLICAS), SERVICE]}))
        c.kubectl("apply", "-f", str(manifest))
        yield c


def live(pod: dict[str, Any]) -> bool:
    return not pod["metadata"].get("deletionTimestamp")


def running(c: Cluster) -> list[dict[str, Any]]:
    """The RC's pods that are not terminating, Running and with an IP."""
    return [p for p in c.pods(SELECTOR) if live(p) and p.get("status", {}).get("phase") == "Running"
            and p["status"].get("podIP")]


def ready(pod: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in pod.get("status", {}).get("conditions") or [])


def wait_whole(c: Cluster, timeout: float = 30.0, *, need_ready: bool = True,
               avoid: str = "") -> list[dict[str, Any]]:
    """Wait until the RC has exactly REPLICAS live pods, all Running with an IP (and Ready), none
    on node `avoid`: a dead node's pods keep their last status until they are evicted."""
    def whole() -> bool:
        pods = [p for p in c.pods(SELECTOR) if live(p)]
        ok = [p for p in running(c) if p["spec"]["nodeName"] != avoid]
        return len(pods) == REPLICAS and len(ok) == REPLICAS and (
            not need_ready or all(ready(p) for p in ok))
    wait_until(whole, timeout, f"{REPLICAS} pods of rc/{RC} Running", interval=0.1)
    return running(c)


def node_of(c: Cluster, name: str) -> Node:
    return next(n for n in c.nodes if n.name == name)


def veths(node: Node) -> list[str]:
    out = node.fh.host.run("ip", "-j", "link", "show", "type", "veth").stdout
    # eth0 (the host's own link to the fabric) is a veth too; pods' host ends are veth*
    return [link["ifname"] for link in json.loads(out or "[]") if link["ifname"] != "eth0"]


def no_veths(node: Node) -> Callable[[], bool]:
    return lambda: veths(node) == []


def test_rc_pods_spread_running_with_ips_from_node_subnets(kube: Cluster) -> None:
    pods = wait_whole(kube, 45)
    by_node: dict[str, list[str]] = {}
    for pod in pods:
        node = kube.api.get(NODES, pod["spec"]["nodeName"])
        cidr = ipaddress.IPv4Network(node["spec"]["podCIDR"])
        assert ipaddress.IPv4Address(pod["status"]["podIP"]) in cidr, (pod["metadata"]["name"], cidr)
        internal = [a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"]
        assert pod["status"]["hostIP"] == internal[0] == node_of(kube, node["metadata"]["name"]).fh.host.ip
        by_node.setdefault(pod["spec"]["nodeName"], []).append(pod["status"]["podIP"])
    assert sorted(by_node) == sorted(n.name for n in kube.nodes), by_node  # spread over all 3
    ips = [ip for group in by_node.values() for ip in group]
    assert len(set(ips)) == REPLICAS


@pytest.mark.parametrize("protocol", ["tcp", "udp"])
def test_every_pod_reaches_every_pod_and_node_host(kube: Cluster, protocol: str) -> None:
    pods = wait_whole(kube)
    hosts = [n.fh.host.ip for n in kube.nodes]
    targets = [p["status"]["podIP"] for p in pods] + hosts
    for ip in targets:  # listening (a container counts as started before its server binds)
        http_get(kube, kube.nodes[0], f"http://{ip}:{HTTP_PORT}/")
    for source in targets:  # each pod and each node host dials everybody else
        others = [t for t in targets if t != source]
        via = kube.nodes[0]
        reply = json.loads(http_get(kube, via, f"http://{source}:{HTTP_PORT}/dial?protocol="
                                               f"{protocol}&hosts={','.join(others)}"))
        failed = {ip: r for ip, r in reply.items() if r.startswith("error")}
        assert not failed, f"{protocol} from {source}: {failed}"
        # a pod answers with its own name (the container's hostname); a host with the node's
        names = {p["status"]["podIP"]: p["metadata"]["name"] for p in pods}
        names.update({n.fh.host.ip: n.name for n in kube.nodes})
        assert all(reply[ip] == names[ip] for ip in others), reply


def ready_ips(c: Cluster) -> list[str]:
    """The ready addresses of the Service's Endpoints."""
    subsets = c.api.get(ENDPOINTS, RC, "default").get("subsets") or []
    return sorted(a["ip"] for s in subsets for a in s.get("addresses") or [])


def test_kubectl_logs_and_endpoints(kube: Cluster) -> None:
    pods = wait_whole(kube)
    for pod in pods:  # each node's kubelet serves the logs of its pods
        name = pod["metadata"]["name"]
        http_get(kube, kube.nodes[0], f"http://{pod['status']['podIP']}:{HTTP_PORT}/")
        logs = kube.kubectl("logs", name).stdout
        assert f"serving {name} on {HTTP_PORT}/tcp and {HTTP_PORT + 1}/udp" in logs, logs
    all_ips = sorted(p["status"]["podIP"] for p in pods)
    wait_until(lambda: ready_ips(kube) == all_ips, 15, "all 6 pods in the Endpoints")


def test_readiness_probe_drives_endpoints(kube: Cluster) -> None:
    pods = wait_whole(kube)
    all_ips = sorted(p["status"]["podIP"] for p in pods)
    wait_until(lambda: ready_ips(kube) == all_ips, 15, "all 6 pods in the Endpoints")
    # The probe fails -> the pod is not Ready -> the endpoints controller drops it, and back.
    name, ip = pods[0]["metadata"]["name"], pods[0]["status"]["podIP"]
    http_get(kube, kube.nodes[0], f"http://{ip}:{HTTP_PORT}/unready")
    wait_until(lambda: not ready(kube.api.get(PODS, name, "default")), 10, f"{name} not Ready")
    wait_until(lambda: ip not in ready_ips(kube), 10, f"{ip} out of the Endpoints")
    http_get(kube, kube.nodes[0], f"http://{ip}:{HTTP_PORT}/ready")
    wait_until(lambda: ready_ips(kube) == all_ips, 10, f"{ip} back in the Endpoints")


def container_ids(c: Cluster, node: str) -> dict[str, tuple[str, str, int]]:
    """pod uid -> (podIP, containerID, restartCount) for the RC's pods on `node`."""
    out = {}
    for pod in running(c):
        if pod["spec"]["nodeName"] == node:
            status = pod["status"]["containerStatuses"][0]
            out[pod["metadata"]["uid"]] = (pod["status"]["podIP"], status.get("containerID", ""),
                                           status.get("restartCount", 0))
    return out


def test_kubelet_killed_adopts_its_pods(kube: Cluster) -> None:
    wait_whole(kube)
    node = kube.nodes[0]
    before = container_ids(kube, node.name)
    assert before
    sandboxes = len(veths(node))
    kube.kill_kubelet(node)
    kube.start_kubelet(node)
    kube.wait_nodes_ready(30)
    time.sleep(3)  # a few sync periods: a kubelet that recreated pods would have done it by now
    wait_whole(kube)
    assert container_ids(kube, node.name) == before
    assert len(veths(node)) == sandboxes == len(before), (veths(node), sandboxes, before,
                                                          kube.kubectl("get", "pods", "-owide").stdout)


def test_node_failure_pods_recreated_elsewhere(kube: Cluster) -> None:
    wait_whole(kube)
    dead = kube.nodes[2]
    lost = set(container_ids(kube, dead.name))
    assert lost
    started = time.monotonic()
    kube.kill_kubelet(dead)
    kube.flannel.kill_flanneld(dead.fh)
    wait_until(lambda: not kube.node_ready(dead.name), 20, f"{dead.name} NotReady", interval=0.1)
    not_ready = time.monotonic() - started
    pods = wait_whole(kube, 40, avoid=dead.name)
    whole = time.monotonic() - started
    assert not lost & {p["metadata"]["uid"] for p in pods}
    print(f"node failure: NotReady after {not_ready:.1f}s, RC whole again after {whole:.1f}s")
    # The node comes back: pods deleted while its kubelet was down are finished and cleaned up.
    kube.start_kubelet(dead)
    kube.start_flanneld(dead)
    kube.wait_nodes_ready(30)
    wait_until(lambda: not lost & {p["metadata"]["uid"] for p in kube.pods(SELECTOR)}, 30,
               "the dead node's old pods finally deleted")
    wait_until(no_veths(dead), 15, f"no sandbox left on {dead.name}")


def sandbox_netns(node: Node) -> list[str]:
    """The pod network namespaces the node's kubelet recorded (<root-dir>/sandboxes/*.json)."""
    records = sorted((node.state / "kubelet" / "sandboxes").glob("*.json"))
    return [str(json.loads(r.read_text())["netns"]) for r in records]


def test_scale_to_zero_leaves_no_pod_network(kube: Cluster) -> None:
    wait_whole(kube)
    sandboxes = [name for node in kube.nodes for name in sandbox_netns(node)]
    assert len(sandboxes) == REPLICAS
    assert all(netns.exists(name) for name in sandboxes)
    kube.kubectl("scale", "rc", RC, "--replicas=0")
    wait_until(lambda: kube.pods(SELECTOR) == [], 30, "every pod of rc/web deleted", interval=0.1)
    for node in kube.nodes:
        wait_until(no_veths(node), 10, f"no veth left on {node.name}")
        ipam = node.state / "ipam" / "cbr0"
        leases = [p.name for p in ipam.iterdir() if p.name[0].isdigit()] if ipam.exists() else []
        assert leases == [], (node.name, leases)
        assert sandbox_netns(node) == []
    assert not [name for name in sandboxes if netns.exists(name)]
