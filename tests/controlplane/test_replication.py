"""The ReplicationController controller: pure claim/diff/ranking/status, expectations, and the sync
against fakes of its own seams (Api, Cache)."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import pytest

from controlplane.controllers.__main__ import parse_args
from controlplane.controllers.replication import (
    BURST,
    Expectations,
    ReplicationManager,
    claim_pods,
    compute_status,
    pod_from_template,
    rank_for_deletion,
    replica_diff,
    status_changed,
)
from podnet.api.client import PODS, REPLICATIONCONTROLLERS, ApiError, Resource
from tests.controlplane.fakes import FakeCache

Obj = dict[str, Any]
UID = "rc-uid-1"


def make_rc(replicas: int | None = 3, name: str = "web", uid: str = UID) -> Obj:
    spec: Obj = {"selector": {"app": name},
                 "template": {"metadata": {"labels": {"app": name, "tier": "fe"}},
                              "spec": {"containers": [{"name": "c", "image": "pause"}]}}}
    if replicas is not None:
        spec["replicas"] = replicas
    return {"metadata": {"name": name, "namespace": "default", "uid": uid, "generation": 2,
                         "resourceVersion": "10"},
            "spec": spec, "status": {}}


def ref(uid: str = UID, name: str = "web", kind: str = "ReplicationController") -> Obj:
    return {"apiVersion": "v1", "kind": kind, "name": name, "uid": uid, "controller": True}


def make_pod(name: str, labels: Mapping[str, str] | None = None, owner: Obj | None = None, *,
             node: str = "", phase: str = "Pending", ready: bool = False,
             created: str = "2026-01-01T00:00:00Z",
             deleting: bool = False, namespace: str = "default") -> Obj:
    meta: Obj = {"name": name, "namespace": namespace, "uid": f"uid-{name}", "resourceVersion": "5",
                 "labels": dict(labels if labels is not None else {"app": "web", "tier": "fe"}),
                 "creationTimestamp": created}
    if owner is not None:
        meta["ownerReferences"] = [owner]
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:09Z"
    status: Obj = {"phase": phase,
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False",
                                   "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    return {"metadata": meta, "spec": {"nodeName": node} if node else {}, "status": status}


# ---------------------------------------------------------------------------------- fakes
class FakeApi:
    """Records writes; `fail` maps a verb to the ApiError code its next calls raise."""

    def __init__(self) -> None:
        self.created: list[Obj] = []
        self.deleted: list[tuple[str, Mapping[str, str] | None]] = []
        self.patches: list[tuple[Resource, str, Any, str | None]] = []
        self.fail: dict[str, int] = {}
        self.counter = 0

    def _maybe_fail(self, verb: str) -> None:
        if verb in self.fail:
            raise ApiError({"code": self.fail[verb], "message": f"{verb} failed"}, self.fail[verb])

    def create(self, res: Resource, obj: Mapping[str, Any], namespace: str | None = None,
               **query: Any) -> Obj:
        self._maybe_fail("create")
        self.counter += 1
        pod: Obj = {**obj, "metadata": {**obj["metadata"], "namespace": namespace,
                                        "name": f"{obj['metadata']['generateName']}{self.counter}"}}
        self.created.append(pod)
        return pod

    def delete(self, res: Resource, name: str, namespace: str | None = None, *,
               propagation_policy: str | None = None, grace_period_seconds: int | None = None,
               preconditions: Mapping[str, str] | None = None) -> Obj:
        self._maybe_fail("delete")
        self.deleted.append((name, preconditions))
        return {}

    def patch(self, res: Resource, name: str, patch: Any, namespace: str | None = None, *,
              patch_type: str = "merge", subresource: str | None = None, field_manager: str | None = None,
              force: bool | None = None) -> Obj:
        self._maybe_fail(f"patch {res.plural}")
        self.patches.append((res, name, patch, subresource))
        return {}


Setup = tuple[ReplicationManager, FakeApi, FakeCache]


def manager(rc: Obj | None, *pods: Obj, clock: list[float] | None = None) -> Setup:
    api, pod_cache = FakeApi(), FakeCache(*pods)
    now = clock if clock is not None else [0.0]
    m = ReplicationManager(api, FakeCache(*([rc] if rc else [])), pod_cache, clock=lambda: now[0],
                           expectations=Expectations(ttl=300.0, clock=lambda: now[0]))
    return m, api, pod_cache


# ---------------------------------------------------------------------------------- claim
def test_claim_owned_adopt_release_and_ignore() -> None:
    pods = [make_pod("mine", owner=ref()),
            make_pod("orphan"),
            make_pod("relabelled", {"app": "debug"}, owner=ref()),
            make_pod("other-controller", owner=ref(uid="x")),
            make_pod("unrelated", {"app": "db"}),
            make_pod("other-ns", namespace="kube-system"),
            make_pod("deleting-orphan", deleting=True),
            make_pod("deleting-mine-relabelled", {"app": "x"}, owner=ref(), deleting=True)]
    claims = claim_pods(make_rc(), pods)
    assert [p["metadata"]["name"] for p in claims.owned] == ["mine", "orphan"]
    assert [p["metadata"]["name"] for p in claims.adopt] == ["orphan"]
    assert [p["metadata"]["name"] for p in claims.release] == ["relabelled"]


def test_claim_rc_being_deleted_adopts_nothing() -> None:
    rc = make_rc()
    rc["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    claims = claim_pods(rc, [make_pod("orphan"), make_pod("mine", owner=ref())])
    assert claims.adopt == [] and [p["metadata"]["name"] for p in claims.owned] == ["mine"]


def test_claim_selector_defaults_to_template_labels() -> None:
    rc = make_rc()
    del rc["spec"]["selector"]
    owned = claim_pods(rc, [make_pod("a"), make_pod("b", {"app": "web"})]).owned
    assert [p["metadata"]["name"] for p in owned] == ["a"]  # needs tier=fe too


# ---------------------------------------------------------------------------------- diff and ranking
def test_replica_diff() -> None:
    pods = [make_pod(f"p{i}") for i in range(3)]
    assert replica_diff(make_rc(5), pods) == 2
    assert replica_diff(make_rc(1), pods) == -2
    assert replica_diff(make_rc(3), pods) == 0
    assert replica_diff(make_rc(None), []) == 1  # spec.replicas defaults to 1
    assert replica_diff(make_rc(0), pods) == -3
    assert replica_diff(make_rc(BURST + 50), []) == BURST
    assert replica_diff(make_rc(0), [make_pod(f"q{i}") for i in range(BURST + 5)]) == -BURST


def test_rank_unscheduled_then_not_ready_then_newest() -> None:
    pods = [make_pod("old-ready", node="n1", phase="Running", ready=True, created="2026-01-01T00:00:00Z"),
            make_pod("new-ready", node="n1", phase="Running", ready=True, created="2026-01-03T00:00:00Z"),
            make_pod("running-not-ready", node="n1", phase="Running", created="2026-01-01T00:00:00Z"),
            make_pod("scheduled-pending", node="n1", phase="Pending", created="2026-01-01T00:00:00Z"),
            make_pod("unscheduled-old", created="2026-01-01T00:00:00Z"),
            make_pod("unscheduled-new", created="2026-01-02T00:00:00Z")]
    assert [p["metadata"]["name"] for p in rank_for_deletion(pods)] == [
        "unscheduled-new", "unscheduled-old", "scheduled-pending", "running-not-ready",
        "new-ready", "old-ready"]


def test_rank_ties_broken_by_name() -> None:
    assert [p["metadata"]["name"] for p in rank_for_deletion([make_pod("b"), make_pod("a")])] == ["a", "b"]


# ---------------------------------------------------------------------------------- status
def test_compute_status_counts() -> None:
    pods = [make_pod("a", ready=True), make_pod("b", {"app": "web"}, ready=True), make_pod("c")]
    status = compute_status(make_rc(), pods, now=0.0)
    assert status == {"replicas": 3, "fullyLabeledReplicas": 2, "readyReplicas": 2, "availableReplicas": 2,
                      "observedGeneration": 2}


def test_available_waits_min_ready_seconds() -> None:
    rc = make_rc()
    rc["spec"]["minReadySeconds"] = 60
    ready_at = 1767225600.0  # 2026-01-01T00:00:00Z, the pods' Ready lastTransitionTime
    pods = [make_pod("a", ready=True)]
    assert compute_status(rc, pods, now=ready_at + 59)["availableReplicas"] == 0
    assert compute_status(rc, pods, now=ready_at + 60)["availableReplicas"] == 1


def test_status_changed_treats_missing_as_zero_and_keeps_conditions() -> None:
    rc = make_rc(0)
    rc["status"] = {"observedGeneration": 2, "conditions": [{"type": "ReplicaFailure"}]}
    status = compute_status(rc, [], now=0.0)
    assert status["conditions"] == [{"type": "ReplicaFailure"}]
    assert not status_changed(rc, status)
    rc["status"]["observedGeneration"] = 1
    assert status_changed(rc, compute_status(make_rc(0), [], now=0.0))


# ---------------------------------------------------------------------------------- expectations
def test_expectations_creations_and_deletions() -> None:
    now = [0.0]
    exp = Expectations(ttl=300.0, clock=lambda: now[0])
    assert exp.satisfied("ns/rc")
    exp.expect("ns/rc", adds=2)
    assert not exp.satisfied("ns/rc")
    exp.creation_observed("ns/rc")
    assert not exp.satisfied("ns/rc")
    exp.creation_observed("ns/rc")
    exp.creation_observed("ns/rc")  # an extra observation does not go negative
    assert exp.satisfied("ns/rc") and exp.pending("ns/rc") == (0, set())
    exp.expect("ns/rc", deletes=["ns/a", "ns/b"])
    exp.deletion_observed("ns/rc", "ns/a")
    exp.deletion_observed("ns/rc", "ns/a")  # twice (update with deletionTimestamp, then delete)
    assert not exp.satisfied("ns/rc")
    exp.deletion_observed("ns/rc", "ns/b")
    assert exp.satisfied("ns/rc")


def test_expectations_expire_and_forget() -> None:
    now = [0.0]
    exp = Expectations(ttl=300.0, clock=lambda: now[0])
    exp.expect("k", adds=1)
    now[0] = 300.0
    assert not exp.satisfied("k")
    now[0] = 300.5
    assert exp.satisfied("k")  # a lost watch event cannot wedge the RC
    exp.expect("k", adds=1)
    exp.forget("k")
    assert exp.satisfied("k")


# ---------------------------------------------------------------------------------- the sync
def test_pod_from_template() -> None:
    pod = pod_from_template(make_rc())
    assert pod["metadata"]["generateName"] == "web-"
    assert pod["metadata"]["labels"] == {"app": "web", "tier": "fe"}
    assert pod["metadata"]["ownerReferences"] == [{**ref(), "blockOwnerDeletion": True}]
    assert pod["spec"] == {"containers": [{"name": "c", "image": "pause"}]}


def test_sync_creates_once_until_the_watch_shows_the_pods() -> None:
    m, api, pods = manager(make_rc(3))
    m.sync("default/web")
    assert len(api.created) == 3
    m.sync("default/web")  # the watch has not shown them: no duplicates
    assert len(api.created) == 3
    for pod in api.created[:2]:
        pods.put(pod)
        m.pod_added(pod)
    m.sync("default/web")
    assert len(api.created) == 3  # one creation still unseen
    pods.put(api.created[2])
    m.pod_added(api.created[2])
    m.sync("default/web")
    assert len(api.created) == 3 and m.expectations.satisfied("default/web")


def test_sync_deletes_ranked_extras_once() -> None:
    rc = make_rc(1)
    owned = [make_pod("ready", owner=ref(), node="n", phase="Running", ready=True),
             make_pod("sched", owner=ref(), node="n"), make_pod("unsched", owner=ref())]
    m, api, pods = manager(rc, *owned)
    m.sync("default/web")
    assert api.deleted == [("unsched", {"uid": "uid-unsched"}), ("sched", {"uid": "uid-sched"})]
    m.sync("default/web")  # the deletions are not observed yet
    assert len(api.deleted) == 2
    for name in ("unsched", "sched"):
        m.pod_deleted(pods.items.pop(f"default/{name}"))
    m.sync("default/web")
    assert len(api.deleted) == 2 and m.expectations.satisfied("default/web")


def test_terminating_and_finished_pods_do_not_count() -> None:
    m, api, _ = manager(make_rc(2), make_pod("gone", owner=ref(), deleting=True),
                        make_pod("done", owner=ref(), phase="Succeeded"), make_pod("live", owner=ref()))
    m.sync("default/web")
    assert len(api.created) == 1 and api.deleted == []


def test_failed_creations_lower_the_expectation() -> None:
    m, api, _ = manager(make_rc(2))
    api.fail["create"] = 500
    with pytest.raises(ApiError):
        m.sync("default/web")
    assert m.expectations.satisfied("default/web")  # the next sync tries again
    del api.fail["create"]
    m.sync("default/web")
    assert len(api.created) == 2


def test_adopt_and_release_patch_with_resource_version() -> None:
    m, api, _ = manager(make_rc(2), make_pod("orphan"), make_pod("relabelled", {"app": "x"}, ref()))
    m.sync("default/web")
    pod_patches = {name: patch for res, name, patch, _ in api.patches if res == PODS}
    assert pod_patches["orphan"] == {"metadata": {"ownerReferences": [{**ref(), "blockOwnerDeletion": True}],
                                                  "resourceVersion": "5"}}
    assert pod_patches["relabelled"] == {"metadata": {"ownerReferences": None, "resourceVersion": "5"}}
    assert len(api.created) == 1  # the adopted orphan counts


def test_conflicting_adoption_does_not_count_the_pod() -> None:
    m, api, _ = manager(make_rc(1), make_pod("orphan"))
    api.fail["patch pods"] = 409
    m.sync("default/web")
    assert len(api.created) == 1  # the orphan it failed to adopt is not one of its replicas
    assert [name for res, name, _, _ in api.patches if res == PODS] == []


def test_status_written_only_on_change() -> None:
    m, api, _ = manager(make_rc(1), make_pod("a", owner=ref(), ready=True))
    m.sync("default/web")
    status = [(name, patch, sub) for res, name, patch, sub in api.patches if res == REPLICATIONCONTROLLERS]
    assert status == [("web", {"status": {"replicas": 1, "fullyLabeledReplicas": 1, "readyReplicas": 1,
                                          "availableReplicas": 1, "observedGeneration": 2}}, "status")]
    rc = make_rc(1)
    rc["status"] = {"replicas": 1, "fullyLabeledReplicas": 1, "readyReplicas": 1, "availableReplicas": 1,
                    "observedGeneration": 2}
    m2, api2, _ = manager(rc, make_pod("a", owner=ref(), ready=True))
    m2.sync("default/web")
    assert api2.patches == []


def test_rc_gone_forgets_expectations() -> None:
    m, api, _ = manager(None)
    m.expectations.expect("default/web", adds=3)
    m.sync("default/web")
    assert m.expectations.satisfied("default/web") and api.created == []


def test_pod_events_mark_owner_and_matching_rcs() -> None:
    m, _, _ = manager(make_rc(1))
    m.rcs.put(make_rc(1, name="db", uid="db-uid"))  # type: ignore[attr-defined]
    m.pod_added(make_pod("orphan-web"))
    assert m.dirty.take() == {"default/web"}
    m.pod_updated(make_pod("p", {"app": "db"}, ref()), make_pod("p", {"app": "db"}, ref()))
    assert m.dirty.take() == {"default/web"}  # owned: only its controller (which will release it)
    m.pod_updated(make_pod("p", {"app": "db"}, ref()), make_pod("p", {"app": "db"}))
    assert m.dirty.take() == {"default/web", "default/db"}  # released: the old owner and a new match
    m.pod_deleted(make_pod("q", {"app": "web"}, ref(uid="x", kind="ReplicaSet")))
    assert m.dirty.take() == set()  # another kind of controller's pod


def test_run_retries_a_failed_sync_and_resyncs_periodically() -> None:
    now = [0.0]
    m, api, _ = manager(make_rc(1), clock=now)
    m.retry_delay, m.resync_period, m._next_resync = 1.0, 30.0, 30.0
    api.fail["create"] = 500
    stop = threading.Event()
    m.rc_changed("default/web")
    calls: list[int] = []

    def one_pass(timeout: float | None = None) -> bool:
        calls.append(m.syncs)
        if len(calls) == 1:
            return True  # the first pass: the marked key (fails)
        if len(calls) == 2:
            del api.fail["create"]
            now[0] = 1.5  # the retry is due
            return True
        if len(calls) == 3:
            now[0] = 31.0  # the periodic resync is due
            return True
        stop.set()
        return True

    m._wake.wait = one_pass  # type: ignore[method-assign]
    m.run(stop, poll=0.01)
    assert calls == [0, 1, 2, 3]  # failed sync, retried sync, resync
    assert len(api.created) == 1


def test_rc_being_deleted_creates_nothing() -> None:
    rc = make_rc(3)
    rc["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    m, api, _ = manager(rc)
    m.sync("default/web")
    assert api.created == [] and api.deleted == []


def test_parse_args() -> None:
    args = parse_args(["--kubeconfig", "k"])
    assert "replicationcontroller" in args.controllers  # "*" by default: every registered one
    with pytest.raises(SystemExit):
        parse_args(["--kubeconfig", "k", "--controllers", "replicationcontroller,nosuchcontroller"])
    with pytest.raises(SystemExit):
        parse_args(["--kubeconfig", "k", "--controllers", "-replicationcontroller"])
    assert parse_args(["--kubeconfig", "k", "--controllers", "*", "--node-monitor-grace-period",
                       "5s"]).node_monitor_grace_period == 5.0


def test_slow_start_batch_doubles_and_stops_after_a_failed_batch() -> None:
    from concurrent.futures import ThreadPoolExecutor

    from controlplane.controllers.replication import slow_start_batch

    calls: list[int] = []
    lock = threading.Lock()

    def ok() -> None:
        with lock:
            calls.append(1)

    with ThreadPoolExecutor(4) as pool:
        assert slow_start_batch(10, ok, pool) == (10, [])  # batches 1, 2, 4, 3
        assert len(calls) == 10
        assert slow_start_batch(0, ok, pool) == (0, [])

        attempts: list[int] = []

        def fails_from_the_fourth() -> None:
            with lock:
                attempts.append(1)
                n = len(attempts)
            if n >= 4:
                raise RuntimeError("quota")

        done, errors = slow_start_batch(100, fails_from_the_fourth, pool)
        # batches 1 and 2 succeed; the batch of 4 has failures; nothing after it is tried
        assert done == 3 and len(errors) == 4 and len(attempts) == 7


def test_status_update_of_an_rc_deleted_meanwhile_is_not_an_error() -> None:
    m, api, _ = manager(make_rc(1))
    api.fail["patch replicationcontrollers"] = 404
    m.sync("default/web")  # creates the pod; the status patch finds the RC gone: no exception
    assert len(api.created) == 1
    api.fail["patch replicationcontrollers"] = 500
    m.expectations.forget("default/web")
    with pytest.raises(ApiError):
        m.sync("default/web")
