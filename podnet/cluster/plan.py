"""The cluster's topology as pure data: every name, address, directory and config file content.

Nothing here touches the system, so the layout is table-testable.  Layout (all inside namespaces
this cluster creates; the root namespace is never changed):

    <prefix>-fab   fabric: bridge br0 10.250.0.1/24, one veth per host (both ends created here)
    <prefix>-cp    control plane 10.250.0.2: etcd (loopback), apiserver :6443, scheduler, cm
    <prefix>-nodeN node N 10.250.0.(10+N): flanneld, CNI daemon, kubelet
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FABRIC_NET = "10.250.0"
FABRIC_GATEWAY = f"{FABRIC_NET}.1"
CONTROL_PLANE_IP = f"{FABRIC_NET}.2"
API_PORT = 6443  # inside the control-plane namespace (a fresh namespace: the well-known port)
CLUSTER_CIDR = "10.244.0.0/16"  # flannel's default Network, also the node IPAM --cluster-cidr
SERVICE_CIDR = "10.96.0.0/16"
NODE_CIDR_MASK = 24
BACKENDS = ("vxlan", "host-gw", "udp")
FLANNEL_HEALTHZ_PORT = 8285  # upstream kube-flannel's --healthz-port
MAX_NODES = 200  # fabric addresses .11 .. .210 of one /24
RUN_ROOT = "/run/podnet-up"  # unix sockets: sun_path is limited to 108 bytes, state dirs may be long


def prefix_for(state_dir: str) -> str:
    """A short stable prefix per state dir: two clusters on one machine never share a name, and the
    veth/namespace names derived from it stay within the kernel's 15-character interface limit."""
    digest = hashlib.sha1(os.path.realpath(state_dir).encode()).hexdigest()[:6]
    return f"pn{digest}"


@dataclass(frozen=True)
class NodePlan:
    index: int  # 1-based
    name: str  # Node object name (and kubelet hostname)
    netns: str
    ip: str
    fabric_veth: str  # host side of the veth, inside the fabric namespace
    dir: Path  # per-node state: conf dir, bin dir, subnet.env, logs, kubelet root
    run_dir: Path  # per-node unix sockets

    @property
    def cni_conf_dir(self) -> Path:
        return self.dir / "cni" / "net.d"

    @property
    def cni_bin_dir(self) -> Path:
        return self.dir / "cni" / "bin"

    @property
    def subnet_file(self) -> Path:
        return self.dir / "flannel" / "subnet.env"

    @property
    def cni_socket(self) -> Path:
        return self.run_dir / "cni.sock"

    @property
    def kubelet_dir(self) -> Path:
        return self.dir / "kubelet"


@dataclass(frozen=True)
class ClusterPlan:
    state_dir: Path
    prefix: str
    backend: str
    nodes: tuple[NodePlan, ...]
    external_etcd: tuple[str, ...]  # empty: a local etcd member in the control-plane namespace

    @property
    def fabric_netns(self) -> str:
        return f"{self.prefix}-fab"

    @property
    def cp_netns(self) -> str:
        return f"{self.prefix}-cp"

    @property
    def run_dir(self) -> Path:
        return Path(RUN_ROOT) / self.prefix

    @property
    def manifest_path(self) -> Path:
        return self.state_dir / "manifest.json"

    @property
    def kubeconfig_path(self) -> Path:
        """For the user in the root namespace (through the loopback forwarder)."""
        return self.state_dir / "kubeconfig"

    @property
    def cert_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def net_conf_path(self) -> Path:
        return self.state_dir / "net-conf.json"

    def log(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"


def make_plan(state_dir: str, nodes: int, backend: str = "vxlan",
              etcd_servers: tuple[str, ...] = ()) -> ClusterPlan:
    if not 1 <= nodes <= MAX_NODES:
        raise ValueError(f"--nodes must be between 1 and {MAX_NODES}, not {nodes}")
    if backend not in BACKENDS:
        raise ValueError(f"--flannel-backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    root = Path(os.path.abspath(state_dir))
    prefix = prefix_for(str(root))
    run = Path(RUN_ROOT) / prefix
    plans = tuple(
        NodePlan(index=i, name=f"node-{i}", netns=f"{prefix}-node{i}", ip=f"{FABRIC_NET}.{10 + i}",
                 fabric_veth=f"n{i}", dir=root / "nodes" / f"node-{i}", run_dir=run / f"node-{i}")
        for i in range(1, nodes + 1))
    return ClusterPlan(state_dir=root, prefix=prefix, backend=backend, nodes=plans,
                       external_etcd=etcd_servers)


def net_conf(backend: str) -> dict[str, Any]:
    """flannel's net-conf.json (kube mode reads it from --net-config-path; etcd mode from
    /coreos.com/network/config): the Network equals node IPAM's --cluster-cidr, so each Node's
    podCIDR is a subnet flannel accepts as its lease."""
    return {"Network": CLUSTER_CIDR, "SubnetLen": NODE_CIDR_MASK, "Backend": {"Type": backend}}


def conflist(node: NodePlan) -> dict[str, Any]:
    """kube-flannel's CNI conflist (flannel delegating to bridge, then portmap), with every
    directory per node: all node namespaces share one filesystem, so the default
    /var/lib/cni/... paths would mix their IPAM allocations and caches."""
    return {
        "cniVersion": "1.0.0",
        "name": "cbr0",
        "plugins": [
            {"type": "flannel", "subnetFile": str(node.subnet_file),
             "dataDir": str(node.dir / "cni" / "flannel"),
             "ipam": {"dataDir": str(node.dir / "cni" / "networks")},
             "delegate": {"hairpinMode": True, "isDefaultGateway": True}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubeconfig(server: str, ca_file: str, token: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": "podnet",
        "clusters": [{"name": "podnet", "cluster": {"server": server, "certificate-authority": ca_file}}],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [{"name": "podnet", "context": {"cluster": "podnet", "user": "admin",
                                                     "namespace": "default"}}],
    }


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2) + "\n"
