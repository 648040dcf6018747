"""Object semantics on a Store: what kube-apiserver's generic registry does around etcd.

Objects are stored as JSON under `<prefix>/<group or "core">/<plural>/[<namespace>/]<name>` without
`metadata.resourceVersion`; on the way out it is set from the key's etcd mod_revision (upstream's
etcd3 store does the same). Creates and updates are single conditional writes (create-if-absent,
update-if-mod_revision-unchanged), so concurrent writers get exactly one winner per resourceVersion.
Reads of single objects and lists go to the store (consistent); watches are served from one
WatchCache per resource (reference proxy_apiserver.md B2, B3).

The store is synchronous; every call runs in a worker thread (asyncio.to_thread).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextvars
import copy
import functools
import inspect
import json
import logging
import secrets
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from controlplane.apiserver import errors, resources
from controlplane.apiserver.resources import Resource
from controlplane.apiserver.watchcache import CacheEvent, CacheWatcher, Expired, WatchCache, decode_object
from podnet.store.base import (
    AlreadyExists,
    Compacted,
    Conflict,
    KeyValue,
    NotFound,
    Store,
    StoreError,
    StoreUnavailable,
)

log = logging.getLogger(__name__)

JsonObj = dict[str, Any]
T = TypeVar("T")
Hook = Callable[..., Any]  # admit(res, obj, old) / on_delete(res, obj); sync or async
_Objs = list[JsonObj]
_Page = tuple[list[JsonObj], int, str]  # (items, revision, continue token); `list` is a method below
Mutate = Callable[[JsonObj], JsonObj | Awaitable[JsonObj]]

DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
# upstream utilrand.String: lowercase alphanumerics without vowels and easily confused characters
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
GENERATE_ATTEMPTS = 8
UPDATE_ATTEMPTS = 32
DEFAULT_POD_GRACE = 30
CREATE_ON_UPDATE = frozenset({"endpoints", "events", "leases", "endpointslices", "roles", "rolebindings",
                              "clusterroles", "clusterrolebindings"})
# kube-apiserver --etcd-compaction-interval default: history older than one interval is dropped
COMPACTION_INTERVAL = 300.0
CONTINUE_EXPIRED = (
    "The provided continue parameter is too old to display a consistent list result. You can start "
    "a new list without the continue parameter, or use the continue token in this response to "
    "retrieve the remainder of the results. Continuing with the provided token results in an "
    "inconsistent list - objects that were created, modified, or deleted between the time the first "
    "chunk was returned and now may show up in the list."
)


def now_rfc3339(delta: float = 0.0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=delta)).strftime("%Y-%m-%dT%H:%M:%SZ")


def generate_name(base: str) -> str:
    return base + "".join(secrets.choice(_NAME_ALPHABET) for _ in range(5))


def encode_object(obj: JsonObj) -> bytes:
    """The stored form: compact JSON without metadata.resourceVersion."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "resourceVersion"}
    return json.dumps({**obj, "metadata": meta}, separators=(",", ":")).encode()


def decode_kv(kv: KeyValue) -> JsonObj:
    return decode_object(kv.value, kv.mod_revision)


def _meta(obj: JsonObj) -> JsonObj:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        meta = obj["metadata"] = {}
    return meta


def _spec_part(obj: JsonObj) -> JsonObj:
    """Everything generation tracks: the object minus metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "kind", "apiVersion")}


def _same_content(a: JsonObj, b: JsonObj) -> bool:
    """Equal apart from resourceVersion (dict comparison: key order does not matter)."""
    def strip(o: JsonObj) -> JsonObj:
        return {**o, "metadata": {k: v for k, v in (o.get("metadata") or {}).items()
                                  if k != "resourceVersion"}}
    return strip(a) == strip(b)


ORPHAN_FINALIZER = "orphan"  # metav1.FinalizerOrphanDependents
FOREGROUND_FINALIZER = "foregroundDeletion"  # metav1.FinalizerDeleteDependents
_GC_FINALIZERS = (ORPHAN_FINALIZER, FOREGROUND_FINALIZER)
_POLICY_FINALIZER = {"Orphan": ORPHAN_FINALIZER, "Foreground": FOREGROUND_FINALIZER, "Background": None}


def deletion_finalizers(finalizers: list[str], policy: str | None) -> list[str]:
    """metadata.finalizers after a DELETE with propagationPolicy `policy` (upstream
    deletionFinalizersForGarbageCollection): Orphan -> "orphan", Foreground -> "foregroundDeletion",
    Background -> neither; no policy keeps the one already there (the first one wins), and the default
    policy of every kind served here is Background.  Unchanged as a set -> the list as it was."""
    existing = next((f for f in finalizers if f in _GC_FINALIZERS), None)
    wanted = _POLICY_FINALIZER.get(policy or "", existing)
    new = [f for f in finalizers if f not in _GC_FINALIZERS] + ([wanted] if wanted else [])
    return list(finalizers) if set(new) == set(finalizers) else new


def _pending_graceful(meta: JsonObj, grace: int | None) -> bool:
    """A graceful deletion is running and this DELETE does not shorten it (upstream BeforeDelete)."""
    running = int(meta.get("deletionGracePeriodSeconds") or 0)
    return bool(meta.get("deletionTimestamp")) and running > 0 and (grace is None or grace >= running)


def _deletion_complete(res: Resource, obj: JsonObj) -> bool:
    """An update leaves nothing to wait for (upstream ShouldDeleteDuringUpdate): being deleted, no
    finalizers, no grace period running (a bound pod waits for its kubelet) and, for a namespace,
    spec.finalizers emptied through /finalize."""
    meta = obj.get("metadata") or {}
    if not meta.get("deletionTimestamp") or meta.get("finalizers"):
        return False
    if int(meta.get("deletionGracePeriodSeconds") or 0) != 0:
        return False
    return res.plural != "namespaces" or not (obj.get("spec") or {}).get("finalizers")


async def _maybe_await(value: T | Awaitable[T]) -> T:
    if inspect.isawaitable(value):
        return await value
    return value


def _store_error(err: StoreUnavailable) -> errors.ApiError:
    if err.timeout:
        return errors.timeout(f"etcd did not answer in time: {err}")
    return errors.service_unavailable(f"etcd is unavailable: {err}")


def encode_continue(revision: int, start: str) -> str:
    token = {"v": "meta.k8s.io/v1", "rv": revision, "start": start}
    return base64.urlsafe_b64encode(json.dumps(token, separators=(",", ":")).encode()).decode()


def decode_continue(token: str) -> tuple[int, str]:
    """(revision, start key relative to the list prefix); 400 BadRequest when malformed."""
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode() + b"=" * (-len(token) % 4)))
        revision, start = int(data["rv"]), str(data["start"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise errors.bad_request(f"continue key is not valid: {token!r}") from None
    if revision <= 0 or start.startswith("/") or ".." in start.split("/"):
        raise errors.bad_request("continue key is not valid: invalid start key")
    return revision, start


class Registry:
    def __init__(self, store: Store, *, prefix: str = "/registry", admit: Hook | None = None,
                 on_delete: Hook | None = None, cache_capacity: int = 10_000,
                 compaction_interval: float = COMPACTION_INTERVAL, store_threads: int = 32) -> None:
        self.store = store
        self.prefix = prefix.rstrip("/")
        self.admit = admit
        self.on_delete = on_delete
        self.cache_capacity = cache_capacity
        self.caches: dict[str, WatchCache] = {}
        self.compaction_interval = compaction_interval
        self._compactor: asyncio.Task[None] | None = None
        # Store calls block a thread for an etcd round trip (fsync on writes); the default executor
        # (cores + 4 threads) would serialise concurrent requests behind a few slow writes.
        self.store_threads = store_threads
        self._executor: ThreadPoolExecutor | None = None

    # -- keys and store calls ---------------------------------------------------------------
    def resource_prefix(self, res: Resource) -> str:
        return f"{self.prefix}/{res.group or 'core'}/{res.plural}/"

    def key(self, res: Resource, namespace: str, name: str) -> str:
        if res.namespaced:
            return f"{self.resource_prefix(res)}{namespace}/{name}"
        return f"{self.resource_prefix(res)}{name}"

    def list_prefix(self, res: Resource, namespace: str) -> str:
        if res.namespaced and namespace:
            return f"{self.resource_prefix(res)}{namespace}/"
        return self.resource_prefix(res)

    async def _store(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a store call in a thread; an unreachable etcd becomes 503 (504 on timeout)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.store_threads, thread_name_prefix="registry-store")
        ctx = contextvars.copy_context()
        call = functools.partial(ctx.run, fn, *args, **kwargs)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, call)
        except StoreUnavailable as err:
            raise _store_error(err) from None

    async def _hook(self, hook: Hook | None, *args: Any) -> None:
        if hook is not None:
            await _maybe_await(hook(*args))

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self, sync_timeout: float = 30.0) -> None:
        """Start a watch cache for every watchable resource and create the default namespaces.

        Idempotent: __main__ calls it again after a failure (e.g. etcd not up yet).
        """
        for res in resources.RESOURCES:
            if res.has_verb("watch") and self.resource_prefix(res) not in self.caches:
                cache = WatchCache(self.store, self.resource_prefix(res), capacity=self.cache_capacity)
                self.caches[self.resource_prefix(res)] = cache
                await cache.start()
        for name in DEFAULT_NAMESPACES:
            await self._ensure_namespace(name)
        for cache in self.caches.values():
            if not await cache.wait_synced(sync_timeout):
                raise errors.service_unavailable(f"watch cache {cache.prefix} not synced")
        if self.compaction_interval > 0 and self._compactor is None:
            self._compactor = asyncio.create_task(self._compact_periodically())

    async def _compact_periodically(self) -> None:
        """Compact etcd to the revision seen one interval ago (upstream storage/etcd3/compact.go), so
        clients keep at least one interval of history to resume watches from."""
        previous = compacted = 0
        while True:
            await asyncio.sleep(self.compaction_interval)
            try:
                current = await self._store(self.store.current_revision)
                if previous > compacted:
                    await self._store(self.store.compact, previous)
                    compacted = previous
                previous = current
            except (errors.ApiError, StoreError) as err:
                # Compacted: another API server got there first; unavailable: next round
                log.info("compaction to %d skipped: %s", previous, err)

    async def _ensure_namespace(self, name: str) -> None:
        ns_res = self._namespaces()
        obj = {"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}},
               "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}
        try:
            await self.create(ns_res, "", obj)
        except errors.ApiError as err:
            if err.code != 409:
                raise

    async def stop(self) -> None:
        if self._compactor is not None:
            self._compactor.cancel()
            self._compactor = None
        for cache in self.caches.values():
            await cache.stop()
        self.caches.clear()  # a later start() builds fresh caches
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def cache_for(self, res: Resource) -> WatchCache:
        cache = self.caches.get(self.resource_prefix(res))
        if cache is None:
            raise errors.method_not_allowed("GET", f"watch {res.plural}")
        return cache

    @staticmethod
    def _namespaces() -> Resource:
        res = resources.find("", "v1", "namespaces")
        assert res is not None
        return res

    # -- create -----------------------------------------------------------------------------
    async def create(self, res: Resource, namespace: str, obj: JsonObj, *, dry_run: bool = False
                     ) -> JsonObj:
        obj = copy.deepcopy(obj)
        meta = _meta(obj)
        self._set_namespace(res, namespace, meta)
        if res.namespaced:
            await self._check_namespace_open(res, namespace, meta)
        obj.setdefault("apiVersion", res.api_version)
        obj.setdefault("kind", res.kind)
        base = meta.get("generateName") if not meta.get("name") else None
        if not meta.get("name") and not base:
            raise errors.invalid(res.kind, "", [{
                "reason": "FieldValueRequired", "message": "name or generateName is required",
                "field": "metadata.name"}], res.group)
        self._init_metadata(meta)
        for _ in range(GENERATE_ATTEMPTS):
            if base:
                meta["name"] = generate_name(base)
            await self._hook(self.admit, res, obj, None)
            if dry_run:
                return obj
            try:
                rev = await self._store(self.store.create, self.key(res, namespace, meta["name"]),
                                        encode_object(obj))
            except AlreadyExists:
                if base:
                    continue  # a generated name collided: upstream retries with a new suffix
                raise errors.already_exists(res.plural, meta["name"], res.group) from None
            meta["resourceVersion"] = str(rev)
            return obj
        # upstream (RetryGenerateName): ServerTimeout once the retries are used up
        raise errors.ApiError(500, "ServerTimeout", f"The POST operation against {res.plural} could "
                              "not be completed at this time, please try again.",
                              {"name": "POST", "kind": res.plural, "retryAfterSeconds": 0})

    @staticmethod
    def _set_namespace(res: Resource, namespace: str, meta: JsonObj) -> None:
        if not res.namespaced:
            meta.pop("namespace", None)
            return
        given = meta.get("namespace")
        if given and given != namespace:
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on the request")
        meta["namespace"] = namespace

    @staticmethod
    def _init_metadata(meta: JsonObj) -> None:
        """What the server owns on create (upstream rest.BeforeCreate / FillObjectMetaSystemFields)."""
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        meta["generation"] = 1
        for field in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "selfLink"):
            meta.pop(field, None)

    async def _check_namespace_open(self, res: Resource, namespace: str, meta: JsonObj) -> None:
        """404 for a missing namespace, 403 while it is being deleted (upstream NamespaceLifecycle)."""
        ns_obj = await self._find_namespace(namespace)
        if ns_obj is None:
            raise errors.not_found("namespaces", namespace)
        terminating = (ns_obj.get("metadata", {}).get("deletionTimestamp")
                       or ns_obj.get("status", {}).get("phase") == "Terminating")
        if terminating:
            name = meta.get("name") or meta.get("generateName") or ""
            target = f"{res.plural}.{res.group}" if res.group else res.plural
            raise errors.ApiError(
                403, "Forbidden",
                f'{target} "{name}" is forbidden: unable to create new content in namespace '
                f"{namespace} because it is being terminated",
                {"name": name, "kind": res.plural, **({"group": res.group} if res.group else {})})

    async def _find_namespace(self, namespace: str) -> JsonObj | None:
        # Read from the store, not the namespace watch cache: the cache may lag a namespace that
        # was just created or marked Terminating (upstream NamespaceLifecycle does a live lookup
        # for the same reason).
        kv = await self._store(self.store.get, self.key(self._namespaces(), "", namespace))
        return decode_kv(kv) if kv is not None else None

    # -- reads ------------------------------------------------------------------------------
    async def get(self, res: Resource, namespace: str, name: str) -> JsonObj:
        kv = await self._store(self.store.get, self.key(res, namespace, name))
        if kv is None:
            raise errors.not_found(res.plural, name, res.group)
        return decode_kv(kv)

    async def list(self, res: Resource, namespace: str, *, label_selector: Any = None,
                   field_selector: Any = None, limit: int = 0, continue_token: str | None = None,
                   resource_version: str | None = None) -> JsonObj:
        """The <Kind>List; pages (limit/continue) all read at the first page's revision."""
        prefix = self.list_prefix(res, namespace)

        def matches(obj: JsonObj) -> bool:
            return self._matches(obj, label_selector, field_selector)

        if resource_version == "0" and not continue_token:
            items, revision, more_token = self._list_from_cache(res, prefix, matches)
        else:
            items, revision, more_token = await self._list_from_store(
                prefix, matches, limit, continue_token)
        metadata: JsonObj = {"resourceVersion": str(revision)}
        if more_token:
            metadata["continue"] = more_token
        return {"kind": res.list_kind, "apiVersion": res.api_version, "metadata": metadata,
                "items": items}

    @staticmethod
    def _matches(obj: JsonObj, label_selector: Any, field_selector: Any) -> bool:
        if label_selector is not None and not label_selector.matches(obj.get("metadata", {}).get("labels")
                                                                     or {}):
            return False
        return field_selector is None or field_selector.matches(obj)

    def _list_from_cache(self, res: Resource, prefix: str, matches: Callable[[JsonObj], bool]
                         ) -> _Page:
        # resourceVersion=0 means "any recent state": upstream serves it from the watch cache and
        # ignores limit (kubectl delete --wait lists this way before watching).
        cache = self.caches.get(self.resource_prefix(res))
        if cache is None or not cache.has_synced:
            raise errors.service_unavailable(f"watch cache for {res.plural} is not ready")
        keys = sorted(k for k in cache.objects if k.startswith(prefix))
        return [cache.objects[k] for k in keys if matches(cache.objects[k])], cache.revision, ""

    async def _list_from_store(self, prefix: str, matches: Callable[[JsonObj], bool], limit: int,
                               continue_token: str | None) -> _Page:
        revision, start = 0, prefix
        if continue_token:
            revision, relative = decode_continue(continue_token)
            start = prefix + relative
        items: _Objs = []
        page = max(limit, 500) if limit else 0
        while True:
            try:
                kvs, revision, more = await self._store(
                    self.store.list, prefix, limit=page, start_key=start, revision=revision)
            except Compacted:
                raise errors.expired(CONTINUE_EXPIRED) from None
            for i, kv in enumerate(kvs):
                obj = decode_kv(kv)
                if not matches(obj):
                    continue
                items.append(obj)
                if limit and len(items) == limit:
                    rest = i + 1 < len(kvs) or more
                    token = encode_continue(revision, kv.key[len(prefix):] + "\0") if rest else ""
                    return items, revision, token
            if not more:
                return items, revision, ""
            start = kvs[-1].key + "\0"

    # -- update -----------------------------------------------------------------------------
    async def update(self, res: Resource, namespace: str, name: str, obj: JsonObj, *,
                     subresource: str | None = None, dry_run: bool = False) -> JsonObj:
        """PUT: with metadata.resourceVersion set it is a precondition (409 Conflict if stale)."""
        body = copy.deepcopy(obj)
        try:
            return await self.guaranteed_update(res, namespace, name, lambda _current: copy.deepcopy(body),
                                                subresource=subresource, dry_run=dry_run)
        except errors.ApiError as err:
            # Kinds whose upstream strategy has AllowCreateOnUpdate (client-go and controllers PUT
            # them blindly); never with a resourceVersion precondition or on a subresource.
            if (err.code != 404 or subresource or res.plural not in CREATE_ON_UPDATE
                    or _meta(body).get("resourceVersion")):
                raise
        return await self.create(res, namespace, body, dry_run=dry_run)

    async def guaranteed_update(self, res: Resource, namespace: str, name: str, mutate: Mutate, *,
                                subresource: str | None = None, dry_run: bool = False) -> JsonObj:
        """Read-modify-write, retried when another writer wins the race.

        mutate(current) gets a private copy of the current object and returns the desired one; a
        resourceVersion in the result that differs from the current one is a failed precondition
        (409), so a PUT with a stale resourceVersion fails while PATCH/scale/binding retry.
        """
        key = self.key(res, namespace, name)
        for _ in range(UPDATE_ATTEMPTS):
            kv = await self._store(self.store.get, key)
            if kv is None:
                raise errors.not_found(res.plural, name, res.group)
            current = decode_kv(kv)
            desired = await _maybe_await(mutate(copy.deepcopy(current)))
            wanted_rv = str(_meta(desired).get("resourceVersion") or "")
            if wanted_rv and wanted_rv != str(kv.mod_revision):
                raise errors.stale_update(res.plural, name, res.group)
            try:
                return await self._write_update(res, kv, current, desired, subresource, dry_run)
            except Conflict:
                continue
        raise errors.stale_update(res.plural, name, res.group)

    async def _write_update(self, res: Resource, kv: KeyValue, current: JsonObj, desired: JsonObj,
                            subresource: str | None, dry_run: bool) -> JsonObj:
        new = self._merge_update(res, current, desired, subresource)
        await self._hook(self.admit, res, new, current)
        meta = _meta(new)
        if _deletion_complete(res, new):
            # the last finalizer of an object being deleted is gone: finish the deletion
            if not dry_run:
                rev, _ = await self._store(self.store.delete, kv.key, kv.mod_revision)
                meta["resourceVersion"] = str(rev)
                await self._hook(self.on_delete, res, new)
            return new
        if _same_content(new, current):
            return current  # upstream skips no-op writes: same resourceVersion, no watch event
        if dry_run:
            meta["resourceVersion"] = str(kv.mod_revision)
            return new
        try:
            rev = await self._store(self.store.update, kv.key, encode_object(new), kv.mod_revision)
        except NotFound:
            raise errors.not_found(res.plural, meta.get("name", ""), res.group) from None
        meta["resourceVersion"] = str(rev)
        return new

    @staticmethod
    def _merge_update(res: Resource, current: JsonObj, desired: JsonObj, subresource: str | None
                      ) -> JsonObj:
        """The object to store: status-only for /status, the main resource keeps the stored status;
        server-owned metadata is immutable; generation bumps when anything but metadata/status moves."""
        if subresource == "status":
            new = copy.deepcopy(current)
            if "status" in desired:
                new["status"] = desired["status"]
            else:
                new.pop("status", None)
            return new
        if subresource == "finalize":
            # upstream namespace finalizeStrategy: only spec.finalizers comes from the request
            new = copy.deepcopy(current)
            new.setdefault("spec", {})["finalizers"] = list((desired.get("spec") or {}).get("finalizers")
                                                            or [])
            return new
        new = desired
        if res.plural == "namespaces":
            # upstream namespaceStrategy.PrepareForUpdate: spec.finalizers changes only via /finalize
            finalizers = (current.get("spec") or {}).get("finalizers")
            spec = new.setdefault("spec", {})
            if finalizers is None:
                spec.pop("finalizers", None)
            else:
                spec["finalizers"] = copy.deepcopy(finalizers)
        if res.has_subresource("status"):
            if "status" in current:
                new["status"] = copy.deepcopy(current["status"])
            else:
                new.pop("status", None)
        new["apiVersion"], new["kind"] = current.get("apiVersion", res.api_version), current.get(
            "kind", res.kind)
        meta, old_meta = _meta(new), current.get("metadata", {})
        for field in ("uid", "creationTimestamp", "namespace", "name", "deletionTimestamp",
                      "deletionGracePeriodSeconds", "generation"):
            if field in old_meta:
                meta[field] = old_meta[field]
            else:
                meta.pop(field, None)
        if _spec_part(new) != _spec_part(current):
            meta["generation"] = int(old_meta.get("generation") or 0) + 1
        meta.pop("resourceVersion", None)
        return new

    # -- delete -----------------------------------------------------------------------------
    async def delete(self, res: Resource, namespace: str, name: str, *,
                     grace_period_seconds: int | None = None, propagation_policy: str | None = None,
                     preconditions: JsonObj | None = None, dry_run: bool = False
                     ) -> tuple[JsonObj, bool]:
        """(object, deleted_now).  An object that must wait is only marked (deletionTimestamp) and
        stays until what it waits for is done: its metadata.finalizers (among them the garbage
        collector's "orphan"/"foregroundDeletion", added here from propagationPolicy), a bound pod's
        grace period (the kubelet), a namespace's spec.finalizers (the namespace controller)."""
        key = self.key(res, namespace, name)
        for _ in range(UPDATE_ATTEMPTS):
            kv = await self._store(self.store.get, key)
            if kv is None:
                raise errors.not_found(res.plural, name, res.group)
            obj = decode_kv(kv)
            self._check_preconditions(res, obj, preconditions)
            try:
                return await self._delete_once(res, kv, obj, grace_period_seconds, propagation_policy,
                                               dry_run)
            except (Conflict, NotFound):
                continue  # changed or deleted under us: re-read (404 next round if gone)
        raise errors.stale_update(res.plural, name, res.group)

    async def _delete_once(self, res: Resource, kv: KeyValue, obj: JsonObj, grace: int | None,
                           policy: str | None, dry_run: bool) -> tuple[JsonObj, bool]:
        marked = self._mark_for_deletion(res, obj, grace, policy)
        if marked is not None and not self._ready_to_go(res, marked, grace):
            if not _same_content(marked, obj) and not dry_run:
                rev = await self._store(self.store.update, kv.key, encode_object(marked), kv.mod_revision)
                _meta(marked)["resourceVersion"] = str(rev)
            return marked, False
        if not dry_run:
            await self._store(self.store.delete, kv.key, kv.mod_revision)
            await self._hook(self.on_delete, res, obj)
        return (marked or obj), True

    @staticmethod
    def _check_preconditions(res: Resource, obj: JsonObj, preconditions: JsonObj | None) -> None:
        meta = obj.get("metadata", {})
        for field, label in (("uid", "UID"), ("resourceVersion", "ResourceVersion")):
            want = (preconditions or {}).get(field)
            if want and str(want) != str(meta.get(field)):
                raise errors.conflict(res.plural, meta.get("name", ""),
                                      f"Precondition failed: {label} in precondition: {want}, "
                                      f"{label} in object meta: {meta.get(field)}", res.group)

    def _mark_for_deletion(self, res: Resource, obj: JsonObj, grace: int | None,
                           policy: str | None) -> JsonObj | None:
        """A copy with deletionTimestamp (and the propagation policy's finalizer) set when the object
        cannot go at once, else None."""
        meta = obj.get("metadata", {})
        pod_grace = self._pod_grace(res, obj, grace)
        current = list(meta.get("finalizers") or [])
        # upstream: while a graceful deletion is pending, DeleteOptions cannot change the finalizers
        finalizers = current if _pending_graceful(meta, grace) else deletion_finalizers(current, policy)
        if not finalizers and pod_grace == 0 and res.plural != "namespaces":
            return None
        marked = copy.deepcopy(obj)
        mmeta = _meta(marked)
        if finalizers != current:
            mmeta["finalizers"] = finalizers
            if not finalizers:
                del mmeta["finalizers"]
        if pod_grace and (not mmeta.get("deletionTimestamp")
                          or pod_grace < int(mmeta.get("deletionGracePeriodSeconds") or pod_grace + 1)):
            # upstream: deletionTimestamp = now + grace; a shorter grace period may be applied later
            mmeta["deletionTimestamp"] = now_rfc3339(pod_grace)
            mmeta["deletionGracePeriodSeconds"] = pod_grace
        elif not mmeta.get("deletionTimestamp"):
            mmeta["deletionTimestamp"] = now_rfc3339()
            mmeta["deletionGracePeriodSeconds"] = 0
        if res.plural == "namespaces":
            marked.setdefault("status", {})["phase"] = "Terminating"
        return marked

    @staticmethod
    def _pod_grace(res: Resource, obj: JsonObj, grace: int | None) -> int:
        """Graceful deletion applies to pods bound to a node that have not finished (upstream
        pod strategy CheckGracefulDelete); gracePeriodSeconds=0 forces."""
        if res.plural != "pods":
            return 0
        if grace is not None:
            return max(int(grace), 0)
        if not obj.get("spec", {}).get("nodeName"):
            return 0
        if obj.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            return 0
        spec_grace = obj.get("spec", {}).get("terminationGracePeriodSeconds")
        return int(spec_grace) if spec_grace is not None else DEFAULT_POD_GRACE

    @staticmethod
    def _ready_to_go(res: Resource, marked: JsonObj, grace: int | None) -> bool:
        """Whether an object _mark_for_deletion kept may be removed now."""
        if marked.get("metadata", {}).get("finalizers"):
            return False
        if res.plural == "pods":
            # a pod never scheduled (or forced) goes at once even with a grace period
            return grace == 0 or not marked.get("spec", {}).get("nodeName")
        if res.plural == "namespaces":
            # Upstream: a namespace stays Terminating until the namespace controller has deleted its
            # content and emptied spec.finalizers through /finalize (no shortcut for empty ones:
            # without a controller manager a deleted namespace stays Terminating, as upstream).
            return not (marked.get("spec") or {}).get("finalizers")
        return True

    # -- watch ------------------------------------------------------------------------------
    def watch(self, res: Resource, namespace: str, *, resource_version: str | None = None,
              label_selector: Any = None, field_selector: Any = None) -> AsyncIterator[JsonObj]:
        """{"type", "object"} events from the resource's watch cache.

        resourceVersion "" is a consistent start (a store listing, then changes), "0" starts from
        the cache's state, N replays what happened after N (410 Expired if the cache no longer
        has it). Errors raised at call time: 400 for a malformed resourceVersion, 410 when the
        cache already knows N is too old; later ones surface from the iterator.
        """
        cache = self.cache_for(res)
        start = self._parse_rv(resource_version)
        watcher = None
        if resource_version and cache.has_synced:
            # Register now, so events from the moment of the call on are delivered even if the
            # caller iterates later; "" needs a store read first and registers when iterated.
            try:
                watcher = cache.watch(start)
            except Expired as err:
                raise errors.expired(str(err)) from None
        return self._watch_events(res, cache, self.list_prefix(res, namespace), resource_version or "",
                                  start, watcher, label_selector, field_selector)

    @staticmethod
    def _parse_rv(resource_version: str | None) -> int | None:
        if resource_version in (None, "", "0"):
            return None
        try:
            rv = int(str(resource_version))
        except ValueError:
            raise errors.bad_request(f'invalid resource version "{resource_version}"') from None
        if rv < 0:
            raise errors.bad_request(f'invalid resource version "{resource_version}"')
        return rv

    async def _watch_events(self, res: Resource, cache: WatchCache, prefix: str, rv: str,
                            start: int | None, watcher: CacheWatcher | None, label_selector: Any,
                            field_selector: Any) -> AsyncIterator[JsonObj]:
        if watcher is None:
            watcher = await self._late_watcher(res, cache, prefix, rv, start)
        filtered = label_selector is not None or field_selector is not None
        try:
            async for event in watcher:
                if not event.key.startswith(prefix):
                    continue
                out = self._filter_event(event, label_selector, field_selector) if filtered else \
                    {"type": event.type, "object": event.object}
                if out is not None:
                    yield out
        finally:
            watcher.close()

    async def _late_watcher(self, res: Resource, cache: WatchCache, prefix: str, rv: str,
                            start: int | None) -> CacheWatcher:
        if not await cache.wait_synced(10):
            raise errors.service_unavailable(f"watch cache for {res.plural} is not ready")
        try:
            if rv == "":
                kvs, revision, _ = await self._store(self.store.list, prefix)
                return cache.watch_from_list(kvs, revision)
            return cache.watch(start)
        except Expired as err:
            raise errors.expired(str(err)) from None

    def _filter_event(self, event: CacheEvent, label_selector: Any, field_selector: Any
                      ) -> JsonObj | None:
        """Selector transitions as upstream's cacheWatcher: leaving the selection is DELETED,
        entering it is ADDED."""
        def ok(obj: JsonObj | None) -> bool:
            return obj is not None and self._matches(obj, label_selector, field_selector)

        if event.type == "DELETED":
            return {"type": "DELETED", "object": event.object} if ok(event.prev_object) else None
        now, before = ok(event.object), ok(event.prev_object)
        if now and before:
            return {"type": "MODIFIED", "object": event.object}
        if now:
            return {"type": "ADDED", "object": event.object}
        if before and event.prev_object is not None:
            gone = dict(event.prev_object)
            gone["metadata"] = {**event.prev_object.get("metadata", {}),
                                "resourceVersion": str(event.revision)}
            return {"type": "DELETED", "object": gone}
        return None
