"""flanneld in kube mode (`--kube-subnet-mgr`) against the real podnet-apiserver, with subnets
assigned by the controller manager's node IPAM: each host's subnet is its Node's podCIDR, the
lease is published in the flannel.alpha.coreos.com annotations with NetworkUnavailable=False,
pods on three hosts reach each other, and a deleted Node's routes go from the other hosts.

The API server listens on the test namespace's 127.0.0.1; each simulated host reaches it through
Topology.forward_loopback, so the daemons use the very kubeconfig the test writes."""

from __future__ import annotations

import ipaddress
import json
from itertools import permutations
from pathlib import Path
from typing import Any

from netns_tests.apiserver_fixtures import ApiServerProcess, component_command, component_process
from netns_tests.flannel_fixtures import FlannelCluster, FlannelHost, ping_loss
from podnet.api.client import NODES, Client
from podnet.testing.harness import Topology
from podnet.testing.wait import wait_until

CLUSTER = "10.244.0.0/16"
CM = [*component_command("podnet-controller-manager", "controlplane.controllers"),
      "--leader-elect=false", "--controllers", "nodeipam", "--allocate-node-cidrs",
      f"--cluster-cidr={CLUSTER}", "--node-cidr-mask-size=24"]
PREFIX = "flannel.alpha.coreos.com"


def start_kube_flanneld(cluster: FlannelCluster, fh: FlannelHost, server: ApiServerProcess,
                        conf: Path) -> None:
    cluster.topo.forward_loopback(fh.host, server.port)
    cluster.start_flanneld(fh, "--kube-subnet-mgr", "--kubeconfig-file", str(server.kubeconfig()),
                           "--net-config-path", str(conf), "--node-name", fh.host.name,
                           "--resync-period", "1s", wait=False)


def condition(node: dict[str, Any], kind: str) -> dict[str, Any]:
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return {}


def test_kube_mode_subnets_from_node_ipam(topo: Topology, apiserver: ApiServerProcess,
                                         client: Client, tmp_path: Path) -> None:
    conf = tmp_path / "net-conf.json"
    conf.write_text(json.dumps({"Network": CLUSTER, "Backend": {"Type": "vxlan"}}))
    cluster = FlannelCluster(topo, tmp_path)
    fhs = [cluster.add_host() for _ in range(3)]
    with component_process(apiserver, tmp_path / "cm.log", CM):
        for fh in fhs:
            client.create(NODES, {"apiVersion": "v1", "kind": "Node",
                                  "metadata": {"name": fh.host.name}})
        for fh in fhs:
            start_kube_flanneld(cluster, fh, apiserver, conf)
        for fh in fhs:
            cluster.wait_ready(fh, timeout=30)
        for fh in fhs:
            node = client.get(NODES, fh.host.name)
            assert str(fh.subnet()) == node["spec"]["podCIDR"]
            assert ipaddress.IPv4Network(node["spec"]["podCIDR"]).subnet_of(
                ipaddress.IPv4Network(CLUSTER))
            ann = node["metadata"]["annotations"]
            assert ann[f"{PREFIX}/backend-type"] == "vxlan"
            assert ann[f"{PREFIX}/public-ip"] == fh.host.ip
            assert "VtepMAC" in json.loads(ann[f"{PREFIX}/backend-data"])
            wait_until(lambda n=fh.host.name: condition(client.get(NODES, n), "NetworkUnavailable")
                       .get("status") == "False", 10, "NetworkUnavailable=False")
        pods = [cluster.add_pod(fh) for fh in fhs]
        for src, dst in permutations(pods, 2):
            wait_until(lambda s=src, d=dst: ping_loss(s.run("ping", "-c1", "-W1", d.ip,
                                                            check=False).stdout) == 0.0,
                       10, f"{src.ip} -> {dst.ip}")
        # A Node deleted: its lease is gone, so the other hosts drop its route.
        gone = fhs[2]
        cluster.kill_flanneld(gone)
        subnet = str(gone.subnet())
        client.delete(NODES, gone.host.name)
        wait_until(lambda: all(f"{subnet} " not in fh.routes() for fh in fhs[:2]), 10,
                   f"{subnet} removed from the remaining hosts")
    for fh in fhs:
        cluster.kill_flanneld(fh)
