"""Allocation policy against the in-memory store: round robin, wrap, exclusions, requested IPs,
multiple range sets with rollback, release/GC/lookup semantics and free counts."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from cni import skel
from cni.ipam import allocator, config
from cni.ipam.allocator import MemoryStore, Owner


def sets(*raw_sets: list[dict]) -> tuple[config.RangeSet, ...]:
    return config.load({"cniVersion": "1.1.0", "name": "n",
                        "ipam": {"ranges": list(raw_sets)}}, {}).range_sets


def one(**rng) -> config.RangeSet:
    return sets([rng])[0]


def ips(*values: str) -> list:
    return [ip_address(v) for v in values]


def alloc(store, rsets, cid, ifname="eth0", requested=()) -> list[str]:
    return [str(a.ip) for a in allocator.allocate(store, rsets, ips(*requested), cid, ifname)]


# --- candidates: the pure round-robin order ---------------------------------------------------

def test_candidates_start_at_range_start_and_skip_the_gateway():
    assert list(allocator.candidates(one(subnet="10.0.0.0/29"), None)) == ips(
        "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6")


def test_candidates_resume_after_last_and_wrap():
    got = list(allocator.candidates(one(subnet="10.0.0.0/29"), ip_address("10.0.0.4")))
    assert got == ips("10.0.0.5", "10.0.0.6", "10.0.0.2", "10.0.0.3", "10.0.0.4")


def test_candidates_after_the_range_end_wrap_to_start():
    got = list(allocator.candidates(one(subnet="10.0.0.0/29"), ip_address("10.0.0.6")))
    assert got == ips("10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6")


def test_candidates_ignore_a_last_outside_the_set():
    got = list(allocator.candidates(one(subnet="10.0.0.0/29"), ip_address("192.168.0.9")))
    assert got[0] == ip_address("10.0.0.2") and len(got) == 5


def test_candidates_honour_range_start_end_and_a_gateway_inside():
    rset = one(subnet="10.0.0.0/24", rangeStart="10.0.0.10", rangeEnd="10.0.0.13", gateway="10.0.0.11")
    assert list(allocator.candidates(rset, None)) == ips("10.0.0.10", "10.0.0.12", "10.0.0.13")


def test_candidates_never_give_network_or_broadcast_even_if_the_range_includes_them():
    rset = one(subnet="10.0.0.0/30", rangeStart="10.0.0.0", rangeEnd="10.0.0.3", gateway="10.0.0.2")
    assert list(allocator.candidates(rset, None)) == ips("10.0.0.1")


def test_candidates_walk_every_range_of_a_set_from_the_one_holding_last():
    rset = sets([{"subnet": "10.0.0.0/30"}, {"subnet": "10.0.1.0/30"}, {"subnet": "10.0.2.0/30"}])[0]
    assert list(allocator.candidates(rset, None)) == ips("10.0.0.2", "10.0.1.2", "10.0.2.2")
    assert list(allocator.candidates(rset, ip_address("10.0.1.2"))) == ips("10.0.2.2", "10.0.0.2", "10.0.1.2")


def test_candidates_v6_keep_the_last_address():
    rset = one(subnet="fd00::/126")
    assert list(allocator.candidates(rset, None)) == ips("fd00::2", "fd00::3")


def test_candidates_are_lazy_for_huge_v6_ranges():
    gen = allocator.candidates(one(subnet="fd00::/64"), ip_address("fd00::ffff:ffff:ffff:fffe"))
    assert [next(gen) for _ in range(2)] == ips("fd00::ffff:ffff:ffff:ffff", "fd00::2")


def test_allocatable_count():
    assert allocator.allocatable_count(one(subnet="10.0.0.0/24")) == 253
    assert allocator.allocatable_count(one(subnet="fd00::/120")) == 254
    assert allocator.allocatable_count(one(subnet="fd00::/64")) == 2**64 - 2
    assert allocator.allocatable_count(one(subnet="10.0.0.0/24", rangeStart="10.0.0.0",
                                           rangeEnd="10.0.0.255", gateway="10.0.0.0")) == 254


# --- allocate ---------------------------------------------------------------------------------

def test_round_robin_does_not_reuse_a_just_released_address():
    store, rsets = MemoryStore(), (one(subnet="10.0.0.0/29"),)
    assert alloc(store, rsets, "a") == ["10.0.0.2"]
    allocator.release(store, "a", "eth0")
    assert alloc(store, rsets, "b") == ["10.0.0.3"]


def test_allocation_wraps_and_skips_held_addresses():
    store, rsets = MemoryStore(), (one(subnet="10.0.0.0/29"),)
    got = [alloc(store, rsets, f"c{i}")[0] for i in range(5)]
    assert got == ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
    allocator.release(store, "c1", "eth0")
    assert alloc(store, rsets, "x") == ["10.0.0.3"]


def test_pool_exhausted():
    store, rsets = MemoryStore(), (one(subnet="10.0.0.0/30"),)
    alloc(store, rsets, "a")
    with pytest.raises(skel.CniError, match="no IP addresses available in range set 0") as err:
        alloc(store, rsets, "b")
    assert err.value.code == skel.POOL_EXHAUSTED
    assert store.lock_depth == 0


def test_one_address_per_set_v4_and_v6():
    store, rsets = MemoryStore(), sets([{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/64"}])
    result = allocator.allocate(store, rsets, [], "a", "eth0")
    assert [a.ip_config() for a in result] == [{"address": "10.0.0.2/24", "gateway": "10.0.0.1"},
                                               {"address": "fd00::2/64", "gateway": "fd00::1"}]
    assert store.last == {0: ip_address("10.0.0.2"), 1: ip_address("fd00::2")}


def test_failure_in_second_set_rolls_back_the_first():
    store, rsets = MemoryStore(), sets([{"subnet": "10.0.0.0/24"}], [{"subnet": "10.1.0.0/30"}])
    alloc(store, rsets[1:], "hog")
    with pytest.raises(skel.CniError) as err:
        alloc(store, rsets, "a")
    assert err.value.code == skel.POOL_EXHAUSTED
    assert set(store.reservations.values()) == {Owner("hog", "eth0")}


def test_duplicate_add_is_refused_and_keeps_the_first():
    store, rsets = MemoryStore(), (one(subnet="10.0.0.0/24"),)
    alloc(store, rsets, "a")
    with pytest.raises(skel.CniError, match="duplicate allocation") as err:
        alloc(store, rsets, "a")
    assert err.value.code == skel.ALREADY_ATTACHED
    with pytest.raises(skel.CniError):  # also when a specific IP is requested
        alloc(store, rsets, "a", requested=["10.0.0.50"])
    assert len(store.reservations) == 1
    assert alloc(store, rsets, "a", "eth1") == ["10.0.0.3"]  # another interface is another attachment


def test_legacy_id_only_reservation_counts_as_duplicate():
    store, rsets = MemoryStore(), (one(subnet="10.0.0.0/24"),)
    store.reservations[ip_address("10.0.0.9")] = Owner("a", None)
    with pytest.raises(skel.CniError) as err:
        alloc(store, rsets, "a")
    assert err.value.code == skel.ALREADY_ATTACHED


def test_reservation_outside_the_sets_is_not_a_duplicate():
    store = MemoryStore()
    store.reservations[ip_address("10.9.0.9")] = Owner("a", "eth0")
    assert alloc(store, (one(subnet="10.0.0.0/24"),), "a") == ["10.0.0.2"]


def test_requested_ip_is_honoured_and_becomes_last_reserved():
    store, rsets = MemoryStore(), sets([{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/64"}])
    assert alloc(store, rsets, "a", requested=["fd00::99"]) == ["10.0.0.2", "fd00::99"]
    assert alloc(store, rsets, "b") == ["10.0.0.3", "fd00::9a"]


def test_requested_ip_taken():
    store, rsets = MemoryStore(), sets([{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/64"}])
    alloc(store, rsets, "a", requested=["fd00::99"])
    with pytest.raises(skel.CniError, match="fd00::99 is already allocated by a") as err:
        alloc(store, rsets, "b", requested=["fd00::99"])
    assert err.value.code == skel.INTERNAL
    assert {o.container_id for o in store.reservations.values()} == {"a"}  # set 0 rolled back


@pytest.mark.parametrize(("requested", "match"), [
    (["10.5.0.1"], "10.5.0.1 not in any range set"),
    (["10.0.0.1"], "requested IP 10.0.0.1 is the gateway of 10.0.0.0/24"),
    (["10.0.0.2", "10.0.0.3"], "10.0.0.3 not in any range set"),
    (["10.0.0.0"], "network or broadcast"),
])
def test_requested_ip_unusable_is_a_config_error_before_reserving(requested, match):
    store = MemoryStore()
    rsets = sets([{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.0"}])
    with pytest.raises(skel.CniError, match=match) as err:
        alloc(store, rsets, "a", requested=requested)
    assert err.value.code == skel.INVALID_CONFIG
    assert store.reservations == {}


def test_requested_ip_outside_range_start_end_is_refused():
    with pytest.raises(skel.CniError, match="not in any range set"):
        alloc(MemoryStore(), (one(subnet="10.0.0.0/24", rangeStart="10.0.0.100"),), "a",
              requested=["10.0.0.50"])


# --- release / lookup / gc / free_counts ------------------------------------------------------

def test_release_frees_exactly_the_attachment_and_is_idempotent():
    store, rsets = MemoryStore(), sets([{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/64"}])
    alloc(store, rsets, "a")
    alloc(store, rsets, "a", "eth1")
    alloc(store, rsets, "b")
    assert [str(ip) for ip in allocator.release(store, "a", "eth0")] == ["10.0.0.2", "fd00::2"]
    assert allocator.release(store, "a", "eth0") == []
    assert sorted(o.container_id + o.ifname for o in store.reservations.values()) == [
        "aeth1", "aeth1", "beth0", "beth0"]


def test_release_falls_back_to_legacy_id_only_files():
    store = MemoryStore()
    store.reservations[ip_address("10.0.0.9")] = Owner("a", None)
    store.reservations[ip_address("10.0.0.8")] = Owner("b", None)
    assert allocator.lookup(store, "a", "eth0") == ips("10.0.0.9")
    assert allocator.release(store, "a", "eth0") == ips("10.0.0.9")
    assert list(store.reservations) == ips("10.0.0.8")


def test_release_prefers_exact_files_over_legacy_ones():
    store = MemoryStore()
    store.reservations[ip_address("10.0.0.9")] = Owner("a", None)
    store.reservations[ip_address("10.0.0.8")] = Owner("a", "eth0")
    assert allocator.release(store, "a", "eth0") == ips("10.0.0.8")


def test_lookup():
    store, rsets = MemoryStore(), (one(subnet="10.0.0.0/24"),)
    alloc(store, rsets, "a")
    assert allocator.lookup(store, "a", "eth0") == ips("10.0.0.2")
    assert allocator.lookup(store, "a", "eth1") == []


def test_gc_keeps_only_valid_attachments():
    store = MemoryStore()
    for ip, owner in [("10.0.0.2", Owner("keep", "eth0")), ("10.0.0.3", Owner("keep", "eth1")),
                      ("10.0.0.4", Owner("gone", "eth0")), ("10.0.0.5", Owner("legacy", None)),
                      ("10.0.0.6", Owner("stale-legacy", None)), ("10.0.0.7", Owner("", None))]:
        store.reservations[ip_address(ip)] = owner
    freed = allocator.gc(store, [("keep", "eth0"), ("legacy", "net1")])
    assert sorted(map(str, freed)) == ["10.0.0.3", "10.0.0.4", "10.0.0.6", "10.0.0.7"]
    assert sorted(map(str, store.reservations)) == ["10.0.0.2", "10.0.0.5"]
    assert allocator.gc(store, []) == ips("10.0.0.2", "10.0.0.5")
    assert store.reservations == {}


def test_free_counts():
    store, rsets = MemoryStore(), sets([{"subnet": "10.0.0.0/30"}], [{"subnet": "fd00::/64"}])
    assert allocator.free_counts(store, rsets) == [1, 2**64 - 2]
    alloc(store, rsets, "a")
    store.reservations[ip_address("192.168.0.1")] = Owner("elsewhere", "eth0")  # outside: not counted
    assert allocator.free_counts(store, rsets) == [0, 2**64 - 3]


def test_every_operation_takes_the_lock():
    store = MemoryStore()

    class Recorder(MemoryStore):
        calls = 0

        def held(self):
            self.calls += 1
            return super().held()

    store = Recorder()
    rsets = (one(subnet="10.0.0.0/24"),)
    alloc(store, rsets, "a")
    allocator.lookup(store, "a", "eth0")
    allocator.free_counts(store, rsets)
    allocator.release(store, "a", "eth0")
    allocator.gc(store, [])
    assert store.calls == 5 and store.lock_depth == 0  # MemoryStore asserts the lock on each call
