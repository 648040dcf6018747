"""Pod sandboxes: one network namespace per pod, wired by CNI, recorded on disk for adoption.

A sandbox's id and netns name are derived from the pod uid ("podnet-<uid[:12]>"), so a restarted
kubelet (or a retried sync) can never make a second one for the same pod: ensure() finds the
existing one.  The record `<root-dir>/sandboxes/<id>.json` is written BEFORE the namespace and the
CNI ADD, so a kubelet killed half-way still knows the sandbox exists and tears it down or finishes
it (ADD is preceded by a DEL, which plugins must accept for an attachment they never saw).
Host-network pods get a record without a netns and no CNI calls.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from podnet import netns
from podnet.cniruntime import Attachment, CniConfig, k8s_args

log = logging.getLogger("podnet.kubelet.sandbox")

Obj = dict[str, Any]
SANDBOX_PREFIX = "podnet-"
IFNAME = "eth0"
_UNSAFE = re.compile(r"[^a-z0-9]")


class Cni(Protocol):
    """The part of podnet.cniruntime.CniRuntime the kubelet uses (unit tests fake this)."""

    def add(self, net: CniConfig, att: Attachment) -> Obj: ...

    def delete(self, net: CniConfig, att: Attachment) -> None: ...

    def gc(self, net: CniConfig, valid_attachments: list[Attachment]) -> None: ...


class Namespaces(Protocol):
    """podnet.netns's create/delete/exists (unit tests fake this)."""

    def create(self, name: str) -> str: ...

    def delete(self, name: str) -> None: ...

    def exists(self, name: str) -> bool: ...


class RealNamespaces:
    def create(self, name: str) -> str:
        return netns.create(name)

    def delete(self, name: str) -> None:
        netns.delete(name)

    def exists(self, name: str) -> bool:
        return netns.exists(name)


def sandbox_id(uid: str) -> str:
    return SANDBOX_PREFIX + _UNSAFE.sub("", uid.lower())[:12]


@dataclass
class Sandbox:
    id: str
    uid: str
    namespace: str
    name: str
    netns: str = ""  # netns name; "" for hostNetwork
    ips: list[str] = field(default_factory=list)  # pod IPs (no prefix), eth0's first
    ready: bool = False  # CNI ADD finished

    @property
    def netns_path(self) -> str:
        return netns.path_of(self.netns) if self.netns else ""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def pod_ips(result: Mapping[str, Any]) -> list[str]:
    """IPs of a CNI result, the ones on the sandbox's eth0 first (containerd takes eth0's)."""
    ifaces = result.get("interfaces") or []
    first: list[str] = []
    rest: list[str] = []
    for ip in result.get("ips") or []:
        addr = str(ip.get("address", "")).split("/")[0]
        idx = ip.get("interface")
        on_eth0 = idx is None or (isinstance(idx, int) and idx < len(ifaces)
                                   and ifaces[idx].get("name") == IFNAME and ifaces[idx].get("sandbox"))
        (first if on_eth0 else rest).append(addr)
    return [a for a in first + rest if a]


def port_mappings(pod: Mapping[str, Any]) -> list[Obj]:
    """The portMappings capability from containers' hostPorts (as the CRI passes them)."""
    out = []
    for c in (pod.get("spec") or {}).get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("hostPort"):
                out.append({"hostPort": int(p["hostPort"]), "containerPort": int(p["containerPort"]),
                            "protocol": str(p.get("protocol") or "TCP").lower(),
                            "hostIP": str(p.get("hostIP") or "")})
    return out


class Sandboxes:
    """Create, adopt and tear down sandboxes; state in `<root_dir>/sandboxes`."""

    def __init__(self, root_dir: str, cni: Cni, conf_dir: str, namespaces: Namespaces | None = None) -> None:
        self.dir = os.path.join(root_dir, "sandboxes")
        self.cni, self.conf_dir = cni, conf_dir
        self.namespaces = namespaces or RealNamespaces()
        os.makedirs(self.dir, exist_ok=True)

    def network(self) -> CniConfig:
        """The CNI network (raises NoCniConfig until one is installed)."""
        return CniConfig.load(self.conf_dir)

    def _path(self, sid: str) -> str:
        return os.path.join(self.dir, f"{sid}.json")

    def _save(self, sb: Sandbox) -> None:
        tmp = self._path(sb.id) + ".tmp"
        with open(tmp, "w") as f:
            json.dump(asdict(sb), f)
        os.replace(tmp, self._path(sb.id))

    def list(self) -> list[Sandbox]:
        out = []
        for name in sorted(os.listdir(self.dir)):
            if name.endswith(".json"):
                with contextlib.suppress(OSError, ValueError, TypeError), \
                        open(os.path.join(self.dir, name)) as f:
                    out.append(Sandbox(**json.load(f)))
        return out

    def get(self, uid: str) -> Sandbox | None:
        try:
            with open(self._path(sandbox_id(uid))) as f:
                return Sandbox(**json.load(f))
        except (OSError, ValueError, TypeError):
            return None

    def attachment(self, sb: Sandbox, pod: Mapping[str, Any] | None) -> Attachment:
        caps: Obj = {}
        if pod is not None and (pm := port_mappings(pod)):
            caps["portMappings"] = pm
        return Attachment(container_id=sb.id, netns=sb.netns_path, ifname=IFNAME,
                          args=k8s_args(sb.namespace, sb.name, sb.id, sb.uid), capability_args=caps)

    def ensure(self, pod: Mapping[str, Any]) -> Sandbox:
        """The pod's sandbox, created (or finished) if needed; idempotent."""
        meta = pod.get("metadata") or {}
        uid = str(meta["uid"])
        sb = self.get(uid)
        if sb is not None and sb.ready and (not sb.netns or self.namespaces.exists(sb.netns)):
            return sb
        host_network = bool((pod.get("spec") or {}).get("hostNetwork"))
        sb = Sandbox(id=sandbox_id(uid), uid=uid, namespace=str(meta.get("namespace", "default")),
                     name=str(meta["name"]), netns="" if host_network else sandbox_id(uid))
        self._save(sb)  # recorded first: a crash from here on is found again at start-up
        if not host_network:
            net = self.network()
            self.namespaces.create(sb.netns)
            att = self.attachment(sb, pod)
            with contextlib.suppress(Exception):
                self.cni.delete(net, att)  # a half-done ADD of a previous kubelet
            sb.ips = pod_ips(self.cni.add(net, att))
        sb.ready = True
        self._save(sb)
        log.info("sandbox %s for pod %s ready (ips %s)", sb.id, sb.key, sb.ips)
        return sb

    def teardown(self, sb: Sandbox, pod: Mapping[str, Any] | None = None) -> None:
        """CNI DEL, netns removal, record removal; safe to repeat."""
        if sb.netns:
            try:
                net: CniConfig | None = self.network()
            except Exception:
                net = None  # no config any more: nothing can run DEL; the netns still goes
                log.warning("sandbox %s: no CNI config; deleting the netns without CNI DEL", sb.id)
            if net is not None:
                self.cni.delete(net, self.attachment(sb, pod))
            self.namespaces.delete(sb.netns)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(sb.id))
        log.info("sandbox %s of pod %s removed", sb.id, sb.key)

    def gc(self, valid: builtins.list[Sandbox]) -> None:
        """Start-up CNI GC: every cached attachment not in `valid` is released (libcni GC)."""
        try:
            net = self.network()
        except Exception:
            return
        self.cni.gc(net, [self.attachment(sb, None) for sb in valid if sb.netns])
