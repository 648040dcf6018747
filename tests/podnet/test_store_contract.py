"""The Store contract, run against MemoryStore here and against a real etcd in netns_tests.

`StoreContract` holds the tests; each tier subclasses it with a `store` fixture.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from podnet.store.base import (
    AlreadyExists,
    Compacted,
    Conflict,
    Event,
    NotFound,
    Store,
    StoreUnavailable,
    WatchStream,
)
from podnet.store.memory import MemoryStore


def collect(stream: WatchStream, count: int, timeout: float = 5.0) -> list[Event]:
    """The first `count` events of stream (iterated on a thread; cancelled on timeout)."""
    got: list[Event] = []
    done = threading.Event()

    def run() -> None:
        for batch in stream:
            got.extend(batch)
            if len(got) >= count:
                break
        done.set()

    threading.Thread(target=run, daemon=True).start()
    if not done.wait(timeout):
        stream.cancel()
        raise AssertionError(f"only {len(got)} of {count} events: {got}")
    stream.cancel()
    return got


class StoreContract:
    P = "/c/"

    def test_create_get(self, store: Store) -> None:
        rev = store.create(self.P + "a", b"1")
        kv = store.get(self.P + "a")
        assert kv is not None
        assert (kv.value, kv.create_revision, kv.mod_revision) == (b"1", rev, rev)
        assert store.get(self.P + "missing") is None
        assert store.current_revision() == rev

    def test_create_existing_is_already_exists(self, store: Store) -> None:
        store.create(self.P + "a", b"1")
        with pytest.raises(AlreadyExists):
            store.create(self.P + "a", b"2")
        kv = store.get(self.P + "a")
        assert kv is not None and kv.value == b"1"

    def test_update_conditional(self, store: Store) -> None:
        r1 = store.create(self.P + "a", b"1")
        r2 = store.update(self.P + "a", b"2", r1)
        assert r2 > r1
        with pytest.raises(Conflict) as err:
            store.update(self.P + "a", b"3", r1)
        assert err.value.current is not None and err.value.current.mod_revision == r2
        r3 = store.update(self.P + "a", b"4", None)
        kv = store.get(self.P + "a")
        assert kv is not None and (kv.value, kv.create_revision, kv.mod_revision) == (b"4", r1, r3)

    def test_update_missing_is_not_found(self, store: Store) -> None:
        with pytest.raises(NotFound):
            store.update(self.P + "nope", b"x", None)
        with pytest.raises(NotFound):
            store.update(self.P + "nope", b"x", 5)

    def test_delete(self, store: Store) -> None:
        r1 = store.create(self.P + "a", b"1")
        with pytest.raises(Conflict):
            store.delete(self.P + "a", r1 + 100)
        rev, old = store.delete(self.P + "a", r1)
        assert rev > r1 and old.value == b"1" and old.mod_revision == r1
        assert store.get(self.P + "a") is None
        with pytest.raises(NotFound):
            store.delete(self.P + "a")
        store.create(self.P + "a", b"again")  # a deleted key can be created again

    def test_list_sorted_paged_at_revision(self, store: Store) -> None:
        for name in ["c", "a", "b", "d"]:
            store.create(self.P + name, name.encode())
        store.create(self.P.rstrip("/") + "-other/x", b"")
        items, rev, more = store.list(self.P, limit=2)
        assert [kv.key for kv in items] == [self.P + "a", self.P + "b"] and more
        store.update(self.P + "c", b"changed", None)
        store.delete(self.P + "d")
        start = items[-1].key + "\0"
        rest, rev2, more2 = store.list(self.P, limit=2, start_key=start, revision=rev)
        assert rev2 == rev and not more2
        assert [(kv.key, kv.value) for kv in rest] == [(self.P + "c", b"c"), (self.P + "d", b"d")]
        latest, rev3, _ = store.list(self.P)
        assert rev3 > rev
        assert [(kv.key, kv.value) for kv in latest] == [
            (self.P + "a", b"a"), (self.P + "b", b"b"), (self.P + "c", b"changed")]

    def test_list_exact_limit_has_no_more(self, store: Store) -> None:
        store.create(self.P + "a", b"")
        store.create(self.P + "b", b"")
        items, _, more = store.list(self.P, limit=2)
        assert len(items) == 2 and not more

    def test_compaction(self, store: Store) -> None:
        r1 = store.create(self.P + "a", b"1")
        r2 = store.update(self.P + "a", b"2", None)
        store.update(self.P + "a", b"3", None)
        store.compact(r2)
        items, _, _ = store.list(self.P, revision=r2)  # the compaction revision stays readable
        assert [kv.value for kv in items] == [b"2"]
        with pytest.raises(Compacted):
            store.list(self.P, revision=r1)
        with pytest.raises(Compacted):
            list(store.watch(self.P, r1))

    def test_watch_from_revision_with_prev_kv(self, store: Store) -> None:
        r1 = store.create(self.P + "a", b"1")
        r2 = store.update(self.P + "a", b"2", None)
        store.create(self.P.rstrip("/") + "x", b"")
        r3, _ = store.delete(self.P + "a")
        events = collect(store.watch(self.P, r1), 3)
        assert [(e.type, e.kv.mod_revision) for e in events] == [("PUT", r1), ("PUT", r2), ("DELETE", r3)]
        assert events[0].prev_kv is None
        assert events[1].prev_kv is not None and events[1].prev_kv.value == b"1"
        assert events[2].kv.value == b"" and events[2].prev_kv is not None
        assert events[2].prev_kv.value == b"2"

    def test_watch_live(self, store: Store) -> None:
        start = store.current_revision() + 1
        stream = store.watch(self.P, start)
        got: list[Event] = []
        t = threading.Thread(target=lambda: got.extend(collect(stream, 2)))
        t.start()
        store.create(self.P + "x", b"1")
        store.create(self.P + "y", b"2")
        t.join(10)
        assert [e.kv.key for e in got] == [self.P + "x", self.P + "y"]

    def test_watch_cancel_ends_iteration(self, store: Store) -> None:
        stream = store.watch(self.P, 0)
        ended = threading.Event()

        def run() -> None:
            for _ in stream:
                pass
            ended.set()

        threading.Thread(target=run, daemon=True).start()
        stream.cancel()
        assert ended.wait(5)

    def test_healthy(self, store: Store) -> None:
        assert store.healthy()


class TestMemoryStore(StoreContract):
    @pytest.fixture
    def store(self) -> Iterator[MemoryStore]:
        s = MemoryStore()
        yield s
        s.close()

    def test_unavailable_and_watch_break(self, store: MemoryStore) -> None:
        stream = store.watch(self.P, 0)
        store.set_available(False)
        with pytest.raises(StoreUnavailable):
            store.get(self.P + "a")
        with pytest.raises(StoreUnavailable):
            list(stream)
        assert not store.healthy()
        store.set_available(True)
        store.create(self.P + "a", b"")
