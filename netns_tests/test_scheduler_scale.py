"""podnet-scheduler at scale against a real podnet-apiserver: 500 pods with requests over 10 fake
Ready nodes whose capacity is nearly used up.  Every pod is bound, exactly once (seen through a
watch: one empty -> node transition per pod, never a second), and no node holds more pods, cpu or
memory than its allocatable."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from netns_tests.apiserver_fixtures import ApiServerProcess, component_command, component_process
from podnet.api.client import NODES, PODS, Client, WatchStream
from podnet.testing.wait import wait_until

PODS_TOTAL = 500
MI = 1024 * 1024


def _node(name: str, cpu: str, memory: str, pods: int) -> dict[str, Any]:
    allocatable = {"cpu": cpu, "memory": memory, "pods": str(pods)}
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "status": {"allocatable": allocatable, "capacity": dict(allocatable),
                       "conditions": [{"type": "Ready", "status": "True"}]}}


# Nine nodes cap at 55 pods each (495) and have cpu/memory to spare; node-09 has room for 110 pods
# but only 1.5 cpu / 2Gi, so cpu and memory stop it after 10-13 pods.  505+ slots for 500 pods:
# all fit only if every filter is applied against every earlier binding.
NODES_SPEC = [(f"node-{i:02d}", "10", "12Gi", 55) for i in range(9)] + [("node-09", "1500m", "2Gi", 110)]
SIZES = [("100m", 128 * MI), ("150m", 172 * MI)]


def _pod(i: int) -> dict[str, Any]:
    cpu, memory = SIZES[i % 2]
    requests = {"cpu": cpu, "memory": str(memory)}
    container = {"name": "c", "image": "pause", "resources": {"requests": requests}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"p-{i:03d}", "labels": {"app": "scale"}},
            "spec": {"containers": [container]}}


class BindingWatch:
    """Every nodeName transition of the namespace's pods, from a watch opened before any pod exists."""

    def __init__(self, client: Client, resource_version: str) -> None:
        self.stream: WatchStream = client.watch(PODS, "default", resource_version=resource_version,
                                                timeout_seconds=300)
        self.node_of: dict[str, str] = {}
        self.transitions: Counter[str] = Counter()  # pod -> how many times its nodeName changed
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for event in self.stream:
            name = event.object["metadata"]["name"]
            node = (event.object.get("spec") or {}).get("nodeName") or ""
            if node != self.node_of.get(name, ""):
                self.transitions[name] += 1
                self.node_of[name] = node

    def close(self) -> None:
        self.stream.close()
        self.thread.join(10)


@pytest.fixture
def scheduler(apiserver: ApiServerProcess, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    log_path = tmp_path / "scheduler.log"
    command = [*component_command("podnet-scheduler", "controlplane.scheduler"), "--leader-elect=false"]
    with component_process(apiserver, log_path, command) as proc:
        yield proc, log_path


def _units(pods: list[dict[str, Any]], resource: str) -> int:
    total = 0
    for pod in pods:
        text = pod["spec"]["containers"][0]["resources"]["requests"][resource]
        total += int(text[:-1]) if text.endswith("m") else int(text) * (1000 if resource == "cpu" else 1)
    return total


def test_500_pods_on_10_nodes_bound_once_within_capacity(
        client: Client, scheduler: tuple[subprocess.Popen[bytes], Path]) -> None:
    proc, log_path = scheduler
    for name, cpu, memory, pods in NODES_SPEC:
        client.create(NODES, _node(name, cpu, memory, pods))
    rv = client.list(PODS, "default")["metadata"]["resourceVersion"]
    watch = BindingWatch(client, rv)
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: client.create(PODS, _pod(i), "default"), range(PODS_TOTAL)))
        wait_until(lambda: sum(1 for n in watch.node_of.values() if n) == PODS_TOTAL, 45.0,
                   f"{PODS_TOTAL} pods bound", interval=0.2)
        elapsed = time.monotonic() - started
        time.sleep(0.5)  # a late second binding would show up in the watch by now
    finally:
        watch.close()
    print(f"{PODS_TOTAL} pods created and bound in {elapsed:.1f} s")
    assert set(watch.transitions.values()) == {1}, "a pod was bound twice or moved"
    pods = client.list(PODS, "default")["items"]
    assert len(pods) == PODS_TOTAL and all(p["spec"].get("nodeName") for p in pods)
    by_node: dict[str, list[dict[str, Any]]] = {}
    for pod in pods:
        assert pod["spec"]["nodeName"] == watch.node_of[pod["metadata"]["name"]]
        by_node.setdefault(pod["spec"]["nodeName"], []).append(pod)
    for name, cpu, memory, max_pods in NODES_SPEC:
        placed = by_node.get(name, [])
        cpu_m = int(cpu[:-1]) if cpu.endswith("m") else int(cpu) * 1000
        assert len(placed) <= max_pods, name
        assert _units(placed, "cpu") <= cpu_m, name
        assert _units(placed, "memory") <= int(memory[:-2]) * 1024 * MI, name
    # the others take at most 495; node-09's cpu/memory (not its 110 pod slots) cap it at 15
    assert PODS_TOTAL - 9 * 55 <= len(by_node["node-09"]) <= 15
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(15) == 0
    assert f"stopped after {PODS_TOTAL} bindings" in log_path.read_text()
