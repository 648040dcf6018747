"""An RC, an RS and a Deployment under churn with a real podnet-apiserver and controller manager:
pods deleted, pods relabelled, scale up and down, and the controller manager SIGKILLed mid-way and
replaced by a fresh process.  Every workload must converge to exactly its desired count and stay
there (no duplicate creations from the new process, no over-deletion)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from netns_tests.apiserver_fixtures import ApiServerProcess, component_process
from netns_tests.test_deployment import NS, Kubelet, deployment, live_pods, manager_command
from podnet.api.client import DEPLOYMENTS, PODS, REPLICASETS, REPLICATIONCONTROLLERS, Client, Resource
from podnet.testing.wait import wait_until

Obj = dict[str, Any]
CONTROLLERS = ("replicationcontroller", "replicaset", "deployment")


def _template(app: str) -> Obj:
    return {"metadata": {"labels": {"app": app, "tier": "fe"}},
            "spec": {"containers": [{"name": "c", "image": "pause"}]}}


def _rc(replicas: int) -> Obj:
    return {"apiVersion": "v1", "kind": "ReplicationController", "metadata": {"name": "rc"},
            "spec": {"replicas": replicas, "selector": {"app": "rc"}, "template": _template("rc")}}


def _rs(replicas: int) -> Obj:
    selector = {"matchLabels": {"app": "rs"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["fe", "be"]}]}
    return {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "rs"},
            "spec": {"replicas": replicas, "selector": selector, "template": _template("rs")}}


WORKLOADS: dict[str, Resource] = {"rc": REPLICATIONCONTROLLERS, "rs": REPLICASETS, "dep": DEPLOYMENTS}


def _scale(client: Client, sizes: dict[str, int]) -> None:
    for name, replicas in sizes.items():
        client.set_scale(WORKLOADS[name], name, replicas, NS)


def _counts(client: Client) -> dict[str, int]:
    """Live pods per app label (released pods carry another app label)."""
    counts: dict[str, int] = {}
    for pod in live_pods(client, ""):
        app = pod["metadata"].get("labels", {}).get("app", "")
        counts[app] = counts.get(app, 0) + 1
    return counts


def _owned_by_controller(client: Client) -> bool:
    """Every pod still labelled for a workload has exactly one controller reference."""
    for pod in live_pods(client, ""):
        refs = [r for r in pod["metadata"].get("ownerReferences") or [] if r.get("controller")]
        if pod["metadata"]["labels"].get("app") in WORKLOADS and len(refs) != 1:
            return False
    return True


def _converged(client: Client, kubelet: Kubelet, want: dict[str, int]) -> Callable[[], bool]:
    def check() -> bool:
        kubelet.ready_all("")
        return _counts(client) == want and _owned_by_controller(client)
    return check


def _hold(client: Client, want: dict[str, int], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert _counts(client) == want
        time.sleep(0.2)


def _churn(client: Client) -> list[str]:
    """Delete one pod and relabel another of each workload; returns the relabelled pods' apps."""
    relabelled = []
    for app in WORKLOADS:
        pods = sorted(p["metadata"]["name"] for p in live_pods(client, f"app={app}"))
        client.delete(PODS, pods[0], NS)
        client.patch(PODS, pods[1], {"metadata": {"labels": {"app": f"debug-{app}"}}}, NS)
        relabelled.append(f"debug-{app}")
    return relabelled


def test_rc_rs_deployment_converge_under_churn_and_restart(apiserver: ApiServerProcess, client: Client,
                                                           tmp_path: Path) -> None:
    kubelet = Kubelet(client)
    with component_process(apiserver, tmp_path / "cm1.log", manager_command(*CONTROLLERS)) as first:
        client.create(REPLICATIONCONTROLLERS, _rc(3), NS)
        client.create(REPLICASETS, _rs(3), NS)
        client.create(DEPLOYMENTS, deployment("dep", 3, surge=1, unavailable=0), NS)
        want = {"rc": 3, "rs": 3, "dep": 3}
        wait_until(_converged(client, kubelet, want), 20.0, f"first convergence to {want}")

        relabelled = _churn(client)
        want.update({app: 1 for app in relabelled})
        _scale(client, {"rc": 5, "rs": 2, "dep": 6})
        os.kill(first.pid, signal.SIGKILL)  # mid-way: the manager is reacting to the churn and scales
        first.wait(10)

    with component_process(apiserver, tmp_path / "cm2.log", manager_command(*CONTROLLERS)) as second:
        want.update({"rc": 5, "rs": 2, "dep": 6})
        wait_until(_converged(client, kubelet, want), 30.0, f"convergence to {want} after the restart")
        _hold(client, want, 1.5)

        _churn(client)
        want.update({app: 2 for app in relabelled})
        want.update({"rc": 2, "rs": 4, "dep": 2})
        _scale(client, {"rc": 2, "rs": 4, "dep": 2})
        wait_until(_converged(client, kubelet, want), 30.0, f"convergence to {want}")
        _hold(client, want, 2.0)

        for name, res in WORKLOADS.items():
            status = client.get(res, name, NS).get("status") or {}
            assert status.get("replicas") == want[name], (name, status)
        d_status = client.get(DEPLOYMENTS, "dep", NS)["status"]
        assert (d_status["updatedReplicas"], d_status["availableReplicas"]) == (2, 2)
        os.kill(second.pid, signal.SIGTERM)
        assert second.wait(15) == 0
    for log in ("cm1.log", "cm2.log"):
        assert b"Traceback" not in (tmp_path / log).read_bytes(), log


ELECTION = ["--leader-elect=true", "--leader-elect-lease-duration=3s", "--leader-elect-renew-deadline=2s",
            "--leader-elect-retry-period=0.3s"]


def _leader(log_path: Path) -> bool:
    return b"caches synced" in log_path.read_bytes()


def test_two_managers_the_leader_killed_mid_churn(apiserver: ApiServerProcess, client: Client,
                                                  tmp_path: Path) -> None:
    """Two replicas with leader election: only one acts; SIGKILL it mid-churn and the other takes
    over once the lease expires, converging without duplicates."""
    kubelet = Kubelet(client)
    command = [*manager_command(*CONTROLLERS)[:-1], *ELECTION]  # drop --leader-elect=false
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    with (component_process(apiserver, logs[0], command) as a,
          component_process(apiserver, logs[1], command) as b):
        wait_until(lambda: _leader(logs[0]) or _leader(logs[1]), 15.0, "a leader")
        leader, standby = (a, b) if _leader(logs[0]) else (b, a)
        client.create(REPLICATIONCONTROLLERS, _rc(3), NS)
        client.create(REPLICASETS, _rs(3), NS)
        client.create(DEPLOYMENTS, deployment("dep", 3, surge=1, unavailable=0), NS)
        want = {"rc": 3, "rs": 3, "dep": 3}
        wait_until(_converged(client, kubelet, want), 20.0, f"convergence to {want}")
        assert not _leader(logs[1] if leader is a else logs[0])  # the standby did nothing

        relabelled = _churn(client)
        want.update({app: 1 for app in relabelled})
        want.update({"rc": 4, "rs": 5, "dep": 1})
        _scale(client, {"rc": 4, "rs": 5, "dep": 1})
        os.kill(leader.pid, signal.SIGKILL)
        wait_until(_converged(client, kubelet, want), 30.0, f"convergence to {want} under the new leader")
        _hold(client, want, 2.0)
        assert standby.poll() is None and _leader(logs[0] if standby is a else logs[1])
