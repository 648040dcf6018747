"""The Deployment controller's sync against fakes of its seams (an Api that keeps ReplicaSets and
applies merge patches, caches): RS creation by hash, rollout steps, rollback reusing an RS, hash
collisions, adoption, history cleanup, Recreate, pause and scaling events."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from controlplane.controllers import deployment_util as util
from controlplane.controllers.deployment import DeploymentController, new_replica_set
from podnet.api.client import DEPLOYMENTS, REPLICASETS, ApiError, Resource
from podnet.api.informer import object_key
from tests.controlplane.fakes import FakeCache
from tests.controlplane.test_deployment_plan import dep

Obj = dict[str, Any]


def merge(target: Obj, patch: Mapping[str, Any]) -> Obj:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)
    return target


class FakeApi:
    """Keeps ReplicaSets by name; records deployment patches and deletions."""

    def __init__(self, *rss: Obj) -> None:
        self.rss = {rs["metadata"]["name"]: copy.deepcopy(rs) for rs in rss}
        self.deployment_patches: list[tuple[Any, str | None]] = []
        self.deleted: list[str] = []
        self.rv = 100

    def get(self, res: Resource, name: str, namespace: str | None = None) -> Obj:
        return copy.deepcopy(self.rss[name])

    def create(self, res: Resource, obj: Mapping[str, Any], namespace: str | None = None,
               **query: Any) -> Obj:
        name = obj["metadata"]["name"]
        if name in self.rss:
            raise ApiError({"code": 409, "reason": "AlreadyExists", "message": "exists"}, 409)
        self.rv += 1
        created = merge(copy.deepcopy(dict(obj)), {"metadata": {
            "uid": f"uid-{name}", "resourceVersion": str(self.rv), "generation": 1,
            "creationTimestamp": f"2026-01-{len(self.rss) + 10:02d}T00:00:00Z"}})
        self.rss[name] = created
        return copy.deepcopy(created)

    def patch(self, res: Resource, name: str, patch: Any, namespace: str | None = None, *,
              patch_type: str = "merge", subresource: str | None = None, field_manager: str | None = None,
              force: bool | None = None) -> Obj:
        if res == DEPLOYMENTS:
            self.deployment_patches.append((patch, subresource))
            return {}
        rs = self.rss[name]
        want_rv = (patch.get("metadata") or {}).get("resourceVersion")
        if want_rv is not None and want_rv != rs["metadata"].get("resourceVersion"):
            raise ApiError({"code": 409, "reason": "Conflict", "message": "stale"}, 409)
        merge(rs, patch)
        self.rv += 1
        rs["metadata"]["resourceVersion"] = str(self.rv)
        return copy.deepcopy(rs)

    def delete(self, res: Resource, name: str, namespace: str | None = None, *,
               propagation_policy: str | None = None, grace_period_seconds: int | None = None,
               preconditions: Mapping[str, str] | None = None) -> Obj:
        self.deleted.append(name)
        self.rss.pop(name, None)
        return {}

    def statuses(self) -> list[Obj]:
        return [p["status"] for p, sub in self.deployment_patches if sub == "status"]


def controller(d: Obj, *rss: Obj, pods: tuple[Obj, ...] = ()) -> tuple[DeploymentController, FakeApi]:
    api = FakeApi(*rss)
    c = DeploymentController(api, FakeCache(d), FakeCache(*api.rss.values()), FakeCache(*pods),
                             wall=lambda: 1_800_000_000.0)
    return c, api


def resync(c: DeploymentController, api: FakeApi) -> None:
    """The informer caught up: the RS cache shows what the API holds."""
    c.rss = FakeCache(*copy.deepcopy(list(api.rss.values())))


def set_status(api: FakeApi, name: str, available: int | None = None) -> None:
    """The ReplicaSet controller: pods follow spec; `available` of them are available."""
    rs = api.rss[name]
    replicas = rs["spec"]["replicas"]
    avail = replicas if available is None else available
    rs["status"] = {"replicas": replicas, "readyReplicas": avail, "availableReplicas": avail,
                    "observedGeneration": rs["metadata"].get("generation", 1)}


def owned_rs(d: Obj, image: str, replicas: int, revision: str, *, available: int | None = None) -> Obj:
    d2 = copy.deepcopy(d)
    d2["spec"]["template"]["spec"]["containers"][0]["image"] = image
    rs = new_replica_set(d2, [], int(revision))
    rs["spec"]["replicas"] = replicas
    rs["metadata"].update({"uid": f"uid-{image}", "resourceVersion": "1", "generation": 1,
                           "creationTimestamp": f"2026-01-0{revision}T00:00:00Z"})
    avail = replicas if available is None else available
    rs["status"] = {"replicas": replicas, "availableReplicas": avail, "readyReplicas": avail,
                    "observedGeneration": 1}
    return rs


def test_first_sync_creates_the_hashed_rs_and_status() -> None:
    d = dep(3, 1, 1)
    c, api = controller(d)
    c.sync("default/web")
    (rs,) = api.rss.values()
    h = util.template_hash(d["spec"]["template"])
    assert rs["metadata"]["name"] == f"web-{h}"
    assert rs["spec"]["replicas"] == 3
    assert rs["spec"]["selector"]["matchLabels"] == {"app": "web", util.HASH_LABEL: h}
    assert rs["spec"]["template"]["metadata"]["labels"] == rs["metadata"]["labels"] == {
        "app": "web", util.HASH_LABEL: h}
    assert rs["metadata"]["annotations"] == {util.REVISION: "1", util.DESIRED_REPLICAS: "3",
                                             util.MAX_REPLICAS: "4"}
    assert rs["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
    assert ({"metadata": {"annotations": {util.REVISION: "1"}}}, None) in api.deployment_patches
    (status,) = api.statuses()
    assert {c["type"]: c["reason"] for c in status["conditions"]} == {
        "Available": "MinimumReplicasUnavailable", "Progressing": util.NEW_RS_CREATED}


def test_image_update_steps_through_the_rollout() -> None:
    d = dep(4, 1, 1, generation=2)
    old = owned_rs(d, "v0", 4, "1")
    c, api = controller(d, old)
    c.sync("default/web")
    new_name = next(n for n in api.rss if n != old["metadata"]["name"])
    assert api.rss[new_name]["spec"]["replicas"] == 1  # surge 1
    assert api.rss[new_name]["metadata"]["annotations"][util.REVISION] == "2"
    set_status(api, new_name, available=0)
    resync(c, api)
    c.sync("default/web")
    assert api.rss[old["metadata"]["name"]]["spec"]["replicas"] == 3  # one unavailable allowed
    resync(c, api)
    c.sync("default/web")
    assert api.rss[new_name]["spec"]["replicas"] == 2
    stale = copy.deepcopy(c.rss)
    api.rss[new_name]["metadata"]["resourceVersion"] = "999"  # someone wrote meanwhile
    c.rss = stale
    c.sync("default/web")  # the step computed from the stale cache is refused, and retried later
    assert "default/web" in c._retry


def test_rollback_reuses_the_old_rs_and_bumps_its_revision() -> None:
    d = dep(2, 1, 0)
    v1 = owned_rs(d, "v1", 0, "1")  # d's template has image v1
    v2 = owned_rs(d, "v2", 2, "2")
    c, api = controller(d, v1, v2)
    c.sync("default/web")
    assert len(api.rss) == 2  # no new RS
    annotations = api.rss[v1["metadata"]["name"]]["metadata"]["annotations"]
    assert (annotations[util.REVISION], annotations[util.REVISION_HISTORY]) == ("3", "1")
    assert ({"metadata": {"annotations": {util.REVISION: "3"}}}, None) in api.deployment_patches
    resync(c, api)
    c.sync("default/web")
    assert api.rss[v1["metadata"]["name"]]["spec"]["replicas"] == 1  # then it is scaled up


def test_hash_collision_bumps_collision_count() -> None:
    d = dep(1)
    squatter = new_replica_set(d, [], 1)
    squatter["metadata"]["ownerReferences"] = []
    squatter["spec"]["template"]["spec"]["containers"][0]["image"] = "other"
    old = owned_rs(d, "v0", 1, "1")
    c, api = controller(d, old)
    api.rss[squatter["metadata"]["name"]] = squatter
    c.sync("default/web")
    assert ({"status": {"collisionCount": 1}}, "status") in api.deployment_patches
    assert api.rss[old["metadata"]["name"]]["spec"]["replicas"] == 1  # nothing moves meanwhile
    d["status"] = {"collisionCount": 1}
    c.sync("default/web")
    assert len(api.rss) == 3  # a new hash, a new name


def test_adopts_matching_orphans_and_releases_others() -> None:
    d = dep(1)
    orphan = owned_rs(d, "v1", 1, "1")
    orphan["metadata"]["ownerReferences"] = []
    moved = owned_rs(d, "v0", 0, "1")
    moved["metadata"]["labels"] = {"app": "other"}
    c, api = controller(d, orphan, moved)
    c.sync("default/web")
    assert api.rss[orphan["metadata"]["name"]]["metadata"]["ownerReferences"][0]["uid"] == "d-uid"
    assert "ownerReferences" not in api.rss[moved["metadata"]["name"]]["metadata"]
    assert len(api.rss) == 2  # the adopted orphan is the new RS


def test_complete_rollout_cleans_up_history_beyond_the_limit() -> None:
    d = dep(2, 1, 0, status={"replicas": 2, "updatedReplicas": 2, "availableReplicas": 2,
                             "observedGeneration": 1})
    d["spec"]["revisionHistoryLimit"] = 1
    olds = [owned_rs(d, f"old{i}", 0, str(i)) for i in range(1, 4)]
    current = owned_rs(d, "v1", 2, "4")  # the Deployment's template
    c, api = controller(d, *olds, current)
    c.sync("default/web")
    assert api.deleted == [olds[0]["metadata"]["name"], olds[1]["metadata"]["name"]]


def test_recreate_scales_old_to_zero_then_creates_new() -> None:
    d = dep(3, kind="Recreate")
    old = owned_rs(d, "v0", 3, "1")
    c, api = controller(d, old)
    c.sync("default/web")
    assert api.rss[old["metadata"]["name"]]["spec"]["replicas"] == 0 and len(api.rss) == 1
    resync(c, api)
    c.sync("default/web")
    assert len(api.rss) == 1  # its status still counts pods
    set_status(api, old["metadata"]["name"])
    resync(c, api)
    c.sync("default/web")
    (new,) = [rs for n, rs in api.rss.items() if n != old["metadata"]["name"]]
    assert new["spec"]["replicas"] == 3


def test_paused_does_not_roll_out_and_says_so() -> None:
    d = dep(2)
    d["spec"]["paused"] = True
    old = owned_rs(d, "v0", 2, "1")
    c, api = controller(d, old)
    c.sync("default/web")
    assert len(api.rss) == 1
    (status,) = api.statuses()
    progressing = next(c for c in status["conditions"] if c["type"] == "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("Unknown", util.PAUSED)


def test_scaling_event_resizes_the_active_rs() -> None:
    d = dep(5, 1, 1)
    current = owned_rs(d, "v1", 3, "1")
    current["spec"]["template"] = copy.deepcopy(d["spec"]["template"])
    current["metadata"]["annotations"].update({util.DESIRED_REPLICAS: "3", util.MAX_REPLICAS: "4"})
    c, api = controller(d, current)
    c.sync("default/web")
    rs = api.rss[current["metadata"]["name"]]
    assert rs["spec"]["replicas"] == 5
    assert rs["metadata"]["annotations"][util.DESIRED_REPLICAS] == "5"
    assert rs["metadata"]["annotations"][util.MAX_REPLICAS] == "6"


def test_events_mark_the_owning_or_matching_deployment() -> None:
    d = dep(1)
    c, _ = controller(d)
    rs = owned_rs(d, "v1", 1, "1")
    c.rs_added(rs)
    assert c.dirty.take() == {object_key(d)}
    rs["metadata"]["ownerReferences"] = []
    c.rs_updated(rs, rs)
    assert c.dirty.take() == {"default/web"}  # an orphan that matches
    c.rss = FakeCache(owned_rs(d, "v1", 1, "1"))
    c.pod_deleted({"metadata": {"namespace": "default", "ownerReferences": [
        {"kind": "ReplicaSet", "name": rs["metadata"]["name"], "controller": True}]}})
    assert c.dirty.take() == {"default/web"}
    assert REPLICASETS.plural == "replicasets"


def test_scaling_events() -> None:
    from tests.controlplane.test_replicaset import FakeRecorder

    recorder = FakeRecorder()
    d = dep(4, 1, 1)
    old = owned_rs(d, "v0", 4, "1")
    c, api = controller(d, old)
    c.recorder = recorder
    c.sync("default/web")
    new_name = next(n for n in api.rss if n != old["metadata"]["name"])
    set_status(api, new_name, available=0)
    resync(c, api)
    c.sync("default/web")
    assert [(r, m) for _, r, m, _ in recorder.events] == [
        ("ScalingReplicaSet", f"Scaled up replica set {new_name} to 1"),
        ("ScalingReplicaSet", f"Scaled down replica set {old['metadata']['name']} to 3 from 4"),
        ("ScalingReplicaSet", f"Scaled up replica set {new_name} to 2 from 1")]
