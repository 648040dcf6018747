"""Namespace controller: discovery filtering, conditions, finalize body, and a deletion pass over a
fake API (our Api seam) holding the namespace's content."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from controlplane.controllers.namespace import (
    Content,
    Deletable,
    NamespaceController,
    deletable_resources,
    finalized,
    merge_conditions,
    namespace_conditions,
)
from podnet.api.client import NAMESPACES, ApiError, Resource

Obj = dict[str, Any]
STANDARD = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]

CORE = {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
    {"name": "namespaces", "namespaced": False, "verbs": STANDARD},
    {"name": "pods", "namespaced": True, "verbs": STANDARD},
    {"name": "pods/status", "namespaced": True, "verbs": ["get", "patch", "update"]},
    {"name": "configmaps", "namespaced": True, "verbs": STANDARD},
    {"name": "secrets", "namespaced": True, "verbs": ["delete", "get", "list"]},  # no deletecollection
    {"name": "bindings", "namespaced": True, "verbs": ["create"]},
]}
APPS = {"kind": "APIResourceList", "groupVersion": "apps/v1", "resources": [
    {"name": "deployments", "namespaced": True, "verbs": STANDARD},
]}
GROUPS = {"kind": "APIGroupList", "groups": [
    {"name": "apps", "versions": [{"groupVersion": "apps/v1", "version": "v1"}],
     "preferredVersion": {"groupVersion": "apps/v1", "version": "v1"}}]}


def test_deletable_resources_from_discovery() -> None:
    found = deletable_resources([CORE, APPS])
    assert found == [Deletable(Resource("", "v1", "pods"), True),
                     Deletable(Resource("", "v1", "configmaps"), True),
                     Deletable(Resource("", "v1", "secrets"), False),
                     Deletable(Resource("apps", "v1", "deployments"), True)]


def test_conditions() -> None:
    failed = namespace_conditions("boom", None)
    assert [(c["type"], c["status"], c["reason"]) for c in failed] == [
        ("NamespaceDeletionDiscoveryFailure", "True", "DiscoveryFailed")]
    content = Content(remaining={"pods.": 2}, finalizers={"example.com/hold": 1}, errors=["secrets.: 500"])
    conds = {c["type"]: c for c in namespace_conditions(None, content)}
    assert conds["NamespaceDeletionDiscoveryFailure"]["status"] == "False"
    assert conds["NamespaceDeletionContentFailure"]["message"] == (
        "Failed to delete all resource types, 1 remaining: secrets.: 500")
    assert conds["NamespaceContentRemaining"]["message"] == (
        "Some resources are remaining: pods. has 2 resource instances")
    assert conds["NamespaceFinalizersRemaining"]["message"] == (
        "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances")
    done = {c["type"]: (c["status"], c["reason"]) for c in namespace_conditions(None, Content())}
    assert done == {"NamespaceDeletionDiscoveryFailure": ("False", "ResourcesDiscovered"),
                    "NamespaceDeletionContentFailure": ("False", "ContentDeleted"),
                    "NamespaceContentRemaining": ("False", "ContentRemoved"),
                    "NamespaceFinalizersRemaining": ("False", "ContentHasNoFinalizers")}


def test_merge_conditions_keeps_transition_times() -> None:
    old = [{"type": "A", "status": "True", "lastTransitionTime": "t0"},
           {"type": "Other", "status": "True", "lastTransitionTime": "t0"}]
    merged = merge_conditions(old, [{"type": "A", "status": "True", "message": "m"}], "t1")
    assert merged == [old[1], {"type": "A", "status": "True", "message": "m", "lastTransitionTime": "t0"}]
    flipped = merge_conditions(old, [{"type": "A", "status": "False"}], "t1")
    assert flipped[-1]["lastTransitionTime"] == "t1"


def test_finalize_body() -> None:
    ns = {"metadata": {"name": "x", "resourceVersion": "7", "uid": "u"},
          "spec": {"finalizers": ["kubernetes", "example.com/y"]}}
    assert finalized(ns) == {"apiVersion": "v1", "kind": "Namespace",
                             "metadata": {"name": "x", "resourceVersion": "7"},
                             "spec": {"finalizers": ["example.com/y"]}}


class FakeApi:
    """Discovery documents, objects by (plural, namespace), and the namespace itself."""

    def __init__(self, ns: Obj, content: dict[str, list[Obj]]) -> None:
        self.ns = ns
        self.content = content
        self.calls: list[tuple[str, str]] = []
        self.fail: set[str] = set()
        self.discovery_fails = False

    def request(self, method: str, path: str, *, query: Mapping[str, Any] | None = None, body: Any = None,
                content_type: str = "application/json") -> Any:
        if method == "GET":
            if self.discovery_fails:
                raise ApiError({"code": 503, "reason": "ServiceUnavailable", "message": "down"})
            return {"/api/v1": dict(CORE), "/apis": GROUPS, "/apis/apps/v1": dict(APPS)}[path]
        assert method == "DELETE" and body["propagationPolicy"] == "Background"
        plural = path.rsplit("/", 1)[1]
        self.calls.append(("deletecollection", plural))
        self.content[plural] = [o for o in self.content.get(plural, []) if self._stays(o)]
        return {}

    @staticmethod
    def _stays(obj: Obj) -> bool:
        """Finalizers or a bound pod: only marked."""
        meta = obj["metadata"]
        if meta.get("finalizers") or (obj.get("spec") or {}).get("nodeName"):
            meta.setdefault("deletionTimestamp", "2099-01-01T00:00:00Z")
            meta.setdefault("deletionGracePeriodSeconds", 30 if not meta.get("finalizers") else 0)
            return True
        return False

    def list_all(self, res: Resource, namespace: str | None = None, **_: Any) -> tuple[list[Obj], str]:
        if res.plural in self.fail:
            raise ApiError({"code": 500, "reason": "InternalError", "message": "nope"})
        return list(self.content.get(res.plural, [])), "1"

    def delete(self, res: Resource, name: str, namespace: str | None = None, *,
               propagation_policy: str | None = None, grace_period_seconds: int | None = None,
               preconditions: Mapping[str, str] | None = None) -> Obj:
        self.calls.append(("delete", f"{res.plural}/{name}"))
        assert preconditions and preconditions["uid"] == f"uid-{name}"
        self.content[res.plural] = [o for o in self.content[res.plural]
                                    if o["metadata"]["name"] != name or self._stays(o)]
        return {}

    def update(self, res: Resource, obj: Mapping[str, Any], namespace: str | None = None,
               subresource: str | None = None, **query: Any) -> Obj:
        assert (res, subresource) == (NAMESPACES, "finalize")
        assert obj["metadata"]["resourceVersion"] == self.ns["metadata"]["resourceVersion"]
        self.calls.append(("finalize", obj["metadata"]["name"]))
        self.ns["spec"]["finalizers"] = obj["spec"]["finalizers"]
        return self.ns

    def patch(self, res: Resource, name: str, patch: Any, namespace: str | None = None, *,
              patch_type: str = "merge", subresource: str | None = None, field_manager: str | None = None,
              force: bool | None = None) -> Obj:
        assert (res, subresource) == (NAMESPACES, "status")
        self.ns["status"] = patch["status"]
        self.ns["metadata"]["resourceVersion"] = str(int(self.ns["metadata"]["resourceVersion"]) + 1)
        return self.ns


class Cache:
    def __init__(self, objs: list[Obj]) -> None:
        self.objs = objs

    def get(self, key: str) -> Obj | None:
        return next((o for o in self.objs if o["metadata"]["name"] == key), None)

    def list(self) -> list[Obj]:
        return self.objs


def item(name: str, **extra: Any) -> Obj:
    meta = {"name": name, "namespace": "team", "uid": f"uid-{name}", **extra.pop("meta", {})}
    return {"metadata": meta, **extra}


def terminating_ns() -> Obj:
    return {"metadata": {"name": "team", "resourceVersion": "5", "deletionTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Terminating"}}


def controller(api: FakeApi, now: float = 0.0) -> NamespaceController:
    return NamespaceController(api, Cache([api.ns]), clock=lambda: now, wall=lambda: 4_000_000_000.0)


def test_deletes_all_content_then_finalizes() -> None:
    api = FakeApi(terminating_ns(), {"pods": [item("p")], "configmaps": [item("c1"), item("c2")],
                                     "secrets": [item("s")], "deployments": [item("d")]})
    c = controller(api)
    c.sync("team")
    assert api.calls == [("deletecollection", "pods"), ("deletecollection", "configmaps"),
                         ("delete", "secrets/s"), ("deletecollection", "deployments"), ("finalize", "team")]
    assert api.ns["spec"]["finalizers"] == []
    conds = {c["type"]: c["status"] for c in api.ns["status"]["conditions"]}
    assert set(conds.values()) == {"False"} and len(conds) == 4


def test_remaining_content_waits_and_reports() -> None:
    held = item("held", meta={"finalizers": ["example.com/hold"]})
    bound = item("bound", spec={"nodeName": "n1"})
    api = FakeApi(terminating_ns(), {"configmaps": [held], "pods": [bound]})
    c = controller(api)
    c.sync("team")
    assert ("finalize", "team") not in api.calls
    conds = {c["type"]: c for c in api.ns["status"]["conditions"]}
    assert conds["NamespaceContentRemaining"]["message"] == (
        "Some resources are remaining: configmaps. has 1 resource instances, pods. has 1 resource instances")
    assert conds["NamespaceFinalizersRemaining"]["status"] == "True"
    assert c._retry["team"] > 1000  # after the bound pod's grace period (deletionTimestamp in 2099)
    api.content = {}
    c.sync("team")
    assert api.calls[-1] == ("finalize", "team")


def test_failures_are_reported_and_retried() -> None:
    api = FakeApi(terminating_ns(), {"configmaps": [item("c")]})
    api.discovery_fails = True
    c = controller(api)
    with pytest.raises(ApiError):
        c.sync("team")
    conds = {c["type"]: c for c in api.ns["status"]["conditions"]}
    assert conds["NamespaceDeletionDiscoveryFailure"]["status"] == "True"
    api.discovery_fails = False
    api.fail = {"pods"}
    c.sync("team")
    conds = {c["type"]: c for c in api.ns["status"]["conditions"]}
    assert conds["NamespaceDeletionDiscoveryFailure"]["status"] == "False"
    assert conds["NamespaceDeletionContentFailure"]["status"] == "True"
    assert ("finalize", "team") not in api.calls and "team" in c._retry


def test_ignores_live_and_finalized_namespaces() -> None:
    live = {"metadata": {"name": "team", "resourceVersion": "1"}, "spec": {"finalizers": ["kubernetes"]}}
    api = FakeApi(live, {"configmaps": [item("c")]})
    c = controller(api)
    c.sync("team")
    c.sync("missing")
    done = terminating_ns()
    done["spec"]["finalizers"] = []
    api.ns = done
    c.namespaces = Cache([done])
    c.sync("team")
    assert api.calls == [] and c.resync_keys() == ["team"]
