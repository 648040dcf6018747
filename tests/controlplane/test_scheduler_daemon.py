"""The scheduler loop with fakes of its two seams (Api writes, Cache reads): queue, assume, 409,
Unschedulable, retries."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

import pytest

from controlplane.scheduler.daemon import Scheduler, SchedulingQueue, is_pending
from podnet.api.client import PODS, ApiError, Resource


def node(name: str, pods: str = "110", labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels or {}},
            "status": {"allocatable": {"cpu": "2", "memory": "4Gi", "pods": pods}}}


def pod(name: str, node_name: str = "", **spec: Any) -> dict[str, Any]:
    body = {"containers": [{"name": "c", "resources": {"requests": {"cpu": "100m"}}}], **spec}
    if node_name:
        body["nodeName"] = node_name
    return {"metadata": {"name": name, "namespace": "default", "resourceVersion": "1"}, "spec": body}


class FakeCache:
    def __init__(self, objs: Iterable[dict[str, Any]] = ()) -> None:
        self.items: dict[str, dict[str, Any]] = {}
        for obj in objs:
            self.put(obj)

    def put(self, obj: dict[str, Any]) -> str:
        meta = obj["metadata"]
        key = f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else meta["name"]
        self.items[key] = obj
        return key

    def get(self, key: str) -> dict[str, Any] | None:
        return self.items.get(key)

    def list(self) -> list[dict[str, Any]]:
        return list(self.items.values())

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return dict(self.items)


class FakeApi:
    def __init__(self) -> None:
        self.bindings: list[tuple[str, str, str | None]] = []
        self.patches: list[tuple[str, Any, str | None, str, str | None]] = []
        self.bind_errors: list[Exception] = []  # raised by the next bind() calls, in order
        self.assumed_at_bind: list[dict[str, Any]] = []
        self.scheduler: Scheduler | None = None

    def bind(self, pod_name: str, node_name: str, namespace: str | None = None) -> dict[str, Any]:
        if self.scheduler is not None:
            self.assumed_at_bind.append(self.scheduler.assumed())
        if self.bind_errors:
            raise self.bind_errors.pop(0)
        self.bindings.append((pod_name, node_name, namespace))
        return {}

    def patch(self, res: Resource, name: str, patch: Any, namespace: str | None = None, *,
              patch_type: str = "merge", subresource: str | None = None, field_manager: str | None = None,
              force: bool | None = None) -> dict[str, Any]:
        assert res == PODS
        self.patches.append((name, patch, namespace, patch_type, subresource))
        return {}


class FakeRecorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str, str, str | None]] = []

    def event(self, obj: dict[str, Any], type_: str, reason: str, message: str, *,
              kind: str | None = None, api_version: str | None = None) -> bool:
        self.events.append((obj["metadata"]["name"], type_, reason, message, kind))
        return True


def conflict() -> ApiError:
    return ApiError({"code": 409, "reason": "Conflict", "message": "pod already assigned"})


def make(nodes: list[dict[str, Any]], pods: list[dict[str, Any]], **kw: Any
         ) -> tuple[Scheduler, FakeApi, FakeCache, FakeCache]:
    api, node_cache, pod_cache = FakeApi(), FakeCache(nodes), FakeCache(pods)
    kw.setdefault("recorder", FakeRecorder())
    sched = Scheduler(api, node_cache, pod_cache, **kw)
    api.scheduler = sched
    for key in pod_cache.items:
        sched.pod_changed(key)
    return sched, api, node_cache, pod_cache


def drain(sched: Scheduler) -> list[str | None]:
    out = []
    while (key := sched.queue.pop(0)) is not None:
        out.append(sched.schedule_one(key))
    return out


# ---------------------------------------------------------------------------------------- pending
def test_is_pending() -> None:
    assert is_pending(pod("a"), "default-scheduler")
    assert not is_pending(pod("a", "n1"), "default-scheduler")
    assert not is_pending(pod("a", schedulerName="other"), "default-scheduler")
    assert is_pending(pod("a", schedulerName="other"), "other")
    terminating = pod("a")
    terminating["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert not is_pending(terminating, "default-scheduler")
    assert not is_pending({**pod("a"), "status": {"phase": "Failed"}}, "default-scheduler")


# ---------------------------------------------------------------------------------------- queue
def test_queue_fifo_dedup_and_forget() -> None:
    q = SchedulingQueue()
    for key in ["a", "b", "a", "c"]:
        q.add(key)
    q.forget("b")
    assert q.active() == ["a", "c"]
    assert [q.pop(0), q.pop(0), q.pop(0)] == ["a", "c", None]
    q.add("b")  # forgotten, then added again: once
    assert [q.pop(0), q.pop(0)] == ["b", None]


def test_queue_unschedulable_waits_for_a_move() -> None:
    q = SchedulingQueue()
    q.mark_unschedulable("a")
    q.mark_unschedulable("b")
    assert q.pop(0) is None and q.unschedulable() == {"a", "b"}
    assert q.move_all_to_active() == 2
    assert q.unschedulable() == set() and q.active() == ["a", "b"]
    q.mark_unschedulable("a")  # already active: stays active, not parked
    assert q.unschedulable() == set()


def test_queue_pop_wakes_on_add_from_another_thread() -> None:
    q = SchedulingQueue()
    timer = threading.Timer(0.05, q.add, ["late"])
    timer.start()
    assert q.pop(5.0) == "late"
    timer.join()


# ---------------------------------------------------------------------------------------- assume
def test_assumed_bindings_count_before_the_watch_catches_up() -> None:
    """One pod slot per node: the second pod must not land on the node the first was bound to,
    though the cache still shows both pods pending."""
    sched, api, _, _ = make([node("n1", pods="1"), node("n2", pods="1")], [pod("a"), pod("b"), pod("c")])
    results = drain(sched)
    assert sorted(r for r in results if r) == ["n1", "n2"]
    assert {b[1] for b in api.bindings} == {"n1", "n2"}
    assert api.assumed_at_bind[1].keys() == {"default/a", "default/b"}  # assumed before the POST
    assert sched.queue.unschedulable() == {"default/c"}
    assert api.patches[0][0] == "c"


def test_spread_by_least_allocated_with_assumptions() -> None:
    sched, api, _, _ = make([node("n1"), node("n2"), node("n3")], [pod(f"p{i}") for i in range(12)])
    drain(sched)
    counts = {n: sum(1 for b in api.bindings if b[1] == n) for n in ("n1", "n2", "n3")}
    assert counts == {"n1": 4, "n2": 4, "n3": 4}


def test_assumption_dropped_when_the_watch_shows_the_binding_or_a_delete() -> None:
    sched, _, _, pods = make([node("n1")], [pod("a"), pod("b")])
    drain(sched)
    assert sched.assumed().keys() == {"default/a", "default/b"}
    pods.put(pod("a", "n1"))
    sched.pod_changed("default/a")
    del pods.items["default/b"]
    sched.pod_changed("default/b")
    assert sched.assumed() == {}


def test_assumed_pod_is_not_scheduled_twice_on_a_pending_event() -> None:
    sched, api, _, _ = make([node("n1")], [pod("a")])
    drain(sched)
    sched.pod_changed("default/a")  # e.g. a status write while the binding's event is on its way
    assert drain(sched) == [None]
    assert len(api.bindings) == 1


def test_deleted_while_assumed_is_forgotten_on_the_next_cycle() -> None:
    sched, _, _, pods = make([node("n1", pods="1")], [pod("a")])
    drain(sched)
    del pods.items["default/a"]  # the delete event has not been handled yet
    pods.put(pod("b"))
    sched.pod_changed("default/b")
    assert drain(sched) == ["n1"]  # a's slot is free again


# ---------------------------------------------------------------------------------------- binding errors
def test_409_forgets_the_assumption_and_requeues() -> None:
    sched, api, _, _ = make([node("n1")], [pod("a")])
    api.bind_errors = [conflict()]
    assert drain(sched) == [None, "n1"]  # requeued at once, bound on the retry
    assert api.bindings == [("a", "n1", "default")]


def test_409_for_a_pod_bound_elsewhere_ends_when_the_cache_shows_it() -> None:
    sched, api, _, pods = make([node("n1")], [pod("a")])
    api.bind_errors = [conflict()]
    key = sched.queue.pop(0)
    assert key is not None and sched.schedule_one(key) is None
    assert sched.assumed() == {} and sched.queue.active() == ["default/a"]
    pods.put(pod("a", "other-node"))
    sched.pod_changed("default/a")
    assert sched.queue.active() == [] and api.bindings == []


def test_other_api_error_parks_the_pod_for_a_retry() -> None:
    sched, api, _, _ = make([node("n1")], [pod("a")])
    api.bind_errors = [ApiError({"code": 500, "reason": "InternalError"})]
    assert drain(sched) == [None]
    assert sched.assumed() == {} and sched.queue.unschedulable() == {"default/a"}
    sched.node_changed("n1")
    assert drain(sched) == ["n1"]


def test_transport_error_in_run_parks_the_pod_and_the_loop_goes_on() -> None:
    sched, api, _, _ = make([node("n1")], [pod("a"), pod("b")], bind_workers=0)  # inline binding
    api.bind_errors = [ConnectionResetError("gone")]
    stop = threading.Event()
    calls = []

    def stop_when_idle(timeout: float) -> str | None:
        key = SchedulingQueue.pop(sched.queue, 0)
        calls.append(key)
        if key is None:
            stop.set()
        return key

    sched.queue.pop = stop_when_idle  # type: ignore[method-assign]
    sched.run(stop)
    assert calls == ["default/a", "default/b", None]
    assert api.bindings == [("b", "n1", "default")]
    assert sched.queue.unschedulable() == {"default/a"} and sched.assumed().keys() == {"default/b"}


# ---------------------------------------------------------------------------------------- unschedulable
def test_unschedulable_patches_the_condition_once() -> None:
    sched, api, _, pods = make([node("n1"), node("n2"), node("n3")],
                               [pod("a", nodeSelector={"zone": "nowhere"})])
    drain(sched)
    name, patch, ns, patch_type, sub = api.patches[0]
    assert (name, ns, patch_type, sub) == ("a", "default", "strategic", "status")
    [cond] = patch["status"]["conditions"]
    assert cond["type"] == "PodScheduled" and cond["status"] == "False"
    assert cond["reason"] == "Unschedulable"
    assert cond["message"].startswith("0/3 nodes are available: 3 node(s) didn't match")
    # the patch comes back as a pod event: one more try, no second patch (no event loop)
    pods.put({**pods.items["default/a"], "status": {"conditions": [cond]}})
    sched.pod_changed("default/a")
    drain(sched)
    assert len(api.patches) == 1 and sched.queue.unschedulable() == {"default/a"}


def test_unschedulable_retried_when_a_node_fits() -> None:
    sched, api, nodes, _ = make([node("n1")], [pod("a", nodeSelector={"zone": "z"})])
    drain(sched)
    assert api.bindings == []
    nodes.put(node("n2", labels={"zone": "z"}))
    sched.node_changed("n2")
    assert drain(sched) == ["n2"]


def test_unschedulable_retried_when_another_pod_goes_away() -> None:
    sched, _, _, pods = make([node("n1", pods="1")], [pod("old", "n1"), pod("a")])
    drain(sched)
    assert sched.queue.unschedulable() == {"default/a"}
    del pods.items["default/old"]
    sched.pod_changed("default/old")
    assert drain(sched) == ["n1"]


@pytest.mark.parametrize("elapsed, retried", [(5.0, False), (10.0, True)])
def test_periodic_retry(elapsed: float, retried: bool) -> None:
    now = [100.0]
    sched, _, _, _ = make([node("n1")], [pod("a", nodeSelector={"zone": "z"})],
                          retry_period=10.0, clock=lambda: now[0])
    drain(sched)
    now[0] += elapsed
    sched.maybe_retry_unschedulable()
    assert (sched.queue.active() == ["default/a"]) is retried


def test_no_nodes_message() -> None:
    sched, api, _, _ = make([], [pod("a")])
    drain(sched)
    assert api.patches[0][1]["status"]["conditions"][0]["message"] == "no nodes available to schedule pods"


def test_other_schedulers_and_bound_pods_are_ignored() -> None:
    sched, _, _, _ = make([node("n1")], [pod("a", schedulerName="other"), pod("b", "n1")],
                            scheduler_name="default-scheduler")
    assert sched.queue.active() == []
    mine, _, _, _ = make([node("n1")], [pod("a", schedulerName="other")], scheduler_name="other")
    assert drain(mine) == ["n1"]


def test_run_returns_when_stopped() -> None:
    sched, _, _, _ = make([node("n1")], [])
    stop = threading.Event()
    thread = threading.Thread(target=sched.run, args=(stop, 0.01))
    thread.start()
    stop.set()
    thread.join(5)
    assert not thread.is_alive()


def test_unschedulable_retried_when_a_node_is_updated_to_fit() -> None:
    """A label added to an existing node (an update, not a new node) lets the parked pod in."""
    sched, _, nodes, _ = make([node("n1")], [pod("a", nodeSelector={"zone": "z"})])
    drain(sched)
    assert sched.queue.unschedulable() == {"default/a"}
    nodes.put(node("n1", labels={"zone": "z"}))
    sched.node_changed("n1")
    assert drain(sched) == ["n1"]


def test_node_capacity_change_is_seen_by_the_next_cycle() -> None:
    sched, _, nodes, _ = make([node("n1", pods="1")], [pod("old", "n1"), pod("a")])
    drain(sched)
    assert sched.queue.unschedulable() == {"default/a"}
    nodes.put(node("n1", pods="2"))
    sched.node_changed("n1")
    assert drain(sched) == ["n1"]


def test_cluster_changes_between_cycles_are_accounted_without_a_rebuild() -> None:
    sched, _, _, pods = make([node("n1", pods="2")], [pod("a")])
    assert drain(sched) == ["n1"]
    pods.put(pod("a", "n1"))  # the watch shows the binding
    sched.pod_changed("default/a")
    pods.put(pod("b", "n1"))  # bound by someone else
    sched.pod_changed("default/b")
    pods.put(pod("c"))
    sched.pod_changed("default/c")
    assert drain(sched) == [None]  # 2 pods on a 2-pod node
    assert sched.node_infos.rebuilds == 1


# ---------------------------------------------------------------------------------------- events
def recorder_of(sched: Scheduler) -> FakeRecorder:
    assert isinstance(sched.recorder, FakeRecorder)
    return sched.recorder


def test_binding_records_scheduled() -> None:
    sched, _, _, _ = make([node("n1")], [pod("a")])
    drain(sched)
    assert recorder_of(sched).events == [
        ("a", "Normal", "Scheduled", "Successfully assigned default/a to n1", "Pod")]


def test_failed_binding_records_nothing() -> None:
    sched, api, _, _ = make([node("n1")], [pod("a")])
    api.bind_errors = [conflict()]
    key = sched.queue.pop(0)
    assert key is not None and sched.schedule_one(key) is None
    assert recorder_of(sched).events == []


def test_failed_scheduling_on_a_new_message_and_once_a_retry_period() -> None:
    now = [100.0]
    sched, api, nodes, pods = make([node("n1")], [pod("a", nodeSelector={"zone": "z"})],
                                   retry_period=10.0, clock=lambda: now[0])
    drain(sched)
    message = "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
    assert recorder_of(sched).events == [("a", "Warning", "FailedScheduling", message, "Pod")]
    # the condition patch comes back as a pod event; other pods' events retry it too
    pods.put({**pods.items["default/a"], "status": {"conditions": api.patches[0][1]["status"]["conditions"]}})
    for _ in range(3):
        sched.pod_changed("default/a")
        drain(sched)
    assert len(recorder_of(sched).events) == 1
    now[0] += 10.0  # the periodic retry: the same message again (the recorder counts it)
    sched.maybe_retry_unschedulable()
    drain(sched)
    assert len(recorder_of(sched).events) == 2
    nodes.put(node("n2", pods="0"))  # a second node changes the message: reported at once
    sched.node_changed("n2")
    drain(sched)
    assert recorder_of(sched).events[-1][3].startswith("0/2 nodes are available")


def test_scheduler_without_a_recorder_still_works() -> None:
    sched, api, _, _ = make([node("n1")], [pod("a")], recorder=None)
    assert drain(sched) == ["n1"] and api.bindings == [("a", "n1", "default")]


# ---------------------------------------------------------------------------------------- async binding
def _run_until(sched: Scheduler, done: Any, timeout: float = 5.0) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=sched.run, args=(stop, 0.01))
    thread.start()
    try:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            time.sleep(0.005)
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()


def test_run_binds_on_worker_threads_and_never_twice() -> None:
    sched, api, _, _ = make([node(f"n{i}") for i in range(3)], [pod(f"p{i}") for i in range(30)],
                            bind_workers=3)
    _run_until(sched, lambda: sched.bound == 30)
    assert sched.bound == 30 and len(api.bindings) == 30
    assert len({b[0] for b in api.bindings}) == 30  # each pod once
    counts = Counter(b[1] for b in api.bindings)
    assert counts == {"n0": 10, "n1": 10, "n2": 10}  # assumptions made before the POSTs returned
    assert sched._binder is None  # the pool lives only while run() runs


def test_stopping_drops_queued_bindings_and_requeues_their_pods() -> None:
    sched, api, _, _ = make([node("n1")], [pod("a"), pod("b"), pod("c")], bind_workers=1)
    gate = threading.Event()
    bind = api.bind

    def slow_bind(pod_name: str, node_name: str, namespace: str | None = None) -> dict[str, Any]:
        gate.wait(5)
        return bind(pod_name, node_name, namespace)

    api.bind = slow_bind  # type: ignore[method-assign]
    timer = threading.Timer(0.5, gate.set)  # released after run() was told to stop
    timer.start()
    _run_until(sched, lambda: len(sched.assumed()) == 3)
    timer.join()
    assert [b[0] for b in api.bindings] == ["a"]  # in flight when stopped: finished
    assert sched.assumed().keys() == {"default/a"}
    assert sched.queue.active() == ["default/b", "default/c"]  # for the next run (new leader term)


def test_transport_error_on_a_binder_thread_parks_the_pod() -> None:
    sched, api, _, _ = make([node("n1")], [pod("a"), pod("b")], bind_workers=1)  # one worker: FIFO
    api.bind_errors = [ConnectionResetError("gone")]
    _run_until(sched, lambda: sched.bound == 1 and sched.queue.unschedulable() == {"default/a"})
    assert api.bindings == [("b", "n1", "default")]
    assert sched.queue.unschedulable() == {"default/a"} and sched.assumed().keys() == {"default/b"}
