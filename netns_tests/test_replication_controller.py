"""podnet-controller-manager as a process against a real podnet-apiserver: one RC through scale up,
a deleted pod, a relabelled pod and scale down (no scheduler, no kubelet: pods stay Pending)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from netns_tests.apiserver_fixtures import ApiServerProcess, component_command, component_process
from podnet.api.client import PODS, REPLICATIONCONTROLLERS, Client
from podnet.testing.wait import wait_until

REPO = Path(__file__).resolve().parent.parent


def _rc(name: str, replicas: int) -> dict[str, Any]:
    template = {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "pause"}]}}
    return {"apiVersion": "v1", "kind": "ReplicationController", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"app": name}, "template": template}}


@pytest.fixture
def manager(apiserver: ApiServerProcess, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """podnet-controller-manager on the fixture's API server (and its log); killed by its PID."""
    log_path = tmp_path / "controller-manager.log"
    command = component_command("podnet-controller-manager", "controlplane.controllers")
    with component_process(apiserver, log_path, command) as proc:
        yield proc, log_path


def _live_pods(client: Client) -> dict[str, dict[str, Any]]:
    return {p["metadata"]["name"]: p for p in client.list(PODS, "default")["items"]
            if not p["metadata"].get("deletionTimestamp")}


def _owned(client: Client, uid: str) -> dict[str, dict[str, Any]]:
    def ours(pod: dict[str, Any]) -> bool:
        refs = pod["metadata"].get("ownerReferences") or []
        return any(r.get("uid") == uid and r.get("controller") for r in refs)
    return {name: p for name, p in _live_pods(client).items() if ours(p)}


def _settled(client: Client, uid: str, owned: int, total: int) -> Callable[[], bool]:
    def check() -> bool:
        return len(_owned(client, uid)) == owned and len(_live_pods(client)) == total
    return check


def _hold(cond: Callable[[], bool], seconds: float, what: str) -> None:
    """No duplicates after the fact: the count must stay right, not just pass through it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert cond(), f"{what} did not hold"
        time.sleep(0.2)


def test_rc_scale_delete_relabel(client: Client, manager: tuple[subprocess.Popen[bytes], Path]) -> None:
    proc, log_path = manager
    rc = client.create(REPLICATIONCONTROLLERS, _rc("web", 3), "default")
    uid = rc["metadata"]["uid"]
    wait_until(_settled(client, uid, 3, 3), 20.0, "3 owned pods")
    _hold(_settled(client, uid, 3, 3), 1.5, "3 owned pods")
    for pod in _owned(client, uid).values():
        assert pod["metadata"]["name"].startswith("web-")
        ref = pod["metadata"]["ownerReferences"][0]
        assert (ref["kind"], ref["name"], ref["blockOwnerDeletion"]) == ("ReplicationController", "web", True)

    def status_replicas(n: int) -> Callable[[], bool]:
        return lambda: (client.get(REPLICATIONCONTROLLERS, "web", "default").get("status") or {}).get(
            "replicas") == n

    wait_until(status_replicas(3), 10.0, "status.replicas=3")

    client.set_scale(REPLICATIONCONTROLLERS, "web", 5, "default")
    wait_until(_settled(client, uid, 5, 5), 20.0, "5 owned pods after scale")
    wait_until(status_replicas(5), 10.0, "status.replicas=5")

    victim = sorted(_owned(client, uid))[0]
    client.delete(PODS, victim, "default")
    wait_until(lambda: victim not in _live_pods(client) and _settled(client, uid, 5, 5)(), 20.0,
          "a replacement for the deleted pod")

    relabelled = sorted(_owned(client, uid))[0]
    client.patch(PODS, relabelled, {"metadata": {"labels": {"app": "debug"}}}, "default")
    wait_until(_settled(client, uid, 5, 6), 20.0, "the relabelled pod released and replaced")
    assert relabelled not in _owned(client, uid)
    assert not _live_pods(client)[relabelled]["metadata"].get("ownerReferences")
    _hold(_settled(client, uid, 5, 6), 1.5, "6 pods, 5 owned")

    client.set_scale(REPLICATIONCONTROLLERS, "web", 1, "default")
    wait_until(_settled(client, uid, 1, 2), 20.0, "1 owned pod after scale down")
    _hold(_settled(client, uid, 1, 2), 1.5, "1 owned pod")
    wait_until(status_replicas(1), 10.0, "status.replicas=1")

    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(15) == 0
    assert b"Traceback" not in log_path.read_bytes()
