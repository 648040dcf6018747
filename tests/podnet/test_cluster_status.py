"""podnet.cluster.status: the report (pure render) and a state dir without a cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from podnet.cluster import status
from podnet.cluster.manifest import Manifest, ProcRecord


def data(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "state_dir": "/s", "info": {"backend": "vxlan", "kubeconfig": "/s/kubeconfig", "api_port": 6443},
        "processes": [{"name": "etcd", "pid": 10, "alive": True, "log": "l"},
                      {"name": "node-1/flanneld", "pid": 11, "alive": False, "log": "l"}],
        "nodes": [{"metadata": {"name": "node-1",
                                "annotations": {status.FLANNEL_PUBLIC_IP: "10.250.0.11"}},
                   "spec": {"podCIDR": "10.244.0.0/24"},
                   "status": {"conditions": [{"type": "Ready", "status": "True"}]}},
                  {"metadata": {"name": "node-2"}, "spec": {},
                   "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}],
        "pods": [{"metadata": {"namespace": "default", "name": "web"}, "spec": {"nodeName": "node-1"},
                  "status": {"phase": "Running", "podIP": "10.244.0.5"}}],
        "health": [{"name": "etcd", "url": "http://127.0.0.1:2379/health", "ok": True},
                   {"name": "node-1/flanneld", "url": "http://10.250.0.11:8285/healthz", "ok": False}],
        "api_error": None,
    }
    return {**base, **over}


def test_render_lists_daemons_nodes_subnets_and_pods() -> None:
    text = status.render(data())
    assert "flannel vxlan" in text and "https://127.0.0.1:6443" in text
    assert "etcd" in text and "running" in text and "DEAD" in text
    assert any("etcd health" in line and " ok " in line for line in text.splitlines())
    assert any("node-1/flanneld health" in line and "FAILING" in line for line in text.splitlines())
    node1 = next(line for line in text.splitlines() if "node-1 " in line and "subnet" in line)
    assert "Ready" in node1 and "10.244.0.0/24" in node1 and "10.250.0.11" in node1
    node2 = next(line for line in text.splitlines() if "node-2" in line)
    assert "NotReady" in node2 and "subnet -" in node2
    assert "default/web  Running  node node-1  ip 10.244.0.5" in text


def test_render_says_when_the_api_server_is_unreachable() -> None:
    text = status.render(data(api_error="connection refused", nodes=[], pods=[]))
    assert "API server unreachable: connection refused" in text
    assert "nodes:" not in text


def test_collect_without_a_cluster_is_none(tmp_path: Path) -> None:
    assert status.collect(tmp_path) is None


def test_collect_before_the_kubeconfig_exists_reports_processes(tmp_path: Path) -> None:
    m = Manifest(path=tmp_path / "manifest.json", prefix="pnx")
    m.add_process(ProcRecord(name="etcd", pid=2**22 + 7, start_ticks=1, argv=[], log="l"))
    got = status.collect(tmp_path)
    assert got is not None
    assert got["processes"] == [{"name": "etcd", "pid": 2**22 + 7, "alive": False, "log": "l"}]
    assert "start-up incomplete" in got["api_error"]
