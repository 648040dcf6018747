"""The garbage collector: deleting an owner deletes (or orphans) its dependents.

Shared informers over the kinds that carry ownerReferences feed a uid graph (owner uid -> dependent
uids, uid -> latest object); the handlers only record the change in the graph and mark the uids it
concerns dirty, and one `sync(uid)` decides, as upstream's attemptToDelete / attemptToOrphan:

* a dependent whose owners are all gone is deleted (Background, or Foreground when it has dependents
  of its own and an owner waits for them, so chains cascade); "gone" is confirmed by a live GET
  (404, or an object of that name with another uid) before anything is deleted, and the DELETE
  carries a uid precondition;
* a dependent with some live owners only loses the references to owners that are gone or that are
  being deleted in the foreground;
* an owner being deleted with the "orphan" finalizer: its references are removed from every
  dependent, then the finalizer;
* an owner being deleted with "foregroundDeletion": its dependents are deleted (see above) and the
  finalizer is removed once no dependent with blockOwnerDeletion=true is left.

The kinds watched are discovered at start as upstream's GraphBuilder does (every resource that can be
listed, watched and deleted), with the fixed `KINDS` as the fallback when discovery fails.  The
decisions are pure functions (`owner_state`, `dependent_action`, `blocking_dependents`) so they are
table-tested; the controller only reads the graph, verifies and writes.  Not done (upstream does):
rediscovery of kinds added while running, cycle detection between foreground owners and dependents.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from controlplane.controllers.base import KeyedController
from controlplane.controllers.context import ControllerContext
from podnet.api.client import (
    CONFIGMAPS,
    DEPLOYMENTS,
    ENDPOINTS,
    ENDPOINTSLICES,
    NAMESPACES,
    NODES,
    PODS,
    REPLICASETS,
    REPLICATIONCONTROLLERS,
    SERVICEACCOUNTS,
    SERVICES,
    ApiError,
    Resource,
)
from podnet.api.informer import Handlers

__all__ = ["FOREGROUND", "KINDS", "ORPHAN", "Action", "GarbageCollector", "UidGraph", "blocking_dependents",
           "build", "dependent_action", "discover_kinds", "owner_state", "watchable_kinds"]

log = logging.getLogger("podnet.controllers.garbagecollector")

Obj = dict[str, Any]
ORPHAN = "orphan"  # metav1.FinalizerOrphanDependents
FOREGROUND = "foregroundDeletion"  # metav1.FinalizerDeleteDependents
SECRETS = Resource("", "v1", "secrets")

# kind (group, Kind) -> resource: the fallback when discovery fails (owners are looked up by kind)
KINDS: dict[tuple[str, str], Resource] = {
    ("", "Pod"): PODS, ("", "ReplicationController"): REPLICATIONCONTROLLERS,
    ("apps", "ReplicaSet"): REPLICASETS, ("apps", "Deployment"): DEPLOYMENTS,
    ("discovery.k8s.io", "EndpointSlice"): ENDPOINTSLICES, ("", "Endpoints"): ENDPOINTS,
    ("", "ConfigMap"): CONFIGMAPS, ("", "Secret"): SECRETS, ("", "Service"): SERVICES,
    ("", "ServiceAccount"): SERVICEACCOUNTS, ("", "Namespace"): NAMESPACES, ("", "Node"): NODES,
}

SOLID, WAITING, ABSENT, DANGLING = "solid", "waiting", "absent", "dangling"
WORKERS = 8  # concurrent syncs in the controller manager (upstream --concurrent-gc-syncs is 20)
ABSENT_CACHE_LIMIT = 10_000  # remembered gone owners (upstream keeps an LRU); forgetting costs one GET


class Api(Protocol):
    """The part of podnet.api.client.Client the collector uses (unit tests fake this seam)."""

    def request(self, method: str, path: str, *, query: Mapping[str, Any] | None = None, body: Any = None,
                content_type: str = "application/json") -> Any: ...

    def get(self, res: Resource, name: str, namespace: str | None = None) -> Obj: ...

    def delete(self, res: Resource, name: str, namespace: str | None = None, *,
               propagation_policy: str | None = None, grace_period_seconds: int | None = None,
               preconditions: Mapping[str, str] | None = None) -> Obj: ...

    def patch(self, res: Resource, name: str, patch: Any, namespace: str | None = None, *,
              patch_type: str = "merge", subresource: str | None = None, field_manager: str | None = None,
              force: bool | None = None) -> Obj: ...


# ---------------------------------------------------------------------------------- pure helpers
def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def owner_refs(obj: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [r for r in _meta(obj).get("ownerReferences") or [] if r.get("uid")]


def deleting_with(obj: Mapping[str, Any], finalizer: str) -> bool:
    meta = _meta(obj)
    return bool(meta.get("deletionTimestamp")) and finalizer in (meta.get("finalizers") or [])


def owner_state(owner: Mapping[str, Any] | None) -> str:
    """What an owner seen in the graph means for its dependents: ABSENT (not in the graph: confirm
    with a live GET), WAITING (deleted in the foreground: its dependents must go first) or SOLID."""
    if owner is None:
        return ABSENT
    return WAITING if deleting_with(owner, FOREGROUND) else SOLID


def watchable_kinds(documents: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], Resource]:
    """(group, Kind) -> resource for every resource of the APIResourceList documents that can be
    listed, watched and deleted (upstream GetDeletableResources); subresources are skipped."""
    kinds: dict[tuple[str, str], Resource] = {}
    for doc in documents:
        group, _, version = str(doc.get("groupVersion") or "").rpartition("/")
        for entry in doc.get("resources") or []:
            name = str(entry.get("name") or "")
            if "/" in name or not {"list", "watch", "delete"} <= set(entry.get("verbs") or []):
                continue
            kinds.setdefault((group, str(entry.get("kind"))),
                             Resource(group, version, name, bool(entry.get("namespaced"))))
    return kinds


def discover_kinds(api: Api) -> dict[tuple[str, str], Resource]:
    """/api/v1 and the preferred version of every /apis group."""
    documents = [{"groupVersion": "v1", **api.request("GET", "/api/v1")}]
    for group in (api.request("GET", "/apis") or {}).get("groups") or []:
        preferred = (group.get("preferredVersion") or {}).get("groupVersion")
        if preferred:
            documents.append(api.request("GET", f"/apis/{preferred}"))
    return watchable_kinds(documents)


def ref_kind(ref: Mapping[str, Any]) -> tuple[str, str]:
    group = str(ref.get("apiVersion") or "").rpartition("/")[0]
    return group, str(ref.get("kind") or "")


@dataclass(frozen=True)
class Action:
    """What to do with a dependent: "none", "delete" (with `policy`) or "patch" (keep `refs`)."""
    verb: str
    policy: str | None = None
    refs: tuple[Mapping[str, Any], ...] = ()


NOTHING = Action("none")


def dependent_action(obj: Mapping[str, Any], states: Mapping[str, str], has_dependents: bool) -> Action:
    """upstream attemptToDeleteItem for an object not being deleted, with its owners classified
    (uid -> SOLID / WAITING / DANGLING; an unconfirmed ABSENT counts as SOLID: never delete on doubt)."""
    refs = owner_refs(obj)
    if not refs or _meta(obj).get("deletionTimestamp"):
        return NOTHING
    state = {str(r["uid"]): states.get(str(r["uid"]), SOLID) for r in refs}
    solid = [r for r in refs if state[str(r["uid"])] in (SOLID, ABSENT)]
    if solid:
        if len(solid) == len(refs):
            return NOTHING
        # references to owners that are gone, or waiting for their dependents, are dropped (a waiting
        # owner would otherwise never lose its foregroundDeletion finalizer)
        return Action("patch", refs=tuple(solid))
    if WAITING in state.values() and has_dependents:
        return Action("delete", "Foreground")  # its own dependents go first: the chain cascades
    finalizers = _meta(obj).get("finalizers") or []
    policy = "Orphan" if ORPHAN in finalizers else "Foreground" if FOREGROUND in finalizers else "Background"
    return Action("delete", policy)


def blocking_dependents(owner_uid: str, dependents: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Dependents whose reference to the owner has blockOwnerDeletion=true: a foreground deletion
    waits for them."""
    return [d for d in dependents
            if any(r.get("uid") == owner_uid and r.get("blockOwnerDeletion") for r in owner_refs(d))]


def without_refs_to(obj: Mapping[str, Any], owner_uid: str) -> list[Mapping[str, Any]]:
    return [r for r in _meta(obj).get("ownerReferences") or [] if r.get("uid") != owner_uid]


# ---------------------------------------------------------------------------------- the graph
@dataclass
class GraphNode:
    res: Resource
    obj: Obj


class UidGraph:
    """uid -> (resource, latest object) and owner uid -> dependent uids; thread-safe (informer threads
    write, the sync thread reads).  Every change returns the uids whose decision it may change."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nodes: dict[str, GraphNode] = {}
        self._dependents: dict[str, set[str]] = {}

    def upsert(self, res: Resource, obj: Obj) -> set[str]:
        uid = str(_meta(obj).get("uid") or "")
        if not uid:
            return set()
        with self._lock:
            old = self._nodes.get(uid)
            old_owners = {str(r["uid"]) for r in owner_refs(old.obj)} if old else set()
            new_owners = {str(r["uid"]) for r in owner_refs(obj)}
            self._nodes[uid] = GraphNode(res, obj)
            for owner in old_owners - new_owners:
                self._unlink(owner, uid)
            for owner in new_owners:
                self._dependents.setdefault(owner, set()).add(uid)
            touched = {uid} | old_owners | new_owners
            if _meta(obj).get("deletionTimestamp"):
                touched |= self._dependents.get(uid, set())
            return touched

    def remove(self, obj: Mapping[str, Any]) -> set[str]:
        uid = str(_meta(obj).get("uid") or "")
        with self._lock:
            node = self._nodes.pop(uid, None)
            owners = {str(r["uid"]) for r in owner_refs(node.obj if node else obj)}
            for owner in owners:
                self._unlink(owner, uid)
            return owners | set(self._dependents.get(uid, set()))

    def _unlink(self, owner: str, dependent: str) -> None:
        deps = self._dependents.get(owner)
        if deps is not None:
            deps.discard(dependent)
            if not deps:
                del self._dependents[owner]

    def get(self, uid: str) -> GraphNode | None:
        with self._lock:
            return self._nodes.get(uid)

    def dependents(self, uid: str) -> list[GraphNode]:
        with self._lock:
            return [self._nodes[d] for d in sorted(self._dependents.get(uid, ())) if d in self._nodes]

    def has_dependents(self, uid: str) -> bool:
        with self._lock:
            return any(d in self._nodes for d in self._dependents.get(uid, ()))

    def interesting(self) -> list[str]:
        """uids worth a periodic look: dependents, and owners held by a GC finalizer."""
        with self._lock:
            return [uid for uid, n in self._nodes.items()
                    if owner_refs(n.obj) or deleting_with(n.obj, ORPHAN) or deleting_with(n.obj, FOREGROUND)]


# ---------------------------------------------------------------------------------- the controller
class GarbageCollector(KeyedController):
    name = "garbagecollector"

    def __init__(self, api: Api, graph: UidGraph | None = None, *,
                 kinds: Mapping[tuple[str, str], Resource] | None = None, resync_period: float = 30.0,
                 retry_delay: float = 0.5, clock: Callable[[], float] = time.monotonic,
                 workers: int = 1) -> None:
        super().__init__(resync_period=resync_period, retry_delay=retry_delay, clock=clock)
        self.api = api
        self.graph = graph or UidGraph()
        self.kinds = dict(kinds if kinds is not None else KINDS)
        self._absent: set[str] = set()  # owner uids confirmed gone (uids never come back)
        self.absent_limit = ABSENT_CACHE_LIMIT
        self.workers = workers
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="gc-sync") if workers > 1 else None

    # ------------------------------------------------------------------ informer handlers (record only)
    def handlers(self, res: Resource) -> Handlers:
        def added(obj: Obj) -> None:
            self._mark_all(self.graph.upsert(res, obj))

        def updated(old: Obj, new: Obj) -> None:
            if _meta(old).get("uid") != _meta(new).get("uid"):  # replaced under the same name
                self._mark_all(self.graph.remove(old))
            self._mark_all(self.graph.upsert(res, new))

        def deleted(obj: Obj) -> None:
            self._mark_all(self.graph.remove(obj))

        return Handlers(on_add=added, on_update=updated, on_delete=deleted)

    def _mark_all(self, uids: Iterable[str]) -> None:
        for uid in uids:
            self.mark(uid)

    def resync_keys(self) -> list[str]:
        return self.graph.interesting()

    # ------------------------------------------------------------------ the loop
    def run_once(self, stop: threading.Event | None = None) -> None:
        """KeyedController.run_once with the dirty keys spread over `workers` threads (upstream
        --concurrent-gc-syncs, default 20): a sync is mostly one API round trip, and a cascade
        marks thousands of keys.  Keys are independent; writes carry uid/resourceVersion
        preconditions, so two syncs racing on related objects cost a retry, never a wrong write."""
        if self._pool is None:
            super().run_once(stop)
            return
        self._requeue_due()
        keys = sorted(self.dirty.take())
        list(self._pool.map(lambda key: self._sync_one(key, stop), keys))

    def _sync_one(self, key: str, stop: threading.Event | None) -> None:
        if stop is not None and stop.is_set():
            return
        self.syncs += 1
        try:
            self.sync(key)
        except Exception:  # as KeyedController.run_once: this key retries later
            self.log.exception("syncing %s failed; retrying", key)
            self.requeue_after(key, self.retry_delay)

    def sync(self, key: str) -> None:
        node = self.graph.get(key)
        if node is None:
            return
        if _meta(node.obj).get("deletionTimestamp"):
            if deleting_with(node.obj, ORPHAN):
                self._orphan_dependents(key, node)
            elif deleting_with(node.obj, FOREGROUND):
                self._delete_dependents(key, node)
            return
        if owner_refs(node.obj):
            self._attempt_to_delete(key, node)

    def _attempt_to_delete(self, uid: str, node: GraphNode) -> None:
        states = {str(r["uid"]): self._owner_state(node.obj, r) for r in owner_refs(node.obj)}
        action = dependent_action(node.obj, states, self.graph.has_dependents(uid))
        if action.verb == "delete":
            self._delete(node, action.policy)
        elif action.verb == "patch" and not self._set_refs(node, list(action.refs)):
            self.requeue_after(uid, self.retry_delay)

    def _owner_state(self, dependent: Mapping[str, Any], ref: Mapping[str, Any]) -> str:
        """From the graph; an owner missing from it is looked up live (the graph may lag a creation)."""
        uid = str(ref["uid"])
        if uid in self._absent:
            return DANGLING
        owner = self.graph.get(uid)
        state = owner_state(owner.obj if owner else None)
        if state != ABSENT:
            return state
        res = self.kinds.get(ref_kind(ref))
        namespace = _meta(dependent).get("namespace")
        if res is not None and res.namespaced and not namespace:
            return DANGLING  # upstream: a cluster-scoped dependent cannot have a namespaced owner
        if res is None:
            log.info("owner kind %s of %s is not watched; leaving it", ref.get("kind"),
                     _meta(dependent).get("name"))
            return SOLID
        try:
            live = self.api.get(res, str(ref.get("name")), namespace if res.namespaced else None)
        except ApiError as e:
            if not e.not_found:
                raise
            self._remember_absent(uid)
            return DANGLING
        if _meta(live).get("uid") != uid:
            self._remember_absent(uid)  # the name now belongs to another object
            return DANGLING
        return owner_state(live)

    def _remember_absent(self, uid: str) -> None:
        if len(self._absent) >= self.absent_limit:
            self._absent.clear()
        self._absent.add(uid)

    def _orphan_dependents(self, uid: str, node: GraphNode) -> None:
        done = [self._set_refs(dep, without_refs_to(dep.obj, uid)) for dep in self.graph.dependents(uid)]
        # the finalizer goes only once every dependent is released
        if not all(done) or not self._remove_finalizer(node, ORPHAN):
            self.requeue_after(uid, self.retry_delay)

    def _delete_dependents(self, uid: str, node: GraphNode) -> None:
        dependents = self.graph.dependents(uid)
        for dep in dependents:
            self.mark(str(_meta(dep.obj).get("uid")))  # each decides: delete, or drop this reference
        if not blocking_dependents(uid, [d.obj for d in dependents]) and not self._remove_finalizer(
                node, FOREGROUND):
            self.requeue_after(uid, self.retry_delay)

    # ------------------------------------------------------------------ writes
    def _delete(self, node: GraphNode, policy: str | None) -> None:
        meta = _meta(node.obj)
        try:
            self.api.delete(node.res, str(meta["name"]), meta.get("namespace"), propagation_policy=policy,
                            preconditions={"uid": str(meta.get("uid"))})
        except ApiError as e:
            if not (e.not_found or e.conflict):  # gone already, or the name is another object now
                raise
            return
        log.info("deleted %s %s/%s (%s)", node.res.plural, meta.get("namespace", ""), meta["name"], policy)

    def _set_refs(self, node: GraphNode, refs: list[Mapping[str, Any]]) -> bool:
        return self._patch_meta(node, {"ownerReferences": refs or None}, "ownerReferences")

    def _remove_finalizer(self, node: GraphNode, finalizer: str) -> bool:
        left = [f for f in _meta(node.obj).get("finalizers") or [] if f != finalizer]
        return self._patch_meta(node, {"finalizers": left or None}, f"finalizer {finalizer}")

    def _patch_meta(self, node: GraphNode, change: Obj, what: str) -> bool:
        """A merge patch with the resourceVersion seen.  False on a 409 (the object moved since the
        graph saw it, e.g. a status write): the caller syncs again once the graph caught up."""
        meta = _meta(node.obj)
        patch = {"metadata": {**change, "resourceVersion": meta.get("resourceVersion")}}
        try:
            self.api.patch(node.res, str(meta["name"]), patch, meta.get("namespace"))
        except ApiError as e:
            if e.conflict:
                log.info("%s %s/%s changed meanwhile; retrying", node.res.plural, meta.get("namespace", ""),
                         meta["name"])
                return False
            if not e.not_found:
                raise
            return True
        log.info("%s %s/%s: updated %s", node.res.plural, meta.get("namespace", ""), meta["name"], what)
        return True


def build(ctx: ControllerContext) -> GarbageCollector:
    """The catalog's entry: a collector on the shared informers of every discovered kind."""
    try:
        kinds = discover_kinds(ctx.client)
    except (ApiError, OSError) as e:
        log.warning("discovery failed (%s); watching the built-in kinds only", e)
        kinds = dict(KINDS)
    gc = GarbageCollector(ctx.client, kinds=kinds, resync_period=ctx.options.resync_period, workers=WORKERS)
    for res in dict.fromkeys(kinds.values()):
        ctx.informers.get(res).add_handlers(gc.handlers(res))
    return gc
