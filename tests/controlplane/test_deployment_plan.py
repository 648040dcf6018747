"""Pure Deployment arithmetic: fenceposts, one rolling-update step, a whole simulated rollout never
leaving its bounds, proportional scaling, the template hash, revisions, status and conditions."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.controllers import deployment_plan as plan
from controlplane.controllers import deployment_util as util

Obj = dict[str, Any]
T0 = 1_800_000_000.0


def dep(replicas: int, surge: int | str = 1, unavailable: int | str = 1, *, kind: str = "RollingUpdate",
        generation: int = 1, status: Obj | None = None, deadline: int | None = 600) -> Obj:
    strategy: Obj = {"type": kind}
    if kind == "RollingUpdate":
        strategy["rollingUpdate"] = {"maxSurge": surge, "maxUnavailable": unavailable}
    spec: Obj = {"replicas": replicas, "strategy": strategy, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "c", "image": "v1"}]}}}
    if deadline is not None:
        spec["progressDeadlineSeconds"] = deadline
    return {"metadata": {"name": "web", "namespace": "default", "uid": "d-uid", "generation": generation},
            "spec": spec, "status": status or {}}


def rs(name: str, replicas: int, available: int | None = None, *, created: str = "2026-01-01T00:00:00Z",
       annotations: dict[str, str] | None = None) -> Obj:
    avail = replicas if available is None else available
    return {"metadata": {"name": name, "creationTimestamp": created, "annotations": annotations or {}},
            "spec": {"replicas": replicas},
            "status": {"replicas": replicas, "readyReplicas": avail, "availableReplicas": avail}}


@pytest.mark.parametrize(("surge", "unavailable", "replicas", "expected"), [
    (1, 1, 4, (1, 1)),
    ("25%", "25%", 4, (1, 1)),
    ("25%", "25%", 10, (3, 2)),  # surge rounds up, unavailable rounds down
    ("25%", "25%", 1, (1, 0)),
    ("10%", "10%", 3, (1, 0)),
    ("0%", "10%", 3, (0, 1)),  # both resolve to 0: one may be unavailable so the rollout can move
    (0, "49%", 2, (0, 1)),
    ("100%", 0, 3, (3, 0)),
    ("50%", "50%", 0, (0, 1)),
])
def test_resolve_fenceposts(surge: int | str, unavailable: int | str, replicas: int,
                            expected: tuple[int, int]) -> None:
    assert util.resolve_fenceposts(surge, unavailable, replicas) == expected


def test_max_unavailable_capped_and_zero_for_recreate() -> None:
    assert util.max_unavailable(dep(2, 0, 5)) == 2
    assert util.max_unavailable(dep(0, 1, 1)) == 0
    assert util.max_unavailable(dep(3, kind="Recreate")) == 0
    assert util.max_surge(dep(3, kind="Recreate")) == 0


@pytest.mark.parametrize(("d", "new", "olds", "expected"), [
    (dep(4, 1, 1), 0, [4], 1),
    (dep(4, 1, 1), 1, [4], 1),  # at replicas + maxSurge already
    (dep(4, 1, 1), 1, [3], 2),
    (dep(10, "25%", "25%"), 0, [10], 3),
    (dep(4, 1, 1), 3, [1], 4),  # never past spec.replicas
    (dep(4, 2, 0), 0, [], 4),
    (dep(4, kind="Recreate"), 0, [4], 4),
])
def test_new_rs_new_replicas(d: Obj, new: int, olds: list[int], expected: int) -> None:
    new_rs = rs("new", new, 0)
    all_rss = [rs(f"old{i}", n) for i, n in enumerate(olds)] + [new_rs]
    assert plan.new_rs_new_replicas(d, all_rss, new_rs) == expected


@pytest.mark.parametrize(("d", "olds", "new", "expected"), [
    # 4 old available + 1 new not available: one old may go
    (dep(4, 1, 1), [rs("a", 4)], rs("n", 1, 0), {"a": 3}),
    # the new pod is not available yet: nothing may go
    (dep(4, 1, 1), [rs("a", 3)], rs("n", 1, 0), {}),
    # unavailable old pods go first, and then the floor holds
    (dep(4, 1, 1), [rs("a", 4, 2)], rs("n", 1, 0), {"a": 3}),
    # two old RSs: the oldest is scaled down first
    (dep(4, 0, 2), [rs("b", 2, created="2026-01-02T00:00:00Z"), rs("a", 2)], rs("n", 0, 0), {"a": 0}),
    # the new RS is available: the rest of the old one goes
    (dep(4, 1, 1), [rs("a", 1)], rs("n", 4, 4), {"a": 0}),
    # a stale status (4 available while asked for 3) does not license another step below the floor
    (dep(4, 1, 1), [{**rs("a", 3), "status": {"availableReplicas": 4}}], rs("n", 2, 0), {}),
])
def test_plan_old_scale_down(d: Obj, olds: list[Obj], new: Obj, expected: dict[str, int]) -> None:
    assert plan.plan_old_scale_down(d, [*olds, new], olds, new) == expected


@pytest.mark.parametrize(("replicas", "surge", "unavailable"), [
    (4, 1, 1), (4, 0, 1), (4, 2, 0), (10, "25%", "25%"), (3, "50%", "0%"), (1, 0, 1), (5, "100%", 0),
    (7, 3, 2),
])
def test_simulated_rollout_stays_within_bounds(replicas: int, surge: int | str,
                                               unavailable: int | str) -> None:
    """Controller steps interleaved with one pod becoming available per tick; the ReplicaSet
    controller deletes unavailable pods first.  Bounds hold after every write."""
    d = dep(replicas, surge, unavailable)
    max_total = replicas + util.max_surge(d)
    min_available = replicas - util.max_unavailable(d)
    old, new = rs("old", replicas), rs("new", 0, 0, created="2026-01-02T00:00:00Z")

    def check() -> None:
        for r in (old, new):  # the RS controller: pods follow spec, deleting unavailable ones first
            r["status"]["availableReplicas"] = min(r["status"]["availableReplicas"], r["spec"]["replicas"])
        assert old["spec"]["replicas"] + new["spec"]["replicas"] <= max_total
        assert old["status"]["availableReplicas"] + new["status"]["availableReplicas"] >= min_available

    steps = 0
    for _ in range(200):
        steps += 1
        want = plan.new_rs_new_replicas(d, [old, new], new)
        if want != new["spec"]["replicas"]:
            new["spec"]["replicas"] = want
        else:
            old["spec"]["replicas"] = plan.plan_old_scale_down(d, [old, new], [old], new).get(
                "old", old["spec"]["replicas"])
        check()
        if new["status"]["availableReplicas"] < new["spec"]["replicas"]:
            new["status"]["availableReplicas"] += 1  # the kubelet: one pod becomes available
        if old["spec"]["replicas"] == 0 and new["status"]["availableReplicas"] == replicas:
            break
    else:
        pytest.fail("the rollout did not finish")
    assert steps >= replicas // max(util.max_surge(d) + util.max_unavailable(d), 1) - 1


# ---------------------------------------------------------------------------------- scaling events
def test_is_scaling_event() -> None:
    annotated = rs("a", 3, annotations={util.DESIRED_REPLICAS: "3"})
    assert not plan.is_scaling_event(dep(3), [annotated, None])
    assert plan.is_scaling_event(dep(5), [annotated])
    scaled_to_zero = rs("b", 0, annotations={util.DESIRED_REPLICAS: "3"})
    assert not plan.is_scaling_event(dep(5), [scaled_to_zero, rs("c", 2)])


def test_plan_scale_proportional_up_and_down() -> None:
    annotations = {util.MAX_REPLICAS: "13", util.DESIRED_REPLICAS: "10"}
    old = rs("old", 8, annotations=annotations)
    new = rs("new", 5, 0, created="2026-01-02T00:00:00Z", annotations=annotations)
    assert plan.plan_scale(dep(12, "25%", "25%"), new, [old]) == {"old": 9, "new": 6}
    assert plan.plan_scale(dep(5, "25%", "25%"), new, [old]) == {"old": 4, "new": 3}
    assert plan.plan_scale(dep(0, "25%", "25%"), new, [old]) == {"old": 0, "new": 0}


def test_plan_scale_single_active_and_saturated() -> None:
    assert plan.plan_scale(dep(7), rs("new", 3), [rs("old", 0)]) == {"new": 7}
    assert plan.plan_scale(dep(7), None, [rs("old", 0), rs("older", 0, created="2025-01-01T00:00:00Z")]) == {
        "old": 7}  # nothing active: the latest
    saturated = rs("new", 3, annotations={util.DESIRED_REPLICAS: "3"})
    assert plan.plan_scale(dep(3), saturated, [rs("old", 2)]) == {"old": 0}


# ---------------------------------------------------------------------------------- hash and revisions
def test_template_hash_is_stable_and_safe() -> None:
    template = dep(1)["spec"]["template"]
    reordered = {"spec": template["spec"], "metadata": {"labels": {"app": "web"}, "annotations": {}}}
    h = util.template_hash(template)
    assert h == util.template_hash(reordered)  # key order and empty maps do not matter
    assert set(h) <= set(util.SAFE_ALPHABET) and 1 <= len(h) <= 10
    assert util.template_hash(template, 1) != h != util.template_hash({**template, "spec": {"containers": [
        {"name": "c", "image": "v2"}]}})
    assert util.template_hash(template, 1) == util.template_hash(template, 1)
    hashed = {"metadata": {"labels": {"app": "web", util.HASH_LABEL: h}}, "spec": template["spec"]}
    assert util.equal_ignore_hash(hashed, template)
    assert not util.equal_ignore_hash(hashed, {**template, "spec": {"containers": []}})


def test_find_new_rs_is_the_oldest_matching_template() -> None:
    d = dep(1)
    a = {**rs("a", 1, created="2026-01-02T00:00:00Z"), "spec": {"template": d["spec"]["template"]}}
    b = {**rs("b", 1), "spec": {"template": d["spec"]["template"]}}
    other = {**rs("c", 1), "spec": {"template": {"metadata": {"labels": {"app": "x"}}}}}
    assert util.find_new_rs(d, [other, a, b]) is not None
    assert util.meta(util.find_new_rs(d, [other, a, b]) or {})["name"] == "b"
    assert util.find_new_rs(d, [other]) is None


def test_new_rs_annotations_revision_bookkeeping() -> None:
    d = dep(3, 1, 1)
    d["metadata"]["annotations"] = {"kubernetes.io/change-cause": "v2", util.REVISION: "9",
                                    "kubectl.kubernetes.io/last-applied-configuration": "{}"}
    fresh = plan.new_rs_annotations(d, None, 4, exists=False)
    assert fresh == {"kubernetes.io/change-cause": "v2", util.REVISION: "4", util.DESIRED_REPLICAS: "3",
                     util.MAX_REPLICAS: "4"}
    # a rollback reuses revision 1's RS: it becomes 5 and remembers 1
    reused = plan.new_rs_annotations(d, {util.REVISION: "1", util.DESIRED_REPLICAS: "3"}, 5, exists=True)
    assert reused[util.REVISION] == "5" and reused[util.REVISION_HISTORY] == "1"
    assert reused[util.DESIRED_REPLICAS] == "3"
    again = plan.new_rs_annotations(d, reused, 5, exists=True)
    assert again == reused  # idempotent: the revision only moves up
    assert plan.new_rs_annotations(d, {util.REVISION: "5", util.REVISION_HISTORY: "1"}, 7, True)[
        util.REVISION_HISTORY] == "1,5"
    assert util.max_revision([rs("a", 0, annotations={util.REVISION: "3"}), rs("b", 0)]) == 3


# ---------------------------------------------------------------------------------- status and conditions
def test_calculate_status_counts_and_available_condition() -> None:
    d = dep(4, 1, 1, generation=3)
    status = plan.calculate_status(d, [rs("old", 2, 2), rs("new", 2, 1)], rs("new", 2, 1), T0)
    assert {k: v for k, v in status.items() if k != "conditions"} == {
        "observedGeneration": 3, "replicas": 4, "updatedReplicas": 2, "readyReplicas": 3,
        "availableReplicas": 3, "unavailableReplicas": 1}
    assert plan.condition(status, "Available") == {
        "type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
        "message": "Deployment has minimum availability.", "lastUpdateTime": plan.now_rfc3339(T0),
        "lastTransitionTime": plan.now_rfc3339(T0)}
    low = plan.calculate_status(d, [rs("new", 4, 2)], rs("new", 4, 2), T0)
    assert (plan.condition(low, "Available") or {})["reason"] == "MinimumReplicasUnavailable"


def test_rollout_status_progressing_complete_and_timed_out() -> None:
    d = dep(2, 1, 0, deadline=10, status={"updatedReplicas": 0, "replicas": 2})
    moving = plan.rollout_status(d, [rs("old", 2), rs("new", 1, 0)], rs("new", 1, 0), T0)
    cond = plan.condition(moving, "Progressing") or {}
    assert (cond["status"], cond["reason"]) == ("True", util.RS_UPDATED)
    assert plan.progress_requeue(d, moving, T0) == 11.0

    stuck = dep(2, 1, 0, deadline=10, status={**moving, "conditions": moving["conditions"]})
    same = plan.rollout_status(stuck, [rs("old", 2), rs("new", 1, 0)], rs("new", 1, 0), T0 + 5)
    assert not plan.status_differs(stuck, same)  # nothing moved, deadline not passed
    late = plan.rollout_status(stuck, [rs("old", 2), rs("new", 1, 0)], rs("new", 1, 0), T0 + 11)
    cond = plan.condition(late, "Progressing") or {}
    assert (cond["status"], cond["reason"]) == ("False", util.TIMED_OUT)

    done = plan.rollout_status(stuck, [rs("old", 0), rs("new", 2)], rs("new", 2), T0 + 20)
    cond = plan.condition(done, "Progressing") or {}
    assert (cond["status"], cond["reason"]) == ("True", util.NEW_RS_AVAILABLE)
    assert plan.progress_requeue(d, done, T0) is None
    no_deadline = plan.rollout_status(dep(2, deadline=None), [rs("new", 2)], rs("new", 2), T0)
    assert plan.condition(no_deadline, "Progressing") is None
