"""An in-memory Store with etcd's revision, compaction and watch semantics, for unit tests.

Every key keeps its version history (a list of (revision, KeyValue | None) where None is a
tombstone), so reads at an old revision and compaction behave as in etcd: revisions older than the
compaction point raise Compacted; the compaction revision itself stays readable.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator

from podnet.store.base import (
    AlreadyExists,
    Compacted,
    Conflict,
    Event,
    KeyValue,
    NotFound,
    StoreError,
    StoreUnavailable,
)

# Aliases: inside the class, `list` is the Store.list method.
_Versions = list[tuple[int, KeyValue | None]]
_Events = list[Event]


class MemoryStore:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._revision = 1  # etcd starts at revision 1 with an empty keyspace
        self._compacted = 0
        self._history: dict[str, _Versions] = {}
        self._events: list[Event] = []  # every event, in revision order (one per revision)
        self._closed = False
        self.available = True  # tests flip this to simulate an unreachable store
        self._streams: list[MemoryWatchStream] = []

    # -- reads ------------------------------------------------------------------------------
    def get(self, key: str) -> KeyValue | None:
        with self._cond:
            self._check_available()
            return self._value_at(key, self._revision)

    def list(
        self, prefix: str, *, limit: int = 0, start_key: str | None = None, revision: int = 0
    ) -> tuple[list[KeyValue], int, bool]:
        with self._cond:
            self._check_available()
            rev = revision or self._revision
            if rev < self._compacted:
                raise Compacted(self._compacted)
            if rev > self._revision:
                raise StoreError(f"mvcc: required revision {rev} is a future revision")
            lower = max(prefix, start_key or "")
            keys = sorted(k for k in self._history if k.startswith(prefix) and k >= lower)
            items: list[KeyValue] = []
            for key in keys:
                kv = self._value_at(key, rev)
                if kv is None:
                    continue
                if limit and len(items) == limit:
                    return items, rev, True
                items.append(kv)
            return items, rev, False

    def current_revision(self) -> int:
        with self._cond:
            self._check_available()
            return self._revision

    # -- writes -----------------------------------------------------------------------------
    def create(self, key: str, value: bytes) -> int:
        with self._cond:
            self._check_available()
            if self._value_at(key, self._revision) is not None:
                raise AlreadyExists(key)
            rev = self._revision + 1
            self._commit(Event("PUT", KeyValue(key, value, rev, rev), None))
            return rev

    def update(self, key: str, value: bytes, expected_mod_revision: int | None) -> int:
        with self._cond:
            current = self._existing(key, expected_mod_revision)
            rev = self._revision + 1
            self._commit(Event("PUT", KeyValue(key, value, current.create_revision, rev), current))
            return rev

    def _existing(self, key: str, expected_mod_revision: int | None) -> KeyValue:
        """The live value of `key` for a write: NotFound if absent, Conflict on a stale revision."""
        self._check_available()
        current = self._value_at(key, self._revision)
        if current is None:
            raise NotFound(key)
        if expected_mod_revision is not None and current.mod_revision != expected_mod_revision:
            raise Conflict(key, current)
        return current

    def delete(self, key: str, expected_mod_revision: int | None = None) -> tuple[int, KeyValue]:
        with self._cond:
            current = self._existing(key, expected_mod_revision)
            rev = self._revision + 1
            self._commit(Event("DELETE", KeyValue(key, b"", 0, rev), current))
            return rev, current

    def compact(self, revision: int) -> None:
        with self._cond:
            self._check_available()
            if revision <= self._compacted:
                raise Compacted(self._compacted)
            if revision > self._revision:
                raise StoreError(f"mvcc: required revision {revision} is a future revision")
            self._compacted = revision
            self._events = [e for e in self._events if e.kv.mod_revision >= revision]
            for key in list(self._history):
                self._history[key] = self._compact_versions(self._history[key], revision)
                if not self._history[key]:
                    del self._history[key]

    # -- watch ------------------------------------------------------------------------------
    def watch(self, prefix: str, start_revision: int) -> MemoryWatchStream:
        with self._cond:
            self._check_available()
            start = start_revision or self._revision + 1
            stream = MemoryWatchStream(self, prefix, start)
            self._streams.append(stream)
            return stream

    # -- health / lifecycle / test hooks ----------------------------------------------------
    def healthy(self) -> bool:
        return self.available and not self._closed

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def break_watches(self) -> None:
        """Fail every open watch stream with StoreUnavailable (a lost etcd connection)."""
        with self._cond:
            for stream in self._streams:
                stream.broken = True
            self._streams.clear()
            self._cond.notify_all()

    def set_available(self, available: bool) -> None:
        """Simulate etcd going away (every call raises StoreUnavailable, watches break) and back."""
        self.available = available
        if not available:
            self.break_watches()

    # -- internals (caller holds the lock) --------------------------------------------------
    def _check_available(self) -> None:
        if not self.available or self._closed:
            raise StoreUnavailable("memory store unavailable")

    def _value_at(self, key: str, revision: int) -> KeyValue | None:
        versions = self._history.get(key)
        if not versions:
            return None
        i = bisect.bisect_right(versions, revision, key=lambda v: v[0])
        return versions[i - 1][1] if i else None

    def _commit(self, event: Event) -> None:
        self._revision = event.kv.mod_revision
        value = None if event.type == "DELETE" else event.kv
        self._history.setdefault(event.kv.key, []).append((self._revision, value))
        self._events.append(event)
        self._cond.notify_all()

    @staticmethod
    def _compact_versions(versions: _Versions, revision: int) -> _Versions:
        # Keep the newest version at or before the compaction point (reads at `revision` need it)
        # unless it is a tombstone, plus everything after it.
        i = bisect.bisect_right(versions, revision, key=lambda v: v[0])
        kept = versions[i - 1 :] if i else versions
        if kept and kept[0][0] <= revision and kept[0][1] is None:
            kept = kept[1:]
        return kept

    def _events_since(self, prefix: str, start: int) -> _Events:
        i = bisect.bisect_left(self._events, start, key=lambda e: e.kv.mod_revision)
        return [e for e in self._events[i:] if e.kv.key.startswith(prefix)]


class MemoryWatchStream:
    def __init__(self, store: MemoryStore, prefix: str, start: int) -> None:
        self._store = store
        self._prefix = prefix
        self._next = start
        self._cancelled = False
        self.broken = False

    def __iter__(self) -> Iterator[list[Event]]:
        store = self._store
        while True:
            with store._cond:
                batch = self._wait_for_batch()
            if batch is None:
                return
            yield batch

    def _wait_for_batch(self) -> list[Event] | None:
        store = self._store
        while True:
            if self._cancelled or store._closed:
                return None
            if self.broken:
                raise StoreUnavailable("watch stream lost")
            if self._next < store._compacted:
                raise Compacted(store._compacted)
            if store._revision >= self._next:
                batch = store._events_since(self._prefix, self._next)
                self._next = store._revision + 1
                if batch:
                    return batch
            store._cond.wait(timeout=1.0)

    def cancel(self) -> None:
        with self._store._cond:
            self._cancelled = True
            self._store._cond.notify_all()
