"""Garbage collector: the pure decisions (tables), the uid graph, and the controller against a fake
cluster (our Api seam) that feeds its changes back like the informers would."""

from __future__ import annotations

import functools
import itertools
import threading
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from controlplane.controllers import garbagecollector as gc
from controlplane.controllers.garbagecollector import (
    ABSENT,
    DANGLING,
    FOREGROUND,
    ORPHAN,
    SOLID,
    WAITING,
    Action,
    GarbageCollector,
    UidGraph,
    blocking_dependents,
    dependent_action,
    owner_state,
)
from podnet.api.client import CONFIGMAPS, PODS, REPLICATIONCONTROLLERS, ApiError, Resource
from podnet.api.informer import Handlers

Obj = dict[str, Any]


def ref(uid: str, kind: str = "ReplicationController", name: str = "", block: bool = True) -> Obj:
    return {"apiVersion": "v1", "kind": kind, "name": name or uid, "uid": uid, "controller": True,
            "blockOwnerDeletion": block}


def obj(name: str, uid: str = "", refs: list[Obj] | None = None, finalizers: list[str] | None = None,
        deleting: bool = False, namespace: str = "default") -> Obj:
    meta: Obj = {"name": name, "namespace": namespace, "uid": uid or f"uid-{name}", "resourceVersion": "1"}
    if refs:
        meta["ownerReferences"] = refs
    if finalizers:
        meta["finalizers"] = finalizers
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        meta["deletionGracePeriodSeconds"] = 0
    return {"metadata": meta}


# ---------------------------------------------------------------------------------- pure decisions
@pytest.mark.parametrize(("owner", "state"), [
    (None, ABSENT),
    (obj("rc"), SOLID),
    (obj("rc", finalizers=[ORPHAN], deleting=True), SOLID),
    (obj("rc", deleting=True), SOLID),
    (obj("rc", finalizers=[FOREGROUND], deleting=True), WAITING),
])
def test_owner_state(owner: Obj | None, state: str) -> None:
    assert owner_state(owner) == state


A, B = ref("a"), ref("b")


@pytest.mark.parametrize(("dependent", "states", "has_deps", "action"), [
    (obj("p"), {}, False, Action("none")),
    (obj("p", refs=[A]), {"a": SOLID}, False, Action("none")),
    (obj("p", refs=[A]), {"a": ABSENT}, False, Action("none")),  # unconfirmed: never delete on doubt
    (obj("p", refs=[A], deleting=True), {"a": DANGLING}, False, Action("none")),
    (obj("p", refs=[A]), {"a": DANGLING}, False, Action("delete", "Background")),
    (obj("p", refs=[A, B]), {"a": DANGLING, "b": DANGLING}, True, Action("delete", "Background")),
    (obj("p", refs=[A, B]), {"a": DANGLING, "b": SOLID}, False, Action("patch", refs=(B,))),
    (obj("p", refs=[A, B]), {"a": WAITING, "b": SOLID}, False, Action("patch", refs=(B,))),
    (obj("p", refs=[A]), {"a": WAITING}, True, Action("delete", "Foreground")),
    (obj("p", refs=[A]), {"a": WAITING}, False, Action("delete", "Background")),
    (obj("p", refs=[A], finalizers=[ORPHAN]), {"a": DANGLING}, False, Action("delete", "Orphan")),
    (obj("p", refs=[A], finalizers=[FOREGROUND]), {"a": DANGLING}, False, Action("delete", "Foreground")),
])
def test_dependent_action(dependent: Obj, states: dict[str, str], has_deps: bool, action: Action) -> None:
    assert dependent_action(dependent, states, has_deps) == action


def test_blocking_dependents() -> None:
    blocking, loose, other = obj("x", refs=[ref("o")]), obj("y", refs=[ref("o", block=False)]), obj(
        "z", refs=[ref("p")])
    assert blocking_dependents("o", [blocking, loose, other]) == [blocking]


def test_graph_tracks_owner_edges() -> None:
    graph = UidGraph()
    assert graph.upsert(REPLICATIONCONTROLLERS, obj("rc")) == {"uid-rc"}
    assert graph.upsert(PODS, obj("p", refs=[ref("uid-rc")])) == {"uid-p", "uid-rc"}
    assert [n.obj["metadata"]["name"] for n in graph.dependents("uid-rc")] == ["p"]
    # the owner starts deleting: its dependents are touched too
    assert graph.upsert(REPLICATIONCONTROLLERS, obj("rc", deleting=True, finalizers=[FOREGROUND])) == {
        "uid-rc", "uid-p"}
    # a released dependent: the old owner is touched, the edge is gone
    assert graph.upsert(PODS, obj("p")) == {"uid-p", "uid-rc"}
    assert graph.dependents("uid-rc") == [] and not graph.has_dependents("uid-rc")
    graph.upsert(PODS, obj("p", refs=[ref("uid-rc")]))
    assert graph.remove(obj("rc")) == {"uid-p"}  # a deleted owner touches its dependents
    assert graph.remove(obj("p")) == {"uid-rc"}
    assert graph.interesting() == []


# ---------------------------------------------------------------------------------- a fake cluster
def serialized(method: Callable[..., Any]) -> Callable[..., Any]:
    """One API call at a time, as the API server serialises writes per object (the collector may
    call from several workers)."""
    @functools.wraps(method)
    def locked(self: FakeCluster, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            return method(self, *args, **kwargs)
    return locked


class FakeCluster:
    """Objects by (plural, namespace, name) with the API server's deletion rules (policy finalizers,
    uid preconditions, resourceVersion on patches); every change goes to the handlers, as an
    informer would deliver it."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.objects: dict[tuple[str, str, str], tuple[Resource, Obj]] = {}
        self.handlers: dict[str, Handlers] = {}
        self.calls: list[tuple[str, str, str | None]] = []
        self.gets = 0
        self._rv = itertools.count(2)

    def add(self, res: Resource, o: Obj, notify: bool = True) -> Obj:
        key = (res.plural, o["metadata"].get("namespace", ""), o["metadata"]["name"])
        o["metadata"]["resourceVersion"] = str(next(self._rv))
        prev = self.objects.get(key)
        self.objects[key] = (res, o)
        h = self.handlers.get(res.plural)
        if h is not None and notify:
            if prev is None and h.on_add:
                h.on_add(o)
            elif prev is not None and h.on_update:
                h.on_update(prev[1], o)
        return o

    def _find(self, res: Resource, name: str, ns: str | None) -> Obj:
        found = self.objects.get((res.plural, ns or "", name))
        if found is None:
            raise ApiError({"code": 404, "reason": "NotFound", "message": f"{name} not found"})
        return found[1]

    def _gone(self, res: Resource, o: Obj) -> None:
        del self.objects[(res.plural, o["metadata"].get("namespace", ""), o["metadata"]["name"])]
        h = self.handlers.get(res.plural)
        if h is not None and h.on_delete:
            h.on_delete(o)

    def request(self, method: str, path: str, *, query: Mapping[str, Any] | None = None, body: Any = None,
                content_type: str = "application/json") -> Any:
        raise AssertionError("the collector only uses discovery at build time")

    @serialized
    def get(self, res: Resource, name: str, namespace: str | None = None) -> Obj:
        self.gets += 1
        return self._find(res, name, namespace)

    @serialized
    def delete(self, res: Resource, name: str, namespace: str | None = None, *,
               propagation_policy: str | None = None, grace_period_seconds: int | None = None,
               preconditions: Mapping[str, str] | None = None) -> Obj:
        self.calls.append(("delete", name, propagation_policy))
        cur = self._find(res, name, namespace)
        if preconditions and preconditions.get("uid") != cur["metadata"]["uid"]:
            raise ApiError({"code": 409, "reason": "Conflict", "message": "uid precondition"})
        finalizer = {"Foreground": FOREGROUND, "Orphan": ORPHAN}.get(propagation_policy or "")
        new = {**cur, "metadata": dict(cur["metadata"])}
        fins = [f for f in new["metadata"].get("finalizers") or [] if f not in (ORPHAN, FOREGROUND)]
        fins += [finalizer] if finalizer else []
        if fins:
            new["metadata"].update(finalizers=fins, deletionTimestamp="2026-01-01T00:00:00Z",
                                   deletionGracePeriodSeconds=0)
            return self.add(res, new)
        self._gone(res, cur)
        return cur

    @serialized
    def patch(self, res: Resource, name: str, patch: Any, namespace: str | None = None, *,
              patch_type: str = "merge", subresource: str | None = None, field_manager: str | None = None,
              force: bool | None = None) -> Obj:
        self.calls.append(("patch", name, None))
        cur = self._find(res, name, namespace)
        change = dict(patch["metadata"])
        if change.pop("resourceVersion") != cur["metadata"]["resourceVersion"]:
            raise ApiError({"code": 409, "reason": "Conflict", "message": "stale"})
        meta = dict(cur["metadata"])
        for k, v in change.items():
            if v is None:
                meta.pop(k, None)
            else:
                meta[k] = v
        new = {**cur, "metadata": meta}
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._gone(res, cur)
            return new
        return self.add(res, new)

    def names(self, res: Resource) -> set[str]:
        return {k[2] for k in self.objects if k[0] == res.plural}


def collector(cluster: FakeCluster) -> GarbageCollector:
    c = GarbageCollector(cluster, retry_delay=0.0)
    for res in (PODS, REPLICATIONCONTROLLERS, CONFIGMAPS):
        cluster.handlers[res.plural] = c.handlers(res)
    return c


def settle(c: GarbageCollector, rounds: int = 20) -> None:
    for _ in range(rounds):
        c.run_once()


def rc_with_pods(cluster: FakeCluster, pods: int = 2) -> None:
    cluster.add(REPLICATIONCONTROLLERS, obj("rc"))
    for i in range(pods):
        cluster.add(PODS, obj(f"p{i}", refs=[ref("uid-rc", name="rc")]))


def test_background_cascade_through_a_chain() -> None:
    cluster = FakeCluster()
    c = collector(cluster)
    rc_with_pods(cluster)
    cluster.add(CONFIGMAPS, obj("cm1", refs=[ref("uid-rc", name="rc")]))
    cluster.add(CONFIGMAPS, obj("cm2", refs=[ref("uid-cm1", kind="ConfigMap", name="cm1")]))
    cluster.add(CONFIGMAPS, obj("free"))
    settle(c)
    assert cluster.calls == []  # every owner is there
    cluster.delete(REPLICATIONCONTROLLERS, "rc", "default", propagation_policy="Background")
    settle(c)
    assert cluster.names(PODS) == set() and cluster.names(CONFIGMAPS) == {"free"}
    deletes = [call for call in cluster.calls if call[0] == "delete"][1:]
    assert sorted(deletes) == [("delete", n, "Background") for n in ("cm1", "cm2", "p0", "p1")]
    assert cluster.gets == 2  # one live check per gone owner (rc, cm1), then remembered


def test_owner_missing_from_the_graph_is_checked_live() -> None:
    cluster = FakeCluster()
    c = collector(cluster)
    cluster.add(REPLICATIONCONTROLLERS, obj("rc"), notify=False)  # the RC informer lags
    cluster.add(PODS, obj("p", refs=[ref("uid-rc", name="rc")]))
    settle(c)
    assert cluster.names(PODS) == {"p"} and cluster.gets == 1
    # the name now belongs to another RC: the pod's owner is gone
    cluster.add(REPLICATIONCONTROLLERS, obj("rc", uid="uid-rc2"), notify=False)
    c.mark("uid-p")
    settle(c)
    assert cluster.names(PODS) == set()


def test_some_live_owners_only_lose_dangling_references() -> None:
    cluster = FakeCluster()
    c = collector(cluster)
    cluster.add(REPLICATIONCONTROLLERS, obj("keep"))
    cluster.add(CONFIGMAPS, obj("cm", refs=[ref("uid-gone", name="gone"), ref("uid-keep", name="keep")]))
    settle(c)
    assert cluster.names(CONFIGMAPS) == {"cm"}
    refs = cluster.objects[("configmaps", "default", "cm")][1]["metadata"]["ownerReferences"]
    assert [r["uid"] for r in refs] == ["uid-keep"]


def test_foreground_deletes_dependents_before_the_owner() -> None:
    cluster = FakeCluster()
    c = collector(cluster)
    rc_with_pods(cluster)
    cluster.add(REPLICATIONCONTROLLERS, obj("other"))
    shared = obj("shared", refs=[ref("uid-rc", name="rc"), ref("uid-other", name="other")])
    cluster.add(CONFIGMAPS, shared)
    cluster.add(CONFIGMAPS, obj("cm1", refs=[ref("uid-rc", name="rc")]))
    cluster.add(CONFIGMAPS, obj("cm2", refs=[ref("uid-cm1", kind="ConfigMap", name="cm1")]))
    cluster.delete(REPLICATIONCONTROLLERS, "rc", "default", propagation_policy="Foreground")
    c.run_once()
    assert "rc" in cluster.names(REPLICATIONCONTROLLERS)  # waits for its dependents
    settle(c)
    assert cluster.names(REPLICATIONCONTROLLERS) == {"other"} and cluster.names(PODS) == set()
    assert cluster.names(CONFIGMAPS) == {"shared"}  # another live owner: only the reference goes
    refs = cluster.objects[("configmaps", "default", "shared")][1]["metadata"]["ownerReferences"]
    assert [r["uid"] for r in refs] == ["uid-other"]
    assert ("delete", "cm1", "Foreground") in cluster.calls  # it has dependents: the chain cascades


def test_foreground_waits_for_blocking_dependents_only() -> None:
    cluster = FakeCluster()
    c = collector(cluster)
    cluster.add(REPLICATIONCONTROLLERS, obj("rc"))
    cluster.add(PODS, obj("held", refs=[ref("uid-rc", name="rc")], finalizers=["example.com/hold"]))
    cluster.add(PODS, obj("loose", refs=[ref("uid-rc", name="rc", block=False)],
                          finalizers=["example.com/hold"]))
    cluster.delete(REPLICATIONCONTROLLERS, "rc", "default", propagation_policy="Foreground")
    settle(c)
    assert "rc" in cluster.names(REPLICATIONCONTROLLERS)  # "held" blocks (still terminating)
    cluster.patch(PODS, "held", {"metadata": {
        "finalizers": None,
        "resourceVersion": cluster.objects[("pods", "default", "held")][1]["metadata"]["resourceVersion"]}},
        "default")
    settle(c)
    assert cluster.names(REPLICATIONCONTROLLERS) == set() and cluster.names(PODS) == {"loose"}


def test_orphan_keeps_dependents_and_drops_references() -> None:
    cluster = FakeCluster()
    c = collector(cluster)
    rc_with_pods(cluster)
    cluster.delete(REPLICATIONCONTROLLERS, "rc", "default", propagation_policy="Orphan")
    settle(c)
    assert cluster.names(REPLICATIONCONTROLLERS) == set() and cluster.names(PODS) == {"p0", "p1"}
    for name in ("p0", "p1"):
        assert "ownerReferences" not in cluster.objects[("pods", "default", name)][1]["metadata"]
    assert not [call for call in cluster.calls if call[0] == "delete" and call[1] != "rc"]


def test_stale_patch_is_retried() -> None:
    cluster = FakeCluster()
    c = collector(cluster)
    rc_with_pods(cluster, pods=1)
    cluster.delete(REPLICATIONCONTROLLERS, "rc", "default", propagation_policy="Orphan")
    # the pod changed on the server but the graph has not seen it yet
    pod = cluster.objects[("pods", "default", "p0")][1]
    cluster.add(PODS, {**pod, "metadata": {**pod["metadata"], "labels": {"x": "y"}}}, notify=False)
    c.run_once()
    assert cluster.names(REPLICATIONCONTROLLERS) == {"rc"}  # the patch failed: the key retries
    cluster.handlers["pods"].on_update(pod, cluster.objects[("pods", "default", "p0")][1])  # type: ignore[misc]
    settle(c)
    assert cluster.names(REPLICATIONCONTROLLERS) == set()
    assert "ownerReferences" not in cluster.objects[("pods", "default", "p0")][1]["metadata"]


def test_resync_keys() -> None:
    c = GarbageCollector(FakeCluster())
    c.graph.upsert(PODS, obj("p", refs=[ref("x")]))
    c.graph.upsert(CONFIGMAPS, obj("plain"))
    assert c.resync_keys() == ["uid-p"]


STANDARD = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
DISCOVERY = {
    "/api/v1": {"groupVersion": "v1", "resources": [
        {"name": "pods", "kind": "Pod", "namespaced": True, "verbs": STANDARD},
        {"name": "pods/status", "kind": "Pod", "namespaced": True, "verbs": ["get", "patch"]},
        {"name": "nodes", "kind": "Node", "namespaced": False, "verbs": STANDARD},
        {"name": "bindings", "kind": "Binding", "namespaced": True, "verbs": ["create"]}]},
    "/apis": {"groups": [{"name": "apps", "preferredVersion": {"groupVersion": "apps/v1"}}]},
    "/apis/apps/v1": {"groupVersion": "apps/v1", "resources": [
        {"name": "replicasets", "kind": "ReplicaSet", "namespaced": True, "verbs": STANDARD}]},
}


class Discovery(FakeCluster):
    def request(self, method: str, path: str, *, query: Mapping[str, Any] | None = None, body: Any = None,
                content_type: str = "application/json") -> Any:
        assert method == "GET"
        return DISCOVERY[path]


def test_discovered_kinds() -> None:
    assert gc.discover_kinds(Discovery()) == {
        ("", "Pod"): PODS, ("", "Node"): Resource("", "v1", "nodes", namespaced=False),
        ("apps", "ReplicaSet"): Resource("apps", "v1", "replicasets")}
    assert {r.plural for r in gc.KINDS.values()} >= {
        "pods", "replicationcontrollers", "replicasets", "deployments", "endpointslices", "configmaps",
        "secrets", "services", "serviceaccounts"}  # the fallback


def test_owner_of_an_unknown_kind_is_left_alone() -> None:
    cluster = FakeCluster()
    c = GarbageCollector(cluster, kinds={("", "ReplicationController"): REPLICATIONCONTROLLERS})
    cluster.handlers["configmaps"] = c.handlers(CONFIGMAPS)
    cluster.add(CONFIGMAPS, obj("cm", refs=[ref("uid-x", kind="Widget", name="x")]))
    settle(c)
    assert cluster.names(CONFIGMAPS) == {"cm"} and cluster.calls == [] and cluster.gets == 0


def test_absent_owner_cache_is_bounded() -> None:
    cluster = FakeCluster()
    c = collector(cluster)
    c.absent_limit = 1
    for i in range(3):
        cluster.add(CONFIGMAPS, obj(f"cm{i}", refs=[ref(f"gone{i}", name=f"gone{i}")]))
    settle(c)
    assert cluster.names(CONFIGMAPS) == set() and len(c._absent) == 1 and cluster.gets == 3


@pytest.mark.parametrize("policy", ["Background", "Foreground"])
def test_concurrent_workers_converge(policy: str) -> None:
    cluster = FakeCluster()
    c = GarbageCollector(cluster, retry_delay=0.0, workers=4)
    for res in (PODS, REPLICATIONCONTROLLERS, CONFIGMAPS):
        cluster.handlers[res.plural] = c.handlers(res)
    rc_with_pods(cluster, pods=40)
    cluster.add(CONFIGMAPS, obj("cm1", refs=[ref("uid-rc", name="rc")]))
    cluster.add(CONFIGMAPS, obj("cm2", refs=[ref("uid-cm1", kind="ConfigMap", name="cm1")]))
    cluster.delete(REPLICATIONCONTROLLERS, "rc", "default", propagation_policy=policy)
    settle(c, rounds=40)
    assert not cluster.objects and c.syncs >= 43
