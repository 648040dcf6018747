"""Store leases (etcd semantics), run against MemoryStore here and against a real etcd in netns_tests.

`LeaseContract` holds the tests; a tier supplies a `store` fixture and `expire(store, lease_id)`,
which makes the lease run out (a fake clock for MemoryStore, real waiting on etcd).
"""

from __future__ import annotations

import pytest

from podnet.store.base import LeaseNotFound, Store
from podnet.store.memory import MemoryStore
from tests.podnet.test_store_contract import collect


class LeaseContract:
    P = "/l/"
    TTL = 2

    def expire(self, store: Store, lease_id: int) -> None:
        raise NotImplementedError

    def test_key_carries_its_lease(self, store: Store) -> None:
        lease = store.grant_lease(60)
        store.create(self.P + "a", b"1", lease=lease)
        store.create(self.P + "b", b"2")
        a, b = store.get(self.P + "a"), store.get(self.P + "b")
        assert a is not None and a.lease == lease
        assert b is not None and b.lease == 0
        assert 0 < store.lease_time_to_live(lease) <= 60
        items, _, _ = store.list(self.P)
        assert [kv.lease for kv in items] == [lease, 0]

    def test_expiry_deletes_only_leased_keys_with_delete_events(self, store: Store) -> None:
        lease = store.grant_lease(self.TTL)
        start = store.current_revision() + 1
        store.create(self.P + "leased", b"1", lease=lease)
        store.create(self.P + "reserved", b"2")
        stream = store.watch(self.P, start)
        self.expire(store, lease)
        events = collect(stream, 3)
        assert [(e.type, e.kv.key) for e in events] == [
            ("PUT", self.P + "leased"), ("PUT", self.P + "reserved"), ("DELETE", self.P + "leased")]
        assert events[2].prev_kv is not None and events[2].prev_kv.value == b"1"
        assert store.get(self.P + "reserved") is not None
        assert store.lease_time_to_live(lease) == -1
        with pytest.raises(LeaseNotFound):
            store.refresh_lease(lease)

    def test_revoke_deletes_all_keys_in_one_revision_and_is_idempotent(self, store: Store) -> None:
        lease = store.grant_lease(60)
        store.create(self.P + "a", b"1", lease=lease)
        store.create(self.P + "b", b"2", lease=lease)
        before = store.current_revision()
        store.revoke_lease(lease)
        assert store.get(self.P + "a") is None and store.get(self.P + "b") is None
        assert store.current_revision() == before + 1
        store.revoke_lease(lease)
        assert store.lease_time_to_live(lease) == -1

    def test_refresh_restarts_the_ttl(self, store: Store) -> None:
        lease = store.grant_lease(60)
        store.refresh_lease(lease)
        assert 55 <= store.lease_time_to_live(lease) <= 60

    def test_unknown_lease_is_refused_and_nothing_written(self, store: Store) -> None:
        lease = store.grant_lease(60)
        store.revoke_lease(lease)
        with pytest.raises(LeaseNotFound):
            store.create(self.P + "a", b"1", lease=lease)
        assert store.get(self.P + "a") is None
        store.create(self.P + "b", b"1")
        with pytest.raises(LeaseNotFound):
            store.update(self.P + "b", b"2", None, lease=lease)
        kv = store.get(self.P + "b")
        assert kv is not None and kv.value == b"1"
        with pytest.raises(LeaseNotFound):
            store.refresh_lease(lease)

    def test_update_moves_or_detaches_the_key(self, store: Store) -> None:
        # flanneld renews with a new lease + Put; a reservation is a Put with no lease at all.
        old, new = store.grant_lease(60), store.grant_lease(60)
        r1 = store.create(self.P + "moved", b"1", lease=old)
        store.update(self.P + "moved", b"2", r1, lease=new)
        store.create(self.P + "detached", b"1", lease=old)
        store.update(self.P + "detached", b"2", None)
        store.revoke_lease(old)
        moved, detached = store.get(self.P + "moved"), store.get(self.P + "detached")
        assert moved is not None and moved.lease == new
        assert detached is not None and detached.lease == 0
        store.revoke_lease(new)
        assert store.get(self.P + "moved") is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TestMemoryStoreLeases(LeaseContract):
    @pytest.fixture
    def store(self) -> MemoryStore:
        self.clock = FakeClock()
        return MemoryStore(clock=self.clock)

    def expire(self, store: Store, lease_id: int) -> None:
        self.clock.now += self.TTL
        assert isinstance(store, MemoryStore)
        store.expire_leases()


def test_memory_refresh_keeps_keys_alive_past_the_first_ttl() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    lease = store.grant_lease(10)
    store.create("/k", b"", lease=lease)
    clock.now += 8
    store.refresh_lease(lease)
    clock.now += 8
    assert store.get("/k") is not None
    clock.now += 2
    assert store.get("/k") is None


def test_memory_minimum_ttl_and_expiry_seen_by_an_idle_watch() -> None:
    # A real-clock expiry with no writer: the waiting watch stream expires the lease itself.
    store = MemoryStore()
    lease = store.grant_lease(0)
    assert store.lease_time_to_live(lease) == 2
    start = store.current_revision() + 1
    store.create("/k", b"", lease=lease)
    events = collect(store.watch("/", start), 2, timeout=5.0)
    assert [e.type for e in events] == ["PUT", "DELETE"]


def test_memory_expiry_after_compaction_keeps_history_consistent() -> None:
    clock = FakeClock()
    store = MemoryStore(clock=clock)
    lease = store.grant_lease(5)
    store.create("/k", b"", lease=lease)
    store.compact(store.current_revision())
    clock.now += 5
    items, rev, _ = store.list("/")
    assert items == [] and rev == 3
