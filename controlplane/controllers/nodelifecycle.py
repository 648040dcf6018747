"""The node lifecycle controller: node health from heartbeats, condition taints, taint-based eviction.

Upstream kube-controller-manager's nodelifecycle controller with its NoExecute taint manager, one
level-triggered `sync(node)` doing three things:

1. Health.  A node's heartbeat is its Lease (kube-node-lease/<node>, spec.renewTime) or its Ready
   condition's lastHeartbeatTime.  As upstream, staleness is judged by when THIS controller saw
   either value change (a local monotonic probe time), never by comparing the remote timestamps
   with our clock: hosts' clocks drift.  No change for --node-monitor-grace-period -> Ready,
   MemoryPressure, DiskPressure and PIDPressure become Unknown ("Kubelet stopped posting node
   status.") through nodes/status.  A freshly seen node (or a restarted controller) starts a new
   grace period; a node that never posted Ready gets --node-startup-grace-period (60 s) instead,
   as a booting kubelet does upstream.
2. Taints.  Ready=False/Unknown -> node.kubernetes.io/not-ready / unreachable with effect NoExecute
   (taint-based eviction) and NoSchedule (TaintNodesByCondition, with the pressure and
   unschedulable taints); they go away when the kubelet posts Ready=True again.  The pods of a
   node that is not Ready get Ready=False (upstream MarkPodsNotReady).
3. Eviction.  Pods on a node with NoExecute taints they do not tolerate are deleted at once; a
   matching toleration with tolerationSeconds delays the deletion by the smallest such value,
   one without tolerationSeconds keeps the pod forever.  Our API server has no
   DefaultTolerationSeconds admission, so the controller applies its rule itself: a pod without a
   toleration for not-ready / unreachable NoExecute tolerates them for --pod-eviction-timeout.
   The delay runs from when this controller first saw the pod due for eviction (upstream's taint
   manager timer), and the deletion is graceful: a bound pod stays Terminating until its kubelet
   confirms, but no longer counts as active, so its controller replaces it elsewhere.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from controlplane.controllers.base import KeyedController
from controlplane.controllers.context import ControllerContext
from podnet.api.client import LEASES, NODES, PODS, ApiError, Resource
from podnet.api.informer import Handlers

__all__ = ["CONDITION_TAINTS", "NODE_LEASE_NAMESPACE", "TAINT_NOT_READY", "TAINT_UNREACHABLE",
           "NodeHealth", "NodeLifecycleController", "desired_taints", "eviction_delay", "heartbeat_marks",
           "not_ready_pod_conditions", "observe", "ready_status", "tolerates", "unknown_conditions",
           "with_default_tolerations"]

log = logging.getLogger("podnet.controllers.nodelifecycle")

Obj = dict[str, Any]
NODE_LEASE_NAMESPACE = "kube-node-lease"
TAINT_NOT_READY = "node.kubernetes.io/not-ready"
TAINT_UNREACHABLE = "node.kubernetes.io/unreachable"
TAINT_UNSCHEDULABLE = "node.kubernetes.io/unschedulable"
NO_EXECUTE, NO_SCHEDULE = "NoExecute", "NoSchedule"
# The conditions a silent node's kubelet can no longer vouch for (upstream nodeConditionTypes).
MONITORED_CONDITIONS = ("Ready", "MemoryPressure", "DiskPressure", "PIDPressure")
# TaintNodesByCondition: (condition type, status) -> NoSchedule taint key.
CONDITION_TAINTS: dict[tuple[str, str], str] = {
    ("Ready", "False"): TAINT_NOT_READY,
    ("Ready", "Unknown"): TAINT_UNREACHABLE,
    ("MemoryPressure", "True"): "node.kubernetes.io/memory-pressure",
    ("DiskPressure", "True"): "node.kubernetes.io/disk-pressure",
    ("PIDPressure", "True"): "node.kubernetes.io/pid-pressure",
    ("NetworkUnavailable", "True"): "node.kubernetes.io/network-unavailable",
}
# Every (key, effect) this controller owns: it adds and removes exactly these, nothing a user set.
MANAGED_TAINTS = frozenset({(k, NO_SCHEDULE) for k in CONDITION_TAINTS.values()}
                           | {(TAINT_UNSCHEDULABLE, NO_SCHEDULE), (TAINT_NOT_READY, NO_EXECUTE),
                              (TAINT_UNREACHABLE, NO_EXECUTE)})
UNKNOWN_REASON = "NodeStatusUnknown"
UNKNOWN_MESSAGE = "Kubelet stopped posting node status."
NEVER_REASON = "NodeStatusNeverUpdated"
NEVER_MESSAGE = "Kubelet never posted node status."


class Api(Protocol):
    """The part of podnet.api.client.Client the controller writes with (unit tests fake this)."""

    def patch(self, res: Resource, name: str, patch: Any, namespace: str | None = None, *,
              patch_type: str = "merge", subresource: str | None = None, field_manager: str | None = None,
              force: bool | None = None) -> Obj: ...

    def delete(self, res: Resource, name: str, namespace: str | None = None, *,
               propagation_policy: str | None = None, grace_period_seconds: int | None = None,
               preconditions: Mapping[str, str] | None = None) -> Obj: ...


class Cache(Protocol):
    def get(self, key: str) -> Obj | None: ...

    def list(self) -> list[Obj]: ...


class Recorder(Protocol):
    """podnet.api.events.EventRecorder's caller side."""

    def event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str, *,
              kind: str | None = None, api_version: str | None = None) -> bool: ...


def rfc3339(unix: float) -> str:
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _conditions(obj: Mapping[str, Any]) -> list[Obj]:
    return list((obj.get("status") or {}).get("conditions") or [])


# ---------------------------------------------------------------------------------- health (pure)
def ready_status(node: Mapping[str, Any]) -> str | None:
    """The Ready condition's status ("True", "False", "Unknown"), None when the node has none."""
    for cond in _conditions(node):
        if cond.get("type") == "Ready":
            return str(cond.get("status"))
    return None


def heartbeat_marks(node: Mapping[str, Any], lease: Mapping[str, Any] | None) -> tuple[str, str]:
    """What a kubelet changes when it is alive: (Ready's lastHeartbeatTime, the Lease's renewTime).
    Compared for change only, never against our clock."""
    ready = next((c for c in _conditions(node) if c.get("type") == "Ready"), {})
    renew = ((lease or {}).get("spec") or {}).get("renewTime")
    return str(ready.get("lastHeartbeatTime") or ""), str(renew or "")


@dataclass(frozen=True)
class NodeHealth:
    probe: float  # local (monotonic) time this controller last saw a heartbeat change
    marks: tuple[str, str]


def observe(health: NodeHealth | None, marks: tuple[str, str], now: float) -> NodeHealth:
    """upstream tryUpdateNodeHealth: a node seen for the first time, or whose heartbeat marks
    changed, was alive just now."""
    if health is None or health.marks != marks:
        return NodeHealth(now, marks)
    return health


def unknown_conditions(node: Mapping[str, Any], now_iso: str) -> list[Obj] | None:
    """The node's conditions with the monitored ones Unknown (a silent node), or None when they all
    already are.  lastHeartbeatTime is kept: our write must not look like a heartbeat."""
    conds = [dict(c) for c in _conditions(node)]
    changed = False
    for ctype in MONITORED_CONDITIONS:
        cond = next((c for c in conds if c.get("type") == ctype), None)
        if cond is None:
            created = str(_meta(node).get("creationTimestamp") or now_iso)
            conds.append({"type": ctype, "status": "Unknown", "reason": NEVER_REASON,
                          "message": NEVER_MESSAGE, "lastHeartbeatTime": created,
                          "lastTransitionTime": now_iso})
            changed = True
        elif cond.get("status") != "Unknown":
            cond.update(status="Unknown", reason=UNKNOWN_REASON, message=UNKNOWN_MESSAGE,
                        lastTransitionTime=now_iso)
            changed = True
    return conds if changed else None


# ---------------------------------------------------------------------------------- taints (pure)
def _wanted_taints(node: Mapping[str, Any]) -> set[tuple[str, str]]:
    wanted: set[tuple[str, str]] = set()
    for cond in _conditions(node):
        key = CONDITION_TAINTS.get((str(cond.get("type")), str(cond.get("status"))))
        if key is not None:
            wanted.add((key, NO_SCHEDULE))
    ready = ready_status(node)
    if ready == "False":
        wanted.add((TAINT_NOT_READY, NO_EXECUTE))
    elif ready == "Unknown":
        wanted.add((TAINT_UNREACHABLE, NO_EXECUTE))
    if (node.get("spec") or {}).get("unschedulable"):
        wanted.add((TAINT_UNSCHEDULABLE, NO_SCHEDULE))
    return wanted


def desired_taints(node: Mapping[str, Any], now_iso: str) -> list[Obj]:
    """The node's taints with the managed ones matching its conditions: others (a user's) are kept
    in place, stale managed ones dropped, missing ones appended.  NoExecute taints carry timeAdded
    (as upstream's swapNodeControllerTaint sets it)."""
    wanted = _wanted_taints(node)
    out: list[Obj] = []
    have: set[tuple[str, str]] = set()
    for taint in (node.get("spec") or {}).get("taints") or []:
        ident = (str(taint.get("key")), str(taint.get("effect")))
        if ident in MANAGED_TAINTS and ident not in wanted:
            continue
        have.add(ident)
        out.append(dict(taint))
    for key, effect in sorted(wanted - have):
        added: Obj = {"key": key, "effect": effect}
        if effect == NO_EXECUTE:
            added["timeAdded"] = now_iso
        out.append(added)
    return out


# ---------------------------------------------------------------------------------- eviction (pure)
def toleration_matches(toleration: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    """core/v1 Toleration.ToleratesTaint: an empty key (with Exists) or effect is a wildcard."""
    effect = toleration.get("effect") or ""
    if effect and effect != taint.get("effect"):
        return False
    key = toleration.get("key") or ""
    if key and key != taint.get("key"):
        return False
    if (toleration.get("operator") or "Equal") == "Exists":
        return True
    return (toleration.get("value") or "") == (taint.get("value") or "")


def tolerates(tolerations: Iterable[Mapping[str, Any]], taint: Mapping[str, Any]) -> bool:
    return any(toleration_matches(t, taint) for t in tolerations)


def with_default_tolerations(tolerations: Iterable[Mapping[str, Any]], seconds: float) -> list[Obj]:
    """upstream DefaultTolerationSeconds admission: a pod with no toleration of a key (or the empty
    key) with effect NoExecute (or empty) for not-ready / unreachable gets one for `seconds`."""
    out = [dict(t) for t in tolerations]
    for key in (TAINT_NOT_READY, TAINT_UNREACHABLE):
        covered = any((t.get("key") or "") in ("", key) and (t.get("effect") or "") in ("", NO_EXECUTE)
                      for t in out)
        if not covered:
            out.append({"key": key, "operator": "Exists", "effect": NO_EXECUTE, "tolerationSeconds": seconds})
    return out


def eviction_delay(pod: Mapping[str, Any], taints: Iterable[Mapping[str, Any]],
                   default_seconds: float) -> float | None:
    """Seconds until the taint manager deletes `pod` on a node with `taints`: None never (no
    NoExecute taint, or all tolerated without tolerationSeconds), 0 now (one is not tolerated),
    else the smallest tolerationSeconds of the tolerations used (upstream getMinTolerationTime)."""
    tolerations = with_default_tolerations((pod.get("spec") or {}).get("tolerations") or [], default_seconds)
    used: list[Obj] = []
    for taint in taints:
        if taint.get("effect") != NO_EXECUTE:
            continue
        matching = [t for t in tolerations if toleration_matches(t, taint)]
        if not matching:
            return 0.0
        used.extend(matching)
    limits = [float(t["tolerationSeconds"]) for t in used if t.get("tolerationSeconds") is not None]
    if not limits:
        return None
    return max(0.0, min(limits))


def not_ready_pod_conditions(pod: Mapping[str, Any], now_iso: str) -> list[Obj] | None:
    """upstream MarkPodsNotReady: the pod's conditions with Ready=False, or None when it has no
    Ready condition or it is already False."""
    conds = [dict(c) for c in _conditions(pod)]
    for cond in conds:
        if cond.get("type") == "Ready" and cond.get("status") != "False":
            cond.update(status="False", lastTransitionTime=now_iso)
            return conds
    return None


def _guarded(obj: Mapping[str, Any], patch: Obj) -> Obj:
    """A merge patch that applies only to the version we computed it from (a 409 otherwise): lists
    (conditions, taints) are replaced whole, so a concurrent kubelet write must not be lost."""
    return {"metadata": {"resourceVersion": _meta(obj).get("resourceVersion")}, **patch}


def _pod_key(pod: Mapping[str, Any]) -> str:
    meta = _meta(pod)
    return f"{meta.get('namespace')}/{meta.get('name')}"


# ---------------------------------------------------------------------------------- the controller
class NodeLifecycleController(KeyedController):
    name = "nodelifecycle"

    def __init__(self, api: Api, nodes: Cache, leases: Cache, pods: Cache, *, grace_period: float = 40.0,
                 monitor_period: float = 5.0, eviction_timeout: float = 300.0,
                 startup_grace_period: float = 60.0, resync_period: float = 30.0,
                 retry_delay: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time, recorder: Recorder | None = None) -> None:
        super().__init__(resync_period=resync_period, retry_delay=retry_delay, clock=clock)
        self.api, self.nodes, self.leases, self.pods = api, nodes, leases, pods
        self.grace_period, self.monitor_period = grace_period, monitor_period
        self.startup_grace_period = startup_grace_period
        self.eviction_timeout, self.wall, self.recorder = eviction_timeout, wall, recorder
        self.health: dict[str, NodeHealth] = {}
        # node -> pod key -> local time the pod was first seen due for a timed eviction
        self.eviction_start: dict[str, dict[str, float]] = {}
        self._by_node: dict[str, list[Obj]] | None = None
        self.evictions = 0

    # ------------------------------------------------------------------ informer handlers (record only)
    def node_changed(self, key: str) -> None:
        self.mark(key)

    def lease_changed(self, key: str) -> None:
        namespace, _, name = key.partition("/")
        if namespace == NODE_LEASE_NAMESPACE and name:
            self.mark(name)

    def pod_added(self, pod: Obj) -> None:
        self._mark_node_of(pod)

    def pod_updated(self, old: Obj, new: Obj) -> None:
        self._mark_node_of(old)
        self._mark_node_of(new)

    def pod_deleted(self, pod: Obj) -> None:
        self._mark_node_of(pod)

    def _mark_node_of(self, pod: Mapping[str, Any]) -> None:
        node = (pod.get("spec") or {}).get("nodeName")
        if node:
            self.mark(str(node))

    # ------------------------------------------------------------------ the loop
    def resync_keys(self) -> list[str]:
        return [str(_meta(n).get("name")) for n in self.nodes.list()]

    def run_once(self, stop: threading.Event | None = None) -> None:
        self._by_node = None  # pods grouped by node once per pass, not once per node
        super().run_once(stop)

    def _pods_on(self, node: str) -> list[Obj]:
        if self._by_node is None:
            grouped: dict[str, list[Obj]] = {}
            for pod in self.pods.list():
                name = (pod.get("spec") or {}).get("nodeName")
                if name:
                    grouped.setdefault(str(name), []).append(pod)
            self._by_node = grouped
        return self._by_node.get(node, [])

    def sync(self, key: str) -> None:
        node = self.nodes.get(key)
        if node is None:
            self.health.pop(key, None)
            self.eviction_start.pop(key, None)
            return
        now = self.clock()
        node = self._monitor_health(key, node, now)
        node = self._update_taints(node)
        if ready_status(node) not in (None, "True"):
            self._mark_pods_not_ready(key)
        self._evict(key, node, now)
        # upstream monitorNodeHealth runs every --node-monitor-period for every node
        self.requeue_after(key, self.monitor_period)

    # ------------------------------------------------------------------ 1. health
    def _monitor_health(self, name: str, node: Obj, now: float) -> Obj:
        lease = self.leases.get(f"{NODE_LEASE_NAMESPACE}/{name}")
        health = observe(self.health.get(name), heartbeat_marks(node, lease), now)
        self.health[name] = health
        # upstream: a node that never posted Ready gets --node-startup-grace-period (kubelet booting)
        grace = self.grace_period if ready_status(node) is not None else max(self.grace_period,
                                                                            self.startup_grace_period)
        if now - health.probe < grace:
            return node
        conds = unknown_conditions(node, rfc3339(self.wall()))
        if conds is None:
            return node
        was_ready = ready_status(node) == "True"
        patch = _guarded(node, {"status": {"conditions": conds}})
        updated = self.api.patch(NODES, name, patch, subresource="status")
        log.info("node %s: no heartbeat for %.1fs (grace %.1fs): conditions Unknown",
                 name, now - health.probe, grace)
        if was_ready:
            self._event(node, "Node", "Normal", "NodeNotReady", f"Node {name} status is now: NodeNotReady")
        return updated

    # ------------------------------------------------------------------ 2. taints
    def _update_taints(self, node: Obj) -> Obj:
        meta = _meta(node)
        current = (node.get("spec") or {}).get("taints") or []
        taints = desired_taints(node, rfc3339(self.wall()))
        if taints == current:
            return node
        patch = _guarded(node, {"spec": {"taints": taints or None}})
        updated = self.api.patch(NODES, str(meta["name"]), patch)
        log.info("node %s: taints now %s", meta["name"],
                 ", ".join(f"{t['key']}:{t['effect']}" for t in taints) or "none")
        return updated

    def _mark_pods_not_ready(self, name: str) -> None:
        now_iso = rfc3339(self.wall())
        for pod in self._pods_on(name):
            conds = not_ready_pod_conditions(pod, now_iso)
            if conds is None:
                continue
            meta = _meta(pod)
            patch = _guarded(pod, {"status": {"conditions": conds}})
            try:
                self.api.patch(PODS, str(meta["name"]), patch, meta.get("namespace"), subresource="status")
            except ApiError as e:
                if not (e.not_found or e.conflict):  # gone, or changed: its event syncs the node again
                    raise
                continue
            log.info("node %s not ready: pod %s marked NotReady", name, _pod_key(pod))
            self._event(pod, "Pod", "Warning", "NodeNotReady", "Node is not ready")

    # ------------------------------------------------------------------ 3. eviction
    def _evict(self, name: str, node: Obj, now: float) -> None:
        taints = [t for t in (node.get("spec") or {}).get("taints") or [] if t.get("effect") == NO_EXECUTE]
        previous = self.eviction_start.get(name, {})
        starts: dict[str, float] = {}
        for pod in self._pods_on(name) if taints else []:
            if _meta(pod).get("deletionTimestamp"):
                continue
            delay = eviction_delay(pod, taints, self.eviction_timeout)
            if delay is None:
                continue
            key = _pod_key(pod)
            start = starts[key] = previous.get(key, now)
            if start + delay <= now:
                self._delete_pod(pod)
            else:
                self.requeue_after(name, start + delay - now)
        if starts:
            self.eviction_start[name] = starts
        else:
            self.eviction_start.pop(name, None)

    def _delete_pod(self, pod: Obj) -> None:
        meta = _meta(pod)
        try:
            self.api.delete(PODS, str(meta["name"]), meta.get("namespace"),
                            preconditions={"uid": str(meta.get("uid"))})
        except ApiError as e:
            if not (e.not_found or e.conflict):  # already gone, or a new pod of the same name
                raise
            return
        self.evictions += 1
        log.info("TaintManagerEviction: marking for deletion pod %s", _pod_key(pod))
        self._event(pod, "Pod", "Normal", "TaintManagerEviction", f"Marking for deletion Pod {_pod_key(pod)}")

    def _event(self, obj: Obj, kind: str, type_: str, reason: str, message: str) -> None:
        if self.recorder is not None:
            self.recorder.event(obj, type_, reason, message, kind=kind, api_version="v1")


def build(ctx: ControllerContext) -> NodeLifecycleController:
    """The catalog's entry: node, lease and pod informers (shared), flags from the manager."""
    opts = ctx.options
    nodes, leases, pods = ctx.informers.get(NODES), ctx.informers.get(LEASES), ctx.informers.get(PODS)
    controller = NodeLifecycleController(
        ctx.client, nodes, leases, pods, grace_period=opts.node_monitor_grace_period,
        monitor_period=opts.node_monitor_period, eviction_timeout=opts.pod_eviction_timeout,
        startup_grace_period=getattr(opts, "node_startup_grace_period", 60.0),
        resync_period=opts.resync_period, recorder=ctx.recorder)
    nodes.add_handlers(Handlers(on_change=controller.node_changed))
    leases.add_handlers(Handlers(on_change=controller.lease_changed))
    pods.add_handlers(Handlers(on_add=controller.pod_added, on_update=controller.pod_updated,
                               on_delete=controller.pod_deleted))
    return controller
