"""The namespace controller: deleting a namespace deletes everything in it, then the namespace.

For a namespace with a deletionTimestamp whose spec.finalizers still holds "kubernetes" (upstream
NamespacedResourcesDeleter), one `sync(name)`:
1. discovers every namespaced resource that can be listed and deleted (/api/v1 and every /apis
   group's preferred version), so new kinds need no change here;
2. deletes the content of each (deletecollection where served, else one DELETE per object with a uid
   precondition), with propagationPolicy=Background as upstream, and lists what is left;
3. writes the upstream status conditions (NamespaceDeletionDiscoveryFailure,
   NamespaceDeletionContentFailure, NamespaceContentRemaining, NamespaceFinalizersRemaining) when
   they change;
4. while content remains, syncs again later (after the longest pod grace period still running, at
   least after a backoff); once nothing is left, removes "kubernetes" from spec.finalizers through
   PUT namespaces/<name>/finalize, and the API server removes the namespace.

Pods are deleted with their own grace period, as upstream: an unscheduled pod goes at once, a pod
bound to a node stays Terminating until its kubelet confirms (or someone deletes it with
gracePeriodSeconds=0), and the namespace waits for it.  Content is not watched: upstream polls too.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from controlplane.controllers.base import KeyedController
from controlplane.controllers.context import ControllerContext
from podnet.api.client import NAMESPACES, ApiError, Resource
from podnet.api.informer import Handlers

__all__ = ["Content", "NamespaceController", "build", "deletable_resources", "finalized",
           "merge_conditions", "namespace_conditions"]

log = logging.getLogger("podnet.controllers.namespace")

Obj = dict[str, Any]
KUBERNETES = "kubernetes"  # the finalizer this controller owns (FinalizerKubernetes)
BACKOFF_INITIAL, BACKOFF_MAX = 0.5, 10.0


class Api(Protocol):
    """The part of podnet.api.client.Client the controller uses (unit tests fake this seam)."""

    def request(self, method: str, path: str, *, query: Mapping[str, Any] | None = None, body: Any = None,
                content_type: str = "application/json") -> Any: ...

    def list_all(self, res: Resource, namespace: str | None = None, *, label_selector: str | None = None,
                 field_selector: str | None = None, limit: int = 500) -> tuple[list[Obj], str]: ...

    def delete(self, res: Resource, name: str, namespace: str | None = None, *,
               propagation_policy: str | None = None, grace_period_seconds: int | None = None,
               preconditions: Mapping[str, str] | None = None) -> Obj: ...

    def update(self, res: Resource, obj: Mapping[str, Any], namespace: str | None = None,
               subresource: str | None = None, **query: Any) -> Obj: ...

    def patch(self, res: Resource, name: str, patch: Any, namespace: str | None = None, *,
              patch_type: str = "merge", subresource: str | None = None, field_manager: str | None = None,
              force: bool | None = None) -> Obj: ...


class Cache(Protocol):
    def get(self, key: str) -> Obj | None: ...

    def list(self) -> list[Obj]: ...


# ---------------------------------------------------------------------------------- pure helpers
def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


@dataclass(frozen=True)
class Deletable:
    res: Resource
    collection: bool  # deletecollection is served: one request empties the namespace


def deletable_resources(documents: Iterable[Mapping[str, Any]]) -> list[Deletable]:
    """From APIResourceList documents: the namespaced resources (not subresources) that can be
    listed and deleted (upstream: discovery filtered by the verbs {list, delete})."""
    found: list[Deletable] = []
    for doc in documents:
        group, _, version = str(doc.get("groupVersion") or "").rpartition("/")
        for entry in doc.get("resources") or []:
            name, verbs = str(entry.get("name") or ""), set(entry.get("verbs") or [])
            if "/" in name or not entry.get("namespaced") or not {"list", "delete"} <= verbs:
                continue
            found.append(Deletable(Resource(group, version, name), "deletecollection" in verbs))
    return found


def resource_label(res: Resource) -> str:
    """Upstream's spelling in condition messages: "pods." for the core group, "deployments.apps"."""
    return f"{res.plural}.{res.group}"


@dataclass
class Content:
    """What one deletion pass left: per resource the objects remaining, the finalizers holding them,
    the errors, and when the last graceful pod deletion should be over (epoch seconds)."""
    remaining: dict[str, int] = field(default_factory=dict)
    finalizers: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    grace_until: float = 0.0

    @property
    def empty(self) -> bool:
        return not self.remaining and not self.errors

    def add_remaining(self, res: Resource, items: Sequence[Mapping[str, Any]]) -> None:
        if not items:
            return
        self.remaining[resource_label(res)] = len(items)
        for item in items:
            for finalizer in _meta(item).get("finalizers") or []:
                self.finalizers[finalizer] = self.finalizers.get(finalizer, 0) + 1
            until = _parse_time(str(_meta(item).get("deletionTimestamp") or ""))
            if until is not None and _meta(item).get("deletionGracePeriodSeconds"):
                self.grace_until = max(self.grace_until, until)


def _parse_time(text: str) -> float | None:
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _condition(kind: str, failed: bool, reason_bad: str, reason_ok: str, message: str) -> Obj:
    return {"type": kind, "status": "True" if failed else "False",
            "reason": reason_bad if failed else reason_ok, "message": message}


def namespace_conditions(discovery_error: str | None, content: Content | None) -> list[Obj]:
    """The upstream deletion conditions (messages as upstream's namespace deleter writes them); a
    failed discovery leaves the content conditions out (nothing was attempted)."""
    conds = [_condition("NamespaceDeletionDiscoveryFailure", discovery_error is not None, "DiscoveryFailed",
                        "ResourcesDiscovered", f"Discovery failed for some groups: {discovery_error}"
                        if discovery_error else "All resources successfully discovered")]
    if content is None:
        return conds
    errors = "; ".join(content.errors)
    conds.append(_condition("NamespaceDeletionContentFailure", bool(content.errors), "ContentDeletionFailed",
                            "ContentDeleted", f"Failed to delete all resource types, {len(content.errors)} "
                            f"remaining: {errors}" if content.errors
                            else "All content successfully deleted, may be waiting on finalization"))
    left = ", ".join(f"{label} has {n} resource instances" for label, n in sorted(content.remaining.items()))
    conds.append(_condition("NamespaceContentRemaining", bool(content.remaining), "SomeResourcesRemain",
                            "ContentRemoved", f"Some resources are remaining: {left}" if left
                            else "All content successfully removed"))
    held = ", ".join(f"{f} in {n} resource instances" for f, n in sorted(content.finalizers.items()))
    conds.append(_condition("NamespaceFinalizersRemaining", bool(content.finalizers), "SomeFinalizersRemain",
                            "ContentHasNoFinalizers", f"Some content in the namespace has finalizers "
                            f"remaining: {held}" if held else "All content-preserving finalizers finished"))
    return conds


def merge_conditions(old: Sequence[Mapping[str, Any]], new: Sequence[Obj], now: str) -> list[Obj]:
    """`new` replaces the conditions of the same types; lastTransitionTime moves only when a
    condition's status changes (conditions of other types are kept)."""
    before = {str(c.get("type")): c for c in old}
    types = {c["type"] for c in new}
    merged = [dict(c) for c in old if c.get("type") not in types]
    for cond in new:
        prev = before.get(cond["type"])
        since = prev.get("lastTransitionTime") if prev and prev.get("status") == cond["status"] else None
        merged.append({**cond, "lastTransitionTime": since or now})
    return merged


def finalized(ns: Mapping[str, Any]) -> Obj:
    """The body of PUT namespaces/<name>/finalize: spec.finalizers without ours; the resourceVersion
    seen is a precondition, so another finalizer added meanwhile is never dropped."""
    meta = _meta(ns)
    spec_finalizers = [f for f in (ns.get("spec") or {}).get("finalizers") or [] if f != KUBERNETES]
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": meta.get("name"), "resourceVersion": meta.get("resourceVersion")},
            "spec": {"finalizers": spec_finalizers}}


def _now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------- the controller
class NamespaceController(KeyedController):
    name = "namespace"

    def __init__(self, api: Api, namespaces: Cache, *, resync_period: float = 30.0, retry_delay: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        super().__init__(resync_period=resync_period, retry_delay=retry_delay, clock=clock)
        self.api, self.namespaces, self.wall = api, namespaces, wall
        self._backoff: dict[str, float] = {}

    def namespace_changed(self, key: str) -> None:
        self.mark(key)

    def resync_keys(self) -> list[str]:
        return [str(_meta(ns).get("name")) for ns in self.namespaces.list()
                if _meta(ns).get("deletionTimestamp")]

    def sync(self, key: str) -> None:
        ns = self.namespaces.get(key)
        if ns is None or not _meta(ns).get("deletionTimestamp"):
            self._backoff.pop(key, None)
            return
        if KUBERNETES not in ((ns.get("spec") or {}).get("finalizers") or []):
            return  # finalized already: the API server removes it once metadata.finalizers are gone
        try:
            resources = self.discover()
        except (ApiError, OSError) as e:
            self._write_conditions(ns, namespace_conditions(str(e), None))
            raise
        content = self.delete_content(key, resources)
        ns = self._write_conditions(ns, namespace_conditions(None, content))
        if not content.empty:
            self.requeue_after(key, self._next_delay(key, content))
            return
        self._backoff.pop(key, None)
        self._finalize(ns)

    def _next_delay(self, key: str, content: Content) -> float:
        """Back off while content remains (finalizers can take long), but not past the end of the
        longest pod grace period still running."""
        backoff = self._backoff.get(key, BACKOFF_INITIAL / 2) * 2
        self._backoff[key] = min(backoff, BACKOFF_MAX)
        grace = content.grace_until - self.wall()
        return max(self._backoff[key], grace + 0.5) if grace > 0 else self._backoff[key]

    # ------------------------------------------------------------------ discovery and deletion
    def discover(self) -> list[Deletable]:
        documents = [self.api.request("GET", "/api/v1")]
        for group in (self.api.request("GET", "/apis") or {}).get("groups") or []:
            preferred = (group.get("preferredVersion") or {}).get("groupVersion")
            if preferred:
                documents.append(self.api.request("GET", f"/apis/{preferred}"))
        for doc in documents:
            doc.setdefault("groupVersion", "v1")
        return deletable_resources(documents)

    def delete_content(self, namespace: str, resources: Iterable[Deletable]) -> Content:
        content = Content()
        for item in resources:
            try:
                content.add_remaining(item.res, self._delete_all(namespace, item))
            except ApiError as e:
                content.errors.append(f"{resource_label(item.res)}: {e}")
        return content

    def _delete_all(self, namespace: str, item: Deletable) -> list[Obj]:
        """Delete every live object of one resource; returns what is left (terminating objects)."""
        objs, _ = self.api.list_all(item.res, namespace)
        live = [o for o in objs if not _meta(o).get("deletionTimestamp")]
        if not live:
            return objs
        if item.collection:
            body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
            self.api.request("DELETE", item.res.path(namespace), body=body)
        else:
            for obj in live:
                meta = _meta(obj)
                try:
                    self.api.delete(item.res, str(meta["name"]), namespace, propagation_policy="Background",
                                    preconditions={"uid": str(meta.get("uid"))})
                except ApiError as e:
                    if not (e.not_found or e.conflict):
                        raise
        log.info("namespace %s: deleted %d %s", namespace, len(live), resource_label(item.res))
        return self.api.list_all(item.res, namespace)[0]

    # ------------------------------------------------------------------ writes to the namespace
    def _write_conditions(self, ns: Obj, conditions: list[Obj]) -> Obj:
        """Status only on change; returns the namespace as it is now (its resourceVersion is the
        precondition of the finalize that may follow)."""
        status = ns.get("status") or {}
        old = status.get("conditions") or []
        merged = merge_conditions(old, conditions, _now_rfc3339())
        if merged == old and status.get("phase") == "Terminating":
            return ns
        patch = {"status": {"phase": "Terminating", "conditions": merged}}
        try:
            return self.api.patch(NAMESPACES, str(_meta(ns)["name"]), patch, subresource="status")
        except ApiError as e:
            if not e.not_found:
                raise
            return ns

    def _finalize(self, ns: Obj) -> None:
        name = str(_meta(ns)["name"])
        try:
            self.api.update(NAMESPACES, finalized(ns), subresource="finalize")
        except ApiError as e:
            if e.conflict:  # the namespace moved since it was read: read it again and retry
                log.info("namespace %s changed meanwhile; retrying", name)
                self.requeue_after(name, self.retry_delay)
                return
            if not e.not_found:
                raise
            return
        log.info("namespace %s: content gone, finalized", name)


def build(ctx: ControllerContext) -> NamespaceController:
    namespaces = ctx.informers.get(NAMESPACES)
    controller = NamespaceController(ctx.client, namespaces, resync_period=ctx.options.resync_period)
    namespaces.add_handlers(Handlers(on_change=controller.namespace_changed))
    return controller
