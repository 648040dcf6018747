"""The etcd subnet manager: leases as TTL'd keys under `<prefix>/subnets/` (upstream's layout).

Behaviour carried over from flannel (pkg/subnet/etcd/{registry.go,local_manager.go}):
- acquire: list every lease, then plan (allocate.plan_acquire); a new key is created in one
  create-if-absent transaction, attached to a fresh 24 h etcd lease; losing a race to another
  host (the key appeared, or changed under our reuse) is retried, up to 10 attempts;
- reservations are subnet keys with no etcd lease: reused without attaching a TTL (upstream would
  attach one after a restart), never deleted;
- renew grants a new 24 h lease and moves the key onto it (a Put); we then revoke the old lease,
  which no longer holds the key, instead of leaving it in etcd for a day;
- the watch lists a snapshot, watches from snapshot revision + 1, resumes from the last seen
  revision after an error (backoff 100 ms doubling to 5 s) and re-lists after a compaction.
We never delete our own lease on shutdown: a restarted host finds it by PublicIP and keeps its subnet.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from ipaddress import IPv4Network
from typing import Any

from flanneld.config import NetworkConfig
from flanneld.lease import (
    DEFAULT_PREFIX,
    Lease,
    LeaseAttrs,
    decode_attrs,
    encode_attrs,
    parse_subnet_key,
    subnet_key,
)
from flanneld.subnet.allocate import Plan, plan_acquire
from flanneld.subnet.base import LeaseLost, SubnetError
from podnet.log import get_logger
from podnet.store.base import AlreadyExists, Compacted, Conflict, Event, KeyValue, NotFound, Store

__all__ = ["RACE_RETRIES", "SUBNET_TTL", "EtcdSubnetManager"]

log = get_logger("flanneld.subnet")

SUBNET_TTL = 24 * 3600  # upstream subnetTTL
RACE_RETRIES = 10  # upstream raceRetries
BACKOFF_INITIAL, BACKOFF_MAX = 0.1, 5.0  # upstream watch reconnect backoff


class _TryAgain(Exception):
    """Another host changed the keyspace between our list and our write."""


class EtcdSubnetManager:
    def __init__(self, store: Store, prefix: str = DEFAULT_PREFIX, *, ttl: int = SUBNET_TTL,
                 clock: Callable[[], float] = time.time, rng: random.Random | None = None) -> None:
        self.store, self.prefix, self.ttl = store, prefix.rstrip("/"), ttl
        self.clock, self.rng = clock, rng or random.Random()
        self._lock = threading.Lock()
        self._cache: dict[IPv4Network, Lease] = {}
        self._cache_revision = 0  # the store revision the cache reflects
        self._deadlines: dict[int, float] = {}  # etcd lease id -> wall-clock expiry
        self._own: Lease | None = None
        self._own_revision = 0  # the revision of our last write to our key
        self._own_etcd_lease = 0
        self._stream: Any = None

    @property
    def subnets_prefix(self) -> str:
        return self.prefix + "/subnets/"

    def network_config(self) -> NetworkConfig:
        kv = self.store.get(self.prefix + "/config")
        if kv is None:
            raise SubnetError(f"flannel config not found in etcd store at {self.prefix}/config. "
                              "Did you create your config using etcdv3 API?")
        return NetworkConfig.parse(kv.value)

    # -- acquire / renew --------------------------------------------------------------------
    def acquire(self, public_ip: str, backend_type: str, backend_data: dict[str, Any],
                previous: IPv4Network | None) -> Lease:
        config = self.network_config()
        attrs = LeaseAttrs(public_ip, backend_type, dict(backend_data))
        for attempt in range(1, RACE_RETRIES + 1):
            try:
                return self._try_acquire(config, attrs, previous)
            except _TryAgain as why:
                log.info("acquire attempt %d lost a race (%s); retrying", attempt, why)
        raise SubnetError("Max retries reached trying to acquire a subnet")

    def _try_acquire(self, config: NetworkConfig, attrs: LeaseAttrs, previous: IPv4Network | None) -> Lease:
        kvs, _, _ = self.store.list(self.subnets_prefix)
        current = {lease.subnet: (lease, kv) for kv in kvs if (lease := self._lease_from(kv)) is not None}
        plan = plan_acquire(config, {sn: lease for sn, (lease, _) in current.items()}, attrs.public_ip,
                            previous, self.rng)
        for subnet in plan.delete:
            log.info("deleting lease %s of this host: not compatible with the network config", subnet)
            self._delete(subnet, current[subnet][1])
        if plan.reuse is not None:
            log.info("found lease %s for public IP %s, reusing", plan.reuse.subnet, attrs.public_ip)
            return self._write(plan.reuse.subnet, attrs, current[plan.reuse.subnet][1])
        return self._write(_created(plan), attrs, None)

    def _delete(self, subnet: IPv4Network, kv: KeyValue) -> None:
        try:
            self.store.delete(kv.key, kv.mod_revision)
        except NotFound:
            pass
        except Conflict as err:
            raise _TryAgain(f"{subnet} changed before we could delete it") from err

    def _write(self, subnet: IPv4Network, attrs: LeaseAttrs, existing: KeyValue | None) -> Lease:
        """Create (existing None) or overwrite our key; a reservation (no etcd lease) stays one."""
        key, value = subnet_key(self.prefix, subnet), encode_attrs(attrs)
        etcd_lease = 0 if existing is not None and existing.lease == 0 else self.store.grant_lease(self.ttl)
        try:
            if existing is None:
                revision = self.store.create(key, value, lease=etcd_lease)
            else:
                revision = self.store.update(key, value, existing.mod_revision, lease=etcd_lease)
        except (AlreadyExists, Conflict, NotFound) as err:
            if etcd_lease:
                self.store.revoke_lease(etcd_lease)
            raise _TryAgain(f"{subnet}: {err}") from err
        return self._became_own(subnet, attrs, etcd_lease, revision)

    def _became_own(self, subnet: IPv4Network, attrs: LeaseAttrs, etcd_lease: int, revision: int) -> Lease:
        expiration = self.clock() + self.ttl if etcd_lease else None
        lease = Lease(subnet, attrs.public_ip, attrs.backend_type, dict(attrs.backend_data), expiration)
        with self._lock:
            self._own, self._own_revision, self._own_etcd_lease = lease, revision, etcd_lease
            if etcd_lease and expiration is not None:
                self._deadlines[etcd_lease] = expiration
        return lease

    def stored_backend_data(self, public_ip: str, backend_type: str) -> dict[str, Any]:
        """The BackendData our PublicIP's lease last published (e.g. the VtepMAC), so a rebooted
        host can recreate its device with the same MAC peers already know; {} if none."""
        kvs, _, _ = self.store.list(self.subnets_prefix)
        for kv in kvs:
            if parse_subnet_key(kv.key) is None:
                continue
            try:
                attrs = decode_attrs(kv.value)
            except ValueError:
                continue
            if attrs.public_ip == public_ip and attrs.backend_type == backend_type:
                return dict(attrs.backend_data)
        return {}

    def renew(self, lease: Lease) -> Lease:
        key = subnet_key(self.prefix, lease.subnet)
        kv = self.store.get(key)
        current = self._lease_from(kv) if kv is not None else None
        if kv is None or current is None or current.public_ip != lease.public_ip:
            self._drop_own_etcd_lease(kv)
            raise LeaseLost(f"lease {lease.subnet} is gone or taken over; acquire again")
        if kv.lease == 0:  # a reservation: nothing expires, nothing to renew
            return self._became_own(lease.subnet, lease.attrs, 0, kv.mod_revision)
        try:
            renewed = self._write(lease.subnet, lease.attrs, kv)
        except _TryAgain as err:
            raise LeaseLost(f"lease {lease.subnet} changed while renewing: {err}") from err
        self.store.revoke_lease(kv.lease)  # it holds no key any more (ours moved to the new lease)
        return renewed

    def _drop_own_etcd_lease(self, kv: KeyValue | None) -> None:
        """Our key is gone or someone else's now: our etcd lease guards nothing; end it early."""
        with self._lock:
            etcd_lease, self._own_etcd_lease = self._own_etcd_lease, 0
        if etcd_lease and (kv is None or kv.lease != etcd_lease):
            self.store.revoke_lease(etcd_lease)

    # -- watch ------------------------------------------------------------------------------
    def leases(self) -> dict[IPv4Network, Lease]:
        with self._lock:
            return dict(self._cache)

    def own_lease_lost(self) -> bool:
        with self._lock:
            own = self._own
            if own is None or self._cache_revision < self._own_revision:
                return False  # the cache has not yet seen our own write
            seen = self._cache.get(own.subnet)
            return seen is None or seen.public_ip != own.public_ip

    def run_watch(self, on_change: Callable[[], None], stop: threading.Event) -> None:
        threading.Thread(target=self._cancel_on, args=(stop,), name="lease-watch-stop", daemon=True).start()
        since, backoff = 0, BACKOFF_INITIAL
        while not stop.is_set():
            try:
                if since == 0:
                    since = self._relist() + 1
                    on_change()
                since = self._watch_from(since, on_change, stop)
                backoff = BACKOFF_INITIAL
            except Compacted:
                log.info("lease watch: revision %d compacted; re-listing", since)
                since = 0
            except Exception as err:  # never raise: the daemon keeps its dataplane meanwhile
                log.warning("lease watch failed (%s); retrying in %.1fs", err, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    def _cancel_on(self, stop: threading.Event) -> None:
        stop.wait()
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.cancel()

    def _relist(self) -> int:
        kvs, revision, _ = self.store.list(self.subnets_prefix)
        fresh = {lease.subnet: lease for kv in kvs if (lease := self._lease_from(kv)) is not None}
        with self._lock:
            self._cache, self._cache_revision = fresh, revision
            live = {kv.lease for kv in kvs}
            self._deadlines = {i: d for i, d in self._deadlines.items() if i in live}
        return revision

    def _watch_from(self, since: int, on_change: Callable[[], None], stop: threading.Event) -> int:
        stream = self.store.watch(self.subnets_prefix, since)
        with self._lock:
            self._stream = stream
        if stop.is_set():  # stop raced the assignment above: _cancel_on may have missed it
            stream.cancel()
        try:
            for batch in stream:
                since = self._apply(batch) + 1
                on_change()
        finally:
            with self._lock:
                self._stream = None
        return since

    def _apply(self, batch: list[Event]) -> int:
        leases = [(ev, self._lease_from(ev.kv) if ev.type == "PUT" else None) for ev in batch]
        with self._lock:
            for ev, lease in leases:
                subnet = parse_subnet_key(ev.kv.key)
                if subnet is None:
                    continue
                if lease is None:
                    self._cache.pop(subnet, None)  # deleted, expired, or unreadable
                else:
                    self._cache[subnet] = lease
            self._cache_revision = max(ev.kv.mod_revision for ev in batch)
            return self._cache_revision

    def _lease_from(self, kv: KeyValue) -> Lease | None:
        subnet = parse_subnet_key(kv.key)
        if subnet is None:
            return None
        try:
            attrs = decode_attrs(kv.value)
        except ValueError as err:
            log.warning("ignoring unreadable lease %s: %s", kv.key, err)
            return None
        return Lease(subnet, attrs.public_ip, attrs.backend_type, attrs.backend_data,
                     self._expiration(kv.lease))

    def _expiration(self, etcd_lease: int) -> float | None:
        # An etcd lease's deadline only moves on keep-alive, which flanneld never sends (renewal
        # is a new lease), so one TimeToLive per lease id is enough.
        if etcd_lease == 0:
            return None
        with self._lock:
            known = self._deadlines.get(etcd_lease)
        if known is not None:
            return known
        ttl = self.store.lease_time_to_live(etcd_lease)
        deadline = self.clock() + max(ttl, 0)
        with self._lock:
            self._deadlines[etcd_lease] = deadline
        return deadline


def _created(plan: Plan) -> IPv4Network:
    assert plan.create is not None  # plan_acquire returns reuse or create
    return plan.create
