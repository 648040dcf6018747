"""The Store seam: a revisioned key-value store with etcd's semantics.

Everything above it (the API server's registry and watch cache) is written against `Store`; the
real implementation is `podnet.store.etcd.EtcdStore`, unit tests use `podnet.store.memory.MemoryStore`.
Revisions follow etcd: one global counter bumped by every write; each key carries the revision that
created it and the revision that last modified it (`mod_revision`, which the API server exposes
as `resourceVersion`).

Leases follow etcd too: `grant_lease(ttl)` returns a lease id, a key written with `lease=<id>` is
deleted (a DELETE event like any other) when the lease expires or is revoked, and
`refresh_lease` is one keep-alive that restarts the TTL. flanneld's etcd subnet manager attaches
its 24 h subnet keys this way; keys written with `lease=0` never expire (its "reservations").
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from podnet.errors import AlreadyExists, NotFound, PodnetError

__all__ = [
    "AlreadyExists",
    "Compacted",
    "Conflict",
    "Event",
    "KeyValue",
    "LeaseNotFound",
    "NotFound",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "WatchStream",
]


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int = 0  # the etcd lease the key is attached to; 0 = none (never expires)


@dataclass(frozen=True)
class Event:
    """One change. For DELETE, `kv.value` is b"" and `kv.mod_revision` is the delete revision."""

    type: str  # "PUT" | "DELETE"
    kv: KeyValue
    prev_kv: KeyValue | None


class StoreError(PodnetError):
    """The store refused or failed a request for a reason not covered by a subclass."""


class Compacted(StoreError):
    """The requested revision is older than the store's compaction point."""

    def __init__(self, compact_revision: int, message: str = "") -> None:
        super().__init__(message or f"revision compacted (compact revision {compact_revision})")
        self.compact_revision = compact_revision


class Conflict(StoreError):
    """A conditional write lost: the key's mod_revision is not the expected one."""

    def __init__(self, key: str, current: KeyValue | None) -> None:
        rev = current.mod_revision if current else 0
        super().__init__(f"{key}: modified concurrently (now at revision {rev})")
        self.key = key
        self.current = current


class LeaseNotFound(StoreError):
    """The lease does not exist (never granted, expired or revoked): etcd's ErrLeaseNotFound."""

    def __init__(self, lease_id: int) -> None:
        super().__init__(f"lease {lease_id:x} not found")
        self.lease_id = lease_id


class StoreUnavailable(StoreError):
    """The store cannot be reached or did not answer in time (the API server answers 503/504)."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


class WatchStream(Protocol):
    """Batches of events in revision order; iteration ends after cancel().

    Iterating raises Compacted when the start revision is compacted and StoreUnavailable when the
    connection is lost; the caller resumes with a new watch from the last seen revision + 1.
    """

    def __iter__(self) -> Iterator[list[Event]]: ...

    def cancel(self) -> None: ...


class Store(Protocol):
    def get(self, key: str) -> KeyValue | None: ...

    def list(
        self, prefix: str, *, limit: int = 0, start_key: str | None = None, revision: int = 0
    ) -> tuple[list[KeyValue], int, bool]:
        """Keys under prefix (>= start_key) sorted, read at `revision` (0 = latest).

        Returns (items, revision of the read, more).
        """
        ...

    def create(self, key: str, value: bytes, *, lease: int = 0) -> int:
        """Write a new key (AlreadyExists if present), attached to `lease` unless 0."""
        ...

    def update(self, key: str, value: bytes, expected_mod_revision: int | None, *, lease: int = 0) -> int:
        """Overwrite a live key; like etcd's Put the key is (re)attached to `lease`, 0 detaching it."""
        ...

    def delete(self, key: str, expected_mod_revision: int | None = None) -> tuple[int, KeyValue]: ...

    def watch(self, prefix: str, start_revision: int) -> WatchStream: ...

    def current_revision(self) -> int: ...

    def compact(self, revision: int) -> None: ...

    def grant_lease(self, ttl: int) -> int:
        """A new lease of `ttl` seconds (etcd may round a tiny TTL up to its minimum); its id."""
        ...

    def refresh_lease(self, lease_id: int) -> None:
        """One keep-alive: the lease's TTL starts again. LeaseNotFound if it already expired."""
        ...

    def revoke_lease(self, lease_id: int) -> None:
        """End the lease now, deleting its keys; an unknown lease is not an error (idempotent)."""
        ...

    def lease_time_to_live(self, lease_id: int) -> int:
        """Seconds the lease has left, or -1 when it does not exist (etcd's TimeToLive)."""
        ...

    def healthy(self) -> bool: ...

    def close(self) -> None: ...

