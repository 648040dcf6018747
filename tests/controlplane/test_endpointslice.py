"""The EndpointSlice controller: endpoint conditions as a table, the in-place slice plan (packing,
minimal writes, placeholder, foreign slices), and the sync against fakes of its seams."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import pytest

from controlplane.controllers.__main__ import parse_args
from controlplane.controllers.context import ControllerContext
from controlplane.controllers.endpoint_common import HEADLESS_LABEL
from controlplane.controllers.endpointslice import (
    CONTROLLER_NAME,
    MANAGED_BY_LABEL,
    SERVICE_NAME_LABEL,
    ZONE_LABEL,
    EndpointSliceController,
    SlicePlan,
    address_types,
    build,
    desired_slices,
    pod_endpoint,
    slice_labels,
)
from podnet.api.client import ENDPOINTSLICES, ApiError, Resource
from tests.controlplane.fakes import FakeCache
from tests.controlplane.test_endpoints import make_pod, make_service, ref

Obj = dict[str, Any]
HTTP = [{"name": "http", "port": 8080, "protocol": "TCP"}]


def cond(ready: bool, serving: bool, terminating: bool) -> Obj:
    return {"ready": ready, "serving": serving, "terminating": terminating}


CONDITIONS = [
    ("ready", {}, {}, cond(True, True, False)),
    ("not ready", {"ready": False}, {}, cond(False, False, False)),
    ("terminating, still ready", {"deleting": True}, {}, cond(False, True, True)),
    ("terminating, not ready", {"deleting": True, "ready": False}, {}, cond(False, False, True)),
    ("publishNotReadyAddresses", {"deleting": True, "ready": False}, {"publish": True},
     cond(True, False, True)),
]


@pytest.mark.parametrize(("pod_kw", "svc_kw", "want"), [c[1:] for c in CONDITIONS],
                         ids=[c[0] for c in CONDITIONS])
def test_endpoint_conditions(pod_kw: dict[str, Any], svc_kw: dict[str, Any], want: Obj) -> None:
    endpoint = pod_endpoint(make_service(**svc_kw), make_pod("a", "10.244.0.1", **pod_kw), "IPv4")
    assert endpoint is not None and endpoint["conditions"] == want


def test_endpoint_fields() -> None:
    svc = make_service(cluster_ip="None")
    pod = make_pod("a", "10.244.0.1", hostname="h", subdomain="web", ips=["10.244.0.1", "fd00::1"])
    assert pod_endpoint(svc, pod, "IPv4") == {
        "addresses": ["10.244.0.1"], "conditions": cond(True, True, False), "targetRef": ref("a"),
        "nodeName": "node-a", "hostname": "h"}
    assert pod_endpoint(svc, pod, "IPv6")["addresses"] == ["fd00::1"]  # type: ignore[index]
    assert pod_endpoint(svc, make_pod("b", "10.244.0.2"), "IPv6") is None


def test_zone_from_the_node() -> None:
    zones = {"node-a": "zone-1"}
    on_a = pod_endpoint(make_service(), make_pod("a", "10.244.0.1"), "IPv4", zones)
    on_b = pod_endpoint(make_service(), make_pod("b", "10.244.0.2", node="node-b"), "IPv4", zones)
    assert on_a is not None and on_a["zone"] == "zone-1"
    assert on_b is not None and "zone" not in on_b
    api, nodes = FakeApi(), FakeCache({"metadata": {"name": "node-a", "labels": {ZONE_LABEL: "zone-1"}}},
                                      {"metadata": {"name": "node-b"}})
    ctl = EndpointSliceController(api, FakeCache(make_service()), FakeCache(make_pod("a", "10.244.0.1")),
                                  FakeCache(), nodes)
    assert ctl.zones() == zones
    ctl.sync("default/web")
    assert api.written[0]["endpoints"][0]["zone"] == "zone-1"


def test_labels_and_address_types() -> None:
    svc = make_service(cluster_ip="None", labels={"team": "a", SERVICE_NAME_LABEL: "evil"})
    assert slice_labels(svc) == {"team": "a", HEADLESS_LABEL: "", SERVICE_NAME_LABEL: "web",
                                 MANAGED_BY_LABEL: CONTROLLER_NAME}
    assert address_types(make_service(families=["IPv6", "IPv4"])) == ["IPv6", "IPv4"]
    no_families = make_service(cluster_ip="fd00::1")
    del no_families["spec"]["ipFamilies"]
    assert address_types(no_families) == ["IPv6"]


# ---------------------------------------------------------------------------------- the plan
class Store:
    """Applies plans like the server: names from generateName, resourceVersions."""

    def __init__(self) -> None:
        self.slices: dict[str, Obj] = {}
        self._n = itertools.count(1)

    def apply(self, plan: SlicePlan) -> None:
        for obj in plan.create:
            made = dict(obj)
            n = next(self._n)
            made["metadata"] = {**obj["metadata"], "name": f"{obj['metadata']['generateName']}{n}",
                                "uid": f"slice-uid-{n}"}
            self.slices[made["metadata"]["name"]] = made
        for obj in plan.update:
            assert obj["metadata"]["name"] in self.slices
            self.slices[obj["metadata"]["name"]] = obj
        for obj in plan.delete:
            del self.slices[obj["metadata"]["name"]]

    def list(self) -> list[Obj]:
        return list(self.slices.values())

    def sizes(self) -> list[int]:
        return sorted(len(s["endpoints"]) for s in self.slices.values())


def pods(n: int, start: int = 0, **kw: Any) -> list[Obj]:
    return [make_pod(f"p{i:03d}", f"10.244.{i // 250}.{i % 250 + 1}", **kw) for i in range(start, start + n)]


def converge(svc: Obj, all_pods: list[Obj], store: Store, max_per_slice: int = 100) -> SlicePlan:
    plan = desired_slices(svc, all_pods, store.list(), max_per_slice)
    store.apply(plan)
    assert desired_slices(svc, all_pods, store.list(), max_per_slice).empty  # a resync writes nothing
    return plan


def test_slices_from_scratch_are_packed_and_labelled() -> None:
    svc, store = make_service(), Store()
    plan = converge(svc, pods(250), store)
    assert (len(plan.create), plan.update, plan.delete) == (3, [], [])
    assert store.sizes() == [50, 100, 100]
    first = plan.create[0]
    assert first["metadata"]["generateName"] == "web-"
    assert first["metadata"]["labels"] == {SERVICE_NAME_LABEL: "web", MANAGED_BY_LABEL: CONTROLLER_NAME}
    assert first["metadata"]["ownerReferences"] == [{"apiVersion": "v1", "kind": "Service", "name": "web",
                                                     "uid": "svc-uid-web", "controller": True,
                                                     "blockOwnerDeletion": True}]
    assert (first["addressType"], first["ports"]) == ("IPv4", HTTP)
    names = [e["targetRef"]["name"] for s in plan.create for e in s["endpoints"]]
    assert names == sorted(names) and len(set(names)) == 250


def test_one_change_writes_one_slice() -> None:
    svc, store = make_service(), Store()
    everyone = pods(250)
    converge(svc, everyone, store)
    everyone[7] = make_pod("p007", "10.244.0.8", ready=False)
    plan = converge(svc, everyone, store)
    assert (len(plan.update), plan.create, plan.delete) == (1, [], [])
    removed = converge(svc, everyone[:-1], store)  # the last pod is gone
    assert (len(removed.update), removed.create, removed.delete) == (1, [], [])
    assert store.sizes() == [49, 100, 100]


def test_stored_order_and_omitted_fields_are_no_difference() -> None:
    svc, store = make_service(), Store()
    converge(svc, pods(5), store)
    for s in store.list():
        s["endpoints"] = [{**e, "hints": {}, "zone": ""} for e in reversed(s["endpoints"])]
    assert desired_slices(svc, pods(5), store.list()).empty
    store.list()[0]["endpoints"].append(dict(store.list()[0]["endpoints"][0]))  # a duplicate
    assert len(desired_slices(svc, pods(5), store.list()).update) == 1


def test_new_endpoints_fill_room_before_creating() -> None:
    svc, store = make_service(), Store()
    converge(svc, pods(150), store)
    plan = converge(svc, pods(170), store)  # 20 more fit the slice of 50
    assert (len(plan.update), plan.create) == (1, [])
    assert store.sizes() == [70, 100]
    plan = converge(svc, pods(300), store)
    assert len(plan.create) == 1 and store.sizes() == [100, 100, 100]


def test_emptied_slices_are_deleted_and_shrinking_max_splits() -> None:
    svc, store = make_service(), Store()
    converge(svc, pods(200), store)
    plan = converge(svc, pods(100, start=100), store)  # the first slice's pods all left
    assert len(plan.delete) == 1 and store.sizes() == [100]
    converge(svc, pods(100, start=100), store, max_per_slice=30)
    assert store.sizes() == [10, 30, 30, 30]


def test_named_port_numbers_split_groups() -> None:
    svc, store = make_service(), Store()
    mixed = [make_pod("a", "10.244.0.1"),
             make_pod("b", "10.244.0.2", ports=[{"name": "web", "containerPort": 9090}]),
             make_pod("c", "10.244.0.3", ports=[])]
    converge(svc, mixed, store)
    by_ports = {tuple(p["port"] for p in s["ports"]): [e["targetRef"]["name"] for e in s["endpoints"]]
                for s in store.list()}
    assert by_ports == {(8080,): ["a"], (9090,): ["b"], (): ["c"]}  # c resolves no port: kept, portless


def test_placeholder_when_nothing_backs_the_service() -> None:
    svc, store = make_service(), Store()
    plan = converge(svc, [], store)
    [placeholder] = plan.create
    assert (placeholder["endpoints"], placeholder["ports"], placeholder["addressType"]) == ([], [], "IPv4")
    plan = converge(svc, pods(3), store)
    assert (len(plan.create), len(plan.delete)) == (1, 1)
    plan = converge(svc, [], store)  # the last pod left: its slice empties, one placeholder stays
    assert len(store.list()) == 1 and store.list()[0]["endpoints"] == []


def test_foreign_and_duplicate_slices() -> None:
    svc, store = make_service(), Store()
    converge(svc, pods(3), store)
    [ours] = store.list()
    stale = {**ours, "metadata": {**ours["metadata"], "name": "web-old",
                                  "ownerReferences": [{"uid": "previous-service", "controller": True}]}}
    duplicate = {**ours, "metadata": {**ours["metadata"], "name": "web-zzz"}}
    store.slices.update({"web-old": stale, "web-zzz": duplicate})
    plan = desired_slices(svc, pods(3), store.list())
    assert sorted(s["metadata"]["name"] for s in plan.delete) == ["web-old", "web-zzz"]
    assert plan.create == [] and plan.update == []


def test_dual_stack_and_label_changes() -> None:
    svc, store = make_service(families=["IPv4", "IPv6"]), Store()
    both = [make_pod("a", "10.244.0.1", ips=["10.244.0.1", "fd00::1"]), make_pod("b", "10.244.0.2")]
    converge(svc, both, store)
    assert sorted((s["addressType"], len(s["endpoints"])) for s in store.list()) == [("IPv4", 2), ("IPv6", 1)]
    svc["metadata"]["labels"] = {"team": "b"}
    plan = converge(svc, both, store)
    assert len(plan.update) == 2 and all(s["metadata"]["labels"]["team"] == "b" for s in plan.update)


# ---------------------------------------------------------------------------------- the controller
class FakeApi:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.written: list[Obj] = []  # what the server returned, for the test to feed the cache
        self.fail: dict[str, int] = {}
        self._n = itertools.count(1)

    def _check(self, verb: str) -> None:
        code = self.fail.pop(verb, None)
        if code == 403:  # what a namespace being deleted answers a create
            raise ApiError({"code": 403, "reason": "Forbidden", "message": "unable to create new content in "
                            "namespace default because it is being terminated"})
        if code is not None:
            raise ApiError({"code": code, "reason": "Test", "message": verb})

    def create(self, res: Resource, obj: Mapping[str, Any], namespace: str | None = None,
               **query: Any) -> Obj:
        self._check("create")
        n = next(self._n)
        made = {**obj, "metadata": {**obj["metadata"], "name": f"{obj['metadata']['generateName']}{n}",
                                    "uid": f"u{n}", "resourceVersion": str(100 + n)}}
        self.calls.append(("create", made["metadata"]["name"]))
        self.written.append(made)
        return made

    def update(self, res: Resource, obj: Mapping[str, Any], namespace: str | None = None,
               subresource: str | None = None, **query: Any) -> Obj:
        self._check("update")
        self.calls.append(("update", obj["metadata"]["name"]))
        return {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(200 + next(self._n))}}

    def delete(self, res: Resource, name: str, namespace: str | None = None, *,
               propagation_policy: str | None = None, grace_period_seconds: int | None = None,
               preconditions: Mapping[str, str] | None = None) -> Obj:
        self._check("delete")
        self.calls.append(("delete", name))
        return {}


def make_controller(svc: Obj, *pod_objs: Obj
                    ) -> tuple[EndpointSliceController, FakeApi, FakeCache, FakeCache]:
    api, services, slices = FakeApi(), FakeCache(svc), FakeCache()
    ctl = EndpointSliceController(api, services, FakeCache(*pod_objs), slices, max_endpoints_per_slice=2)
    return ctl, api, services, slices


def test_sync_writes_once_and_waits_for_its_writes() -> None:
    ctl, api, _, slices = make_controller(make_service(), *pods(3))
    ctl.sync("default/web")
    assert [c[0] for c in api.calls] == ["create", "create"]
    ctl.sync("default/web")  # the slice watch is behind: nothing is created twice
    assert len(api.calls) == 2 and "default/web" in ctl._retry
    slices.put(api.written[0])
    ctl.sync("default/web")
    assert len(api.calls) == 2  # one of two writes seen: still waiting
    slices.put(api.written[1])
    ctl.sync("default/web")
    assert len(api.calls) == 2  # caught up, and nothing to change


def test_a_service_being_deleted_gets_no_new_slices() -> None:
    svc = make_service()
    svc["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    ctl, api, _, slices = make_controller(svc, *pods(3))
    slices.put({**desired_slices(svc, pods(2), [], 2).create[0],
                "metadata": {"name": "web-1", "namespace": "default", "labels": slice_labels(svc),
                             "ownerReferences": [{"uid": "svc-uid-web", "controller": True}]}})
    ctl.sync("default/web")
    assert api.calls == []  # the slice holding p000, p001 is right; p002 would need a new one


def test_deleted_service_and_removed_selector_delete_only_managed_slices() -> None:
    svc = make_service()
    ctl, api, services, slices = make_controller(svc)
    slices.put({"metadata": {"name": "web-a", "namespace": "default", "labels": slice_labels(svc)}})
    slices.put({"metadata": {"name": "web-manual", "namespace": "default",
                             "labels": {SERVICE_NAME_LABEL: "web", MANAGED_BY_LABEL: "someone-else"}}})
    slices.put({"metadata": {"name": "db-a", "namespace": "default",
                             "labels": {**slice_labels(svc), SERVICE_NAME_LABEL: "db"}}})
    del svc["spec"]["selector"]
    ctl.sync("default/web")
    assert api.calls == [("delete", "web-a")]
    services.items.clear()
    api.fail["delete"] = 404
    ctl.sync("default/web")  # already gone
    assert ctl.leftover_keys() == {"default/web", "default/db"}


def test_slice_events_mark_their_service_and_conflicts_requeue() -> None:
    ctl, api, _, _ = make_controller(make_service(), *pods(1))
    managed = {"metadata": {"namespace": "default", "name": "web-x", "labels": slice_labels(make_service())}}
    ctl.slice_changed(managed)
    ctl.slice_updated(managed, {"metadata": {"namespace": "default", "name": "x", "labels": {}}})
    assert ctl.dirty.take() == {"default/web"}
    for code in (409, 403, 404):
        api.fail["create"] = code
        ctl.sync("default/web")
        assert api.calls == [] and "default/web" in ctl._retry
    api.fail["create"] = 500
    with pytest.raises(ApiError):
        ctl.sync("default/web")


def test_flag_and_build() -> None:
    assert parse_args(["--kubeconfig", "k"]).max_endpoints_per_slice == 100
    with pytest.raises(SystemExit):
        parse_args(["--kubeconfig", "k", "--max-endpoints-per-slice", "0"])
    options = parse_args(["--kubeconfig", "k", "--max-endpoints-per-slice", "7"])
    ctx = ControllerContext(object(), options)  # type: ignore[arg-type]
    ctl = build(ctx)
    assert (ctl.name, ctl.max_per_slice) == ("endpointslice", 7)
    assert ENDPOINTSLICES in ctx.informers._informers
