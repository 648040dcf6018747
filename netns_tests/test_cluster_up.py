"""End to end through `podnet up --nodes 3` as a user runs it (the real CLI: etcd, API server,
scheduler, controller manager, and per node kubelet, flanneld and CNI daemon in namespaces):
an RC of 6 created with kubectl spreads over the 3 nodes with IPs from each node's podCIDR, every
pod and node host reach each other over TCP and UDP, and `podnet down` leaves no namespace, root
namespace link or nft table, and none of the processes it started, behind.

Node failure, adoption and readiness are exercised on the harness-built cluster
(test_cluster_e2e.py), where the controller manager runs with second-scale grace periods.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from itertools import permutations
from pathlib import Path
from typing import Any

import pytest

from netns_tests.apiserver_fixtures import kubectl_binary
from netns_tests.cluster_fixtures import HTTP_PORT, NETEXEC, netexec_container
from netns_tests.podnet_cli import podnet, root_snapshot
from podnet import execs
from podnet.api.client import NODES, PODS, Client
from podnet.api.kubeconfig import load_kubeconfig
from podnet.cluster import plan as P
from podnet.cluster import up
from podnet.cluster.manifest import Manifest, is_alive
from podnet.testing.etcd import free_port
from podnet.testing.harness import Topology
from podnet.testing.wait import wait_until

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(not up.kubelet_available(), reason="podnet-kubelet is not installed")]
NODE_COUNT, REPLICAS = 3, 6


def get_in(netns: str, url: str) -> str:
    """GET `url` from inside a node's namespace (the pod networks are routed there)."""
    script = ("import sys, time, urllib.request\n"
              "for i in range(50):\n"
              "    try:\n"
              "        print(urllib.request.urlopen(sys.argv[1], timeout=15).read().decode()); break\n"
              "    except OSError as e:\n"
              "        if 'refused' not in str(e) or i == 49: raise\n"
              "        time.sleep(0.1)\n")
    return execs.run([sys.executable, "-c", script, url], netns=netns, timeout=30).stdout.strip()


def rc() -> dict[str, Any]:
    labels = {"app": "web"}
    return {"apiVersion": "v1", "kind": "ReplicationController", "metadata": {"name": "web"},
            "spec": {"replicas": REPLICAS, "selector": labels, "template": {
                "metadata": {"labels": labels},
                "spec": {"terminationGracePeriodSeconds": 1, "containers": [netexec_container()]}}}}


def running_pods(client: Client) -> list[dict[str, Any]]:
    return [p for p in client.list(PODS, "default", label_selector="app=web")["items"]
            if (p.get("status") or {}).get("phase") == "Running" and p["status"].get("podIP")]


def test_podnet_up_rc_across_three_nodes_tcp_udp_and_down_leaves_nothing(
        state_dir: Path, tmp_path: Path, topo: Topology) -> None:
    prefix = P.prefix_for(str(state_dir))
    before = root_snapshot(prefix)
    res = podnet("up", "--nodes", str(NODE_COUNT), "--state-dir", str(state_dir), "--api-port",
                 str(free_port()), "--timeout", "60")
    assert res.returncode == 0, res.stderr
    manifest = tmp_path / "rc.json"
    manifest.write_text(json.dumps(rc()))
    kubectl = kubectl_binary(33) or "kubectl"
    kc = str(state_dir / "kubeconfig")
    subprocess.run([kubectl, "--kubeconfig", kc, "apply", "-f", str(manifest)], check=True,
                   capture_output=True, timeout=30)
    client = Client.from_config(load_kubeconfig(Path(kc)))
    try:
        wait_until(lambda: len(running_pods(client)) == REPLICAS, 45, "6 pods Running", 0.2)
        pods = running_pods(client)
        nodes = {n["metadata"]["name"]: n for n in client.list(NODES)["items"]}
    finally:
        client.close()
    assert {p["spec"]["nodeName"] for p in pods} == set(nodes)  # spread over all three
    for pod in pods:
        cidr = ipaddress.IPv4Network(nodes[pod["spec"]["nodeName"]]["spec"]["podCIDR"])
        assert ipaddress.IPv4Address(pod["status"]["podIP"]) in cidr
    node_ns = [f"{prefix}-node{i}" for i in range(1, NODE_COUNT + 1)]
    host_ips = [f"{P.FABRIC_NET}.{10 + i}" for i in range(1, NODE_COUNT + 1)]
    pod_ips = [p["status"]["podIP"] for p in pods]
    servers = [topo.spawn(ns, [sys.executable, "-c", NETEXEC], env={**os.environ, "SERVE_NAME": ns},
                          stdin=subprocess.DEVNULL) for ns in node_ns]  # PIDs recorded by topo
    for ip in pod_ips + host_ips:  # serving (a container counts as started before its server binds)
        get_in(node_ns[0], f"http://{ip}:{HTTP_PORT}/")
    for protocol in ("tcp", "udp"):
        for source in pod_ips:  # each pod dials every other pod and every node host
            others = [ip for ip in pod_ips + host_ips if ip != source]
            reply = json.loads(get_in(node_ns[0], f"http://{source}:{HTTP_PORT}/dial?protocol="
                                                  f"{protocol}&hosts={','.join(others)}"))
            bad = {ip: r for ip, r in reply.items() if r.startswith("error")}
            assert not bad, f"{protocol} from {source}: {bad}"
    for a, b in permutations(node_ns[:2], 2):  # node hosts reach pods on other nodes
        target = next(p["status"]["podIP"] for p in pods
                      if p["spec"]["nodeName"] == f"node-{node_ns.index(b) + 1}")
        assert get_in(a, f"http://{target}:{HTTP_PORT}/").startswith("web-")

    for server in servers:
        topo.kill(server)
    procs = Manifest.load(state_dir / "manifest.json").processes
    res = podnet("down", "--state-dir", str(state_dir))
    assert res.returncode == 0, res.stderr
    assert root_snapshot(prefix) == before
    assert not [p.name for p in procs if is_alive(p)]
