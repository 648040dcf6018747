"""Resource quantities and pod resource requests, as kube-scheduler computes them (pure).

Quantities follow k8s.io/apimachinery/pkg/api/resource: a signed decimal number followed by a
binary-SI suffix (Ki..Ei), a decimal-SI suffix (n, u, m, "", k, M..E) or a decimal exponent
(e3, E-2).  Values are kept exact (Fraction) and rounded UP when turned into integers, like
Quantity.Value()/MilliValue(), so "0.5m" of cpu asks for 1 millicore, never 0.

Resource lists are `dict[str, int]`: cpu in millicores, everything else (memory, pods,
ephemeral-storage, extended resources) in whole units.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Mapping
from fractions import Fraction
from typing import Any

__all__ = [
    "CPU",
    "DEFAULT_MEMORY_REQUEST",
    "DEFAULT_MILLI_CPU_REQUEST",
    "MEMORY",
    "PODS",
    "QuantityError",
    "add",
    "container_requests",
    "node_allocatable",
    "nonzero_requests",
    "parse_quantity",
    "pod_requests",
    "resource_list",
    "to_units",
]

CPU, MEMORY, PODS = "cpu", "memory", "pods"

# Upstream pkg/scheduler/util: what scoring assumes for a container that requests nothing, so a
# node full of best-effort pods does not look empty to least-allocated.
DEFAULT_MILLI_CPU_REQUEST = 100
DEFAULT_MEMORY_REQUEST = 200 * 1024 * 1024

_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_QUANTITY_RE = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(.*)$")
_EXPONENT_RE = re.compile(r"^[eE]([+-]?[0-9]+)$")


class QuantityError(ValueError):
    """A string that is not a Kubernetes resource quantity."""


def parse_quantity(text: str | int | float) -> Fraction:
    """Parse "100m", "2", "128Mi", "1G", "1e3" into an exact number of base units."""
    if isinstance(text, bool):
        raise QuantityError(f"quantities must be strings or numbers, not {text!r}")
    if isinstance(text, (int, float)):
        # JSON clients sometimes send bare numbers; upstream's UnmarshalJSON accepts them too.
        return Fraction(str(text))
    match = _QUANTITY_RE.match(text.strip())
    if match is None:
        raise QuantityError(f"quantities must match the regular expression: {text!r}")
    number, suffix = Fraction(match.group(1)), match.group(2)
    if suffix in _BINARY:
        return number * 1024 ** _BINARY[suffix]
    if suffix in _DECIMAL:
        return number * Fraction(10) ** _DECIMAL[suffix]
    exponent = _EXPONENT_RE.match(suffix)
    if exponent is None:
        raise QuantityError(f"unable to parse quantity's suffix: {text!r}")
    return number * Fraction(10) ** int(exponent.group(1))


@functools.lru_cache(maxsize=4096)
def to_units(name: str, text: str | int | float) -> int:
    """The integer the scheduler compares: millicores for cpu, rounded-up units otherwise.

    Memoized: a cluster uses a handful of distinct quantity strings, and exact Fraction parsing
    was 80 % of a scheduling cycle when every pod's requests were re-parsed each cycle.
    """
    value = parse_quantity(text)
    return math.ceil(value * 1000) if name == CPU else math.ceil(value)


def resource_list(raw: Mapping[str, Any] | None) -> dict[str, int]:
    """A ResourceList (`{"cpu": "500m", "memory": "1Gi"}`) in scheduler units."""
    return {name: to_units(name, value) for name, value in (raw or {}).items()}


def add(total: dict[str, int], more: Mapping[str, int]) -> dict[str, int]:
    """total += more, in place; returns total for chaining."""
    for name, value in more.items():
        total[name] = total.get(name, 0) + value
    return total


def _max_into(total: dict[str, int], other: Mapping[str, int]) -> None:
    for name, value in other.items():
        total[name] = max(total.get(name, 0), value)


def container_requests(container: Mapping[str, Any]) -> dict[str, int]:
    """Requests of one container; a resource with only a limit requests its limit.

    The API server's defaulting does the same (SetDefaults_ResourceRequirements), but objects
    written before defaulting existed, or built by tests, may lack it, so the scheduler repeats it.
    """
    resources = container.get("resources") or {}
    merged = dict(resources.get("limits") or {})
    merged.update(resources.get("requests") or {})
    return resource_list(merged)


def _sum_containers(containers: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for container in containers:
        add(total, container_requests(container))
    return total


def pod_requests(pod: Mapping[str, Any]) -> dict[str, int]:
    """What the pod asks of a node: upstream resourcehelper.PodRequests.

    Regular containers run together, so they add up; classic init containers run one at a time
    before them, so only the largest counts (the "init containers max rule").  Sidecars (init
    containers with restartPolicy Always) keep running, so they add to everything after them.
    spec.overhead (RuntimeClass cost) comes on top.
    """
    spec = pod.get("spec") or {}
    total = _sum_containers(spec.get("containers") or [])
    init_peak: dict[str, int] = {}
    sidecars: dict[str, int] = {}
    for init in spec.get("initContainers") or []:
        requests = container_requests(init)
        if init.get("restartPolicy") == "Always":
            add(total, requests)
            add(sidecars, requests)
            _max_into(init_peak, sidecars)
        else:
            _max_into(init_peak, add(dict(requests), sidecars))
    _max_into(total, init_peak)
    return add(total, resource_list(spec.get("overhead")))


def nonzero_requests(pod: Mapping[str, Any]) -> dict[str, int]:
    """cpu and memory requests with upstream's scoring defaults for containers asking for none."""
    spec = pod.get("spec") or {}
    total = {CPU: 0, MEMORY: 0}
    for container in spec.get("containers") or []:
        requests = container_requests(container)
        # Upstream defaults only a resource that is absent; an explicit "0" stays 0.
        total[CPU] += requests.get(CPU, DEFAULT_MILLI_CPU_REQUEST)
        total[MEMORY] += requests.get(MEMORY, DEFAULT_MEMORY_REQUEST)
    overhead = resource_list(spec.get("overhead"))
    total[CPU] += overhead.get(CPU, 0)
    total[MEMORY] += overhead.get(MEMORY, 0)
    return total


def node_allocatable(node: Mapping[str, Any]) -> dict[str, int]:
    """status.allocatable in scheduler units; status.capacity when a node reports no allocatable.

    A kubelet always reports both; the fallback is for hand-made fake nodes that only set capacity.
    """
    status = node.get("status") or {}
    return resource_list(status.get("allocatable") or status.get("capacity"))
