"""The kubelet's node: registration, the Lease heartbeat, and node status.

Upstream behaviour carried over (pkg/kubelet/kubelet_node_status.go, nodelease):
- Registration creates the Node; an existing Node (a restarted kubelet) is kept and its labels
  merged in, never recreated, so spec.podCIDR assigned by node IPAM survives.
- The heartbeat is the Lease kube-node-lease/<node> (holderIdentity = node name, renewTime); it is
  renewed every leaseDuration/4 (upstream renewInterval = 0.25 * 40 s = 10 s).  The node lifecycle
  controller judges health by this Lease and by the Ready condition's lastHeartbeatTime.
- Status: addresses (InternalIP, Hostname), capacity/allocatable (cpu, memory, pods) read from the
  host, nodeInfo, daemonEndpoints.kubeletEndpoint.Port, and the conditions Ready, MemoryPressure,
  DiskPressure, PIDPressure.  Ready is False with reason KubeletNotReady while no CNI config
  exists (the runtime's NetworkReady=false), True ("KubeletReady") otherwise.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import platform
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from podnet.api.client import LEASES, NODES, ApiError, Resource

log = logging.getLogger("podnet.kubelet.node")

Obj = dict[str, Any]
NODE_LEASE_NAMESPACE = "kube-node-lease"
KUBELET_VERSION = "v1.30.0-podnet"
CNI_NOT_READY = "container runtime network not ready: cni config uninitialized"


class Api(Protocol):
    """The part of podnet.api.client.Client the node agent uses (unit tests fake this)."""

    def get(self, res: Resource, name: str, namespace: str | None = None) -> Obj: ...

    def create(self, res: Resource, obj: Mapping[str, Any], namespace: str | None = None,
               **query: Any) -> Obj: ...

    def patch(self, res: Resource, name: str, patch: Any, namespace: str | None = None, *,
              patch_type: str = "merge", subresource: str | None = None, field_manager: str | None = None,
              force: bool | None = None) -> Obj: ...


@dataclass
class NodeConfig:
    name: str
    node_ip: str
    port: int = 10250
    max_pods: int = 110
    labels: dict[str, str] = field(default_factory=dict)
    lease_duration: int = 40
    runtime_name: str = "process"
    register: bool = True  # --register-node=false: the Node is made by someone else; wait for it


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    """MicroTime, as Lease renewTime is serialised."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------------------------- host facts
def detect_node_ip() -> str:
    """The source address of the default route (a UDP connect sends nothing), else loopback."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # TEST-NET-1: only the route lookup matters
        return str(s.getsockname()[0])
    return "127.0.0.1"


def memory_bytes(meminfo: str) -> int:
    """MemTotal from /proc/meminfo text, in bytes."""
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def host_capacity(max_pods: int) -> dict[str, str]:
    """capacity as upstream reports it: cpu cores, memory in Ki, pods = --max-pods."""
    try:
        with open("/proc/meminfo") as f:
            mem = memory_bytes(f.read())
    except OSError:
        mem = 0
    return {"cpu": str(os.cpu_count() or 1), "memory": f"{mem // 1024}Ki", "pods": str(max_pods)}


# ---------------------------------------------------------------------------------- objects (pure)
def node_object(cfg: NodeConfig) -> Obj:
    labels = {"kubernetes.io/hostname": cfg.name, "kubernetes.io/os": "linux",
              "kubernetes.io/arch": _arch(), **cfg.labels}
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": cfg.name, "labels": labels},
            "spec": {}}


def _arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def conditions(network_ready: bool, heartbeat: str, previous: list[Obj]) -> list[Obj]:
    """The four kubelet conditions; lastTransitionTime kept unless the status changed."""
    before = {c.get("type"): c for c in previous}
    ready = (("True", "KubeletReady", "kubelet is posting ready status") if network_ready
             else ("False", "KubeletNotReady", CNI_NOT_READY))
    wanted = [("MemoryPressure", "False", "KubeletHasSufficientMemory",
               "kubelet has sufficient memory available"),
              ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
              ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
              ("Ready", *ready)]
    out = []
    for type_, status, reason, message in wanted:
        old = before.get(type_) or {}
        transition = old.get("lastTransitionTime") if old.get("status") == status else None
        out.append({"type": type_, "status": status, "reason": reason, "message": message,
                    "lastHeartbeatTime": heartbeat, "lastTransitionTime": transition or heartbeat})
    return out


def node_status(cfg: NodeConfig, capacity: Mapping[str, str], network_ready: bool, heartbeat: str,
                previous: list[Obj]) -> Obj:
    uname = os.uname()
    return {
        "addresses": [{"type": "InternalIP", "address": cfg.node_ip},
                      {"type": "Hostname", "address": cfg.name}],
        "capacity": dict(capacity), "allocatable": dict(capacity),
        "conditions": conditions(network_ready, heartbeat, previous),
        "daemonEndpoints": {"kubeletEndpoint": {"Port": cfg.port}},
        "nodeInfo": {"kubeletVersion": KUBELET_VERSION, "kubeProxyVersion": "",
                     "containerRuntimeVersion": f"podnet-{cfg.runtime_name}://0.1",
                     "operatingSystem": "linux", "architecture": _arch(), "kernelVersion": uname.release,
                     "osImage": "podnet", "machineID": "", "systemUUID": "", "bootID": ""},
    }


def lease_object(node: str, duration: int, renew: str, node_uid: str | None) -> Obj:
    meta: Obj = {"name": node, "namespace": NODE_LEASE_NAMESPACE}
    if node_uid:  # upstream: the Lease is owned by its Node, so deleting the Node removes it
        meta["ownerReferences"] = [{"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid}]
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
            "spec": {"holderIdentity": node, "leaseDurationSeconds": duration, "renewTime": renew}}


# ---------------------------------------------------------------------------------- the agent
class NodeAgent:
    """Registers the node and keeps its Lease and status fresh (called from the kubelet loop)."""

    def __init__(self, api: Api, cfg: NodeConfig) -> None:
        self.api, self.cfg = api, cfg
        self.node: Obj | None = None

    @property
    def pod_cidr(self) -> str:
        return str(((self.node or {}).get("spec") or {}).get("podCIDR") or "")

    def register(self) -> Obj:
        """Create the Node, or adopt the existing one (labels merged in)."""
        if not self.cfg.register:
            self.node = self.api.get(NODES, self.cfg.name)
            return self.node
        try:
            self.node = self.api.create(NODES, node_object(self.cfg))
            log.info("registered node %s", self.cfg.name)
        except ApiError as e:
            if e.code != 409:
                raise
            labels = node_object(self.cfg)["metadata"]["labels"]
            self.node = self.api.patch(NODES, self.cfg.name, {"metadata": {"labels": labels}})
            log.info("node %s already registered; adopted it", self.cfg.name)
        return self.node

    def renew_lease(self) -> None:
        node_uid = ((self.node or {}).get("metadata") or {}).get("uid")
        try:
            self.api.patch(LEASES, self.cfg.name, {"spec": {"holderIdentity": self.cfg.name,
                                                            "leaseDurationSeconds": self.cfg.lease_duration,
                                                            "renewTime": now_micro()}},
                           NODE_LEASE_NAMESPACE)
        except ApiError as e:
            if not e.not_found:
                raise
            self.api.create(LEASES, lease_object(self.cfg.name, self.cfg.lease_duration, now_micro(),
                                                 node_uid), NODE_LEASE_NAMESPACE)

    def update_status(self, network_ready: bool) -> None:
        """Post the node status (a heartbeat in lastHeartbeatTime too); a deleted Node is re-registered."""
        try:
            current = self.api.get(NODES, self.cfg.name)
        except ApiError as e:
            if not e.not_found:
                raise
            current = self.register()
        previous = list((current.get("status") or {}).get("conditions") or [])
        status = node_status(self.cfg, host_capacity(self.cfg.max_pods), network_ready, now_rfc3339(),
                             previous)
        self.node = self.api.patch(NODES, self.cfg.name, {"status": status}, subresource="status")
