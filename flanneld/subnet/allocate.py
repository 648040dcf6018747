"""Pure subnet allocation (upstream pkg/subnet/etcd/local_manager.go allocateSubnet, tryAcquireLease).

Candidates are walked from SubnetMin to SubnetMax in SubnetLen steps; any that overlaps an existing
lease (of any length, e.g. a hand-made reservation) is skipped; the walk stops at 100 free ones and
one is picked uniformly at random, so concurrent joiners rarely race for the same key.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network

from flanneld.config import NetworkConfig
from flanneld.lease import Lease
from flanneld.subnet.base import SubnetError

__all__ = ["CANDIDATES", "OutOfSubnets", "Plan", "free_candidates", "plan_acquire"]

CANDIDATES = 100  # upstream stops collecting free subnets at 100


class OutOfSubnets(SubnetError):
    def __init__(self, config: NetworkConfig) -> None:
        super().__init__(f"out of subnets in {config.network} (SubnetMin {config.subnet_min}, "
                         f"SubnetMax {config.subnet_max}, SubnetLen {config.subnet_len})")


class _Taken:
    """Overlap test against many leases in O(prefix length) integer ops per candidate (a
    /8 network has 65k candidates; ipaddress objects would make each walk slow)."""

    def __init__(self, subnets: Iterable[IPv4Network], subnet_len: int) -> None:
        self.subnet_len = subnet_len
        self.exact: set[tuple[int, int]] = set()  # (network address, prefix length)
        self.inside: set[int] = set()  # SubnetLen-sized blocks holding a longer lease
        for sn in subnets:
            addr = int(sn.network_address)
            self.exact.add((addr, sn.prefixlen))
            if sn.prefixlen > subnet_len:
                self.inside.add(addr & _mask(subnet_len))

    def overlaps(self, candidate: IPv4Network) -> bool:
        addr = int(candidate.network_address)
        if candidate.prefixlen == self.subnet_len and addr in self.inside:
            return True
        return any((addr & _mask(p), p) in self.exact for p in range(candidate.prefixlen + 1))


def _mask(prefixlen: int) -> int:
    return (0xFFFFFFFF << (32 - prefixlen)) & 0xFFFFFFFF


def free_candidates(config: NetworkConfig, taken: Iterable[IPv4Network],
                    limit: int = CANDIDATES) -> list[IPv4Network]:
    blocks = _Taken(taken, config.subnet_len)
    out: list[IPv4Network] = []
    addr, size = int(config.subnet_min), config.subnet_size
    while addr <= int(config.subnet_max) and len(out) < limit:
        candidate = IPv4Network((addr, config.subnet_len))
        if not blocks.overlaps(candidate):
            out.append(candidate)
        addr += size
    return out


@dataclass(frozen=True)
class Plan:
    """What one acquire attempt does: reuse `reuse`, else create `create`; first delete `delete`."""

    reuse: Lease | None = None
    create: IPv4Network | None = None
    delete: tuple[IPv4Network, ...] = ()


def plan_acquire(config: NetworkConfig, leases: Mapping[IPv4Network, Lease], public_ip: str,
                 previous: IPv4Network | None, rng: random.Random) -> Plan:
    """Upstream's order: our PublicIP's lease if compatible; else `previous` (subnet.env) if
    compatible and free; else a random free candidate. Our incompatible leases are deleted first,
    except reservations (no TTL), which an operator made and only an operator removes."""
    mine = sorted((lease for lease in leases.values() if lease.public_ip == public_ip),
                  key=lambda lease: lease.subnet)
    for lease in mine:
        if config.is_compatible(lease.subnet):
            return Plan(reuse=lease)
    stale = tuple(lease.subnet for lease in mine if lease.expiration is not None)
    taken = [sn for sn in leases if sn not in stale]
    if previous is not None and config.is_compatible(previous) and not _Taken(
            taken, config.subnet_len).overlaps(previous):
        return Plan(create=previous, delete=stale)
    candidates = free_candidates(config, taken)
    if not candidates:
        raise OutOfSubnets(config)
    return Plan(create=rng.choice(candidates), delete=stale)
