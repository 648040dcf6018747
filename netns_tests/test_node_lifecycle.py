"""A node dies and its workload moves: real podnet-apiserver, podnet-scheduler and
podnet-controller-manager (replicationcontroller + nodelifecycle) processes, three fake nodes
heartbeated by a test thread that renews their Leases (there is no kubelet)."""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from netns_tests.apiserver_fixtures import ApiServerProcess, component_command, component_process
from podnet.api.client import EVENTS, LEASES, NODES, PODS, REPLICATIONCONTROLLERS, Client
from podnet.api.kubeconfig import load_kubeconfig
from podnet.testing.wait import wait_until

NODE_NAMES = ["node-1", "node-2", "node-3"]
GRACE, PERIOD, EVICTION = 3.0, 0.5, 3.0
HEARTBEAT = 0.5
UNREACHABLE = "node.kubernetes.io/unreachable"


def _micro(now: float | None = None) -> str:
    stamp = datetime.datetime.fromtimestamp(time.time() if now is None else now, datetime.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _conditions(ready: str) -> list[dict[str, Any]]:
    now = _micro()
    conds = [{"type": t, "status": "False", "reason": f"KubeletHas{t}"}
             for t in ("MemoryPressure", "DiskPressure", "PIDPressure")]
    conds.append({"type": "Ready", "status": ready, "reason": "KubeletReady"})
    for cond in conds:
        cond.update(lastHeartbeatTime=now, lastTransitionTime=now)
    return conds


def _node(name: str) -> dict[str, Any]:
    capacity = {"cpu": "4", "memory": "8Gi", "pods": "110"}
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"capacity": capacity, "allocatable": capacity, "conditions": _conditions("True")}}


def _rc(name: str, replicas: int) -> dict[str, Any]:
    container = {"name": "c", "image": "pause", "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}
    template = {"metadata": {"labels": {"app": name}}, "spec": {"containers": [container]}}
    return {"apiVersion": "v1", "kind": "ReplicationController", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"app": name}, "template": template}}


class Heartbeats:
    """The kubelets' part: renew each live node's Lease every HEARTBEAT seconds on a thread."""

    def __init__(self, client: Client, names: list[str]) -> None:
        self.client, self.alive = client, set(names)
        self.stop = threading.Event()
        self.errors: list[Exception] = []
        self.renewed: dict[str, float] = {}  # node -> when its last renewal returned (monotonic)
        for name in names:
            lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                     "metadata": {"name": name, "namespace": "kube-node-lease"},
                     "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": _micro()}}
            client.create(LEASES, lease, "kube-node-lease")
        self.thread = threading.Thread(target=self._run, name="heartbeats", daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(HEARTBEAT):
            for name in sorted(self.alive):
                try:
                    self.client.patch(LEASES, name, {"spec": {"renewTime": _micro()}}, "kube-node-lease")
                    self.renewed[name] = time.monotonic()
                except Exception as e:  # reported by the test, not swallowed
                    self.errors.append(e)


@pytest.fixture
def heartbeats(apiserver: ApiServerProcess) -> Iterator[Heartbeats]:
    client = Client.from_config(load_kubeconfig(apiserver.kubeconfig()))
    for name in NODE_NAMES:
        client.create(NODES, _node(name))
    beats = Heartbeats(client, NODE_NAMES)
    beats.thread.start()
    try:
        yield beats
    finally:
        beats.stop.set()
        beats.thread.join(5)
        client.close()


@pytest.fixture
def processes(apiserver: ApiServerProcess, tmp_path: Path, heartbeats: Heartbeats
              ) -> Iterator[tuple[subprocess.Popen[bytes], subprocess.Popen[bytes], Path]]:
    """podnet-scheduler and podnet-controller-manager, killed by their recorded PIDs at the end."""
    scheduler = [*component_command("podnet-scheduler", "controlplane.scheduler"), "--leader-elect=false"]
    manager = [*component_command("podnet-controller-manager", "controlplane.controllers"),
               "--leader-elect=false", "--controllers", "replicationcontroller,nodelifecycle",
               f"--node-monitor-grace-period={GRACE}s", f"--node-monitor-period={PERIOD}s",
               f"--pod-eviction-timeout={EVICTION}s"]
    log_path = tmp_path / "controller-manager.log"
    with component_process(apiserver, tmp_path / "scheduler.log", scheduler) as sched, \
            component_process(apiserver, log_path, manager) as cm:
        yield sched, cm, log_path


def _node_obj(client: Client, name: str) -> dict[str, Any]:
    return client.get(NODES, name)


def _ready_of(obj: dict[str, Any]) -> str | None:
    """The Ready condition's status of a node or a pod."""
    conds = (obj.get("status") or {}).get("conditions") or []
    return next((c.get("status") for c in conds if c["type"] == "Ready"), None)



def _taints(node: dict[str, Any]) -> set[tuple[str, str]]:
    return {(t["key"], t["effect"]) for t in (node.get("spec") or {}).get("taints") or []}


def _pods(client: Client) -> list[dict[str, Any]]:
    return list(client.list(PODS, "default", label_selector="app=web")["items"])


def _active(client: Client) -> list[dict[str, Any]]:
    return [p for p in _pods(client) if not p["metadata"].get("deletionTimestamp")]


def _timed(predicate: Any, timeout: float, what: str) -> float:
    start = time.monotonic()
    wait_until(predicate, timeout, what)
    return time.monotonic() - start


def test_node_failure_moves_pods_and_recovery_untaints(
        client: Client, heartbeats: Heartbeats,
        processes: tuple[subprocess.Popen[bytes], subprocess.Popen[bytes], Path]) -> None:
    sched, cm, log_path = processes
    client.create(REPLICATIONCONTROLLERS, _rc("web", 6), "default")

    def six_bound() -> bool:
        pods = _active(client)
        return len(pods) == 6 and all(p["spec"].get("nodeName") for p in pods)

    wait_until(six_bound, 30.0, "6 pods bound")
    spread = Counter(p["spec"]["nodeName"] for p in _active(client))
    assert spread == {name: 2 for name in NODE_NAMES}, spread
    victims = sorted(p["metadata"]["name"] for p in _active(client) if p["spec"]["nodeName"] == "node-1")
    for name in victims:  # as a kubelet would report them, so MarkPodsNotReady has something to do
        client.patch(PODS, name, {"status": {"conditions": [{"type": "Ready", "status": "True"}]}},
                     "default", subresource="status")
    # the healthy nodes stay healthy over a full grace period: lease renewals alone count
    time.sleep(GRACE + 2 * PERIOD)
    assert all(_ready_of(_node_obj(client, n)) == "True" and not _taints(_node_obj(client, n))
               for n in NODE_NAMES)

    # node-1 dies: no more lease renewals
    heartbeats.alive.discard("node-1")
    time.sleep(2 * HEARTBEAT)  # a renewal already under way when it was dropped has landed
    wait_until(lambda: _ready_of(_node_obj(client, "node-1")) == "Unknown", GRACE + 5.0,
               "node-1 Ready=Unknown")
    to_unknown = time.monotonic() - heartbeats.renewed["node-1"]
    # not before the grace period (the controller saw the last renewal no earlier than it was made),
    # and within it plus one monitor period and some scheduling slack
    assert GRACE - 0.3 <= to_unknown <= GRACE + PERIOD + 2.0, to_unknown
    node = _node_obj(client, "node-1")
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "NodeStatusUnknown"
    assert ready["message"] == "Kubelet stopped posting node status."
    assert {c["type"]: c["status"] for c in node["status"]["conditions"]} == {
        "Ready": "Unknown", "MemoryPressure": "Unknown", "DiskPressure": "Unknown", "PIDPressure": "Unknown"}
    wait_until(lambda: _taints(_node_obj(client, "node-1")) == {(UNREACHABLE, "NoExecute"),
                                                                  (UNREACHABLE, "NoSchedule")},
               5.0, "unreachable taints on node-1")
    tainted = time.monotonic()
    wait_until(lambda: all(_ready_of(client.get(PODS, n, "default")) == "False" for n in victims), 5.0,
               "node-1's pods marked NotReady")
    assert all(_ready_of(_node_obj(client, n)) == "True" for n in ("node-2", "node-3"))

    def evicted() -> bool:
        return all(client.get(PODS, n, "default")["metadata"].get("deletionTimestamp") for n in victims)

    wait_until(evicted, EVICTION + 10.0, "node-1's pods evicted")
    to_evicted = time.monotonic() - tainted
    assert EVICTION - 1.0 <= to_evicted <= EVICTION + 5.0, to_evicted

    def moved() -> bool:
        pods = _active(client)
        return len(pods) == 6 and all(p["spec"].get("nodeName") in ("node-2", "node-3") for p in pods)

    to_moved = _timed(moved, 30.0, "6 active pods on node-2 and node-3") + to_evicted
    print(f"node-1 silent -> Ready=Unknown {to_unknown:.2f}s; tainted -> pods evicted {to_evicted:.2f}s; "
          f"-> 6 active pods elsewhere {to_moved:.2f}s")
    # the evicted pods stay Terminating (no kubelet confirms), bound to node-1
    assert sorted(p["metadata"]["name"] for p in _pods(client) if p["metadata"].get("deletionTimestamp")) \
        == victims
    wait_until(lambda: (client.get(REPLICATIONCONTROLLERS, "web", "default").get("status") or {}).get(
        "replicas") == 6, 10.0, "RC status.replicas=6")

    # node-1 is back: lease renewals again, and its kubelet posts Ready=True
    heartbeats.alive.add("node-1")
    client.patch(NODES, "node-1", {"status": {"conditions": _conditions("True")}}, subresource="status")
    wait_until(lambda: not _taints(_node_obj(client, "node-1")), 10.0, "node-1's taints removed")
    assert _ready_of(_node_obj(client, "node-1")) == "True"
    pinned = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pinned"},
              "spec": {"nodeSelector": {"kubernetes.io/hostname": "node-1"},
                       "containers": [{"name": "c", "image": "pause"}]}}
    client.create(PODS, pinned, "default")
    wait_until(lambda: client.get(PODS, "pinned", "default")["spec"].get("nodeName") == "node-1", 15.0,
               "a pod scheduled to node-1 again")
    assert not heartbeats.errors, heartbeats.errors[:3]

    def events(reason: str) -> set[str]:
        return {e["involvedObject"]["name"] for e in client.list(EVENTS, "default")["items"]
                if e["reason"] == reason}

    wait_until(lambda: events("TaintManagerEviction") == set(victims) and "node-1" in events("NodeNotReady"),
               10.0, "TaintManagerEviction and NodeNotReady events")
    assert set(victims) <= events("NodeNotReady")  # MarkPodsNotReady's per-pod event

    for proc in (cm, sched):
        os.kill(proc.pid, signal.SIGTERM)
    assert cm.wait(15) == 0 and sched.wait(15) == 0
    assert b"Traceback" not in log_path.read_bytes()
