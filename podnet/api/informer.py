"""A list -> watch -> relist cache of one resource, with level-triggered handlers.

The loop (client-go's Reflector, simplified): list every page at one resourceVersion, replace the
cache, then watch from that version.  A watch that ends normally (timeoutSeconds) is reopened from
the last version seen (BOOKMARKs keep it fresh).  A 410 Expired relists at once; any other error
(API server restarted, stream cut, 5xx) relists after an exponential backoff.

A relist replaces the cache and emits the DIFF against it — added, modified (resourceVersion
changed) and deleted keys — so handlers never miss a change that happened during a gap (flannel's
snapshot-reset idiom).  Handlers run on the informer's thread after the cache is updated and must
only record work (mark a key dirty, Runner.request()); the cache is the state they read later.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from podnet.api.client import ApiError, Resource, WatchEvent

__all__ = ["DirtyKeys", "Handlers", "Informer", "ListWatcher", "object_key"]

log = logging.getLogger(__name__)

Obj = dict[str, Any]
Objs = list[Obj]  # an alias: inside Informer, `list` is the method
HandlerList = list["Handlers"]


class _Stream(Protocol):
    def __iter__(self) -> Iterator[WatchEvent]: ...

    def close(self) -> None: ...


class ListWatcher(Protocol):
    """The part of podnet.api.client.Client an informer uses (unit tests fake this seam)."""

    def list_all(self, res: Resource, namespace: str | None = None, *, label_selector: str | None = None,
                 field_selector: str | None = None, limit: int = 500) -> tuple[list[Obj], str]: ...

    def watch(self, res: Resource, namespace: str | None = None, *, resource_version: str | None = None,
              label_selector: str | None = None, field_selector: str | None = None,
              timeout_seconds: int | None = None, allow_bookmarks: bool = True,
              read_timeout: float | None = None) -> _Stream: ...


def object_key(obj: Mapping[str, Any]) -> str:
    """client-go's MetaNamespaceKeyFunc: "namespace/name", or "name" when cluster-scoped."""
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{ns}/{meta['name']}" if ns else str(meta["name"])


def _rv(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))


@dataclass
class Handlers:
    on_add: Callable[[Obj], None] | None = None
    on_update: Callable[[Obj, Obj], None] | None = None  # (old, new); old is new on a periodic resync
    on_delete: Callable[[Obj], None] | None = None
    on_change: Callable[[str], None] | None = None  # the key, for any of the three (level-triggered)


class DirtyKeys:
    """A thread-safe set of keys to reconcile; `handlers(runner)` marks keys and wakes a Runner."""

    def __init__(self) -> None:
        self._keys: set[str] = set()
        self._lock = threading.Lock()

    def mark(self, key: str) -> None:
        with self._lock:
            self._keys.add(key)

    def take(self) -> set[str]:
        with self._lock:
            keys, self._keys = self._keys, set()
            return keys

    def handlers(self, wake: Callable[[], None] | None = None) -> Handlers:
        def changed(key: str) -> None:
            self.mark(key)
            if wake is not None:
                wake()
        return Handlers(on_change=changed)


class Informer:
    """Keeps a cache of `res` (optionally one namespace / selectors) in sync with the API server."""

    def __init__(self, client: ListWatcher, res: Resource, *, namespace: str | None = None,
                 label_selector: str | None = None, field_selector: str | None = None,
                 handlers: Handlers | None = None,
                 indexers: Mapping[str, Callable[[Obj], Iterable[str]]] | None = None,
                 resync_period: float = 0.0, page_size: int = 500,
                 watch_timeout: tuple[int, int] = (300, 600),
                 backoff_initial: float = 0.5, backoff_max: float = 30.0, name: str | None = None) -> None:
        self.client, self.res, self.namespace = client, res, namespace
        self.label_selector, self.field_selector = label_selector, field_selector
        self.handlers = handlers or Handlers()
        self.extra_handlers: HandlerList = []  # shared informers: one set per consumer
        self.indexers = dict(indexers or {})
        self.resync_period, self.page_size, self.watch_timeout = resync_period, page_size, watch_timeout
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.name = name or f"informer-{res.plural}"
        self._lock = threading.RLock()
        self._items: dict[str, Obj] = {}
        self._index: dict[str, dict[str, set[str]]] = {n: {} for n in self.indexers}
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._stream: _Stream | None = None
        self._thread: threading.Thread | None = None
        self.resource_version = ""
        self.relists = 0  # how many lists ran (1 + every relist); for tests and metrics
        self._expired_streak = 0  # 410s in a row without a watch event in between
        self._wait = self._stop.wait  # injectable: tests replace it to skip real sleeps

    # ------------------------------------------------------------------ reading the cache (any thread)
    def has_synced(self) -> bool:
        """True once the first full list is in the cache (never program from a partial cache)."""
        return self._synced.is_set()

    def wait_for_sync(self, timeout: float | None = None) -> bool:
        return self._synced.wait(timeout)

    def get(self, key: str) -> Obj | None:
        with self._lock:
            return self._items.get(key)

    def get_by_name(self, name: str, namespace: str | None = None) -> Obj | None:
        return self.get(f"{namespace}/{name}" if namespace else name)

    def keys(self) -> set[str]:
        with self._lock:
            return set(self._items)

    def list(self) -> Objs:
        with self._lock:
            return [*self._items.values()]

    def snapshot(self) -> dict[str, Obj]:
        """A consistent copy of key -> object (objects are shared: treat them as read-only)."""
        with self._lock:
            return dict(self._items)

    def by_index(self, index: str, value: str) -> Objs:
        with self._lock:
            return [self._items[k] for k in sorted(self._index[index].get(value, ()))]

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Informer:
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop the loop: wakes backoff sleeps and closes an open watch stream."""
        self._stop.set()
        stream = self._stream
        if stream is not None:
            stream.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def run(self) -> None:
        """The loop: relist, then watch until an error; back off on errors other than 410."""
        failures = 0
        next_resync = self._clock_now() + self.resync_period if self.resync_period else None
        while not self._stop.is_set():
            try:
                self._relist()
                failures = 0
                next_resync = self._watch_until_gap(next_resync)
                continue  # it returns only after stop()
            except ApiError as e:
                self._expired_streak = self._expired_streak + 1 if e.expired else 0
                if self._expired_streak == 1:
                    log.info("%s: %s; relisting", self.name, e)
                    continue
                # a second 410 with no progress in between, or another error: do not spin
                failures += 1
                log.warning("%s: %s; relisting after backoff", self.name, e)
            except Exception as e:  # any stream/transport failure means a relist
                if self._stop.is_set():
                    return
                failures += 1
                log.warning("%s: %s: %s; relisting after backoff", self.name, type(e).__name__, e)
            self._wait(self._backoff(failures))

    def _backoff(self, failures: int) -> float:
        delay = min(self.backoff_max, self.backoff_initial * 2 ** max(0, failures - 1))
        return delay * random.uniform(0.8, 1.2)  # jitter: many informers must not relist in step

    # ------------------------------------------------------------------ list / watch
    def _relist(self) -> None:
        items, rv = self.client.list_all(self.res, self.namespace, label_selector=self.label_selector,
                                         field_selector=self.field_selector, limit=self.page_size)
        self.relists += 1
        self.replace(items, rv)

    def _watch_until_gap(self, next_resync: float | None) -> float | None:
        """Watch from the cache's version until the stream breaks (raises) or stop(); a stream the
        server ended normally is simply reopened from the last version seen."""
        while not self._stop.is_set():
            stream = self.client.watch(
                self.res, self.namespace, resource_version=self.resource_version,
                label_selector=self.label_selector, field_selector=self.field_selector,
                timeout_seconds=random.randint(*self.watch_timeout), allow_bookmarks=True)
            self._stream = stream
            if self._stop.is_set():  # stop() ran before the assignment and could not close it
                stream.close()
            try:
                for event in stream:
                    if self._stop.is_set():
                        break
                    self.apply_event(event)
                    self._expired_streak = 0
                    next_resync = self._maybe_resync(next_resync)
            finally:
                self._stream = None
                stream.close()
            self._expired_streak = 0  # the server ended the stream normally: that is progress
            next_resync = self._maybe_resync(next_resync)
        return next_resync

    def _clock_now(self) -> float:
        return time.monotonic()

    def _maybe_resync(self, next_resync: float | None) -> float | None:
        if next_resync is None or self._clock_now() < next_resync:
            return next_resync
        self.resync()
        return self._clock_now() + self.resync_period

    # ------------------------------------------------------------------ cache updates (informer thread)
    def replace(self, items: Iterable[Obj], resource_version: str) -> None:
        """Install a full list and emit its diff against the cache (all ADDED on the first list)."""
        fresh = {object_key(o): o for o in items}
        with self._lock:
            old = self._items
            self._items = fresh
            self._index = {n: {} for n in self.indexers}
            for key, obj in fresh.items():
                self._index_add(key, obj)
            self.resource_version = resource_version
        self._synced.set()
        for key, obj in fresh.items():
            prev = old.get(key)
            if prev is None:
                self._emit_add(key, obj)
            elif _rv(prev) != _rv(obj):
                self._emit_update(key, prev, obj)
        for key, prev in old.items():
            if key not in fresh:
                self._emit_delete(key, prev)

    def apply_event(self, event: WatchEvent) -> None:
        """One watch event into the cache, then the handler."""
        rv = _rv(event.object)
        if event.type == "BOOKMARK":
            if rv:
                self.resource_version = rv
            return
        key = object_key(event.object)
        with self._lock:
            prev = self._items.get(key)
            if prev is not None:
                self._index_remove(key, prev)
            if event.type == "DELETED":
                self._items.pop(key, None)
            else:
                self._items[key] = event.object
                self._index_add(key, event.object)
            if rv:
                self.resource_version = rv
        if event.type == "DELETED":
            if prev is not None:
                self._emit_delete(key, event.object)
        elif prev is None:
            self._emit_add(key, event.object)
        else:
            self._emit_update(key, prev, event.object)

    def resync(self) -> None:
        """Periodic resync: every cached object goes to on_update(obj, obj) / on_change(key)."""
        for key, obj in self.snapshot().items():
            self._emit_update(key, obj, obj)

    def _index_add(self, key: str, obj: Obj) -> None:
        for name, fn in self.indexers.items():
            for value in fn(obj):
                self._index[name].setdefault(value, set()).add(key)

    def _index_remove(self, key: str, obj: Obj) -> None:
        for name, fn in self.indexers.items():
            for value in fn(obj):
                keys = self._index[name].get(value)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del self._index[name][value]

    # ------------------------------------------------------------------ handlers
    def add_handlers(self, handlers: Handlers) -> None:
        """Another consumer of this (shared) informer; add before start() so it sees the first list."""
        self.extra_handlers.append(handlers)

    def _all_handlers(self) -> HandlerList:
        return [self.handlers, *self.extra_handlers]

    def _emit_add(self, key: str, obj: Obj) -> None:
        for h in self._all_handlers():
            self._call(h.on_add, obj)
            self._call(h.on_change, key)

    def _emit_update(self, key: str, old: Obj, new: Obj) -> None:
        for h in self._all_handlers():
            self._call(h.on_update, old, new)
            self._call(h.on_change, key)

    def _emit_delete(self, key: str, obj: Obj) -> None:
        for h in self._all_handlers():
            self._call(h.on_delete, obj)
            self._call(h.on_change, key)

    def _call(self, fn: Callable[..., None] | None, *args: Any) -> None:
        """A failing handler is logged and must not stop the informer (the cache stays right)."""
        if fn is None:
            return
        try:
            fn(*args)
        except Exception:
            log.exception("%s: handler %r failed", self.name, fn)


def wait_for_all(informers: Sequence[Informer], stop: threading.Event) -> bool:
    """Block until every informer has synced (False if `stop` is set first).

    Daemons must never act on a partial cache: a pod missing from it is created twice by a
    controller, or overfills a node in the scheduler."""
    for informer in informers:
        while not informer.wait_for_sync(0.5):
            if stop.is_set():
                return False
    return True
