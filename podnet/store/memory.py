"""An in-memory Store with etcd's revision, compaction and watch semantics, for unit tests.

Every key keeps its version history (a list of (revision, KeyValue | None) where None is a
tombstone), so reads at an old revision and compaction behave as in etcd: revisions older than the
compaction point raise Compacted; the compaction revision itself stays readable.

Leases run on an injectable clock (`clock`, default time.monotonic): every call first expires the
leases whose deadline passed, deleting their keys in one revision as etcd's lessor does, so tests
advance a fake clock and call any method (or `expire_leases()`) to see the DELETE events.
"""

from __future__ import annotations

import bisect
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from podnet.store.base import (
    AlreadyExists,
    Compacted,
    Conflict,
    Event,
    KeyValue,
    LeaseNotFound,
    NotFound,
    StoreError,
    StoreUnavailable,
)

# Aliases: inside the class, `list` is the Store.list method.
_Versions = list[tuple[int, KeyValue | None]]
_Events = list[Event]

# etcd never grants a TTL below its minimum (about 1.5 election timeouts, 2 s by default).
MIN_LEASE_TTL = 2


@dataclass
class _Lease:
    ttl: int
    deadline: float
    keys: set[str] = field(default_factory=set)


class MemoryStore:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._cond = threading.Condition()
        self._clock = clock
        self._leases: dict[int, _Lease] = {}
        self._lease_ids = itertools.count(0x1000)
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
    def create(self, key: str, value: bytes, *, lease: int = 0) -> int:
        with self._cond:
            self._check_available()
            if self._value_at(key, self._revision) is not None:
                raise AlreadyExists(key)
            self._check_lease(lease)
            rev = self._revision + 1
            self._commit(Event("PUT", KeyValue(key, value, rev, rev, lease), None))
            return rev

    def update(self, key: str, value: bytes, expected_mod_revision: int | None, *, lease: int = 0) -> int:
        with self._cond:
            current = self._existing(key, expected_mod_revision)
            self._check_lease(lease)
            rev = self._revision + 1
            self._commit(Event("PUT", KeyValue(key, value, current.create_revision, rev, lease), current))
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

    # -- leases -----------------------------------------------------------------------------
    def grant_lease(self, ttl: int) -> int:
        with self._cond:
            self._check_available()
            lease_id = next(self._lease_ids)
            ttl = max(ttl, MIN_LEASE_TTL)
            self._leases[lease_id] = _Lease(ttl, self._clock() + ttl)
            return lease_id

    def refresh_lease(self, lease_id: int) -> None:
        with self._cond:
            self._check_available()
            lease = self._leases.get(lease_id)
            if lease is None:
                raise LeaseNotFound(lease_id)
            lease.deadline = self._clock() + lease.ttl

    def revoke_lease(self, lease_id: int) -> None:
        with self._cond:
            self._check_available()
            self._end_lease(lease_id)

    def lease_time_to_live(self, lease_id: int) -> int:
        with self._cond:
            self._check_available()
            lease = self._leases.get(lease_id)
            return -1 if lease is None else max(0, round(lease.deadline - self._clock()))

    def expire_leases(self) -> None:
        """Expire every lease whose deadline passed (tests call it after advancing the clock)."""
        with self._cond:
            self._expire()

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
        self._expire()

    def _check_lease(self, lease_id: int) -> None:
        # etcd refuses a Put naming a lease it does not know (ErrLeaseNotFound); nothing is written.
        if lease_id and lease_id not in self._leases:
            raise LeaseNotFound(lease_id)

    def _expire(self) -> None:
        now = self._clock()
        for lease_id in [i for i, lease in self._leases.items() if lease.deadline <= now]:
            self._end_lease(lease_id)

    def _end_lease(self, lease_id: int) -> None:
        """Drop the lease and delete its live keys, all in one revision (etcd's lessor revoke)."""
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return
        rev = self._revision + 1
        for key in sorted(lease.keys):
            current = self._value_at(key, self._revision)
            if current is not None and current.lease == lease_id:
                self._commit(Event("DELETE", KeyValue(key, b"", 0, rev), current))

    def _value_at(self, key: str, revision: int) -> KeyValue | None:
        versions = self._history.get(key)
        if not versions:
            return None
        i = bisect.bisect_right(versions, revision, key=lambda v: v[0])
        return versions[i - 1][1] if i else None

    def _commit(self, event: Event) -> None:
        self._revision = event.kv.mod_revision
        value = None if event.type == "DELETE" else event.kv
        if value is not None and value.lease:
            self._leases[value.lease].keys.add(value.key)
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
            if store.available:
                store._expire()  # a TTL runs out with nobody writing: the watcher still sees it
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
