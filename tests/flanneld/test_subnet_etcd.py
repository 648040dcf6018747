"""The etcd subnet manager on a MemoryStore (etcd semantics, fake clock), plus pure allocation."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Iterator
from ipaddress import IPv4Network

import pytest

from flanneld.config import NetworkConfig
from flanneld.lease import Lease, LeaseAttrs, encode_attrs, subnet_key
from flanneld.subnet.allocate import OutOfSubnets, free_candidates, plan_acquire
from flanneld.subnet.base import LeaseLost, SubnetError
from flanneld.subnet.etcd import RACE_RETRIES, SUBNET_TTL, EtcdSubnetManager
from podnet.store.base import AlreadyExists
from podnet.store.memory import MemoryStore, MemoryWatchStream
from podnet.testing.wait import wait_until

P = "/coreos.com/network"
NET = b'{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}'
CFG = NetworkConfig.parse(NET)
VX = {"VNI": 1, "VtepMAC": "aa:bb:cc:00:00:01"}


def N(s: str) -> IPv4Network:
    return IPv4Network(s)


def L(subnet: str, ip: str, expiration: float | None = 1.0) -> Lease:
    return Lease(N(subnet), ip, "vxlan", {}, expiration)


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class CountingStore(MemoryStore):
    """A MemoryStore that counts live etcd leases (to catch leaked grants)."""

    def live_leases(self) -> int:
        with self._cond:
            self._expire()
            return len(self._leases)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(clock: Clock) -> CountingStore:
    s = CountingStore(clock=clock)
    s.create(P + "/config", NET)
    return s


def manager(store: MemoryStore, clock: Clock, seed: int = 1) -> EtcdSubnetManager:
    return EtcdSubnetManager(store, P, clock=clock, rng=random.Random(seed))


# -- pure allocation ---------------------------------------------------------------------------
def test_free_candidates_skip_any_overlap_and_stop_at_100() -> None:
    taken = [N("10.244.1.0/24"), N("10.244.2.128/25"), N("10.244.4.0/22"), N("10.244.0.0/30")]
    got = free_candidates(CFG, taken)
    assert got[:3] == [N("10.244.3.0/24"), N("10.244.8.0/24"), N("10.244.9.0/24")]
    assert len(got) == 100
    assert free_candidates(CFG, [N("10.244.0.0/16")]) == []


def test_free_candidates_respect_min_max() -> None:
    cfg = NetworkConfig.parse(b'{"Network":"10.0.0.0/16","SubnetMin":"10.0.5.0","SubnetMax":"10.0.7.0",'
                              b'"Backend":{"Type":"host-gw"}}')
    assert free_candidates(cfg, [N("10.0.6.0/24")]) == [N("10.0.5.0/24"), N("10.0.7.0/24")]


RNG = random.Random(0)


@pytest.mark.parametrize(("leases", "previous", "reuse", "create", "delete"), [
    # our PublicIP holds a compatible lease: reuse it, whatever subnet.env says
    ([L("10.244.7.0/24", "1.1.1.1")], "10.244.9.0/24", "10.244.7.0/24", None, []),
    # a reservation (no expiry) for our IP is reused too
    ([L("10.244.7.0/24", "1.1.1.1", None)], None, "10.244.7.0/24", None, []),
    # our lease is incompatible (wrong length): deleted, then subnet.env's previous subnet is free
    ([L("10.244.7.0/25", "1.1.1.1")], "10.244.9.0/24", None, "10.244.9.0/24", ["10.244.7.0/25"]),
    # an incompatible reservation is never deleted
    ([L("10.244.7.0/25", "1.1.1.1", None)], "10.244.9.0/24", None, "10.244.9.0/24", []),
    # subnet.env's subnet is held by someone else: allocate
    ([L("10.244.9.0/24", "2.2.2.2")], "10.244.9.0/24", None, "*", []),
    # subnet.env's subnet is outside SubnetMin (the first subnet): allocate
    ([], "10.244.0.0/24", None, "*", []),
])
def test_plan_acquire(leases: list[Lease], previous: str | None, reuse: str | None, create: str | None,
                      delete: list[str]) -> None:
    plan = plan_acquire(CFG, {lease.subnet: lease for lease in leases}, "1.1.1.1",
                        N(previous) if previous else None, RNG)
    assert (str(plan.reuse.subnet) if plan.reuse else None) == reuse
    if create == "*":
        assert plan.create is not None and CFG.is_compatible(plan.create)
        assert plan.create not in {lease.subnet for lease in leases}
    else:
        assert (str(plan.create) if plan.create else None) == create
    assert [str(s) for s in plan.delete] == delete


def test_plan_acquire_random_among_first_100() -> None:
    picks = {plan_acquire(CFG, {}, "1.1.1.1", None, random.Random(i)).create for i in range(200)}
    assert len(picks) > 50
    assert all(p is not None and N("10.244.1.0/24") <= p <= N("10.244.100.0/24") for p in picks)


def test_plan_acquire_out_of_subnets() -> None:
    cfg = NetworkConfig.parse(b'{"Network":"10.0.0.0/28","Backend":{"Type":"udp"}}')
    full = {sn: L(str(sn), f"9.9.9.{i}") for i, sn in enumerate(free_candidates(cfg, []))}
    with pytest.raises(OutOfSubnets, match="out of subnets"):
        plan_acquire(cfg, full, "1.1.1.1", None, RNG)


# -- manager: config, acquire, renew -----------------------------------------------------------
def test_network_config_missing_is_upstreams_error(clock: Clock) -> None:
    with pytest.raises(SubnetError, match="Did you create your config using etcdv3 API"):
        manager(MemoryStore(clock=clock), clock).network_config()


def test_acquire_writes_upstream_key_with_24h_ttl(store: CountingStore, clock: Clock) -> None:
    lease = manager(store, clock).acquire("10.0.0.1", "vxlan", VX, None)
    kv = store.get(subnet_key(P, lease.subnet))
    assert kv is not None and kv.lease != 0
    assert json.loads(kv.value) == {"PublicIP": "10.0.0.1", "PublicIPv6": None, "BackendType": "vxlan",
                                    "BackendData": VX}
    assert store.lease_time_to_live(kv.lease) == SUBNET_TTL
    assert lease.expiration == clock.now + SUBNET_TTL
    assert CFG.is_compatible(lease.subnet) and store.live_leases() == 1


def test_restart_reuses_the_lease_of_our_public_ip(store: CountingStore, clock: Clock) -> None:
    first = manager(store, clock, seed=1).acquire("10.0.0.1", "vxlan", VX, None)
    newmac = {"VNI": 1, "VtepMAC": "aa:bb:cc:00:00:02"}
    again = manager(store, clock, seed=2).acquire("10.0.0.1", "vxlan", newmac, N("10.244.200.0/24"))
    assert again.subnet == first.subnet and again.backend_data == newmac
    kv = store.get(subnet_key(P, first.subnet))
    assert kv is not None and json.loads(kv.value)["BackendData"] == newmac


def test_previous_subnet_from_subnet_env_when_free(store: CountingStore, clock: Clock) -> None:
    assert manager(store, clock).acquire("10.0.0.1", "vxlan", VX, N("10.244.77.0/24")).subnet == N(
        "10.244.77.0/24")
    other = manager(store, clock).acquire("10.0.0.2", "vxlan", VX, N("10.244.77.0/24"))
    assert other.subnet != N("10.244.77.0/24")


def test_reservations_are_reused_without_ttl_and_never_taken(store: CountingStore, clock: Clock) -> None:
    mine, theirs = subnet_key(P, N("10.244.5.0/24")), subnet_key(P, N("10.244.6.0/24"))
    store.create(mine, encode_attrs(LeaseAttrs("10.0.0.1")))
    store.create(theirs, encode_attrs(LeaseAttrs("10.0.0.9")))
    mgr = manager(store, clock)
    lease = mgr.acquire("10.0.0.1", "vxlan", VX, N("10.244.6.0/24"))
    assert lease.subnet == N("10.244.5.0/24") and lease.expiration is None
    kv = store.get(mine)
    assert kv is not None and kv.lease == 0 and json.loads(kv.value)["BackendType"] == "vxlan"
    assert mgr.renew(lease).expiration is None
    clock.now += 2 * SUBNET_TTL
    assert store.get(mine) is not None and store.get(theirs) is not None
    assert manager(store, clock).acquire("10.0.0.2", "vxlan", VX, N("10.244.6.0/24")).subnet not in {
        N("10.244.5.0/24"), N("10.244.6.0/24")}


def test_incompatible_own_lease_is_replaced(store: CountingStore, clock: Clock) -> None:
    old = subnet_key(P, N("10.244.8.0/25"))
    store.create(old, encode_attrs(LeaseAttrs("10.0.0.1", "vxlan")), lease=store.grant_lease(SUBNET_TTL))
    lease = manager(store, clock).acquire("10.0.0.1", "vxlan", VX, None)
    assert lease.subnet.prefixlen == 24 and store.get(old) is None


class RacingStore(CountingStore):
    """Another host creates our chosen key between our list and our create, `races` times."""

    races = 0

    def create(self, key: str, value: bytes, *, lease: int = 0) -> int:
        if "/subnets/" in key and self.races > 0:
            self.races -= 1
            super().create(key, encode_attrs(LeaseAttrs(f"10.9.9.{self.races}")))
            raise AlreadyExists(key)
        return super().create(key, value, lease=lease)


def test_lost_races_are_retried_and_granted_leases_revoked(clock: Clock) -> None:
    store = RacingStore(clock=clock)
    store.create(P + "/config", NET)
    store.races = 3
    lease = manager(store, clock).acquire("10.0.0.1", "vxlan", VX, None)
    items, _, _ = store.list(P + "/subnets/")
    assert len(items) == 4 and lease.public_ip == "10.0.0.1"
    assert store.live_leases() == 1  # the three losers' grants were revoked


def test_gives_up_after_race_retries(clock: Clock) -> None:
    store = RacingStore(clock=clock)
    store.create(P + "/config", NET)
    store.races = RACE_RETRIES
    with pytest.raises(SubnetError, match="Max retries"):
        manager(store, clock).acquire("10.0.0.1", "vxlan", VX, None)
    assert store.live_leases() == 0


def test_renew_moves_the_key_to_a_fresh_lease(store: CountingStore, clock: Clock) -> None:
    mgr = manager(store, clock)
    lease = mgr.acquire("10.0.0.1", "vxlan", VX, None)
    key = subnet_key(P, lease.subnet)
    before = store.get(key)
    clock.now += SUBNET_TTL - 3600
    renewed = mgr.renew(lease)
    after = store.get(key)
    assert before is not None and after is not None and after.lease != before.lease
    assert renewed.expiration == clock.now + SUBNET_TTL and store.live_leases() == 1
    clock.now += SUBNET_TTL - 1
    assert store.get(key) is not None
    clock.now += 1
    assert store.get(key) is None  # expired without renewal


def test_renew_of_a_deleted_or_taken_lease_is_lost(store: CountingStore, clock: Clock) -> None:
    mgr = manager(store, clock)
    lease = mgr.acquire("10.0.0.1", "vxlan", VX, None)
    key = subnet_key(P, lease.subnet)
    store.update(key, encode_attrs(LeaseAttrs("10.0.0.2", "vxlan")), None)
    with pytest.raises(LeaseLost):
        mgr.renew(lease)
    store.delete(key)
    with pytest.raises(LeaseLost):
        mgr.renew(lease)
    assert store.live_leases() == 0


# -- manager: watch ----------------------------------------------------------------------------
class GatedStore(CountingStore):
    """watch() blocks while `gate` is clear (to line up a compaction with a reconnect)."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock=clock)
        self.gate = threading.Event()
        self.gate.set()
        self.watch_calls = 0

    def watch(self, prefix: str, start_revision: int) -> MemoryWatchStream:
        self.watch_calls += 1
        self.gate.wait(10)
        return super().watch(prefix, start_revision)


@pytest.fixture
def watched(clock: Clock) -> Iterator[tuple[GatedStore, EtcdSubnetManager, list[int]]]:
    store = GatedStore(clock)
    store.create(P + "/config", NET)
    mgr = manager(store, clock)
    changes: list[int] = []
    stop = threading.Event()
    t = threading.Thread(target=mgr.run_watch, args=(lambda: changes.append(1), stop), daemon=True)
    t.start()
    wait_until(lambda: bool(changes) and store.watch_calls > 0, what="first snapshot")
    yield store, mgr, changes
    stop.set()
    t.join(5)
    assert not t.is_alive()


def other(store: MemoryStore, subnet: str, ip: str, ttl: int = 0) -> str:
    key = subnet_key(P, N(subnet))
    store.create(key, encode_attrs(LeaseAttrs(ip, "vxlan", {"VNI": 1})),
                 lease=store.grant_lease(ttl) if ttl else 0)
    return key


def test_watch_tracks_other_hosts_and_expiry(watched: tuple[GatedStore, EtcdSubnetManager, list[int]],
                                             clock: Clock) -> None:
    store, mgr, changes = watched
    own = mgr.acquire("10.0.0.1", "vxlan", VX, None)
    other(store, "10.244.200.0/24", "10.0.0.2", ttl=60)
    other(store, "10.244.201.0/24", "10.0.0.3")
    store.create(P + "/subnets/junk", b"{}")
    store.create(subnet_key(P, N("10.244.202.0/24")), b"not json")
    wait_until(lambda: len(mgr.leases()) == 3, what="three leases")
    leases = mgr.leases()
    assert leases[own.subnet].public_ip == "10.0.0.1"
    assert leases[N("10.244.200.0/24")].expiration == clock.now + 60
    assert leases[N("10.244.201.0/24")].expiration is None
    assert not mgr.own_lease_lost()
    clock.now += 61
    store.expire_leases()
    wait_until(lambda: N("10.244.200.0/24") not in mgr.leases(), what="expiry seen")
    assert len(changes) >= 3


def test_own_key_removed_is_lost(watched: tuple[GatedStore, EtcdSubnetManager, list[int]]) -> None:
    store, mgr, _ = watched
    own = mgr.acquire("10.0.0.1", "vxlan", VX, None)
    wait_until(lambda: own.subnet in mgr.leases(), what="own lease cached")
    assert not mgr.own_lease_lost()
    store.delete(subnet_key(P, own.subnet))
    wait_until(mgr.own_lease_lost, what="own lease lost")
    again = mgr.acquire("10.0.0.1", "vxlan", VX, own.subnet)
    assert again.subnet == own.subnet
    wait_until(lambda: not mgr.own_lease_lost(), what="re-acquired lease seen")


def test_own_lease_not_lost_before_the_cache_saw_it(store: CountingStore, clock: Clock) -> None:
    mgr = manager(store, clock)
    mgr.acquire("10.0.0.1", "vxlan", VX, None)
    assert not mgr.own_lease_lost()  # no watch yet: unknown, not lost


def test_compaction_during_a_gap_relists(watched: tuple[GatedStore, EtcdSubnetManager, list[int]]) -> None:
    store, mgr, changes = watched
    gone = other(store, "10.244.50.0/24", "10.0.0.5")
    wait_until(lambda: N("10.244.50.0/24") in mgr.leases(), what="lease seen")
    store.gate.clear()
    calls = store.watch_calls
    store.break_watches()
    wait_until(lambda: store.watch_calls > calls, what="reconnect attempt")
    store.delete(gone)
    other(store, "10.244.51.0/24", "10.0.0.6")
    store.compact(store.current_revision())
    seen = len(changes)
    store.gate.set()
    wait_until(lambda: set(mgr.leases()) == {N("10.244.51.0/24")}, what="relist after compaction")
    assert len(changes) > seen


def test_store_outage_is_retried(watched: tuple[GatedStore, EtcdSubnetManager, list[int]]) -> None:
    store, mgr, _ = watched
    store.set_available(False)
    threading.Timer(0.3, store.set_available, args=(True,)).start()
    wait_until(lambda: store.available, what="store back")
    other(store, "10.244.60.0/24", "10.0.0.7")
    wait_until(lambda: N("10.244.60.0/24") in mgr.leases(), what="lease after outage")


def test_stored_backend_data_is_the_last_published(store: CountingStore, clock: Clock) -> None:
    mgr = manager(store, clock)
    assert mgr.stored_backend_data("10.0.0.1", "vxlan") == {}
    mgr.acquire("10.0.0.1", "vxlan", VX, None)
    assert mgr.stored_backend_data("10.0.0.1", "vxlan") == VX
    assert mgr.stored_backend_data("10.0.0.1", "host-gw") == {}
    assert mgr.stored_backend_data("10.0.0.2", "vxlan") == {}
