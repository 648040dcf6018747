"""ClusterIP and NodePort allocation, persisted in the Store.

Every reserved value is one key (`<prefix>/ranges/serviceips/<ip>`, `<prefix>/ranges/servicenodeports/
<port>`) created with `Store.create`, which is atomic in etcd (a transaction on create_revision == 0):
two requests (threads, or several API server processes sharing etcd) can never both win the same
value, and reservations survive restarts without any in-process state.  This is the shape of
upstream's newer per-IP `IPAddress` objects (KEP-1880) rather than the old single bitmap object,
which needed a read-modify-write loop on one hot key.

Search order follows upstream's bitmap allocator: a few random probes, then a scan from a random
offset over what is not yet taken; "range is full" when nothing is left.  The first address of the
range is kept for the `kubernetes` service (allocated only when asked for by value), as upstream's
master controller does.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import random
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from controlplane.apiserver import errors as api_errors
from podnet.errors import AlreadyExists, NotFound
from podnet.store.base import KeyValue

RANDOM_PROBES = 16


class AllocationError(ValueError):
    """A value could not be reserved; `str()` is upstream's wording."""


class RangeFull(AllocationError):
    def __init__(self) -> None:
        super().__init__("range is full")


class AlreadyAllocated(AllocationError):
    pass


class NotInRange(AllocationError):
    pass


class _Store(Protocol):
    """The part of podnet.store.base.Store an allocator uses."""

    def list(self, prefix: str, *, limit: int = 0, start_key: str | None = None,
             revision: int = 0) -> tuple[list[KeyValue], int, bool]: ...

    def create(self, key: str, value: bytes) -> int: ...

    def delete(self, key: str, expected_mod_revision: int | None = None) -> tuple[int, KeyValue]: ...


class _KeyAllocator:
    """Reserves members of an indexed range [0, size) as one Store key each."""

    def __init__(self, store: _Store, key_prefix: str, size: int, rng: random.Random | None) -> None:
        self._store = store
        self._prefix = key_prefix.rstrip("/") + "/"
        self._size = size
        self._rng = rng or random.Random()

    def _value(self, index: int) -> str:
        raise NotImplementedError

    def _dynamic(self, index: int) -> bool:
        """Whether a dynamic allocation may hand out `index`."""
        return True

    def _reserve(self, value: str, owner: str) -> bool:
        try:
            self._store.create(self._prefix + value, json.dumps({"owner": owner}).encode())
        except AlreadyExists:
            return False
        return True

    def _allocate_next(self, owner: str) -> str:
        if self._size <= 0:
            raise RangeFull()
        for _ in range(min(RANDOM_PROBES, self._size)):
            index = self._rng.randrange(self._size)
            if self._dynamic(index) and self._reserve(self._value(index), owner):
                return self._value(index)
        taken = self.allocated()
        for index in self._scan_order():
            value = self._value(index)
            if value not in taken and self._dynamic(index) and self._reserve(value, owner):
                return value
        raise RangeFull()

    def _scan_order(self) -> Iterator[int]:
        start = self._rng.randrange(self._size)
        yield from range(start, self._size)
        yield from range(start)

    def allocated(self) -> set[str]:
        items, _, _ = self._store.list(self._prefix)
        return {kv.key[len(self._prefix):] for kv in items}

    def owners(self) -> dict[str, str]:
        """Reserved value -> owner recorded at allocation (`<namespace>/<service>`)."""
        items, _, _ = self._store.list(self._prefix)
        return {kv.key[len(self._prefix):]: json.loads(kv.value).get("owner", "") for kv in items}

    def _release(self, value: str) -> None:
        with contextlib.suppress(NotFound):  # releasing twice (a retried delete) is fine
            self._store.delete(self._prefix + value)


class ClusterIPAllocator(_KeyAllocator):
    """Service IPs from `cidr` (upstream --service-cluster-ip-range)."""

    def __init__(self, store: _Store, cidr: str, prefix: str = "/registry",
                 rng: random.Random | None = None) -> None:
        self.network = ipaddress.ip_network(cidr, strict=False)
        self.range = str(self.network)
        # the network address is never usable; IPv4 also loses the broadcast address
        size = self.network.num_addresses - (2 if self.network.version == 4 else 1)
        super().__init__(store, f"{prefix.rstrip('/')}/ranges/serviceips", max(size, 0), rng)

    @property
    def kubernetes_ip(self) -> str:
        """The first usable address: the `default/kubernetes` service's ClusterIP."""
        return self._value(0)

    def _value(self, index: int) -> str:
        return str(self.network.network_address + 1 + index)

    def _dynamic(self, index: int) -> bool:
        return index != 0 or self._size == 1

    def _index(self, ip: str) -> int | None:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return None
        index = int(address) - int(self.network.network_address) - 1
        return index if address.version == self.network.version and 0 <= index < self._size else None

    def allocate(self, specific: str | None = None, owner: str = "") -> str:
        """Reserve `specific`, or any free address; raises AlreadyAllocated, NotInRange, RangeFull."""
        if specific is None:
            return self._allocate_next(owner)
        index = self._index(specific)
        if index is None:
            raise NotInRange(f"the provided IP ({specific}) is not in the valid range. "
                             f"The range of valid IPs is {self.range}")
        value = self._value(index)
        if not self._reserve(value, owner):
            raise AlreadyAllocated("provided IP is already allocated")
        return value

    def release(self, ip: str) -> None:
        index = self._index(ip)
        if index is not None:
            self._release(self._value(index))


def parse_port_range(text: str) -> tuple[int, int]:
    """Upstream PortRange syntax: `30000-32767`, `30000+2767` or a single port."""
    text = text.strip()
    try:
        if "-" in text:
            low, high = (int(p) for p in text.split("-", 1))
        elif "+" in text:
            low, offset = (int(p) for p in text.split("+", 1))
            high = low + offset
        else:
            low = high = int(text)
    except ValueError:
        raise ValueError(f"unable to parse port range: {text}") from None
    if not 0 < low <= high <= 65535:
        raise ValueError(f"invalid port range: {text}")
    return low, high


class NodePortAllocator(_KeyAllocator):
    """Node ports from `port_range` (upstream --service-node-port-range)."""

    def __init__(self, store: _Store, port_range: str = "30000-32767", prefix: str = "/registry",
                 rng: random.Random | None = None) -> None:
        self.low, self.high = parse_port_range(port_range)
        self.range = f"{self.low}-{self.high}"
        super().__init__(store, f"{prefix.rstrip('/')}/ranges/servicenodeports",
                         self.high - self.low + 1, rng)

    def _value(self, index: int) -> str:
        return str(self.low + index)

    def allocate(self, specific: int | None = None, owner: str = "") -> int:
        """Reserve `specific`, or any free port; raises AlreadyAllocated, NotInRange, RangeFull."""
        if specific is None:
            return int(self._allocate_next(owner))
        if not self.low <= specific <= self.high:
            raise NotInRange(f"provided port is not in the valid range. "
                             f"The range of valid ports is {self.range}")
        if not self._reserve(str(specific), owner):
            raise AlreadyAllocated("provided port is already allocated")
        return specific

    def release(self, port: int) -> None:
        if self.low <= port <= self.high:
            self._release(str(port))

    def allocated_ports(self) -> set[int]:
        return {int(p) for p in self.allocated()}


# ------------------------------------------------------------------------- services


class Reservation:
    """What one service create/update reserved: `undo()` when the write of the service failed,
    `commit()` after it succeeded (frees what the old version held and the new one dropped)."""

    def __init__(self) -> None:
        self._undo: list[Callable[[], None]] = []
        self._on_commit: list[Callable[[], None]] = []

    def reserved(self, release: Callable[[], None]) -> None:
        self._undo.append(release)

    def release_on_commit(self, release: Callable[[], None]) -> None:
        self._on_commit.append(release)

    def undo(self) -> None:
        for release in reversed(self._undo):
            release()
        self._undo.clear()
        self._on_commit.clear()

    def commit(self) -> None:
        for release in self._on_commit:
            release()
        self._undo.clear()
        self._on_commit.clear()


def _needs_cluster_ip(spec: dict[str, Any]) -> bool:
    return spec.get("type", "ClusterIP") != "ExternalName" and spec.get("clusterIP") != "None"


def _needs_node_ports(spec: dict[str, Any]) -> bool:
    kind = spec.get("type", "ClusterIP")
    if kind == "LoadBalancer":
        return spec.get("allocateLoadBalancerNodePorts", True) is not False
    return bool(kind == "NodePort")


def _needs_health_check_port(spec: dict[str, Any]) -> bool:
    return spec.get("type") == "LoadBalancer" and spec.get("externalTrafficPolicy") == "Local"


def _requested_ip(spec: dict[str, Any]) -> str:
    ips = spec.get("clusterIPs") or []
    return str(spec.get("clusterIP") or (ips[0] if ips else ""))


def _port_key(port: dict[str, Any]) -> tuple[int, str]:
    return int(port.get("port", 0)), str(port.get("protocol", "TCP"))


def _node_ports(spec: dict[str, Any]) -> dict[tuple[int, str], int]:
    if not _needs_node_ports(spec):
        return {}
    return {_port_key(p): int(p["nodePort"]) for p in spec.get("ports") or [] if p.get("nodePort")}


class ServiceAllocators:
    """Assigns and frees a Service's ClusterIP, node ports and health-check node port.

    `reserve_create` / `reserve_update` fill the spec in place (clusterIP and clusterIPs, each
    port's nodePort) and raise ApiError with upstream's wording: 422 Invalid for a requested value
    that is taken or out of range, 500 InternalError "failed to allocate a serviceIP: range is
    full" when the range is exhausted.  On error nothing stays reserved.
    """

    def __init__(self, ips: ClusterIPAllocator, ports: NodePortAllocator) -> None:
        self.ips = ips
        self.ports = ports

    def reserve_create(self, service: dict[str, Any]) -> Reservation:
        return self.reserve_update(None, service)

    def reserve_update(self, old: dict[str, Any] | None, new: dict[str, Any]) -> Reservation:
        """Reserve what `new` needs beyond `old` (None for a create); values `new` leaves unset
        are carried over from `old` like upstream's patchAllocatedValues."""
        reservation = Reservation()
        try:
            self._assign_cluster_ip(old, new, reservation)
            self._assign_node_ports(old, new, reservation)
            self._assign_health_check_port(old, new, reservation)
        except BaseException:
            reservation.undo()
            raise
        return reservation

    def release(self, service: dict[str, Any]) -> None:
        """Free everything a deleted service held."""
        spec = service.get("spec") or {}
        if _needs_cluster_ip(spec) and _requested_ip(spec):
            self.ips.release(_requested_ip(spec))
        for node_port in set(_node_ports(spec).values()):
            self.ports.release(node_port)
        if _needs_health_check_port(spec) and spec.get("healthCheckNodePort"):
            self.ports.release(int(spec["healthCheckNodePort"]))

    def _assign_cluster_ip(self, old: dict[str, Any] | None, new: dict[str, Any],
                           reservation: Reservation) -> None:
        spec, old_spec = new.setdefault("spec", {}), (old or {}).get("spec") or {}
        old_ip = _requested_ip(old_spec) if old and _needs_cluster_ip(old_spec) else ""
        if spec.get("clusterIP") == "None":
            spec["clusterIPs"] = ["None"]
        elif _needs_cluster_ip(spec):
            wanted = _requested_ip(spec) or old_ip
            if wanted != old_ip or not old_ip:
                wanted = self._reserve_ip(wanted or None, _owner(new), reservation)
            spec["clusterIP"], spec["clusterIPs"] = wanted, [wanted]
        if old_ip and _requested_ip(spec) != old_ip:
            reservation.release_on_commit(lambda: self.ips.release(old_ip))

    def _reserve_ip(self, wanted: str | None, owner: str, reservation: Reservation) -> str:
        try:
            ip = self.ips.allocate(wanted, owner)
        except RangeFull as err:
            raise api_errors.internal(f"failed to allocate a serviceIP: {err}") from None
        except AllocationError as err:
            raise _invalid_ip(owner, wanted or "", err) from None
        reservation.reserved(lambda: self.ips.release(ip))
        return ip

    def _assign_node_ports(self, old: dict[str, Any] | None, new: dict[str, Any],
                           reservation: Reservation) -> None:
        spec = new.setdefault("spec", {})
        previous = _node_ports((old or {}).get("spec") or {})
        kept: set[int] = set()
        if _needs_node_ports(spec):
            for index, port in enumerate(spec.get("ports") or []):
                wanted = int(port.get("nodePort") or previous.get(_port_key(port), 0))
                if wanted and (wanted in kept or wanted in previous.values()):
                    port["nodePort"] = wanted  # shared by TCP and UDP of one port, or kept from old
                else:
                    port["nodePort"] = self._reserve_port(wanted or None, new, f"spec.ports[{index}]"
                                                          ".nodePort", reservation)
                kept.add(port["nodePort"])
        for node_port in set(previous.values()) - kept:
            reservation.release_on_commit(functools.partial(self.ports.release, node_port))

    def _assign_health_check_port(self, old: dict[str, Any] | None, new: dict[str, Any],
                                  reservation: Reservation) -> None:
        spec, old_spec = new.setdefault("spec", {}), (old or {}).get("spec") or {}
        old_port = int(old_spec.get("healthCheckNodePort") or 0) if _needs_health_check_port(old_spec) else 0
        if _needs_health_check_port(spec):
            wanted = int(spec.get("healthCheckNodePort") or old_port)
            if wanted != old_port or not old_port:
                wanted = self._reserve_port(wanted or None, new, "spec.healthCheckNodePort", reservation)
            spec["healthCheckNodePort"] = wanted
        if old_port and int(spec.get("healthCheckNodePort") or 0) != old_port:
            reservation.release_on_commit(lambda: self.ports.release(old_port))

    def _reserve_port(self, wanted: int | None, service: dict[str, Any], field: str,
                      reservation: Reservation) -> int:
        try:
            port = self.ports.allocate(wanted, _owner(service))
        except RangeFull as err:
            raise api_errors.internal(f"failed to allocate a nodePort: {err}") from None
        except AllocationError as err:
            name = (service.get("metadata") or {}).get("name", "")
            cause = {"reason": "FieldValueInvalid", "field": field,
                     "message": f"Invalid value: {wanted}: {err}"}
            raise api_errors.invalid("Service", name, [cause]) from None
        reservation.reserved(lambda: self.ports.release(port))
        return port


def _owner(service: dict[str, Any]) -> str:
    meta = service.get("metadata") or {}
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def _invalid_ip(owner: str, ip: str, err: AllocationError) -> api_errors.ApiError:
    """Upstream: `spec.clusterIPs: Invalid value: []string{"10.96.0.10"}: failed to allocate IP
    10.96.0.10: provided IP is already allocated`."""
    cause = {"reason": "FieldValueInvalid", "field": "spec.clusterIPs",
             "message": f'Invalid value: []string{{"{ip}"}}: failed to allocate IP {ip}: {err}'}
    return api_errors.invalid("Service", owner.split("/", 1)[-1], [cause])


# --------------------------------------------------------------------------------- repair


def values_in_use(services: list[dict[str, Any]]) -> tuple[set[str], set[int]]:
    """The ClusterIPs and node ports the stored services hold."""
    ips: set[str] = set()
    ports: set[int] = set()
    for svc in services:
        spec = svc.get("spec") or {}
        if _needs_cluster_ip(spec) and _requested_ip(spec):
            ips.add(_requested_ip(spec))
        ports.update(_node_ports(spec).values())
        if _needs_health_check_port(spec) and spec.get("healthCheckNodePort"):
            ports.add(int(spec["healthCheckNodePort"]))
    return ips, ports


class AllocationRepair:
    """Upstream's repair loops (pkg/registry/core/service/ipallocator/controller/repair.go and the
    portallocator one), to run every few minutes against a listing of all services.

    A reservation no service holds is released only after it was seen leaked in `rounds`
    consecutive runs: a create in flight holds its reservation before the service is stored, and a
    crash between the two (kill -9 of the API server) leaves exactly such a leak.  A value a
    service holds without a reservation (data restored from a backup) is reserved again.
    """

    def __init__(self, allocators: ServiceAllocators, rounds: int = 3) -> None:
        self.allocators = allocators
        self.rounds = rounds
        self._ip_leaks: dict[str, int] = {}
        self._port_leaks: dict[int, int] = {}

    def run(self, services: list[dict[str, Any]]) -> tuple[list[str], list[int]]:
        """One pass over `services` (listed just before); returns the (ips, ports) released.  A
        create landing between that listing and this read of the reservations looks leaked once;
        the next pass sees its service, so `rounds` >= 2 keeps it (run_with takes reservations
        read before the listing, which closes even that window)."""
        return self.run_with(self.allocators.ips.allocated(), self.allocators.ports.allocated_ports(),
                             services)

    def run_with(self, reserved_ips: set[str], reserved_ports: set[int],
                 services: list[dict[str, Any]]) -> tuple[list[str], list[int]]:
        used_ips, used_ports = values_in_use(services)
        for ip in sorted(used_ips - reserved_ips):
            with contextlib.suppress(AllocationError):
                self.allocators.ips.allocate(ip, owner="repair")
        for port in sorted(used_ports - reserved_ports):
            with contextlib.suppress(AllocationError):
                self.allocators.ports.allocate(port, owner="repair")
        freed_ips = _due(self._ip_leaks, reserved_ips - used_ips, self.rounds)
        freed_ports = _due(self._port_leaks, reserved_ports - used_ports, self.rounds)
        for ip in freed_ips:
            self.allocators.ips.release(ip)
        for port in freed_ports:
            self.allocators.ports.release(port)
        return freed_ips, freed_ports


def _due(counts: dict[Any, int], leaked: set[Any], rounds: int) -> list[Any]:
    """Count consecutive sightings of each leaked value; the ones seen `rounds` times are due."""
    for value in list(counts):
        if value not in leaked:
            del counts[value]  # in use again (or released): start over
    due = []
    for value in sorted(leaked):
        counts[value] = counts.get(value, 0) + 1
        if counts[value] >= rounds:
            due.append(value)
            del counts[value]
    return due
