"""Two replicas of podnet-controller-manager / podnet-scheduler against a real podnet-apiserver: only
the holder of the kube-system Lease acts.  Counted through watches: every pod created exactly once,
every pod bound exactly once, across a SIGKILLed leader (takeover after the lease expires) and a
SIGTERMed leader (lease released, takeover at the standby's next retry)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from netns_tests.apiserver_fixtures import ApiServerProcess, component_command, component_process
from podnet.api.client import LEASES, NODES, PODS, REPLICATIONCONTROLLERS, Client, Resource
from podnet.testing.wait import wait_until

LEASE_DURATION = 3.0
RETRY_PERIOD = 0.3
ELECTION_ARGS = [f"--leader-elect-lease-duration={LEASE_DURATION}s", "--leader-elect-renew-deadline=2s",
                 f"--leader-elect-retry-period={RETRY_PERIOD}s"]
CONTROLLER_MANAGER = [*component_command("podnet-controller-manager", "controlplane.controllers"),
                      "--controllers=replicationcontroller", "--resync-period=5s", *ELECTION_ARGS]
SCHEDULER = [*component_command("podnet-scheduler", "controlplane.scheduler"), *ELECTION_ARGS]
LEADER = re.compile(rb"became leader: (\S+) holds lease")
CANDIDATE = re.compile(rb"attempting to acquire leader lease \S+ as (\S+)")


class Replica:
    """One component process; its identity is read from its log."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.name, self.proc, self.log_path = name, proc, log_path

    def log(self) -> bytes:
        return self.log_path.read_bytes()

    def identity(self) -> str:
        wait_until(lambda: CANDIDATE.search(self.log()) is not None, 20.0, f"{self.name} to start electing")
        match = CANDIDATE.search(self.log())
        assert match is not None
        return match.group(1).decode()

    def led(self) -> bool:
        return LEADER.search(self.log()) is not None

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)


class Recorder:
    """Every watch event of a resource from now on, recorded on a thread with its arrival time."""

    def __init__(self, client: Client, res: Resource, namespace: str) -> None:
        rv = client.list(res, namespace)["metadata"]["resourceVersion"]
        self.stream = client.watch(res, namespace, resource_version=rv, timeout_seconds=600)
        self.events: list[tuple[float, str, dict[str, Any]]] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        for event in self.stream:
            with self.lock:
                self.events.append((time.monotonic(), event.type, event.object))

    def snapshot(self) -> list[tuple[float, str, dict[str, Any]]]:
        with self.lock:
            return list(self.events)

    def close(self) -> None:
        self.stream.close()
        self.thread.join(5)


@contextlib.contextmanager
def _replicas(server: ApiServerProcess, tmp_path: Path, command: list[str],
              names: list[str]) -> Iterator[list[Replica]]:
    """The named replicas started together, each killed by its recorded PID at exit."""
    with contextlib.ExitStack() as stack:
        replicas = [Replica(n, stack.enter_context(component_process(server, tmp_path / f"{n}.log", command)),
                            tmp_path / f"{n}.log") for n in names]
        yield replicas


@contextlib.contextmanager
def _recording(client: Client, res: Resource, namespace: str) -> Iterator[Recorder]:
    recorder = Recorder(client, res, namespace)
    try:
        yield recorder
    finally:
        recorder.close()


def _holder(client: Client, name: str) -> str:
    try:
        spec = client.get(LEASES, name, "kube-system").get("spec") or {}
    except Exception:  # not created yet
        return ""
    return str(spec.get("holderIdentity") or "")


def _one_leader(client: Client, lease: str, replicas: list[Replica]) -> tuple[Replica, list[Replica]]:
    """Wait for a holder; it must be one of the replicas, the only one that logged leadership."""
    ids = {r.identity(): r for r in replicas}
    wait_until(lambda: _holder(client, lease) in ids, 20.0, f"a replica to hold {lease}")
    leader = ids[_holder(client, lease)]
    wait_until(leader.led, 5.0, f"{leader.name} to log leadership")
    others = [r for r in replicas if r is not leader]
    assert not any(r.led() for r in others), "two replicas became leader"
    return leader, others


def _hold(cond: Callable[[], bool], seconds: float, what: str) -> None:
    """No duplicates after the fact: the condition must stay true, not just pass through."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert cond(), f"{what} did not hold"
        time.sleep(0.2)


# ------------------------------------------------------------------------------ controller manager
def _rc(name: str, replicas: int) -> dict[str, Any]:
    template = {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "pause"}]}}
    return {"apiVersion": "v1", "kind": "ReplicationController", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"app": name}, "template": template}}


def _live_pods(client: Client) -> int:
    return sum(1 for p in client.list(PODS, "default")["items"] if not p["metadata"].get("deletionTimestamp"))


def _created(pods: Recorder) -> Counter[str]:
    return Counter(o["metadata"]["name"] for _, kind, o in pods.snapshot() if kind == "ADDED")


def _exact(client: Client, pods: Recorder, live: int, created: int) -> Callable[[], bool]:
    def check() -> bool:
        made = _created(pods)
        once = max(made.values(), default=0) <= 1
        return once and sum(made.values()) == created and _live_pods(client) == live
    return check


def _takeover_after(client: Client, lease: str, new: Replica, since: float, within: float) -> float:
    identity = new.identity()
    wait_until(lambda: _holder(client, lease) == identity, within + 5.0, f"{new.name} to take over")
    elapsed = time.monotonic() - since
    assert elapsed < within, f"takeover took {elapsed:.2f}s"
    return elapsed


def test_two_controller_managers_create_each_pod_once(apiserver: ApiServerProcess, client: Client,
                                                      tmp_path: Path) -> None:
    lease = "kube-controller-manager"
    with _recording(client, PODS, "default") as pods, _recording(client, LEASES, "kube-system") as leases, \
            _replicas(apiserver, tmp_path, CONTROLLER_MANAGER, ["cm-a", "cm-b"]) as (a, b):
        leader, (standby,) = _one_leader(client, lease, [a, b])
        assert b"caches synced" not in standby.log()  # a standby neither lists nor acts

        client.create(REPLICATIONCONTROLLERS, _rc("web", 20), "default")
        wait_until(_exact(client, pods, 20, 20), 20.0, "20 pods, each created once")
        _hold(_exact(client, pods, 20, 20), 3.0, "exactly 20 pods created")

        # a crash: the standby waits out the lease it last saw renewed, then leads
        leader.signal(signal.SIGKILL)
        killed = time.monotonic()
        took = _takeover_after(client, lease, standby, killed, LEASE_DURATION + 2.5)
        assert took > LEASE_DURATION - 2 * RETRY_PERIOD - 0.2, f"took over a live lease after {took:.2f}s"
        print(f"takeover after SIGKILL: {took:.2f}s")

        with component_process(apiserver, tmp_path / "cm-c.log", CONTROLLER_MANAGER) as proc_c:
            c = Replica("cm-c", proc_c, tmp_path / "cm-c.log")
            c.identity()
            client.set_scale(REPLICATIONCONTROLLERS, "web", 25, "default")
            wait_until(_exact(client, pods, 25, 25), 20.0, "25 pods after scaling, each created once")
            _hold(_exact(client, pods, 25, 25), 2.0, "exactly 25 pods created")
            assert not c.led()

            # a clean stop: the lease is released, the standby takes it at its next retry
            standby.signal(signal.SIGTERM)
            stopped = time.monotonic()
            assert standby.proc.wait(10) == 0
            took = _takeover_after(client, lease, c, stopped, LEASE_DURATION - 1.0)
            print(f"takeover after SIGTERM: {took:.2f}s")
            holders = [o["spec"].get("holderIdentity") for t, _, o in leases.snapshot() if t >= stopped]
            assert "" in holders, f"lease never released: {holders}"

            client.set_scale(REPLICATIONCONTROLLERS, "web", 22, "default")
            wait_until(_exact(client, pods, 22, 25), 20.0, "22 pods after scaling down, none created")
            _hold(_exact(client, pods, 22, 25), 1.5, "22 pods, 25 ever created")
            c.signal(signal.SIGTERM)
            assert proc_c.wait(10) == 0
        assert _holder(client, lease) == ""
    for replica in (a, b):
        assert b"Traceback" not in replica.log()


def test_leader_whose_lease_is_taken_exits_non_zero(apiserver: ApiServerProcess, client: Client,
                                                    tmp_path: Path) -> None:
    """Leadership lost (here: another holder wrote the lease) -> the work stops and the process
    exits 1 within the renew deadline, as upstream's "leaderelection lost"; it does not fight back."""
    lease = "kube-controller-manager"
    with _replicas(apiserver, tmp_path, CONTROLLER_MANAGER, ["cm-a"]) as (a,):
        _one_leader(client, lease, [a])
        wait_until(lambda: b"caches synced" in a.log(), 10.0, "the leader to run its controllers")
        taken = client.get(LEASES, lease, "kube-system")
        taken["spec"].update(holderIdentity="intruder", leaseDurationSeconds=60)
        client.update(LEASES, taken, "kube-system")
        started = time.monotonic()
        assert a.proc.wait(10) == 1
        assert time.monotonic() - started < 2.0 + 1.0  # renew deadline, plus a retry's slack
        assert b"lost leadership" in a.log()
        assert _holder(client, lease) == "intruder"


def test_leader_that_cannot_renew_exits_non_zero(apiserver: ApiServerProcess, client: Client,
                                                 tmp_path: Path) -> None:
    """The API server vanishes: the leader cannot renew, gives up at the renew deadline (before a
    standby elsewhere could take over at the lease duration) and exits 1."""
    with _replicas(apiserver, tmp_path, CONTROLLER_MANAGER, ["cm-a"]) as (a,):
        _one_leader(client, "kube-controller-manager", [a])
        wait_until(lambda: b"caches synced" in a.log(), 10.0, "the leader to run its controllers")
        apiserver.kill()
        started = time.monotonic()
        assert a.proc.wait(10) == 1
        took = time.monotonic() - started
        assert took < LEASE_DURATION, f"gave up after {took:.2f}s"
        assert b"lost leadership" in a.log()


# ------------------------------------------------------------------------------ scheduler
def _node(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "status": {"allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"},
                       "capacity": {"cpu": "8", "memory": "16Gi", "pods": "110"},
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def _pod(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "image": "pause"}]}}


def _bindings(pods: Recorder) -> Counter[str]:
    """How often each pod's spec.nodeName changed in the watch (a double binding would be 2)."""
    node: dict[str, str] = {}
    count: Counter[str] = Counter()
    for _, _, obj in pods.snapshot():
        name, now = obj["metadata"]["name"], obj["spec"].get("nodeName") or ""
        if now != node.get(name, ""):
            count[name] += 1
        node[name] = now
    return count


def _bound_once(pods: Recorder, names: list[str]) -> Callable[[], bool]:
    def check() -> bool:
        bindings = _bindings(pods)
        return all(bindings[n] == 1 for n in names) and set(bindings) <= set(names)
    return check


def test_two_schedulers_bind_each_pod_once(apiserver: ApiServerProcess, client: Client,
                                           tmp_path: Path) -> None:
    lease = "kube-scheduler"
    client.create(NODES, _node("node-a"))
    with _recording(client, PODS, "default") as pods, \
            _replicas(apiserver, tmp_path, SCHEDULER, ["sched-a", "sched-b"]) as (a, b):
        leader, (standby,) = _one_leader(client, lease, [a, b])
        names = [f"p-{i:02d}" for i in range(20)]
        for name in names:
            client.create(PODS, _pod(name), "default")
        wait_until(_bound_once(pods, names), 20.0, "20 pods bound once")
        _hold(_bound_once(pods, names), 2.0, "each pod bound once")
        assert b"caches synced" not in standby.log()

        leader.signal(signal.SIGKILL)
        killed = time.monotonic()
        names += [f"q-{i:02d}" for i in range(10)]
        for name in names[20:]:
            client.create(PODS, _pod(name), "default")
        took = _takeover_after(client, lease, standby, killed, LEASE_DURATION + 2.5)
        print(f"scheduler takeover after SIGKILL: {took:.2f}s")
        wait_until(_bound_once(pods, names), 20.0, "30 pods bound once")
        _hold(_bound_once(pods, names), 1.5, "each pod bound once")

        standby.signal(signal.SIGTERM)
        assert standby.proc.wait(10) == 0
        assert _holder(client, lease) == ""
        assert b"Traceback" not in standby.log()

