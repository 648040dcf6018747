"""One scheduling cycle: filter, score, pick a host — or explain, upstream-style, why none fits.

Pure: the daemon passes the nodes and pods its informers hold, gets a node name back and does the
binding itself.  `build_node_infos` + `schedule_on` let it keep NodeInfos between cycles and
`NodeInfo.add_pod` the pod it just assumed (`remove_pod` if the binding fails), instead of
re-summing every pod on every cycle.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from controlplane.scheduler.filters import NodeInfo, run_filters
from controlplane.scheduler.scoring import score_nodes

__all__ = [
    "NO_NODES_MESSAGE",
    "Unschedulable",
    "build_node_infos",
    "fit_error_message",
    "schedule",
    "schedule_on",
    "select_host",
]

NO_NODES_MESSAGE = "no nodes available to schedule pods"
_TERMINAL_PHASES = ("Succeeded", "Failed")


class Unschedulable(Exception):
    """No node fits; `message` is what goes into the PodScheduled=False condition and the Event.

    `reasons` maps node name -> the reasons that node was rejected, for logs and tests.
    """

    def __init__(self, message: str, reasons: Mapping[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reasons = dict(reasons or {})


def _node_name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def build_node_infos(nodes: Iterable[dict[str, Any]], pods: Iterable[dict[str, Any]]) -> dict[str, NodeInfo]:
    """NodeInfo per node, accounting every pod bound to it that has not terminated.

    Finished pods free their resources (upstream's scheduler informer skips Succeeded/Failed);
    pods bound to nodes we do not know are ignored.
    """
    infos = {_node_name(node): NodeInfo.of(node) for node in nodes}
    for pod in pods:
        host = (pod.get("spec") or {}).get("nodeName")
        phase = (pod.get("status") or {}).get("phase")
        if host in infos and phase not in _TERMINAL_PHASES:
            infos[host].add_pod(pod)
    return infos


def fit_error_message(total_nodes: int, reasons: Mapping[str, list[str]]) -> str:
    """upstream FitError.Error(): "0/N nodes are available: <count> <reason>, ..." with the
    "<count> <reason>" strings sorted as strings (Go's sort.Strings)."""
    if total_nodes == 0:
        return NO_NODES_MESSAGE
    counts = Counter(reason for node_reasons in reasons.values() for reason in node_reasons)
    parts = sorted(f"{count} {reason}" for reason, count in counts.items())
    return f"0/{total_nodes} nodes are available: {', '.join(parts)}."


def select_host(scores: Mapping[str, int], rng: random.Random | None = None) -> str:
    """Highest score wins; ties go to the smallest name (stable tests) or, given an rng, to a
    uniformly random one of the tied nodes (upstream's selectHost, which spreads ties)."""
    best = max(scores.values())
    tied = sorted(name for name, score in scores.items() if score == best)
    return rng.choice(tied) if rng is not None else tied[0]


def schedule_on(
    pod: Mapping[str, Any], infos: Mapping[str, NodeInfo], rng: random.Random | None = None
) -> str:
    """Pick a node among `infos` for `pod`, or raise Unschedulable with the aggregated reasons."""
    feasible: list[NodeInfo] = []
    rejected: dict[str, list[str]] = {}
    for name in sorted(infos):
        reasons = run_filters(pod, infos[name])
        if reasons:
            rejected[name] = reasons
        else:
            feasible.append(infos[name])
    if not feasible:
        raise Unschedulable(fit_error_message(len(infos), rejected), rejected)
    if len(feasible) == 1:
        return feasible[0].name
    return select_host(score_nodes(pod, feasible), rng)


def schedule(
    pod: Mapping[str, Any],
    nodes: Sequence[dict[str, Any]],
    pods: Iterable[dict[str, Any]],
    rng: random.Random | None = None,
) -> str:
    """The node `pod` should be bound to, given the cluster's nodes and (all) its pods."""
    return schedule_on(pod, build_node_infos(nodes, pods), rng)
