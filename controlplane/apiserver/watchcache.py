"""The watch cache: ONE store watch per resource prefix, fanned out to any number of watchers.

A thread iterates the store watch (the store is synchronous) and hands each batch to the event
loop, where the cache applies it: current objects by key, a ring buffer of recent events and every
watcher's queue are only touched on the loop thread, so a watcher registered there sees a gap-free
sequence (replay from the buffer, then live events). This is kube-apiserver's cacher: watchers
never open their own etcd watch, and a resourceVersion older than the buffer gets 410 Expired
("too old resource version: R (S)", upstream cacher wording).

When the store watch fails the cache first resumes from the last revision it applied (exact: etcd
keeps history until compaction). If that revision was compacted it re-lists and diffs the listing
against the cache to emit the missed ADDED/MODIFIED/DELETED events, so watchers see no loss and no
duplicates either way.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import json
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from podnet.store.base import Compacted, Event, KeyValue, Store, StoreError

log = logging.getLogger(__name__)

Decoder = Callable[[bytes, int], dict[str, Any]]


def decode_object(value: bytes, revision: int) -> dict[str, Any]:
    """A stored object with metadata.resourceVersion set to `revision` (upstream never stores it)."""
    obj: dict[str, Any] = json.loads(value)
    obj.setdefault("metadata", {})["resourceVersion"] = str(revision)
    return obj


@dataclass(frozen=True)
class CacheEvent:
    type: str  # ADDED | MODIFIED | DELETED
    key: str
    object: dict[str, Any]  # shared between watchers: never mutate
    revision: int
    prev_object: dict[str, Any] | None = None


class Expired(Exception):
    """The requested resourceVersion is older than the cache's history (410 Expired)."""

    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"too old resource version: {requested} ({oldest})")
        self.requested = requested
        self.oldest = oldest


class CacheWatcher:
    """One client's view: an async iterator of CacheEvents with revision > its start revision."""

    def __init__(self, cache: WatchCache, start_revision: int, max_queue: int) -> None:
        self._cache = cache
        self.start_revision = start_revision
        self.last_revision = start_revision  # of the last event handed to the client
        self._queue: asyncio.Queue[CacheEvent | None] = asyncio.Queue()
        self._max_queue = max_queue
        self.closed = False
        self.overflowed = False

    def _deliver(self, event: CacheEvent) -> None:
        if self.closed or event.revision <= self.start_revision:
            return
        if self._queue.qsize() >= self._max_queue:
            # Upstream terminates watchers that cannot keep up; the client re-watches from its
            # last resourceVersion.
            self.overflowed = True
            self.close()
            return
        self._queue.put_nowait(event)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._queue.put_nowait(None)
            self._cache._watchers.discard(self)

    def __aiter__(self) -> AsyncIterator[CacheEvent]:
        return self

    async def __anext__(self) -> CacheEvent:
        if self.closed and self._queue.empty():
            raise StopAsyncIteration
        event = await self._queue.get()
        if event is None:
            raise StopAsyncIteration
        self.last_revision = event.revision
        return event

    async def next_event(self, timeout: float) -> CacheEvent | None:
        """The next event, or None after `timeout` seconds without one (time for a BOOKMARK)."""
        try:
            return await asyncio.wait_for(self.__anext__(), timeout)
        except TimeoutError:
            return None

    @property
    def bookmark_revision(self) -> int:
        """The resourceVersion a BOOKMARK may carry now: everything up to it was delivered."""
        if self._queue.empty():
            return max(self.last_revision, self._cache.revision)
        return self.last_revision


class WatchCache:
    """Objects under `prefix`, kept current by one store watch; see the module docstring."""

    def __init__(self, store: Store, prefix: str, *, capacity: int = 10_000,
                 decode: Decoder = decode_object, max_queue: int = 100_000,
                 retry_interval: float = 0.5) -> None:
        self.store = store
        self.prefix = prefix
        self.capacity = capacity
        self.decode = decode
        self.max_queue = max_queue
        self.retry_interval = retry_interval
        self.objects: dict[str, dict[str, Any]] = {}
        self.revision = 0  # the store revision the cache reflects
        self.window_start = 0  # the buffer holds every event with revision > window_start
        self._events: deque[CacheEvent] = deque()
        self._watchers: set[CacheWatcher] = set()
        self._synced = asyncio.Event()
        self._stopped = threading.Event()
        self._stream: Any = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.relists = 0  # how often a compacted gap forced a re-list (for tests and metrics)
        self.store_watches = 0  # how many store watches were opened over the cache's life

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the list+watch thread; returns at once (see wait_synced / has_synced)."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name=f"watchcache {self.prefix}", daemon=True)
        self._thread.start()

    async def wait_synced(self, timeout: float | None = None) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._synced.wait(), timeout)
        return self.has_synced

    @property
    def has_synced(self) -> bool:
        return self._synced.is_set()

    async def stop(self) -> None:
        self._stopped.set()
        stream = self._stream
        if stream is not None:
            stream.cancel()
        for watcher in list(self._watchers):
            watcher.close()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5)

    # -- watchers ---------------------------------------------------------------------------
    def watch(self, from_revision: int | None) -> CacheWatcher:
        """A watcher for events after from_revision; None = synthetic ADDED of the current state.

        Must be called on the loop thread (it is synchronous so registration and replay are atomic).
        """
        if from_revision is None:
            watcher = CacheWatcher(self, 0, self.max_queue)
            for key in sorted(self.objects):
                obj = self.objects[key]
                watcher._queue.put_nowait(CacheEvent("ADDED", key, obj, _rv(obj)))
            watcher.start_revision = watcher.last_revision = self.revision
        else:
            watcher = CacheWatcher(self, from_revision, self.max_queue)
            for event in self._replay(from_revision):
                watcher._queue.put_nowait(event)
        self._watchers.add(watcher)
        return watcher

    def watch_from_list(self, items: list[KeyValue], revision: int) -> CacheWatcher:
        """Synthetic ADDED for a consistent store listing at `revision`, then events after it.

        Used for resourceVersion "" (a quorum read, as upstream): events the cache has not applied
        yet and that the listing already reflects are skipped by revision.
        """
        watcher = CacheWatcher(self, 0, self.max_queue)
        for kv in items:
            watcher._queue.put_nowait(
                CacheEvent("ADDED", kv.key, self.decode(kv.value, kv.mod_revision), kv.mod_revision))
        watcher.start_revision = watcher.last_revision = revision
        if revision < self.revision:
            for event in self._replay(revision):
                watcher._queue.put_nowait(event)
        self._watchers.add(watcher)
        return watcher

    def _replay(self, from_revision: int) -> list[CacheEvent]:
        if from_revision >= self.revision:
            return []  # nothing newer applied yet; live events are filtered by revision
        if from_revision < self.window_start:
            raise Expired(from_revision, self.window_start)
        i = bisect.bisect_right(self._events, from_revision, key=lambda e: e.revision)
        return list(itertools.islice(self._events, i, None))

    @property
    def watcher_count(self) -> int:
        return len(self._watchers)

    def snapshot(self) -> tuple[list[dict[str, Any]], int]:
        """The current objects sorted by key and the revision they reflect (for RV=0 lists)."""
        return [self.objects[k] for k in sorted(self.objects)], self.revision

    # -- the store side (runs on the cache's thread) ----------------------------------------
    def _run(self) -> None:
        applied = 0  # the last revision handed to the loop
        relist = True
        while not self._stopped.is_set():
            try:
                if relist:
                    items, revision = self._list_all()
                    if not self._post(self._apply_list, items, revision):
                        return
                    applied, relist = revision, False
                applied = self._follow(applied)
            except Compacted:
                log.info("watch cache %s: revision %d compacted, re-listing", self.prefix, applied + 1)
                relist = True
            except StoreError as err:
                log.warning("watch cache %s: store watch failed (%s), resuming", self.prefix, err)
                self._stopped.wait(self.retry_interval)
            except Exception:  # a bug must not silently freeze the cache: log, re-list, go on
                log.exception("watch cache %s: unexpected failure, re-listing", self.prefix)
                relist = True
                self._stopped.wait(self.retry_interval)

    def _follow(self, applied: int) -> int:
        """Follow the store watch from applied+1 until it fails or the cache stops."""
        stream = self.store.watch(self.prefix, applied + 1)
        self._stream = stream
        self.store_watches += 1
        if self._stopped.is_set():
            stream.cancel()
            return applied
        for batch in stream:
            if not self._post(self._apply_batch, batch):
                break
            applied = batch[-1].kv.mod_revision
        return applied

    def _list_all(self, page: int = 1000) -> tuple[list[KeyValue], int]:
        """Every key under the prefix, read page by page at one revision."""
        items, revision, more = self.store.list(self.prefix, limit=page)
        while more:
            chunk, _, more = self.store.list(self.prefix, limit=page, start_key=items[-1].key + "\0",
                                             revision=revision)
            items.extend(chunk)
        return items, revision

    def _post(self, fn: Callable[..., None], *args: Any) -> bool:
        loop = self._loop
        if loop is None or loop.is_closed():
            return False
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop closed under us
            return False
        return True

    # -- the loop side ----------------------------------------------------------------------
    def _apply_list(self, items: list[KeyValue], revision: int) -> None:
        fresh = {kv.key: kv for kv in items}
        if not self.has_synced:
            self.objects = {k: self.decode(kv.value, kv.mod_revision) for k, kv in fresh.items()}
            self.revision = self.window_start = revision
            self._synced.set()
            return
        self.relists += 1
        for event in self._diff(fresh, revision):
            self._record(event)
        self.revision = max(self.revision, revision)

    def _diff(self, fresh: dict[str, KeyValue], revision: int) -> list[CacheEvent]:
        """The events that turn the cached state into the listing at `revision`.

        Every event gets its own revision, so a watcher that resumes from any of them misses
        nothing and sees nothing twice: ADDED/MODIFIED carry the object's mod_revision; each
        DELETED takes a revision in the gap (cache revision, listing revision] that no other event
        uses, largest first. There are always enough: each key deleted in the gap had its own
        delete revision there, distinct from the surviving objects' mod_revisions.
        """
        events: list[CacheEvent] = []
        for key, kv in fresh.items():
            old = self.objects.get(key)
            if old is not None and _rv(old) == kv.mod_revision:
                continue
            obj = self.decode(kv.value, kv.mod_revision)
            events.append(CacheEvent("MODIFIED" if old else "ADDED", key, obj, kv.mod_revision, old))
        used = {e.revision for e in events}
        free = (r for r in range(revision, self.revision, -1) if r not in used)
        gone = sorted(key for key in self.objects if key not in fresh)
        for key, rev in zip(gone, itertools.chain(free, itertools.repeat(revision)), strict=False):
            old = self.objects[key]
            events.append(CacheEvent("DELETED", key, _with_rv(old, rev), rev, old))
        events.sort(key=lambda e: (e.revision, e.key))
        return events

    def _apply_batch(self, batch: list[Event]) -> None:
        for ev in batch:
            rev = ev.kv.mod_revision
            if rev <= self.revision:
                continue  # already reflected (a re-list raced ahead of this batch)
            event = self._cache_event(ev)
            if event is not None:
                self._record(event)
            self.revision = max(self.revision, rev)

    def _cache_event(self, ev: Event) -> CacheEvent | None:
        key, rev = ev.kv.key, ev.kv.mod_revision
        old = self.objects.get(key)
        if ev.type == "PUT":
            obj = self.decode(ev.kv.value, rev)
            return CacheEvent("MODIFIED" if old is not None else "ADDED", key, obj, rev, old)
        if old is None and ev.prev_kv is not None:
            old = self.decode(ev.prev_kv.value, ev.prev_kv.mod_revision)
        if old is None:
            return None
        return CacheEvent("DELETED", key, _with_rv(old, rev), rev, old)

    def _record(self, event: CacheEvent) -> None:
        if event.type == "DELETED":
            self.objects.pop(event.key, None)
        else:
            self.objects[event.key] = event.object
        self._events.append(event)
        if len(self._events) > self.capacity:
            self.window_start = self._events.popleft().revision
        for watcher in list(self._watchers):
            watcher._deliver(event)


def _rv(obj: dict[str, Any]) -> int:
    return int(obj.get("metadata", {}).get("resourceVersion") or 0)


def _with_rv(obj: dict[str, Any], revision: int) -> dict[str, Any]:
    """A copy of obj whose metadata.resourceVersion is `revision` (DELETED events carry the delete RV)."""
    out = dict(obj)
    out["metadata"] = {**obj.get("metadata", {}), "resourceVersion": str(revision)}
    return out
