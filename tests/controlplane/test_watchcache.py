"""Watch cache on the in-memory store: replay, synthetic ADDED, 410, gap recovery, fan-out."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from controlplane.apiserver.watchcache import CacheEvent, CacheWatcher, Expired, WatchCache
from podnet.store.base import StoreUnavailable
from podnet.store.memory import MemoryStore, MemoryWatchStream

P = "/registry/core/pods/"


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 20))


def obj(name: str, **extra: Any) -> bytes:
    return json.dumps({"metadata": {"name": name}, **extra}).encode()


async def started(store: MemoryStore, **kwargs: Any) -> WatchCache:
    kwargs.setdefault("retry_interval", 0.05)
    cache = WatchCache(store, P, **kwargs)
    await cache.start()
    assert await cache.wait_synced(5)
    return cache


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def take(watcher: CacheWatcher, n: int, timeout: float = 5.0) -> list[CacheEvent]:
    return [await asyncio.wait_for(watcher.__anext__(), timeout) for _ in range(n)]


def summary(events: list[CacheEvent]) -> list[tuple[str, str, int]]:
    return [(e.type, e.key.rsplit("/", 1)[1], e.revision) for e in events]


def test_initial_list_and_synthetic_added() -> None:
    async def body() -> None:
        store = MemoryStore()
        r1 = store.create(P + "ns/a", obj("a"))
        r2 = store.create(P + "ns/b", obj("b"))
        store.create("/registry/core/services/ns/x", obj("x"))
        cache = await started(store)
        assert cache.revision == r2 + 1 and set(cache.objects) == {P + "ns/a", P + "ns/b"}
        watcher = cache.watch(None)
        events = await take(watcher, 2)
        assert summary(events) == [("ADDED", "a", r1), ("ADDED", "b", r2)]
        assert events[0].object["metadata"]["resourceVersion"] == str(r1)
        r4 = store.update(P + "ns/a", obj("a", spec={"x": 1}), None)
        assert summary(await take(watcher, 1)) == [("MODIFIED", "a", r4)]
        await cache.stop()

    run(body)


def test_replay_from_revision_then_live() -> None:
    async def body() -> None:
        store = MemoryStore()
        cache = await started(store)
        r1 = store.create(P + "ns/a", obj("a"))
        r2 = store.update(P + "ns/a", obj("a", v=2), None)
        r3, _ = store.delete(P + "ns/a")
        await until(lambda: cache.revision == r3)
        watcher = cache.watch(r1)
        r4 = store.create(P + "ns/b", obj("b"))
        events = await take(watcher, 3)
        assert summary(events) == [("MODIFIED", "a", r2), ("DELETED", "a", r3), ("ADDED", "b", r4)]
        deleted = events[1]
        assert deleted.object["metadata"]["resourceVersion"] == str(r3)  # upstream: the delete RV
        assert deleted.object["v"] == 2
        await cache.stop()

    run(body)


def test_too_old_revision_is_expired() -> None:
    async def body() -> None:
        store = MemoryStore()
        store.create(P + "ns/seed", obj("seed"))
        cache = await started(store, capacity=3)
        start = cache.revision
        cache.watch(start)  # the listing revision itself is served (empty buffer)
        for i in range(5):
            store.create(P + f"ns/p{i}", obj(f"p{i}"))
        await until(lambda: cache.revision == start + 5)
        with pytest.raises(Expired) as err:
            cache.watch(start)
        assert str(err.value) == f"too old resource version: {start} ({cache.window_start})"
        assert summary(await take(cache.watch(cache.window_start), 3))[0][2] == cache.window_start + 1
        await cache.stop()

    run(body)


def test_future_revision_waits_for_newer_events() -> None:
    async def body() -> None:
        store = MemoryStore()
        cache = await started(store)
        watcher = cache.watch(cache.revision + 1)  # e.g. the RV of a list read from etcd just now
        r1 = store.create(P + "ns/a", obj("a"))  # == the revision asked for: not delivered
        r2 = store.create(P + "ns/b", obj("b"))
        assert summary(await take(watcher, 1)) == [("ADDED", "b", r2)]
        assert r1 == r2 - 1
        await cache.stop()

    run(body)


def test_watch_from_consistent_list() -> None:
    async def body() -> None:
        store = MemoryStore()
        cache = await started(store)
        store.create(P + "ns/a", obj("a"))
        items, rev, _ = store.list(P)  # the cache may not have applied it yet
        watcher = cache.watch_from_list(items, rev)
        r2 = store.create(P + "ns/b", obj("b"))
        assert summary(await take(watcher, 2)) == [("ADDED", "a", rev), ("ADDED", "b", r2)]
        await cache.stop()

    run(body)


def test_resume_after_store_watch_failure_no_loss_no_duplicates() -> None:
    async def body() -> None:
        store = MemoryStore()
        cache = await started(store)
        watcher = cache.watch(None)
        store.create(P + "ns/a", obj("a"))
        await until(lambda: len(cache.objects) == 1)
        store.set_available(False)  # breaks the store watch; the cache retries
        await asyncio.sleep(0.1)
        store.set_available(True)
        store.create(P + "ns/b", obj("b"))
        store.update(P + "ns/a", obj("a", v=2), None)
        events = await take(watcher, 3)
        assert [(e.type, e.key[-1]) for e in events] == [("ADDED", "a"), ("ADDED", "b"), ("MODIFIED", "a")]
        assert cache.relists == 0 and cache.store_watches >= 2
        await asyncio.sleep(0.1)
        assert watcher._queue.empty()
        await cache.stop()

    run(body)


class GatedStore(MemoryStore):
    """A MemoryStore whose watch() fails while `watch_blocked` (the cache cannot resume)."""

    watch_blocked = False

    def watch(self, prefix: str, start_revision: int) -> MemoryWatchStream:
        if self.watch_blocked:
            raise StoreUnavailable("watch blocked by the test")
        return super().watch(prefix, start_revision)


def test_compacted_gap_relists_and_diffs() -> None:
    async def body() -> None:
        store = GatedStore()
        store.create(P + "ns/keep", obj("keep"))
        store.create(P + "ns/gone", obj("gone"))
        store.create(P + "ns/changed", obj("changed"))
        cache = await started(store)
        watcher = cache.watch(cache.revision)
        store.watch_blocked = True
        store.break_watches()
        # While the cache is cut off, history it missed happens and is compacted away.
        store.delete(P + "ns/gone")
        store.update(P + "ns/changed", obj("changed", v=2), None)
        store.update(P + "ns/changed", obj("changed", v=3), None)
        store.create(P + "ns/new", obj("new"))
        store.compact(store.current_revision())
        store.watch_blocked = False  # resume from revision + 1 -> Compacted -> re-list and diff
        events = await take(watcher, 3)
        kinds = [(e.type, e.key.rsplit("/", 1)[1]) for e in events]
        assert sorted(kinds) == [("ADDED", "new"), ("DELETED", "gone"), ("MODIFIED", "changed")]
        assert [e.revision for e in events] == sorted(e.revision for e in events)
        assert cache.relists == 1
        assert cache.objects[P + "ns/changed"]["v"] == 3
        assert set(cache.objects) == {P + "ns/keep", P + "ns/changed", P + "ns/new"}
        store.create(P + "ns/after", obj("after"))
        assert summary(await take(watcher, 1))[0][:2] == ("ADDED", "after")
        await asyncio.sleep(0.1)
        assert watcher._queue.empty()
        await cache.stop()

    run(body)


def test_fan_out_to_100_watchers_with_one_store_watch() -> None:
    async def body() -> None:
        store = MemoryStore()
        cache = await started(store)
        watchers = [cache.watch(cache.revision) for _ in range(100)]
        for i in range(20):
            store.create(P + f"ns/p{i}", obj(f"p{i}"))
        results = await asyncio.gather(*(take(w, 20) for w in watchers))
        assert all(summary(r) == summary(results[0]) for r in results)
        assert len(results[0]) == 20
        assert cache.store_watches == 1 and len(store._streams) == 1
        for w in watchers:
            w.close()
        assert cache.watcher_count == 0
        await cache.stop()

    run(body)


def test_slow_watcher_is_closed_not_blocking_others() -> None:
    async def body() -> None:
        store = MemoryStore()
        cache = await started(store, max_queue=3)
        slow = cache.watch(cache.revision)
        for i in range(5):
            store.create(P + f"ns/p{i}", obj(f"p{i}"))
        await until(lambda: slow.closed)
        assert slow.overflowed
        assert len([e async for e in slow]) == 3  # what it had queued, then the end
        await cache.stop()

    run(body)


def test_bookmark_revision() -> None:
    async def body() -> None:
        store = MemoryStore()
        cache = await started(store)
        watcher = cache.watch(cache.revision)
        r1 = store.create(P + "ns/a", obj("a"))
        await until(lambda: cache.revision == r1)
        assert watcher.bookmark_revision == r1 - 1  # the event is queued, not yet delivered
        await take(watcher, 1)
        assert watcher.bookmark_revision == r1
        assert await watcher.next_event(0.05) is None
        await cache.stop()

    run(body)


@pytest.mark.parametrize("seed", range(5))
def test_random_writes_breaks_and_compactions_keep_watchers_exact(seed: int) -> None:
    """Whatever happens to the store watch, a watcher's view replays to the store's state,
    with strictly increasing revisions (no duplicates) and consistent event types (no loss)."""
    import random

    async def body() -> None:
        rng = random.Random(seed)
        store = GatedStore()
        cache = await started(store, capacity=50, retry_interval=0.001)
        watcher = cache.watch(None)
        view: dict[str, int] = {}
        last_rev = 0

        def apply(event: CacheEvent) -> None:
            nonlocal last_rev
            assert event.revision > last_rev  # one event per revision: resuming is unambiguous
            last_rev = event.revision
            if event.type == "ADDED":
                assert event.key not in view
                view[event.key] = event.revision
            elif event.type == "MODIFIED":
                assert event.key in view
                view[event.key] = event.revision
            else:
                assert view.pop(event.key)

        for step in range(300):
            key = P + f"ns/k{rng.randrange(12)}"
            roll = rng.random()
            if roll < 0.03:
                store.watch_blocked = True
                store.break_watches()
            elif roll < 0.06:
                store.compact(store.current_revision())
            elif roll < 0.12:
                store.watch_blocked = False
            current = store.get(key)
            if current is None:
                store.create(key, obj(key, step=step))
            elif rng.random() < 0.3:
                store.delete(key)
            else:
                store.update(key, obj(key, step=step), None)
            if rng.random() < 0.3:
                await asyncio.sleep(0.002)
        store.watch_blocked = False
        final = store.current_revision()
        await until(lambda: cache.revision >= final, timeout=10)
        seen: list[tuple[dict[str, int], CacheEvent]] = []
        while not watcher._queue.empty():
            event = await watcher.__anext__()
            apply(event)
            seen.append((dict(view), event))
        items, _, _ = store.list(P)
        expected = {kv.key: kv.mod_revision for kv in items}
        assert view == expected
        assert cache.relists >= 1  # the seeds compact history while the cache is cut off
        # Resuming from any revision still in the buffer rebuilds the same state.
        resumable = [(v, e) for v, e in seen if e.revision >= cache.window_start]
        for state, event in rng.sample(resumable, min(5, len(resumable))):
            resumed = cache.watch(event.revision)
            view, last_rev = dict(state), event.revision
            while not resumed._queue.empty():
                apply(await resumed.__anext__())
            assert view == expected
            resumed.close()
        await cache.stop()

    run(body)
