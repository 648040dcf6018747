"""The node lifecycle controller: pure health/taint/eviction decisions as tables, then the sync against
fakes of its own seams (Api, Cache) with a fake clock."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import pytest

from controlplane.controllers.__main__ import parse_args
from controlplane.controllers.nodelifecycle import (
    NEVER_REASON,
    TAINT_NOT_READY,
    TAINT_UNREACHABLE,
    UNKNOWN_MESSAGE,
    UNKNOWN_REASON,
    NodeHealth,
    NodeLifecycleController,
    desired_taints,
    eviction_delay,
    heartbeat_marks,
    not_ready_pod_conditions,
    observe,
    ready_status,
    unknown_conditions,
    with_default_tolerations,
)
from podnet.api.client import LEASES, NODES, PODS, ApiError, Resource
from tests.controlplane.fakes import FakeCache

Obj = dict[str, Any]
NOW = "2026-11-27T12:00:00Z"
MONITORED = ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"]


def make_node(name: str = "n1", ready: str | None = "True", *, heartbeat: str = "t0",
              taints: list[Obj] | None = None, unschedulable: bool = False, **conditions: str) -> Obj:
    conds: list[Obj] = []
    if ready is not None:
        conds.append({"type": "Ready", "status": ready, "reason": "KubeletReady",
                      "lastHeartbeatTime": heartbeat, "lastTransitionTime": "t0"})
    for ctype, status in conditions.items():
        conds.append({"type": ctype, "status": status, "lastHeartbeatTime": heartbeat})
    spec: Obj = {}
    if taints:
        spec["taints"] = taints
    if unschedulable:
        spec["unschedulable"] = True
    return {"metadata": {"name": name, "resourceVersion": "1", "creationTimestamp": "t-created"},
            "spec": spec, "status": {"conditions": conds}}


def make_lease(node: str, renew: str) -> Obj:
    return {"metadata": {"name": node, "namespace": "kube-node-lease", "resourceVersion": "1"},
            "spec": {"holderIdentity": node, "renewTime": renew}}


def make_pod(name: str, node: str = "n1", *, tolerations: list[Obj] | None = None, ready: str | None = None,
             deleting: bool = False) -> Obj:
    meta: Obj = {"name": name, "namespace": "default", "uid": f"uid-{name}", "resourceVersion": "1"}
    if deleting:
        meta["deletionTimestamp"] = NOW
    status: Obj = {"phase": "Running"}
    if ready is not None:
        status["conditions"] = [{"type": "PodScheduled", "status": "True"},
                                {"type": "Ready", "status": ready, "lastTransitionTime": "t0"}]
    spec: Obj = {"nodeName": node, "containers": [{"name": "c", "image": "pause"}]}
    if tolerations is not None:
        spec["tolerations"] = tolerations
    return {"metadata": meta, "spec": spec, "status": status}


def taint(key: str, effect: str, **extra: str) -> Obj:
    return {"key": key, "effect": effect, **extra}


def tol(key: str = "", effect: str = "", seconds: float | None = None, operator: str = "Exists",
        value: str = "") -> Obj:
    t: Obj = {"operator": operator}
    if key:
        t["key"] = key
    if effect:
        t["effect"] = effect
    if value:
        t["value"] = value
    if seconds is not None:
        t["tolerationSeconds"] = seconds
    return t


def idents(taints: list[Obj]) -> list[tuple[str, str]]:
    return [(t["key"], t["effect"]) for t in taints]


# ---------------------------------------------------------------------------------- health
def test_heartbeat_marks_take_ready_heartbeat_and_lease_renew_time() -> None:
    node = make_node(heartbeat="hb-1")
    assert heartbeat_marks(node, make_lease("n1", "renew-1")) == ("hb-1", "renew-1")
    assert heartbeat_marks(node, None) == ("hb-1", "")
    assert heartbeat_marks(make_node(ready=None), None) == ("", "")


@pytest.mark.parametrize(("health", "marks", "now", "probe"), [
    (None, ("a", "b"), 5.0, 5.0),                        # first sight: a fresh grace period
    (NodeHealth(1.0, ("a", "b")), ("a", "b"), 5.0, 1.0),   # nothing new: the old probe stands
    (NodeHealth(1.0, ("a", "b")), ("a", "c"), 5.0, 5.0),   # the lease was renewed
    (NodeHealth(1.0, ("a", "b")), ("x", "b"), 5.0, 5.0),   # the kubelet posted status
    # a remote timestamp going BACKWARDS (clock reset on the node) is still a sign of life
    (NodeHealth(1.0, ("2026", "b")), ("2025", "b"), 5.0, 5.0),
])
def test_observe_uses_local_time_of_change(health: NodeHealth | None, marks: tuple[str, str], now: float,
                                           probe: float) -> None:
    assert observe(health, marks, now).probe == probe


def test_unknown_conditions_keep_heartbeat_and_add_missing() -> None:
    node = make_node(heartbeat="hb", MemoryPressure="False")
    conds = unknown_conditions(node, NOW)
    assert conds is not None
    by_type = {c["type"]: c for c in conds}
    assert sorted(by_type) == sorted(MONITORED)
    assert all(c["status"] == "Unknown" for c in conds)
    ready = by_type["Ready"]
    assert (ready["reason"], ready["message"]) == (UNKNOWN_REASON, UNKNOWN_MESSAGE)
    assert (ready["lastHeartbeatTime"], ready["lastTransitionTime"]) == ("hb", NOW)
    assert by_type["DiskPressure"]["reason"] == NEVER_REASON
    assert by_type["DiskPressure"]["lastHeartbeatTime"] == "t-created"
    # the input is not modified, and a second pass changes nothing
    assert ready_status(node) == "True"
    assert unknown_conditions({**node, "status": {"conditions": conds}}, "later") is None


# ---------------------------------------------------------------------------------- taints
@pytest.mark.parametrize(("node", "expected"), [
    (make_node(ready="True"), []),
    (make_node(ready=None), []),
    (make_node(ready="False"), [(TAINT_NOT_READY, "NoExecute"), (TAINT_NOT_READY, "NoSchedule")]),
    (make_node(ready="Unknown"), [(TAINT_UNREACHABLE, "NoExecute"), (TAINT_UNREACHABLE, "NoSchedule")]),
    # swapped, never both: not-ready -> unreachable
    (make_node(ready="Unknown",
               taints=[taint(TAINT_NOT_READY, "NoExecute"), taint(TAINT_NOT_READY, "NoSchedule")]),
     [(TAINT_UNREACHABLE, "NoExecute"), (TAINT_UNREACHABLE, "NoSchedule")]),
    # back to Ready: managed taints go, a user's taint stays where it was
    (make_node(ready="True", taints=[taint("dedicated", "NoSchedule"), taint(TAINT_UNREACHABLE, "NoExecute"),
                                     taint(TAINT_UNREACHABLE, "NoSchedule")]),
     [("dedicated", "NoSchedule")]),
    # a user's NoExecute taint with a managed-looking key but another effect is not ours
    (make_node(ready="True", taints=[taint(TAINT_UNREACHABLE, "PreferNoSchedule")]),
     [(TAINT_UNREACHABLE, "PreferNoSchedule")]),
    (make_node(ready="True", MemoryPressure="True", DiskPressure="False", PIDPressure="True"),
     [("node.kubernetes.io/memory-pressure", "NoSchedule"),
      ("node.kubernetes.io/pid-pressure", "NoSchedule")]),
    (make_node(ready="True", unschedulable=True), [("node.kubernetes.io/unschedulable", "NoSchedule")]),
])
def test_desired_taints(node: Obj, expected: list[tuple[str, str]]) -> None:
    assert idents(desired_taints(node, NOW)) == expected


def test_desired_taints_stamp_new_no_execute_and_keep_existing_stamp() -> None:
    fresh = desired_taints(make_node(ready="Unknown"), NOW)
    assert [t.get("timeAdded") for t in fresh] == [NOW, None]
    kept = desired_taints(make_node(ready="Unknown", taints=fresh), "much later")
    assert kept == fresh


# ---------------------------------------------------------------------------------- eviction
UNREACHABLE = [taint(TAINT_UNREACHABLE, "NoExecute"), taint(TAINT_UNREACHABLE, "NoSchedule")]
NOT_READY = [taint(TAINT_NOT_READY, "NoExecute")]


@pytest.mark.parametrize(("tolerations", "taints", "delay"), [
    (None, [], None),                                                   # no taints
    (None, [taint(TAINT_UNREACHABLE, "NoSchedule")], None),            # NoSchedule never evicts
    (None, UNREACHABLE, 300.0),                                         # the default toleration
    (None, NOT_READY, 300.0),
    (None, [taint("dedicated", "NoExecute")], 0.0),                     # not tolerated: now
    (None, [taint("dedicated", "NoExecute"), *UNREACHABLE], 0.0),
    ([tol(TAINT_UNREACHABLE, "NoExecute", 10)], UNREACHABLE, 10.0),    # its own tolerationSeconds
    ([tol(TAINT_UNREACHABLE, "NoExecute", 10)], NOT_READY, 300.0),     # defaulted for the other key
    ([tol(TAINT_UNREACHABLE, "NoExecute")], UNREACHABLE, None),        # tolerates forever
    ([tol(TAINT_UNREACHABLE)], UNREACHABLE, None),                     # empty effect: any effect
    ([tol()], [taint("dedicated", "NoExecute"), *UNREACHABLE], None),  # Exists with empty key: all
    ([tol(seconds=5)], [taint("dedicated", "NoExecute")], 5.0),
    ([tol(TAINT_UNREACHABLE, "NoExecute", -3)], UNREACHABLE, 0.0),     # negative means now
    # forever for one taint, 20 s for another: the smallest limit counts
    ([tol("dedicated", "NoExecute"), tol(TAINT_UNREACHABLE, "NoExecute", 20)],
     [taint("dedicated", "NoExecute"), *UNREACHABLE], 20.0),
    ([tol("dedicated", "NoExecute", 50, operator="Equal", value="gpu")],
     [taint("dedicated", "NoExecute", value="gpu")], 50.0),
    ([tol("dedicated", "NoExecute", 50, operator="Equal", value="gpu")],
     [taint("dedicated", "NoExecute", value="cpu")], 0.0),
    ([tol(TAINT_UNREACHABLE, "NoSchedule", 7)], UNREACHABLE, 300.0),   # wrong effect: defaulted
])
def test_eviction_delay(tolerations: list[Obj] | None, taints: list[Obj], delay: float | None) -> None:
    assert eviction_delay(make_pod("p", tolerations=tolerations), taints, 300.0) == delay


def test_default_tolerations_only_where_missing() -> None:
    added = with_default_tolerations([], 60)
    assert [(t["key"], t["effect"], t["tolerationSeconds"]) for t in added] == [
        (TAINT_NOT_READY, "NoExecute", 60), (TAINT_UNREACHABLE, "NoExecute", 60)]
    assert with_default_tolerations([tol()], 60) == [tol()]
    own = [tol(TAINT_NOT_READY, "NoExecute", 5)]
    assert [t["key"] for t in with_default_tolerations(own, 60)] == [TAINT_NOT_READY, TAINT_UNREACHABLE]


def test_not_ready_pod_conditions() -> None:
    conds = not_ready_pod_conditions(make_pod("p", ready="True"), NOW)
    assert conds is not None
    assert [(c["type"], c["status"]) for c in conds] == [("PodScheduled", "True"), ("Ready", "False")]
    assert conds[1]["lastTransitionTime"] == NOW
    assert not_ready_pod_conditions(make_pod("p", ready="False"), NOW) is None
    assert not_ready_pod_conditions(make_pod("p"), NOW) is None  # no Ready condition: left alone


# ---------------------------------------------------------------------------------- the controller
def _merge(target: Obj, patch: Mapping[str, Any]) -> None:
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


class FakeApi:
    """Applies merge patches to the caches like the API server plus an instant watch would,
    enforcing the resourceVersion precondition; records every write."""

    def __init__(self, nodes: FakeCache, pods: FakeCache) -> None:
        self.caches = {"nodes": nodes, "pods": pods}
        self.patches: list[tuple[str, str, Any, str | None]] = []
        self.deleted: list[str] = []
        self.conflicts = 0  # the next N patches fail with 409

    def patch(self, res: Resource, name: str, patch: Any, namespace: str | None = None, *,
              patch_type: str = "merge", subresource: str | None = None, field_manager: str | None = None,
              force: bool | None = None) -> Obj:
        cache = self.caches[res.plural]
        obj = cache.get(f"{namespace}/{name}" if namespace else name)
        assert obj is not None
        if self.conflicts:
            self.conflicts -= 1
            raise ApiError({"code": 409, "reason": "Conflict"}, 409)
        assert patch["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]
        self.patches.append((res.plural, name, copy.deepcopy(patch), subresource))
        new = copy.deepcopy(obj)
        _merge(new, {k: v for k, v in patch.items() if k != "metadata"})
        new["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"]) + 1)
        cache.put(new)
        return new

    def delete(self, res: Resource, name: str, namespace: str | None = None, *,
               propagation_policy: str | None = None, grace_period_seconds: int | None = None,
               preconditions: Mapping[str, str] | None = None) -> Obj:
        assert res == PODS and preconditions == {"uid": f"uid-{name}"}
        self.deleted.append(name)
        pod = self.caches["pods"].get(f"{namespace}/{name}")
        assert pod is not None
        pod["metadata"]["deletionTimestamp"] = NOW  # graceful: no kubelet confirms
        return pod


class Rig:
    def __init__(self, *objs: Obj, grace: float = 40.0, eviction: float = 300.0) -> None:
        self.now = [1000.0]
        self.nodes = FakeCache(*[o for o in objs if "nodeName" not in o.get("spec", {})
                                 and o["metadata"].get("namespace") is None])
        self.leases = FakeCache(*[o for o in objs if o["metadata"].get("namespace") == "kube-node-lease"])
        self.pods = FakeCache(*[o for o in objs if "nodeName" in o.get("spec", {})])
        self.api = FakeApi(self.nodes, self.pods)
        self.ctl = NodeLifecycleController(self.api, self.nodes, self.leases, self.pods, grace_period=grace,
                                           monitor_period=1.0, eviction_timeout=eviction, retry_delay=1.0,
                                           clock=lambda: self.now[0], wall=lambda: 1.8e9)

    def at(self, seconds: float) -> None:
        """Move the fake clock to `seconds` after the start and run one pass of the loop."""
        self.now[0] = 1000.0 + seconds
        self.ctl.run_once()

    def renew(self, node: str, stamp: str) -> None:
        self.leases.put(make_lease(node, stamp))
        self.ctl.lease_changed(f"kube-node-lease/{node}")

    def node(self, name: str = "n1") -> Obj:
        obj = self.nodes.get(name)
        assert obj is not None
        return obj

    def taints(self, name: str = "n1") -> list[tuple[str, str]]:
        return idents(self.node(name)["spec"].get("taints") or [])


def test_lease_renewals_keep_a_node_ready_and_silence_makes_it_unknown() -> None:
    rig = Rig(make_node("n1"), make_node("n2"), make_lease("n1", "r0"), make_lease("n2", "r0"), grace=40.0)
    rig.ctl.mark("n1")
    rig.ctl.mark("n2")
    rig.at(0)
    for t in range(5, 46, 5):  # n1 renews every 5 s, n2 stays silent
        rig.renew("n1", f"r{t}")
        rig.at(t)
        assert ready_status(rig.node("n2")) == ("True" if t < 40 else "Unknown"), t
    assert ready_status(rig.node("n1")) == "True" and rig.taints("n1") == []
    status_patches = [p for p in rig.api.patches if p[3] == "status"]
    assert [(p[1], p[2]["status"]["conditions"][0]["reason"]) for p in status_patches] == [
        ("n2", UNKNOWN_REASON)]
    assert rig.taints("n2") == [(TAINT_UNREACHABLE, "NoExecute"), (TAINT_UNREACHABLE, "NoSchedule")]
    writes = len(rig.api.patches)
    rig.at(50)
    rig.at(55)
    assert len(rig.api.patches) == writes  # level-triggered and idempotent: nothing more to write


def test_status_heartbeat_alone_counts_and_node_never_seen_gets_full_grace() -> None:
    rig = Rig(make_node("n1", heartbeat="h0"), grace=10.0)
    rig.ctl.mark("n1")
    rig.at(0)
    node = rig.node()
    node["status"]["conditions"][0]["lastHeartbeatTime"] = "h8"
    rig.at(8)
    rig.at(17)  # 9 s after the last heartbeat change: still fine
    assert ready_status(rig.node()) == "True"
    rig.at(18)
    assert ready_status(rig.node()) == "Unknown"


def test_node_without_ready_condition_gets_startup_grace() -> None:
    rig = Rig(make_node("n1", ready=None), grace=10.0)
    rig.ctl.startup_grace_period = 60.0
    rig.ctl.mark("n1")
    rig.at(0)
    rig.at(30)
    assert ready_status(rig.node()) is None
    rig.at(60)
    assert ready_status(rig.node()) == "Unknown"
    reasons = {c["type"]: c["reason"] for c in rig.node()["status"]["conditions"]}
    assert reasons == {t: NEVER_REASON for t in MONITORED}


def test_pods_marked_not_ready_and_evicted_per_toleration() -> None:
    pods = [make_pod("plain", ready="True"),
            make_pod("ten", tolerations=[tol(TAINT_UNREACHABLE, "NoExecute", 10)]),
            make_pod("forever", tolerations=[tol(TAINT_UNREACHABLE, "NoExecute")]),
            make_pod("gone", deleting=True),
            make_pod("elsewhere", node="n2")]
    rig = Rig(make_node("n1"), make_node("n2", heartbeat="x"), *pods, grace=40.0, eviction=30.0)
    rig.ctl.mark("n1")
    rig.at(0)
    rig.at(40)  # n1 Unknown and tainted now; eviction timers start
    assert rig.taints() == [(TAINT_UNREACHABLE, "NoExecute"), (TAINT_UNREACHABLE, "NoSchedule")]
    plain = rig.pods.get("default/plain")
    assert plain is not None and not_ready_pod_conditions(plain, NOW) is None  # Ready=False now
    assert rig.api.deleted == []
    rig.at(49)
    assert rig.api.deleted == []
    rig.at(50)
    assert rig.api.deleted == ["ten"]
    rig.at(69)
    assert rig.api.deleted == ["ten"]
    rig.at(70)
    assert rig.api.deleted == ["ten", "plain"]
    rig.at(500)
    assert rig.api.deleted == ["ten", "plain"]  # "forever" stays, "gone" was already terminating
    assert rig.ctl.evictions == 2


def test_eviction_timer_restarts_after_node_recovers() -> None:
    rig = Rig(make_node("n1"), make_pod("p"), grace=10.0, eviction=30.0)
    rig.ctl.mark("n1")
    rig.at(0)
    rig.at(10)  # Unknown + tainted; p due at 40
    rig.at(25)
    # the kubelet is back: Ready=True with a new heartbeat
    node = rig.node()
    node["status"]["conditions"][0].update(status="True", lastHeartbeatTime="h-back")
    rig.at(26)
    assert rig.taints() == [] and rig.ctl.eviction_start == {}
    rig.at(35)
    assert rig.taints() == []
    rig.at(36)  # silent again since 26: Unknown at 36, p due at 36 + 30 (a new timer)
    assert rig.taints() == [(TAINT_UNREACHABLE, "NoExecute"), (TAINT_UNREACHABLE, "NoSchedule")]
    rig.at(40)
    assert rig.api.deleted == []
    rig.at(65)
    assert rig.api.deleted == []
    rig.at(66)
    assert rig.api.deleted == ["p"]


def test_lease_renewed_but_ready_unknown_keeps_taints_until_kubelet_posts_ready() -> None:
    rig = Rig(make_node("n1"), make_lease("n1", "r0"), grace=10.0)
    rig.ctl.mark("n1")
    rig.at(0)
    rig.at(10)
    assert ready_status(rig.node()) == "Unknown"
    rig.renew("n1", "r11")
    rig.at(11)
    assert rig.taints() == [(TAINT_UNREACHABLE, "NoExecute"), (TAINT_UNREACHABLE, "NoSchedule")]
    rig.node()["status"]["conditions"][0].update(status="True", lastHeartbeatTime="h12")
    rig.ctl.node_changed("n1")
    rig.at(12)
    assert rig.taints() == []


def test_conflict_retries_and_user_taints_survive() -> None:
    rig = Rig(make_node("n1", ready="False", taints=[taint("dedicated", "NoSchedule", value="gpu")]))
    rig.api.conflicts = 1
    rig.ctl.mark("n1")
    rig.at(0)  # the taint patch hit a 409: retried after retry_delay
    assert rig.taints() == [("dedicated", "NoSchedule")]
    rig.at(1)
    assert rig.taints() == [("dedicated", "NoSchedule"), (TAINT_NOT_READY, "NoExecute"),
                            (TAINT_NOT_READY, "NoSchedule")]


def test_deleted_node_is_forgotten_and_handlers_mark_node_keys() -> None:
    rig = Rig(make_node("n1"), make_pod("p"), grace=10.0)
    rig.ctl.mark("n1")
    rig.at(0)
    assert "n1" in rig.ctl.health
    del rig.nodes.items["n1"]
    rig.ctl.node_changed("n1")
    rig.at(1)
    assert "n1" not in rig.ctl.health
    rig.ctl.pod_updated(make_pod("p", node="a"), make_pod("p", node="b"))
    rig.ctl.lease_changed("kube-system/kube-controller-manager")  # not a node lease
    rig.ctl.lease_changed("kube-node-lease/c")
    assert rig.ctl.dirty.take() == {"a", "b", "c"}


def test_flags_reach_the_controller() -> None:
    from controlplane.controllers.context import ControllerContext
    from controlplane.controllers.nodelifecycle import build

    class Informer:
        def __init__(self) -> None:
            self.handlers: list[Any] = []

        def add_handlers(self, h: Any) -> None:
            self.handlers.append(h)

    opts = parse_args(["--kubeconfig", "x", "--controllers", "nodelifecycle", "--node-monitor-grace-period",
                       "3s", "--node-monitor-period", "500ms", "--pod-eviction-timeout", "2m"])
    ctx = ControllerContext.__new__(ControllerContext)
    ctx.options = opts
    ctx.client = None  # type: ignore[assignment]
    ctx.recorder = None  # type: ignore[assignment]
    informers: dict[Resource, Informer] = {NODES: Informer(), LEASES: Informer(), PODS: Informer()}
    ctx.informers = type("F", (), {"get": staticmethod(lambda res: informers[res])})()  # type: ignore[assignment]
    ctl = build(ctx)
    assert (ctl.grace_period, ctl.monitor_period, ctl.eviction_timeout) == (3.0, 0.5, 120.0)
    assert all(len(i.handlers) == 1 for i in informers.values())
