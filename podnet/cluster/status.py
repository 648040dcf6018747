"""`podnet status`: daemons (by recorded PID), nodes with their subnets, pods with their IPs."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

from podnet import tls
from podnet.api.client import NODES, PODS, ApiError, Client
from podnet.api.kubeconfig import load_kubeconfig
from podnet.cluster import plan as P
from podnet.cluster.manifest import Manifest, ProcRecord, is_alive
from podnet.cluster.up import ETCD_CLIENT, http_ok

FLANNEL_PUBLIC_IP = "flannel.alpha.coreos.com/public-ip"


def collect(state_dir: Path) -> dict[str, Any] | None:
    """Everything `status` shows, as data (None: no cluster in `state_dir`)."""
    path = state_dir / "manifest.json"
    if not path.exists():
        return None
    m = Manifest.load(path)
    out: dict[str, Any] = {"state_dir": str(state_dir), "info": m.info,
                           "processes": [_proc(p) for p in m.processes], "nodes": [], "pods": [],
                           "health": [], "api_error": None}
    out["health"] = health(state_dir, m)
    kubeconfig = m.info.get("kubeconfig")
    if not kubeconfig:
        out["api_error"] = "no kubeconfig yet (start-up incomplete)"
        return out
    try:
        client = Client.from_config(load_kubeconfig(kubeconfig))
        try:
            out["nodes"] = client.list_all(NODES)[0]
            out["pods"] = client.list_all(PODS)[0]
        finally:
            client.close()
    except (ApiError, OSError) as e:
        out["api_error"] = str(e)
    return out


def health(state_dir: Path, m: Manifest) -> list[dict[str, Any]]:
    """The daemons' own health endpoints, each probed from the namespace it serves in."""
    plan = P.make_plan(str(state_dir), max(1, len(m.info.get("nodes", []))), m.info.get("backend", "vxlan"))
    checks: list[tuple[str, str, str | None, ssl.SSLContext | None]] = []
    if m.process("etcd") is not None:
        checks.append(("etcd", f"{ETCD_CLIENT}/health", plan.cp_netns, None))
    if m.info.get("api_port"):
        ctx = ssl.create_default_context(cafile=str(plan.cert_dir / tls.CA_CERT))
        checks.append(("apiserver", f"https://127.0.0.1:{m.info['api_port']}/readyz", None, ctx))
    for node in plan.nodes:
        if m.process(f"{node.name}/flanneld") is not None:
            checks.append((f"{node.name}/flanneld", f"http://{node.ip}:{P.FLANNEL_HEALTHZ_PORT}/healthz",
                           node.netns, None))
    return [{"name": name, "url": url, "ok": http_ok(url, where, ctx)}
            for name, url, where, ctx in checks]


def _proc(rec: ProcRecord) -> dict[str, Any]:
    return {"name": rec.name, "pid": rec.pid, "alive": is_alive(rec), "log": rec.log}


def _ready(node: dict[str, Any]) -> str:
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return "Ready" if cond.get("status") == "True" else "NotReady"
    return "Unknown"


def render(data: dict[str, Any]) -> str:
    """The human-readable report (pure: table-tested)."""
    info = data["info"]
    lines = [f"cluster in {data['state_dir']}  (flannel {info.get('backend', '?')})"]
    if info.get("kubeconfig"):
        lines.append(f"  kubeconfig: {info['kubeconfig']}  (API https://127.0.0.1:{info.get('api_port')})")
    lines.append("daemons:")
    for p in data["processes"]:
        lines.append(f"  {p['name']:<28} pid {p['pid']:<8} {'running' if p['alive'] else 'DEAD'}")
    for h in data.get("health", []):
        lines.append(f"  {h['name'] + ' health':<28} {'ok' if h['ok'] else 'FAILING':<13} {h['url']}")
    if data["api_error"]:
        lines.append(f"API server unreachable: {data['api_error']}")
        return "\n".join(lines) + "\n"
    lines.append("nodes:")
    for n in data["nodes"]:
        meta, spec = n.get("metadata", {}), n.get("spec", {})
        lines.append(f"  {meta.get('name', '?'):<12} {_ready(n):<9} subnet {spec.get('podCIDR', '-'):<16} "
                     f"public-ip {(meta.get('annotations') or {}).get(FLANNEL_PUBLIC_IP, '-')}")
    lines.append(f"pods: {len(data['pods'])}")
    for pod in data["pods"]:
        meta, spec, st = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status", {})
        lines.append(f"  {meta.get('namespace', '')}/{meta.get('name', '')}  {st.get('phase', '-')}  "
                     f"node {spec.get('nodeName') or '-'}  ip {st.get('podIP') or '-'}")
    return "\n".join(lines) + "\n"
