"""host-local allocation policy, independent of where reservations are kept.

The pure part is `candidates` (round-robin order of a range set).  The operations (`allocate`,
`release`, `gc`, `lookup`, `free_counts`) take a `Store` and run each under the store's lock, so
one ADD, DEL or GC is atomic with respect to every other caller of the same network, including
the reference host-local plugin (which takes the same flock).  `MemoryStore` is the in-memory
Store for unit tests, like the reference's backend/testing fake.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from cni import skel
from cni.ipam.config import IP, Range, RangeSet, describe, range_for, set_contains


@dataclass(frozen=True)
class Owner:
    """Who holds an address: an attachment (containerID, ifname).  `ifname` is None for files
    written before the reference plugin recorded the interface (id only)."""

    container_id: str
    ifname: str | None

    def matches(self, container_id: str, ifname: str) -> bool:
        return self.container_id == container_id and self.ifname == ifname

    def legacy_of(self, container_id: str) -> bool:
        return self.ifname is None and self.container_id == container_id


class Store(Protocol):
    """Reservations of one network.  Every method but `locked` is called with the lock held."""

    def locked(self) -> AbstractContextManager[None]: ...

    def held(self) -> dict[IP, Owner]: ...

    def reserve(self, ip: IP, owner: Owner, set_index: int) -> bool:
        """Create the reservation unless the address is taken (False); remember `ip` as the
        last reservation of range set `set_index`."""
        ...

    def release(self, ip: IP) -> None: ...

    def last_reserved(self, set_index: int) -> IP | None: ...


@dataclass
class MemoryStore:
    """Store kept in a dict; `lock_depth` lets tests assert every access was locked."""

    reservations: dict[IP, Owner] = field(default_factory=dict)
    last: dict[int, IP] = field(default_factory=dict)
    lock_depth: int = 0

    @contextmanager
    def locked(self) -> Iterator[None]:
        assert self.lock_depth == 0, "the store lock is not reentrant (flock on a new fd)"
        self.lock_depth += 1
        try:
            yield
        finally:
            self.lock_depth -= 1

    def held(self) -> dict[IP, Owner]:
        assert self.lock_depth
        return dict(self.reservations)

    def reserve(self, ip: IP, owner: Owner, set_index: int) -> bool:
        assert self.lock_depth
        if ip in self.reservations:
            return False
        self.reservations[ip] = owner
        self.last[set_index] = ip
        return True

    def release(self, ip: IP) -> None:
        assert self.lock_depth
        self.reservations.pop(ip, None)

    def last_reserved(self, set_index: int) -> IP | None:
        assert self.lock_depth
        return self.last.get(set_index)


@dataclass(frozen=True)
class Allocation:
    ip: IP
    range: Range

    def ip_config(self) -> dict[str, str]:
        """The result's `ips[]` entry (IPAM results carry no `interface` index)."""
        return {"address": f"{self.ip}/{self.range.subnet.prefixlen}", "gateway": str(self.range.gateway)}


def candidates(rset: RangeSet, last: IP | None) -> Iterator[IP]:
    """Every allocatable address of the set once, round-robin: from right after `last` (the
    previous reservation), wrapping over the set's ranges, so a crash-looping pod does not get
    back the address it just released (reference allocator.go GetIter)."""
    idx, first = _resume_point(rset, last)
    n = len(rset)
    segments = [(rset[idx], int(first), int(rset[idx].end))]
    segments += [(rset[(idx + k) % n], int(rset[(idx + k) % n].start), int(rset[(idx + k) % n].end))
                 for k in range(1, n)]
    segments.append((rset[idx], int(rset[idx].start), int(first) - 1))
    for rng, low, high in segments:
        excluded, make = rng.excluded(), type(rng.start)
        for value in range(low, high + 1):
            ip = make(value)
            if ip not in excluded:
                yield ip


def _resume_point(rset: RangeSet, last: IP | None) -> tuple[int, IP]:
    """(range index, first address to try).  A `last` outside the set (the ranges changed) just
    loses round-robin once, as in the reference."""
    if last is not None:
        for i, rng in enumerate(rset):
            if rng.contains(last):
                if last != rng.end:
                    return i, last + 1
                following = (i + 1) % len(rset)
                return following, rset[following].start
    return 0, rset[0].start


def allocatable_count(rset: RangeSet) -> int:
    return sum(int(r.end) - int(r.start) + 1 - sum(1 for ip in r.excluded() if r.contains(ip))
               for r in rset)


def assign_requested(sets: Sequence[RangeSet], requested: Sequence[IP]) -> list[IP | None]:
    """The requested IP each range set must give (the first requested IP inside it), or None.
    A requested IP no set can give is a config error, raised before anything is reserved."""
    wanted: list[IP | None] = []
    left = list(requested)
    for rset in sets:
        ip = next((ip for ip in left if set_contains(rset, ip)), None)
        if ip is not None:
            left.remove(ip)
            rng = range_for(rset, ip)
            if rng is not None and ip in rng.excluded():
                what = "gateway" if ip == rng.gateway else "network or broadcast address"
                raise skel.CniError(skel.INVALID_CONFIG, f"host-local: requested IP {ip} is the "
                                    f"{what} of {rng.subnet}")
        wanted.append(ip)
    if left:
        raise skel.CniError(skel.INVALID_CONFIG, "host-local: failed to allocate all requested IPs: "
                            f"{', '.join(map(str, left))} not in any range set (or two in one set)")
    return wanted


def allocate(store: Store, sets: Sequence[RangeSet], requested: Sequence[IP],
             container_id: str, ifname: str) -> list[Allocation]:
    """One address per range set for the attachment, all or nothing."""
    owner = Owner(container_id, ifname)
    wanted = assign_requested(sets, requested)
    with store.locked():
        held = store.held()
        _refuse_duplicate(held, sets, container_id, ifname)
        done: list[Allocation] = []
        try:
            for index, rset in enumerate(sets):
                done.append(_allocate_one(store, held, index, rset, wanted[index], owner))
        except Exception:
            # Spec: a failed ADD leaves nothing behind; set 1 must not stay reserved when set 2
            # fails (reference main.go releases on the same path).
            for allocation in done:
                store.release(allocation.ip)
            raise
        return done


def _refuse_duplicate(held: dict[IP, Owner], sets: Sequence[RangeSet], container_id: str,
                      ifname: str) -> None:
    """The runtime never ADDs an attachment twice without DEL (SPEC section 3); an address
    already held in one of our sets (also via an id-only legacy file, as the reference does)
    means it did, and a second address would leak."""
    for ip, owner in held.items():
        if (owner.matches(container_id, ifname) or owner.legacy_of(container_id)) and any(
                set_contains(rset, ip) for rset in sets):
            raise skel.CniError(skel.ALREADY_ATTACHED, f"host-local: {ip} has been allocated to "
                                f"{container_id}/{ifname}, duplicate allocation is not allowed")


def _allocate_one(store: Store, held: dict[IP, Owner], index: int, rset: RangeSet, wanted: IP | None,
                  owner: Owner) -> Allocation:
    if wanted is not None:
        holder = held.get(wanted)
        if holder is not None or not store.reserve(wanted, owner, index):
            by = f" by {holder.container_id}" if holder else ""
            raise skel.CniError(skel.INTERNAL, f"host-local: requested IP address {wanted} is "
                                f"already allocated{by} (range set {describe(rset)})")
        held[wanted] = owner
        return Allocation(wanted, _range_of(rset, wanted))
    for ip in candidates(rset, store.last_reserved(index)):
        if ip not in held and store.reserve(ip, owner, index):
            held[ip] = owner
            return Allocation(ip, _range_of(rset, ip))
    raise skel.CniError(skel.POOL_EXHAUSTED, f"host-local: no IP addresses available in range set "
                        f"{index} ({describe(rset)})")


def _range_of(rset: RangeSet, ip: IP) -> Range:
    rng = range_for(rset, ip)
    assert rng is not None, f"{ip} was picked from {describe(rset)}"
    return rng


def _attachment_ips(held: dict[IP, Owner], container_id: str, ifname: str) -> list[IP]:
    """What the attachment holds; id-only legacy files count only when no exact file exists
    (reference disk backend ReleaseByID / FindByID)."""
    exact = [ip for ip, owner in held.items() if owner.matches(container_id, ifname)]
    return exact or [ip for ip, owner in held.items() if owner.legacy_of(container_id)]


def release(store: Store, container_id: str, ifname: str) -> list[IP]:
    """Free everything the attachment holds; nothing held is success (DEL is idempotent)."""
    with store.locked():
        ips = _attachment_ips(store.held(), container_id, ifname)
        for ip in ips:
            store.release(ip)
    return ips


def lookup(store: Store, container_id: str, ifname: str) -> list[IP]:
    with store.locked():
        return _attachment_ips(store.held(), container_id, ifname)


def gc(store: Store, keep: Iterable[tuple[str, str]]) -> list[IP]:
    """Free every reservation not owned by an attachment in `keep` (CNI 1.1 GC).

    An id-only legacy file is kept when its container ID appears in `keep` with any ifname:
    it cannot say which interface it was for, and releasing a live pod's address after an
    upgrade is worse than keeping a stale one (plugins PR #1289 discussion).  A file with no
    owner at all (a writer killed between create and write) is never valid and is freed.
    """
    pairs = set(keep)
    ids = {container_id for container_id, _ in pairs}
    freed = []
    with store.locked():
        for ip, owner in store.held().items():
            if owner.ifname is None:
                valid = owner.container_id in ids
            else:
                valid = (owner.container_id, owner.ifname) in pairs
            if not valid:
                store.release(ip)
                freed.append(ip)
    return freed


def free_counts(store: Store, sets: Sequence[RangeSet]) -> list[int]:
    """Free addresses per range set (for STATUS), from counts rather than by iterating, since an
    IPv6 range can hold 2**64 addresses."""
    with store.locked():
        held = list(store.held())
    return [allocatable_count(rset) - sum(1 for ip in held if any(r.allocatable(ip) for r in rset))
            for rset in sets]
