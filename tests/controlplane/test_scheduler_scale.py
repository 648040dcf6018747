"""Scale and property tests: 500 pods over 10 nodes, placed one by one like the daemon will."""

from __future__ import annotations

import random
import re
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.scheduler import Unschedulable, build_node_infos, schedule, schedule_on
from controlplane.scheduler.filters import NodeInfo
from controlplane.scheduler.resources import pod_requests
from controlplane.scheduler.scoring import controller_uid
from tests.controlplane.test_scheduler import make_node, make_pod


def _place_all(
    nodes: list[dict[str, Any]], pods: list[dict[str, Any]], rng: random.Random | None = None
) -> tuple[dict[str, NodeInfo], list[dict[str, Any]]]:
    """Schedule `pods` in order, assuming each bound (add_pod) as the daemon does; returns the
    final NodeInfos and the pods no node could take."""
    infos = build_node_infos(nodes, [])
    rejected = []
    for pod in pods:
        try:
            host = schedule_on(pod, infos, rng)
        except Unschedulable:
            rejected.append(pod)
            continue
        pod["spec"]["nodeName"] = host
        infos[host].add_pod(pod)
        _assert_within_capacity(infos[host])
    return infos, rejected


def _assert_within_capacity(info: NodeInfo) -> None:
    assert len(info.pods) <= info.allocatable["pods"], info.name
    for name in ("cpu", "memory"):
        assert info.requested.get(name, 0) <= info.allocatable[name], (info.name, name)


def _fits_somewhere(pod: dict[str, Any], infos: dict[str, NodeInfo]) -> bool:
    wanted = pod_requests(pod)
    return any(
        len(info.pods) < info.allocatable["pods"]
        and all(wanted.get(r, 0) <= info.allocatable[r] - info.requested.get(r, 0) for r in ("cpu", "memory"))
        for info in infos.values()
    )


def _spread(infos: dict[str, NodeInfo]) -> dict[str | None, int]:
    """Per controller: most minus fewest pods on any node."""
    per_node = {name: Counter(controller_uid(p) for p in info.pods) for name, info in infos.items()}
    owners = {owner for counts in per_node.values() for owner in counts}
    return {o: max(c[o] for c in per_node.values()) - min(c[o] for c in per_node.values()) for o in owners}


def test_500_pods_on_10_mixed_nodes_never_exceed_capacity() -> None:
    rng = random.Random(4)
    nodes = [
        make_node(
            f"node-{i:02d}", cpu=f"{2 + i % 4}", memory=f"{4 + 2 * (i % 3)}Gi", pods=str(40 + 5 * (i % 3))
        )
        for i in range(10)
    ]
    sizes = [("100m", "128Mi"), ("250m", "256Mi"), ("500m", "512Mi"), ("1", "1Gi"), (None, None)]
    pods = []
    for i in range(500):
        cpu, memory = rng.choice(sizes)
        pods.append(make_pod(f"p{i}", cpu=cpu, memory=memory, owner=f"rc{rng.randrange(8)}"))
    infos, rejected = _place_all(nodes, pods)
    placed = sum(len(info.pods) for info in infos.values())
    assert placed + len(rejected) == 500
    assert placed > 0 and rejected, "the cluster is meant to fill up"
    for info in infos.values():
        _assert_within_capacity(info)
    # A pod is turned away only when it would fit nowhere (checked against the final state, which
    # only ever got fuller, so "no room then" implies "no room now").
    assert not any(_fits_somewhere(pod, infos) for pod in rejected)


@pytest.mark.parametrize("tie_break", ["name", "random"])
def test_500_pods_of_5_controllers_spread_within_one(tie_break: str) -> None:
    rng = random.Random(7)
    nodes = [make_node(f"node-{i:02d}", cpu="64", memory="256Gi") for i in range(10)]
    sizes = {f"rc{k}": (f"{100 * (k + 1)}m", f"{128 * (k + 1)}Mi") for k in range(5)}
    pods = []
    for i in range(500):
        owner = rng.choice(sorted(sizes))
        pods.append(make_pod(f"p{i}", *sizes[owner], owner=owner))
    picker = random.Random(1) if tie_break == "random" else None
    infos = build_node_infos(nodes, [])
    for pod in pods:
        host = schedule_on(pod, infos, picker)
        infos[host].add_pod(pod)
        assert all(gap <= 1 for gap in _spread(infos).values()), _spread(infos)
    assert sum(len(info.pods) for info in infos.values()) == 500


def test_spread_holds_until_the_small_node_is_full() -> None:
    # Capacity allows even spreading only while node-00 has room: after that its siblings pile
    # up elsewhere, still evenly among the nodes that can take them.
    nodes = [make_node("node-00", pods="3")] + [make_node(f"node-{i:02d}") for i in range(1, 4)]
    infos, rejected = _place_all(nodes, [make_pod(f"p{i}", cpu="10m", owner="rc") for i in range(30)])
    assert not rejected
    counts = {name: len(info.pods) for name, info in infos.items()}
    assert counts == {"node-00": 3, "node-01": 9, "node-02": 9, "node-03": 9}


def test_incremental_node_infos_match_a_full_rebuild() -> None:
    rng = random.Random(11)
    nodes = [make_node(f"n{i}", cpu=str(1 + i), memory=f"{1 + i}Gi", pods="20") for i in range(5)]
    pods = [
        make_pod(
            f"p{i}",
            cpu=f"{rng.randrange(1, 8) * 50}m",
            memory=f"{rng.randrange(1, 8) * 64}Mi",
            owner=f"rc{i % 3}",
        )
        for i in range(80)
    ]
    infos = build_node_infos(nodes, [])
    bound: list[dict[str, Any]] = []
    for pod in pods:
        try:
            incremental = schedule_on(pod, infos)
        except Unschedulable as exc:
            with pytest.raises(Unschedulable, match=re.escape(exc.message)):
                schedule(pod, nodes, bound)
            continue
        assert schedule(pod, nodes, bound) == incremental
        pod["spec"]["nodeName"] = incremental
        infos[incremental].add_pod(pod)
        bound.append(pod)


_node_st = st.tuples(
    st.integers(1, 8),  # cores
    st.integers(1, 16),  # GiB
    st.integers(1, 12),  # pods
)
_pod_st = st.tuples(
    st.integers(0, 3000),  # millicores
    st.integers(0, 4096),  # MiB
    st.integers(0, 3),  # controller
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_node_st, min_size=1, max_size=6), st.lists(_pod_st, min_size=1, max_size=60))
def test_property_placements_respect_capacity(
    node_specs: list[tuple[int, int, int]], pod_specs: list[tuple[int, int, int]]
) -> None:
    nodes = [
        make_node(f"n{i}", cpu=str(c), memory=f"{m}Gi", pods=str(p)) for i, (c, m, p) in enumerate(node_specs)
    ]
    pods = [
        make_pod(f"p{i}", cpu=f"{c}m", memory=f"{m}Mi", owner=f"rc{o}")
        for i, (c, m, o) in enumerate(pod_specs)
    ]
    infos, rejected = _place_all(nodes, pods)
    assert not any(_fits_somewhere(pod, infos) for pod in rejected)
