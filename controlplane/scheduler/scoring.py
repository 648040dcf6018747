"""Score plugins: which feasible node is best?  Pure; every plugin scores 0-100 per node.

The total is the weighted sum, weights as in upstream's default profile (TaintToleration 3,
spreading 2, NodeResourcesFit least-allocated 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from controlplane.scheduler import resources as res
from controlplane.scheduler.filters import NodeInfo, controller_uid, tolerates

__all__ = [
    "MAX_NODE_SCORE",
    "WEIGHTS",
    "controller_uid",
    "least_allocated",
    "prefer_no_schedule_scores",
    "score_nodes",
    "spread_scores",
]

MAX_NODE_SCORE = 100
WEIGHTS = {"least_allocated": 1, "spread": 2, "taint": 3}


def least_allocated(pod: Mapping[str, Any], info: NodeInfo) -> int:
    """upstream leastResourceScorer over cpu and memory (weight 1 each), with non-zero requests:
    (allocatable - requested) * 100 / allocatable, 0 when the node would be over-committed."""
    wanted = res.nonzero_requests(pod)
    total = 0
    for name in (res.CPU, res.MEMORY):
        capacity = info.allocatable.get(name, 0)
        requested = info.nonzero_requested.get(name, 0) + wanted[name]
        if capacity > 0 and requested <= capacity:
            total += (capacity - requested) * MAX_NODE_SCORE // capacity
    return total // 2


def spread_scores(pod: Mapping[str, Any], infos: Sequence[NodeInfo]) -> dict[str, int]:
    """Fewer siblings (pods with the same controller) on a node scores higher.

    Upstream SelectorSpread divides by the largest count, so once a controller has many pods a
    one-pod imbalance is worth only a point or two and least-allocated can outvote it.  We scale
    between the smallest and largest count instead: a node one sibling behind the others always
    gets the full 100, which keeps a controller's pods within one of each other whenever every node
    has room (the property the scale test checks).
    """
    uid = controller_uid(pod)
    if uid is None:
        return {info.name: MAX_NODE_SCORE for info in infos}
    counts = {info.name: info.controller_counts[uid] for info in infos}
    low, high = min(counts.values(), default=0), max(counts.values(), default=0)
    if high == low:
        return {name: MAX_NODE_SCORE for name in counts}
    return {name: MAX_NODE_SCORE * (high - c) // (high - low) for name, c in counts.items()}


def prefer_no_schedule_scores(pod: Mapping[str, Any], infos: Sequence[NodeInfo]) -> dict[str, int]:
    """upstream TaintToleration score: count the PreferNoSchedule taints the pod does not tolerate
    (only tolerations with an empty or PreferNoSchedule effect count), then reverse-normalize."""
    tolerations = [
        t
        for t in (pod.get("spec") or {}).get("tolerations") or []
        if (t.get("effect") or "PreferNoSchedule") == "PreferNoSchedule"
    ]
    counts = {}
    for info in infos:
        taints = (info.node.get("spec") or {}).get("taints") or []
        counts[info.name] = sum(
            1
            for taint in taints
            if taint.get("effect") == "PreferNoSchedule" and not tolerates(tolerations, taint)
        )
    worst = max(counts.values(), default=0)
    if worst == 0:
        return {name: MAX_NODE_SCORE for name in counts}
    return {name: MAX_NODE_SCORE - c * MAX_NODE_SCORE // worst for name, c in counts.items()}


def score_nodes(pod: Mapping[str, Any], infos: Sequence[NodeInfo]) -> dict[str, int]:
    """Weighted total score of each feasible node."""
    spread = spread_scores(pod, infos)
    taint = prefer_no_schedule_scores(pod, infos)
    return {
        info.name: WEIGHTS["least_allocated"] * least_allocated(pod, info)
        + WEIGHTS["spread"] * spread[info.name]
        + WEIGHTS["taint"] * taint[info.name]
        for info in infos
    }
