"""The ReplicaSet controller: the RC machinery with an apps/v1 LabelSelector and RS ownerReferences."""

from __future__ import annotations

import time
from typing import Any

import pytest

from controlplane.controllers.replicaset import RS_KIND, rs_selector
from controlplane.controllers.replication import (
    Expectations,
    ReplicationManager,
    claim_pods,
    owner_reference,
    pod_from_template,
    rank_for_deletion,
)
from podnet.api.client import PODS, REPLICASETS, ApiError
from tests.controlplane.fakes import FakeCache
from tests.controlplane.test_replication import FakeApi, make_pod, ref

Obj = dict[str, Any]
UID = "rs-uid-1"


def make_rs(replicas: int = 3, min_ready: int = 0, expressions: list[Obj] | None = None) -> Obj:
    selector: Obj = {"matchLabels": {"app": "web"}}
    if expressions is not None:
        selector["matchExpressions"] = expressions
    return {"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": "web-abc", "namespace": "default", "uid": UID, "generation": 1,
                         "resourceVersion": "7"},
            "spec": {"replicas": replicas, "minReadySeconds": min_ready, "selector": selector,
                     "template": {"metadata": {"labels": {"app": "web", "tier": "fe"}},
                                  "spec": {"containers": [{"name": "c", "image": "pause"}]}}},
            "status": {}}


def rs_ref(uid: str = UID) -> Obj:
    return ref(uid=uid, name="web-abc", kind="ReplicaSet")


def manager(rs: Obj, *pods: Obj) -> tuple[ReplicationManager, FakeApi, FakeCache]:
    api, cache = FakeApi(), FakeCache(*pods)
    now = [0.0]
    m = ReplicationManager(api, FakeCache(rs), cache, clock=lambda: now[0], kind=RS_KIND,
                           expectations=Expectations(clock=lambda: now[0]))
    return m, api, cache


def test_selector_match_labels_and_expressions() -> None:
    rs = make_rs(expressions=[{"key": "tier", "operator": "In", "values": ["fe", "be"]},
                              {"key": "canary", "operator": "DoesNotExist"}])
    sel = rs_selector(rs)
    assert sel.matches({"app": "web", "tier": "fe"})
    assert not sel.matches({"app": "web", "tier": "db"})
    assert not sel.matches({"app": "web", "tier": "fe", "canary": "1"})
    assert not rs_selector({"spec": {}}).matches({"app": "web"})  # no selector: nothing
    bad = make_rs(expressions=[{"key": "tier", "operator": "Near", "values": ["x"]}])
    assert not rs_selector(bad).matches({"app": "web", "tier": "fe"})


def test_claim_adopts_and_releases_by_expression() -> None:
    rs = make_rs(expressions=[{"key": "tier", "operator": "NotIn", "values": ["db"]}])
    pods = [make_pod("orphan"), make_pod("db", {"app": "web", "tier": "db"}),
            make_pod("mine-moved", {"app": "web", "tier": "db"}, rs_ref()),
            make_pod("rc-owned", owner=ref())]
    claims = claim_pods(rs, pods, RS_KIND)
    assert [p["metadata"]["name"] for p in claims.adopt] == ["orphan"]
    assert [p["metadata"]["name"] for p in claims.release] == ["mine-moved"]
    assert [p["metadata"]["name"] for p in claims.owned] == ["orphan"]


def test_owner_reference_and_pod_from_template() -> None:
    assert owner_reference(make_rs(), RS_KIND) == {"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                                   "name": "web-abc", "uid": UID, "controller": True,
                                                   "blockOwnerDeletion": True}
    pod = pod_from_template(make_rs(), RS_KIND)
    assert pod["metadata"]["generateName"] == "web-abc-"
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"


def test_sync_creates_pods_and_writes_rs_status() -> None:
    m, api, _ = manager(make_rs(2), make_pod("a", owner=rs_ref(), ready=True))
    m.sync("default/web-abc")
    assert len(api.created) == 1 and api.created[0]["metadata"]["ownerReferences"][0]["uid"] == UID
    status = [(res, p) for res, _, p, sub in api.patches if sub == "status"]
    assert status == [(REPLICASETS, {"status": {"replicas": 1, "fullyLabeledReplicas": 1, "readyReplicas": 1,
                                                "availableReplicas": 1, "observedGeneration": 1}})]


def test_sync_deletes_extras_ranked_like_rcs() -> None:
    pods = [make_pod("ready", owner=rs_ref(), node="n", phase="Running", ready=True),
            make_pod("pending", owner=rs_ref(), node="n"), make_pod("unscheduled", owner=rs_ref())]
    m, api, _ = manager(make_rs(1), *pods)
    m.sync("default/web-abc")
    expected = [p["metadata"]["name"] for p in rank_for_deletion(pods)[:2]]
    assert [name for name, _ in api.deleted] == expected == ["unscheduled", "pending"]


def test_min_ready_seconds_requeues_until_available() -> None:
    pod = make_pod("a", owner=rs_ref(), ready=True)
    pod["status"]["conditions"][0]["lastTransitionTime"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    m, _, _ = manager(make_rs(1, min_ready=3600), pod)
    m.sync("default/web-abc")
    assert m._retry["default/web-abc"] == 3600.0  # ready, not yet available: look again then


def test_pod_events_mark_the_rs_not_rcs() -> None:
    m, _, _ = manager(make_rs())
    m.pod_added(make_pod("p", owner=rs_ref()))
    assert m.dirty.take() == {"default/web-abc"}
    m.pod_added(make_pod("q", owner=ref()))  # an RC's pod
    assert m.dirty.take() == set()
    m.pod_added(make_pod("orphan"))
    assert m.dirty.take() == {"default/web-abc"}
    assert m.name == "replicaset" and PODS.plural == "pods"


class FakeRecorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str, str | None]] = []

    def event(self, obj: Any, type_: str, reason: str, message: str, *, kind: str | None = None,
              api_version: str | None = None) -> bool:
        self.events.append((type_, reason, message, kind))
        return True


def test_events_for_creations_and_deletions() -> None:
    recorder = FakeRecorder()
    m, _, _ = manager(make_rs(1), make_pod("a", owner=rs_ref()), make_pod("b", owner=rs_ref()))
    m.recorder = recorder
    m.sync("default/web-abc")
    assert recorder.events == [("Normal", "SuccessfulDelete", "Deleted pod: a", "ReplicaSet")]
    m2, api2, _ = manager(make_rs(1))
    m2.recorder = recorder
    api2.fail["create"] = 403
    with pytest.raises(ApiError):
        m2.sync("default/web-abc")
    assert recorder.events[-1] == ("Warning", "FailedCreate", "Error creating: create failed", "ReplicaSet")
