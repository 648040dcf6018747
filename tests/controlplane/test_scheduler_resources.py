"""Quantity parsing and pod requests as kube-scheduler computes them."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest

from controlplane.scheduler.resources import (
    DEFAULT_MEMORY_REQUEST,
    DEFAULT_MILLI_CPU_REQUEST,
    QuantityError,
    container_requests,
    node_allocatable,
    nonzero_requests,
    parse_quantity,
    pod_requests,
    to_units,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2", Fraction(2)),
        ("100m", Fraction(1, 10)),
        ("0.5", Fraction(1, 2)),
        (".5", Fraction(1, 2)),
        ("1.", Fraction(1)),
        ("128Mi", Fraction(128 * 2**20)),
        ("1Ki", Fraction(1024)),
        ("1Ei", Fraction(2**60)),
        ("1G", Fraction(10**9)),
        ("1k", Fraction(1000)),
        ("1e3", Fraction(1000)),
        ("1E3", Fraction(1000)),
        ("5e-1", Fraction(1, 2)),
        ("1.5Gi", Fraction(3 * 2**29)),
        ("250u", Fraction(250, 10**6)),
        ("7n", Fraction(7, 10**9)),
        ("+3", Fraction(3)),
        ("-1", Fraction(-1)),
        (" 1Mi ", Fraction(2**20)),
        (3, Fraction(3)),
        (0.25, Fraction(1, 4)),
    ],
)
def test_parse_quantity(text: str | int | float, expected: Fraction) -> None:
    assert parse_quantity(text) == expected


@pytest.mark.parametrize("text", ["", "m", "1x", "1Mii", "1 Mi", "1e", "1e1.5", "abc", "1.2.3", "--1"])
def test_parse_quantity_rejects(text: str) -> None:
    with pytest.raises(QuantityError):
        parse_quantity(text)


def test_parse_quantity_rejects_bool() -> None:
    with pytest.raises(QuantityError):
        parse_quantity(True)


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("cpu", "100m", 100),
        ("cpu", "2", 2000),
        ("cpu", "0.5m", 1),  # MilliValue rounds up
        ("cpu", "1e-3", 1),
        ("memory", "1G", 10**9),
        ("memory", "128Mi", 134217728),
        ("memory", "1500m", 2),  # Value rounds up
        ("pods", "110", 110),
        ("example.com/gpu", "2", 2),
    ],
)
def test_to_units(name: str, text: str, expected: int) -> None:
    assert to_units(name, text) == expected


def _container(
    requests: dict[str, str] | None = None, limits: dict[str, str] | None = None, **extra: Any
) -> dict[str, Any]:
    resources: dict[str, Any] = {}
    if requests is not None:
        resources["requests"] = requests
    if limits is not None:
        resources["limits"] = limits
    return {"name": "c", "image": "i", "resources": resources, **extra}


def test_requests_default_to_limits_per_resource() -> None:
    c = _container(requests={"cpu": "100m"}, limits={"cpu": "1", "memory": "1Gi"})
    assert container_requests(c) == {"cpu": 100, "memory": 2**30}


def test_container_without_resources_requests_nothing() -> None:
    assert container_requests({"name": "c"}) == {}


def _pod(
    containers: list[dict[str, Any]], init: list[dict[str, Any]] | None = None, **spec: Any
) -> dict[str, Any]:
    return {"spec": {"containers": containers, "initContainers": init or [], **spec}}


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        # Regular containers add up.
        (
            _pod([_container({"cpu": "100m", "memory": "1Mi"}), _container({"cpu": "200m"})]),
            {"cpu": 300, "memory": 2**20},
        ),
        # A classic init container larger than the sum wins (the max rule) ...
        (_pod([_container({"cpu": "100m"})], [_container({"cpu": "1"})]), {"cpu": 1000}),
        # ... a smaller one does not add anything, and only the largest init container counts.
        (
            _pod(
                [_container({"cpu": "500m", "memory": "10Mi"})],
                [_container({"cpu": "200m", "memory": "50Mi"}), _container({"cpu": "300m"})],
            ),
            {"cpu": 500, "memory": 50 * 2**20},
        ),
        # Sidecars (restartPolicy Always) run alongside everything after them.
        (
            _pod(
                [_container({"cpu": "100m"})],
                [_container({"cpu": "200m"}, restartPolicy="Always"), _container({"cpu": "1"})],
            ),
            {"cpu": 1200},
        ),
        (
            _pod([_container({"cpu": "1"})], [_container({"cpu": "200m"}, restartPolicy="Always")]),
            {"cpu": 1200},
        ),
        # Overhead is added on top; limits-only containers request their limits.
        (
            _pod([_container(limits={"memory": "64Mi"})], overhead={"memory": "1Mi", "cpu": "10m"}),
            {"memory": 65 * 2**20, "cpu": 10},
        ),
        (_pod([]), {}),
    ],
)
def test_pod_requests(pod: dict[str, Any], expected: dict[str, int]) -> None:
    assert pod_requests(pod) == expected


def test_nonzero_requests_default_for_best_effort_containers() -> None:
    pod = _pod([_container(), _container({"cpu": "1"}), _container({"memory": "1Gi"})])
    assert nonzero_requests(pod) == {
        "cpu": 2 * DEFAULT_MILLI_CPU_REQUEST + 1000,
        "memory": 2 * DEFAULT_MEMORY_REQUEST + 2**30,
    }
    # Only an absent request is defaulted: an explicit zero stays zero (upstream GetNonzeroRequests).
    assert nonzero_requests(_pod([_container({"cpu": "0", "memory": "0"})])) == {"cpu": 0, "memory": 0}


def test_node_allocatable_prefers_allocatable_and_falls_back_to_capacity() -> None:
    both = {"status": {"capacity": {"cpu": "4"}, "allocatable": {"cpu": "3500m", "pods": "110"}}}
    assert node_allocatable(both) == {"cpu": 3500, "pods": 110}
    assert node_allocatable({"status": {"capacity": {"memory": "1Gi"}}}) == {"memory": 2**30}
    assert node_allocatable({}) == {}
