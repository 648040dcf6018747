"""The ReplicationController controller, generic over the kind (ReplicaSets run the same machinery).

A WorkloadKind names the resource, the kind/apiVersion written into ownerReferences and how the
selector is read (a plain map for RCs, a metav1.LabelSelector for ReplicaSets).  Informers on the
owners and pods only mark owner keys dirty; one `sync` per key reads the caches and converges:
claim pods (adopt matching orphans, release owned pods whose labels stopped matching), create or
delete pods so the active owned ones equal spec.replicas, then write status when it changed.

Expectations (upstream's ControllerExpectations): after creating/deleting N pods the RC waits until
the pod watch has shown those N events (or a TTL passed) before computing another diff, so a second
sync that runs before the watch caught up does not create duplicates or delete too many.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from controlplane.controllers.base import KeyedController
from controlplane.controllers.context import ControllerContext
from podnet.api.client import PODS, REPLICATIONCONTROLLERS, ApiError, Resource
from podnet.api.informer import Handlers, object_key
from podnet.api.selectors import LabelSelector, selector_from_set

__all__ = ["RC_KIND", "Claims", "Expectations", "ReplicationManager", "WorkloadKind", "claim_pods",
           "compute_status", "controller_ref", "is_active", "patch_owner_refs", "rank_for_deletion",
           "replica_diff", "slow_start_batch"]

log = logging.getLogger("podnet.controllers.replication")

Obj = dict[str, Any]
BURST = 500  # at most this many creations/deletions per sync (upstream's burstReplicas)
EXPECTATIONS_TTL = 300.0  # upstream's ExpectationsTimeout: a lost watch event cannot wedge an RC
CREATE_PARALLELISM = 4  # concurrent pod creations (podnet.api.client's keep-alive pool size)


class Api(Protocol):
    """The part of podnet.api.client.Client the controller writes with (unit tests fake this)."""

    def create(self, res: Resource, obj: Mapping[str, Any], namespace: str | None = None,
               **query: Any) -> Obj: ...

    def delete(self, res: Resource, name: str, namespace: str | None = None, *,
               propagation_policy: str | None = None, grace_period_seconds: int | None = None,
               preconditions: Mapping[str, str] | None = None) -> Obj: ...

    def patch(self, res: Resource, name: str, patch: Any, namespace: str | None = None, *,
              patch_type: str = "merge", subresource: str | None = None, field_manager: str | None = None,
              force: bool | None = None) -> Obj: ...


class Recorder(Protocol):
    """podnet.api.events.EventRecorder (`kubectl describe` shows these)."""

    def event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str, *,
              kind: str | None = None, api_version: str | None = None) -> bool: ...


class Cache(Protocol):
    """The part of podnet.api.informer.Informer the controller reads."""

    def get(self, key: str) -> Obj | None: ...

    def list(self) -> list[Obj]: ...


# ---------------------------------------------------------------------------------- pure helpers
def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def controller_ref(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The ownerReference with controller=true, if any (metav1.GetControllerOf)."""
    for ref in _meta(obj).get("ownerReferences") or []:
        if ref.get("controller"):
            return ref
    return None


def is_active(pod: Mapping[str, Any]) -> bool:
    """Counts toward replicas: not terminating and not finished (controller.IsPodActive)."""
    if _meta(pod).get("deletionTimestamp"):
        return False
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


def is_ready(pod: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def rc_selector(rc: Mapping[str, Any]) -> LabelSelector:
    """spec.selector, defaulted (by the API server) to the template's labels; empty matches nothing
    here, as upstream refuses to manage every pod in the namespace."""
    spec = rc.get("spec") or {}
    labels = spec.get("selector") or _meta(spec.get("template") or {}).get("labels") or {}
    return selector_from_set(labels)


@dataclass(frozen=True)
class WorkloadKind:
    """What differs between the controllers built on this machinery."""
    resource: Resource
    kind: str
    api_version: str
    selector: Callable[[Mapping[str, Any]], LabelSelector]
    name: str  # the controller's name in logs


RC_KIND = WorkloadKind(REPLICATIONCONTROLLERS, "ReplicationController", "v1", rc_selector, "replication")


def owner_reference(rc: Mapping[str, Any], kind: WorkloadKind = RC_KIND) -> Obj:
    meta = _meta(rc)
    return {"apiVersion": kind.api_version, "kind": kind.kind, "name": meta["name"],
            "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}


@dataclass
class Claims:
    """What claiming the namespace's pods found: owned (after adoption), to adopt, to release."""
    owned: list[Obj] = field(default_factory=list)
    adopt: list[Obj] = field(default_factory=list)
    release: list[Obj] = field(default_factory=list)


def claim_pods(rc: Mapping[str, Any], pods: Iterable[Mapping[str, Any]],
               kind: WorkloadKind = RC_KIND) -> Claims:
    """PodControllerRefManager.ClaimPods, pure: `adopt` pods are also in `owned` (the sync drops
    the ones whose adoption patch fails).  Works for any dependents (a Deployment claims RSs)."""
    selector = kind.selector(rc)
    uid = _meta(rc).get("uid")
    rc_deleting = bool(_meta(rc).get("deletionTimestamp"))
    claims = Claims()
    for pod in pods:
        if _meta(pod).get("namespace") != _meta(rc).get("namespace"):
            continue
        matches = not selector.empty and selector.matches(_meta(pod).get("labels") or {})
        ref = controller_ref(pod)
        if ref is not None:
            if ref.get("uid") != uid:
                continue  # another controller's pod
            if matches:
                claims.owned.append(dict(pod))
            elif not _meta(pod).get("deletionTimestamp"):
                claims.release.append(dict(pod))
        elif matches and not rc_deleting and not _meta(pod).get("deletionTimestamp"):
            claims.adopt.append(dict(pod))
            claims.owned.append(dict(pod))
    return claims


def slow_start_batch(count: int, call: Callable[[], None], pool: Executor, initial: int = 1
                     ) -> tuple[int, list[Exception]]:
    """Upstream slowStartBatch: `call` runs `count` times in batches of 1, 2, 4, ... (a batch runs
    in parallel on `pool`); a batch with a failure ends it, so a request the server refuses
    (validation, quota) is tried a few times rather than `count` times.  Returns (successes,
    errors); calls never made are count - successes - len(errors)."""
    done, remaining, batch = 0, count, min(count, initial)
    errors: list[Exception] = []
    while batch > 0:
        for future in [pool.submit(call) for _ in range(batch)]:
            try:
                future.result()
                done += 1
            except Exception as e:  # returned: the caller raises the first one
                errors.append(e)
        if errors:
            break
        remaining -= batch
        batch = min(2 * batch, remaining)
    return done, errors


def replica_diff(rc: Mapping[str, Any], active: Sequence[Mapping[str, Any]]) -> int:
    """Pods to create (> 0) or delete (< 0), capped at BURST; spec.replicas defaults to 1."""
    replicas = (rc.get("spec") or {}).get("replicas")
    want = 1 if replicas is None else int(replicas)
    diff = want - len(active)
    return max(-BURST, min(BURST, diff))


_PHASE_RANK = {"Pending": 0, "Unknown": 1, "Running": 2}


def rank_for_deletion(pods: Iterable[Mapping[str, Any]]) -> list[Obj]:
    """Pods ordered best-to-delete first (upstream ActivePods): unscheduled before scheduled,
    Pending < Unknown < Running, not ready before ready, then newest first; name breaks ties."""
    ordered = sorted((dict(p) for p in pods), key=lambda p: str(_meta(p).get("name", "")))
    ordered.sort(key=lambda p: str(_meta(p).get("creationTimestamp") or ""), reverse=True)
    ordered.sort(key=lambda p: (bool((p.get("spec") or {}).get("nodeName")),
                                _PHASE_RANK.get((p.get("status") or {}).get("phase", ""), 0),
                                is_ready(p)))
    return ordered


def _parse_time(text: str) -> float | None:
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _available(pod: Mapping[str, Any], min_ready: int, now: float) -> bool:
    if not is_ready(pod):
        return False
    if min_ready <= 0:
        return True
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            since = _parse_time(str(cond.get("lastTransitionTime") or ""))
            return since is not None and since + min_ready <= now
    return False


def compute_status(rc: Mapping[str, Any], active: Sequence[Mapping[str, Any]], now: float) -> Obj:
    """The RC's new status from its active owned pods; conditions are kept as they are."""
    spec = rc.get("spec") or {}
    template_labels = selector_from_set(_meta(spec.get("template") or {}).get("labels") or {})
    min_ready = int(spec.get("minReadySeconds") or 0)
    status: Obj = {
        "replicas": len(active),
        "fullyLabeledReplicas": sum(template_labels.matches(_meta(p).get("labels") or {}) for p in active),
        "readyReplicas": sum(is_ready(p) for p in active),
        "availableReplicas": sum(_available(p, min_ready, now) for p in active),
        "observedGeneration": _meta(rc).get("generation", 0),
    }
    if (rc.get("status") or {}).get("conditions"):
        status["conditions"] = rc["status"]["conditions"]
    return status


def status_changed(rc: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Zero counts are omitted by the server (omitempty), so a missing field equals 0."""
    old = rc.get("status") or {}
    return any((old.get(k) or 0) != (v or 0) for k, v in new.items() if k != "conditions")


# ---------------------------------------------------------------------------------- expectations
@dataclass
class _Expectation:
    adds: int
    deletes: set[str]
    stamp: float


class Expectations:
    """Per RC key: creations still to be seen (a count) and deletions still to be seen (pod keys,
    as upstream's UIDTrackingControllerExpectations).  Thread-safe: informer threads observe."""

    def __init__(self, ttl: float = EXPECTATIONS_TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.clock = ttl, clock
        self._lock = threading.Lock()
        self._items: dict[str, _Expectation] = {}

    def satisfied(self, key: str) -> bool:
        """True when nothing is pending, or the expectation is older than the TTL."""
        with self._lock:
            exp = self._items.get(key)
            if exp is None:
                return True
            return (exp.adds <= 0 and not exp.deletes) or self.clock() - exp.stamp > self.ttl

    def expect(self, key: str, adds: int = 0, deletes: Iterable[str] = ()) -> None:
        with self._lock:
            self._items[key] = _Expectation(adds, set(deletes), self.clock())

    def creation_observed(self, key: str) -> None:
        with self._lock:
            exp = self._items.get(key)
            if exp is not None and exp.adds > 0:
                exp.adds -= 1

    def deletion_observed(self, key: str, pod_key: str) -> None:
        with self._lock:
            exp = self._items.get(key)
            if exp is not None:
                exp.deletes.discard(pod_key)

    def forget(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)

    def pending(self, key: str) -> tuple[int, set[str]]:
        with self._lock:
            exp = self._items.get(key)
            return (exp.adds, set(exp.deletes)) if exp else (0, set())


# ---------------------------------------------------------------------------------- the controller
def _rc_key(namespace: str | None, name: str) -> str:
    return f"{namespace}/{name}" if namespace else name


def _owner_key(pod: Mapping[str, Any], kind: WorkloadKind = RC_KIND) -> str | None:
    ref = controller_ref(pod)
    if ref is None or ref.get("kind") != kind.kind:
        return None
    return _rc_key(_meta(pod).get("namespace"), str(ref.get("name")))


class ReplicationManager(KeyedController):
    """`rcs` is the cache of the owners: ReplicationControllers, or ReplicaSets with RS_KIND."""

    name = "replication"

    def __init__(self, api: Api, rcs: Cache, pods: Cache, *, resync_period: float = 30.0,
                 retry_delay: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 expectations: Expectations | None = None, kind: WorkloadKind = RC_KIND,
                 recorder: Recorder | None = None) -> None:
        self.name, self.kind = kind.name, kind
        super().__init__(resync_period=resync_period, retry_delay=retry_delay, clock=clock)
        self.api, self.rcs, self.pods, self.recorder = api, rcs, pods, recorder
        self.expectations = expectations or Expectations(clock=clock)
        self._executor: ThreadPoolExecutor | None = None

    # ------------------------------------------------------------------ informer handlers (record only)
    def _mark(self, key: str) -> None:
        self.mark(key)

    def rc_changed(self, key: str) -> None:
        self._mark(key)

    def pod_added(self, pod: Obj) -> None:
        owner = _owner_key(pod, self.kind)
        if owner is not None:
            if _meta(pod).get("deletionTimestamp"):
                self.expectations.deletion_observed(owner, object_key(pod))
            else:
                self.expectations.creation_observed(owner)
        self._mark_interested(pod)

    def pod_updated(self, old: Obj, new: Obj) -> None:
        owner = _owner_key(new, self.kind)
        if owner is not None and _meta(new).get("deletionTimestamp"):
            self.expectations.deletion_observed(owner, object_key(new))
        self._mark_interested(old)
        self._mark_interested(new)

    def pod_deleted(self, pod: Obj) -> None:
        owner = _owner_key(pod, self.kind)
        if owner is not None:
            self.expectations.deletion_observed(owner, object_key(pod))
        self._mark_interested(pod)

    def _mark_interested(self, pod: Mapping[str, Any]) -> None:
        """Its controller, or (an orphan) every RC of its namespace whose selector matches it."""
        owner = _owner_key(pod, self.kind)
        if owner is not None:
            self._mark(owner)
            return
        if controller_ref(pod) is not None:
            return  # another kind of controller owns it
        labels = _meta(pod).get("labels") or {}
        for rc in self.rcs.list():
            if _meta(rc).get("namespace") == _meta(pod).get("namespace"):
                selector = self.kind.selector(rc)
                if not selector.empty and selector.matches(labels):
                    self._mark(object_key(rc))

    # ------------------------------------------------------------------ the loop (KeyedController.run)
    def resync_keys(self) -> list[str]:
        """Periodically every RC (a missed event or an expired expectation)."""
        return [object_key(rc) for rc in self.rcs.list()]

    def sync(self, key: str) -> None:
        """One level-triggered pass over RC `key`."""
        rc = self.rcs.get(key)
        if rc is None:
            self.expectations.forget(key)
            return
        claims = claim_pods(rc, self.pods.list(), self.kind)
        owned = self._adopt_and_release(rc, claims)
        active = [p for p in owned if is_active(p)]
        if self.expectations.satisfied(key) and not _meta(rc).get("deletionTimestamp"):
            self._manage_replicas(key, rc, active)
        status = self._update_status(rc, active)
        spec = rc.get("spec") or {}
        min_ready = int(spec.get("minReadySeconds") or 0)
        want = spec.get("replicas", 1)
        if min_ready > 0 and status["readyReplicas"] == want != status["availableReplicas"]:
            # upstream: ready but not yet available pods become available without any event
            self.requeue_after(key, float(min_ready))

    def _adopt_and_release(self, rc: Obj, claims: Claims) -> list[Obj]:
        """Patch ownerReferences with the pod's resourceVersion as a precondition (a 409 means the
        pod changed: the pod event marks the RC dirty again).  Returns the pods it owns now."""
        return adopt_and_release(self.api, PODS, owner_reference(rc, self.kind), claims)

    def _manage_replicas(self, key: str, rc: Obj, active: list[Obj]) -> None:
        diff = replica_diff(rc, active)
        if diff > 0:
            self._create_pods(key, rc, diff)
        elif diff < 0:
            self._delete_pods(key, rank_for_deletion(active)[:-diff])

    def _create_pods(self, key: str, rc: Obj, count: int) -> None:
        """Expect first (the watch may show a pod before create() returns); creations that fail or
        are skipped will never be observed, so they lower the expectation here."""
        self.expectations.expect(key, adds=count)
        ns = _meta(rc).get("namespace")
        pod = pod_from_template(rc, self.kind)

        def create_one() -> None:
            try:
                created = self.api.create(PODS, pod, ns)
            except ApiError as e:
                self._event(rc, "Warning", "FailedCreate", f"Error creating: {e.message}")
                raise
            self._event(rc, "Normal", "SuccessfulCreate", f"Created pod: {_meta(created).get('name')}")

        done, errors = slow_start_batch(count, create_one, self._pool())
        for _ in range(count - done):
            self.expectations.creation_observed(key)
        log.info("%s: created %d pods", key, done)
        if errors:
            raise errors[0]

    def _pool(self) -> ThreadPoolExecutor:
        """Creations run CREATE_PARALLELISM at a time (the client's keep-alive pool size): one
        synchronous request at a time capped a 1000-pod scale-up at ~100 pods/s."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(CREATE_PARALLELISM, thread_name_prefix=f"{self.name}-create")
        return self._executor

    def _delete_pods(self, key: str, pods: list[Obj]) -> None:
        self.expectations.expect(key, deletes=[object_key(p) for p in pods])
        errors: list[Exception] = []
        for pod in pods:
            meta = _meta(pod)
            try:
                self.api.delete(PODS, str(meta["name"]), meta.get("namespace"),
                                preconditions={"uid": str(meta.get("uid"))})
                self._event(self.rcs.get(key) or {}, "Normal", "SuccessfulDelete",
                            f"Deleted pod: {meta['name']}")
            except ApiError as e:
                self.expectations.deletion_observed(key, object_key(pod))
                if not e.not_found:
                    errors.append(e)
        log.info("%s: deleted %d pods", key, len(pods) - len(errors))
        if errors:
            raise errors[0]

    def _event(self, owner: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        if self.recorder is not None and _meta(owner).get("name"):
            self.recorder.event(owner, type_, reason, message, kind=self.kind.kind,
                                api_version=self.kind.api_version)

    def _update_status(self, rc: Obj, active: list[Obj]) -> Obj:
        status = compute_status(rc, active, time.time())
        if status_changed(rc, status):
            meta = _meta(rc)
            try:
                self.api.patch(self.kind.resource, str(meta["name"]), {"status": status},
                               meta.get("namespace"), subresource="status")
            except ApiError as e:
                if not e.not_found:
                    raise
                # deleted since the cache showed it: its delete event marks the key again and the
                # next sync forgets it (upstream ignores NotFound here too)
                log.info("%s/%s gone before its status update", meta.get("namespace"), meta["name"])
        return status


def adopt_and_release(api: Api, res: Resource, ours: Mapping[str, Any], claims: Claims) -> list[Obj]:
    """Patch the claimed dependents' ownerReferences (adopt / release); returns the owned ones whose
    adoption did not fail."""
    failed: set[str] = set()
    for obj in claims.adopt:
        refs = [*(_meta(obj).get("ownerReferences") or []), dict(ours)]
        if not patch_owner_refs(api, res, obj, refs, "adopting"):
            failed.add(object_key(obj))
    for obj in claims.release:
        refs = [r for r in _meta(obj).get("ownerReferences") or [] if r.get("uid") != ours["uid"]]
        patch_owner_refs(api, res, obj, refs or None, "releasing")
    return [o for o in claims.owned if object_key(o) not in failed]


def patch_owner_refs(api: Api, res: Resource, obj: Mapping[str, Any], refs: list[Any] | None,
                     what: str) -> bool:
    """Set ownerReferences with the object's resourceVersion as a precondition: a 409 means it
    changed under us (its event marks the owner dirty again), so the claim is simply retried."""
    meta = _meta(obj)
    patch = {"metadata": {"ownerReferences": refs, "resourceVersion": meta.get("resourceVersion")}}
    try:
        api.patch(res, str(meta["name"]), patch, meta.get("namespace"))
    except ApiError as e:
        if e.not_found or e.conflict:
            log.info("%s %s: %s", what, object_key(obj), e)
            return False
        raise
    log.info("%s %s %s", what, res.plural, object_key(obj))
    return True


def pod_from_template(rc: Mapping[str, Any], kind: WorkloadKind = RC_KIND) -> Obj:
    """A pod for `rc`: the template's labels, annotations and spec, generateName "<rc>-", and the
    controller ownerReference (upstream GetPodFromTemplate)."""
    template = (rc.get("spec") or {}).get("template") or {}
    tmeta = _meta(template)
    meta: Obj = {"generateName": f"{_meta(rc)['name']}-", "ownerReferences": [owner_reference(rc, kind)]}
    for name in ("labels", "annotations", "finalizers"):
        if tmeta.get(name):
            meta[name] = tmeta[name]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template.get("spec") or {}}


def build(ctx: ControllerContext) -> ReplicationManager:
    """The catalog's entry: an RC controller on the shared RC and pod informers."""
    rcs = ctx.informers.get(REPLICATIONCONTROLLERS)
    pods = ctx.informers.get(PODS)
    manager = ReplicationManager(ctx.client, rcs, pods, resync_period=ctx.options.resync_period,
                                 recorder=ctx.recorder)
    rcs.add_handlers(Handlers(on_change=manager.rc_changed))
    pods.add_handlers(Handlers(on_add=manager.pod_added, on_update=manager.pod_updated,
                               on_delete=manager.pod_deleted))
    return manager
