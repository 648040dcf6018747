"""podnet-scheduler as a process against a real podnet-apiserver: 3 fake nodes, 12 pods, no kubelet."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from netns_tests.apiserver_fixtures import (
    ApiServerProcess,
    component_command,
    component_process,
    kubectl_binary,
)
from podnet.api.client import EVENTS, NODES, PODS, Client
from podnet.testing.wait import wait_until

REPO = Path(__file__).resolve().parent.parent
NODE_NAMES = ["node-a", "node-b", "node-c"]


def _node(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"zone": "z1"}},
            "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": "110"},
                       "capacity": {"cpu": "2", "memory": "4Gi", "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def _pod(name: str, node_selector: dict[str, str] | None = None) -> dict[str, Any]:
    container = {"name": "c", "image": "pause",
                 "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}
    spec: dict[str, Any] = {"containers": [container]}
    if node_selector:
        spec["nodeSelector"] = node_selector
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


@pytest.fixture
def scheduler(apiserver: ApiServerProcess, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """podnet-scheduler on the fixture's API server (and its log); killed by its recorded PID."""
    log_path = tmp_path / "scheduler.log"
    command = component_command("podnet-scheduler", "controlplane.scheduler")
    with component_process(apiserver, log_path, command) as proc:
        yield proc, log_path


def _pods(client: Client) -> dict[str, dict[str, Any]]:
    return {p["metadata"]["name"]: p for p in client.list(PODS, "default")["items"]}


def _scheduled_condition(pod: dict[str, Any]) -> dict[str, Any] | None:
    conds = (pod.get("status") or {}).get("conditions") or []
    return next((c for c in conds if c.get("type") == "PodScheduled"), None)


def test_binds_twelve_pods_spread_and_reports_unschedulable(
        client: Client, apiserver: ApiServerProcess, scheduler: tuple[subprocess.Popen[bytes], Path]) -> None:
    proc, log_path = scheduler
    for name in NODE_NAMES:
        client.create(NODES, _node(name))
    names = [f"web-{i:02d}" for i in range(12)]
    # half the pods come in the scheduler's first list, half through its watch
    for name in names[:6]:
        client.create(PODS, _pod(name), "default")
    wait_until(lambda: b"caches synced" in log_path.read_bytes(), 20.0, "the scheduler's caches to sync")
    for name in names[6:]:
        client.create(PODS, _pod(name), "default")
    client.create(PODS, _pod("nowhere", {"zone": "does-not-exist"}), "default")

    def all_bound() -> bool:
        pods = _pods(client)
        return all(pods[n]["spec"].get("nodeName") for n in names)

    wait_until(all_bound, 20.0, "12 pods bound")
    spread = Counter(_pods(client)[n]["spec"]["nodeName"] for n in names)
    assert spread == {name: 4 for name in NODE_NAMES}

    def nowhere_reported() -> bool:
        cond = _scheduled_condition(_pods(client)["nowhere"])
        return cond is not None and cond.get("status") == "False"

    wait_until(nowhere_reported, 20.0, "PodScheduled=False on the unschedulable pod")
    pod = _pods(client)["nowhere"]
    cond = _scheduled_condition(pod)
    assert cond is not None and cond["reason"] == "Unschedulable"
    assert cond["message"].startswith("0/3 nodes are available"), cond["message"]
    assert not pod["spec"].get("nodeName")

    # Events, as `kubectl describe pod` shows them: Scheduled per binding, FailedScheduling once
    def events() -> dict[tuple[str, str], dict[str, Any]]:
        items = client.list(EVENTS, "default")["items"]
        return {(e["involvedObject"]["name"], e["reason"]): e for e in items}

    wait_until(lambda: ("nowhere", "FailedScheduling") in events()
               and all((n, "Scheduled") in events() for n in names), 20.0, "the scheduler's events")
    scheduled = events()[("web-00", "Scheduled")]
    node_name = _pods(client)["web-00"]["spec"]["nodeName"]
    assert scheduled["message"] == f"Successfully assigned default/web-00 to {node_name}"
    assert scheduled["type"] == "Normal" and scheduled["source"] == {"component": "default-scheduler"}
    assert scheduled["involvedObject"]["kind"] == "Pod" and scheduled["involvedObject"]["uid"]
    failed = events()[("nowhere", "FailedScheduling")]
    assert failed["type"] == "Warning" and failed["message"] == cond["message"]
    assert sum(1 for key in events() if key[1] == "Scheduled") == 12
    kubectl = kubectl_binary(33)
    if kubectl is not None:  # what a user sees
        described = subprocess.run([kubectl, f"--kubeconfig={apiserver.kubeconfig()}", "describe", "pod",
                                    "web-00", "nowhere"], capture_output=True, text=True, timeout=30,
                                   check=True).stdout
        assert re.search(rf"Normal\s+Scheduled\s.*default-scheduler\s+Successfully assigned "
                         rf"default/web-00 to {node_name}", described), described
        assert re.search(r"Warning\s+FailedScheduling\s.*default-scheduler\s+0/3 nodes are available",
                         described), described

    # a node update (not a new node) that makes room: the parked pod is retried at once
    client.patch(NODES, "node-b", {"metadata": {"labels": {"zone": "does-not-exist"}}})
    wait_until(lambda: _pods(client)["nowhere"]["spec"].get("nodeName") == "node-b", 10.0,
               "the unschedulable pod bound after node-b was relabelled")

    # a clean exit on SIGTERM
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(15) == 0
