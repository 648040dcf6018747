"""Filter plugins: can this pod run on this node?  Pure functions over Kubernetes JSON dicts.

Each filter returns the list of upstream reason strings that rule the node out (empty: it fits),
so the scheduler can aggregate them into kube-scheduler's PodScheduled=False message.  They run in
upstream's plugin order and the first failing one decides, as in the default framework profile.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from controlplane.scheduler import resources as res

__all__ = [
    "FILTERS",
    "REASON_AFFINITY",
    "REASON_NOT_READY",
    "REASON_PORTS",
    "REASON_TOO_MANY_PODS",
    "REASON_UNSCHEDULABLE",
    "NodeInfo",
    "controller_uid",
    "fits_affinity",
    "fits_ports",
    "fits_resources",
    "fits_taints",
    "is_ready",
    "is_schedulable",
    "node_selector_term_matches",
    "pod_host_ports",
    "run_filters",
    "tolerates",
    "toleration_matches",
    "untolerated_taint",
]

REASON_NOT_READY = "node(s) were not ready"
REASON_UNSCHEDULABLE = "node(s) were unschedulable"
REASON_AFFINITY = "node(s) didn't match Pod's node affinity/selector"
REASON_PORTS = "node(s) didn't have free ports for the requested pod ports"
REASON_TOO_MANY_PODS = "Too many pods"

TAINT_UNSCHEDULABLE = "node.kubernetes.io/unschedulable"
TAINT_NOT_READY = "node.kubernetes.io/not-ready"
TAINT_UNREACHABLE = "node.kubernetes.io/unreachable"
_HARD_EFFECTS = ("NoSchedule", "NoExecute")

HostPort = tuple[str, str, int]  # (hostIP, protocol, hostPort)


@dataclass
class NodeInfo:
    """One node plus what the pods already bound to it use (upstream framework.NodeInfo)."""

    node: dict[str, Any]
    allocatable: dict[str, int] = field(default_factory=dict)
    requested: dict[str, int] = field(default_factory=dict)
    nonzero_requested: dict[str, int] = field(default_factory=lambda: {res.CPU: 0, res.MEMORY: 0})
    pods: list[dict[str, Any]] = field(default_factory=list)
    used_ports: set[HostPort] = field(default_factory=set)
    # Pods per controlling ownerReference uid, so spreading need not rescan every pod each cycle.
    controller_counts: Counter[str] = field(default_factory=Counter)

    @classmethod
    def of(cls, node: dict[str, Any]) -> NodeInfo:
        return cls(node, allocatable=res.node_allocatable(node))

    @property
    def name(self) -> str:
        return str((self.node.get("metadata") or {}).get("name", ""))

    def add_pod(self, pod: dict[str, Any]) -> None:
        """Account a pod bound (or assumed bound) to this node."""
        self.pods.append(pod)
        res.add(self.requested, res.pod_requests(pod))
        res.add(self.nonzero_requested, res.nonzero_requests(pod))
        self.used_ports.update(pod_host_ports(pod))
        uid = controller_uid(pod)
        if uid is not None:
            self.controller_counts[uid] += 1

    def remove_pod(self, pod: Mapping[str, Any]) -> bool:
        """Forget a pod (deleted, finished, or an assumed binding that failed), matched by
        namespace/name; returns whether it was there."""
        key = _pod_key(pod)
        index = next((i for i, known in enumerate(self.pods) if _pod_key(known) == key), None)
        if index is None:
            return False
        known = self.pods.pop(index)
        res.add(self.requested, {k: -v for k, v in res.pod_requests(known).items()})
        res.add(self.nonzero_requested, {k: -v for k, v in res.nonzero_requests(known).items()})
        # Recomputed, not subtracted: two pods bound by hand may claim the same port.
        self.used_ports = set().union(*(pod_host_ports(p) for p in self.pods))
        uid = controller_uid(known)
        if uid is not None:
            self.controller_counts[uid] -= 1
        return True


def _pod_key(pod: Mapping[str, Any]) -> tuple[str, str]:
    metadata = pod.get("metadata") or {}
    return str(metadata.get("namespace", "")), str(metadata.get("name", ""))


def controller_uid(pod: Mapping[str, Any]) -> str | None:
    """uid of the pod's controlling ownerReference (its ReplicationController, ReplicaSet...)."""
    for ref in (pod.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid", ""))
    return None


# ---------------------------------------------------------------------------------------------
# Node condition and spec.unschedulable


def _tolerations(pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    return list((pod.get("spec") or {}).get("tolerations") or [])


def is_ready(pod: Mapping[str, Any], info: NodeInfo) -> list[str]:
    """A node whose Ready condition is False/Unknown is out, unless the pod tolerates the taint the
    node lifecycle controller would put on it (DaemonSet-style pods must still land there).

    A node reporting no Ready condition at all passes, as in upstream's CheckNodeCondition: fake
    nodes made by tests and freshly registered nodes carry no conditions yet.
    """
    for condition in (info.node.get("status") or {}).get("conditions") or []:
        if condition.get("type") != "Ready" or condition.get("status") == "True":
            continue
        key = TAINT_UNREACHABLE if condition.get("status") == "Unknown" else TAINT_NOT_READY
        if not tolerates(_tolerations(pod), {"key": key, "effect": "NoSchedule"}):
            return [REASON_NOT_READY]
    return []


def is_schedulable(pod: Mapping[str, Any], info: NodeInfo) -> list[str]:
    """spec.unschedulable (kubectl cordon), waived by the node.kubernetes.io/unschedulable toleration."""
    if not (info.node.get("spec") or {}).get("unschedulable"):
        return []
    taint = {"key": TAINT_UNSCHEDULABLE, "effect": "NoSchedule"}
    return [] if tolerates(_tolerations(pod), taint) else [REASON_UNSCHEDULABLE]


# ---------------------------------------------------------------------------------------------
# Taints and tolerations


def toleration_matches(toleration: Mapping[str, Any], taint: Mapping[str, Any]) -> bool:
    """core/v1 Toleration.ToleratesTaint: empty effect and empty key are wildcards."""
    effect = toleration.get("effect") or ""
    if effect and effect != taint.get("effect"):
        return False
    key = toleration.get("key") or ""
    if key and key != taint.get("key"):
        return False
    operator = toleration.get("operator") or "Equal"
    if operator == "Exists":
        return True
    return operator == "Equal" and (toleration.get("value") or "") == (taint.get("value") or "")


def tolerates(tolerations: Iterable[Mapping[str, Any]], taint: Mapping[str, Any]) -> bool:
    return any(toleration_matches(t, taint) for t in tolerations)


def untolerated_taint(
    pod: Mapping[str, Any], info: NodeInfo, effects: Iterable[str] = _HARD_EFFECTS
) -> dict[str, Any] | None:
    """The first of the node's taints with one of `effects` that the pod does not tolerate."""
    wanted, tolerations = set(effects), _tolerations(pod)
    for taint in (info.node.get("spec") or {}).get("taints") or []:
        if taint.get("effect") in wanted and not tolerates(tolerations, taint):
            return dict(taint)
    return None


def fits_taints(pod: Mapping[str, Any], info: NodeInfo) -> list[str]:
    """NoSchedule and NoExecute taints repel; PreferNoSchedule only lowers the score."""
    taint = untolerated_taint(pod, info)
    if taint is None:
        return []
    return [f"node(s) had untolerated taint {{{taint.get('key', '')}: {taint.get('value', '')}}}"]


# ---------------------------------------------------------------------------------------------
# nodeSelector and required node affinity


def _expression_matches(expr: Mapping[str, Any], values_of: Mapping[str, str]) -> bool:
    """One NodeSelectorRequirement; malformed ones (unknown operator, bad Gt value) never match."""
    key, operator = expr.get("key", ""), expr.get("operator")
    values = list(expr.get("values") or [])
    present, value = key in values_of, values_of.get(key)
    if operator == "In":
        return present and value in values
    if operator == "NotIn":
        return not present or value not in values
    if operator == "Exists":
        return present
    if operator == "DoesNotExist":
        return not present
    if operator in ("Gt", "Lt") and present and len(values) == 1:
        try:
            have, bound = int(str(value)), int(values[0])
        except ValueError:
            return False
        return have > bound if operator == "Gt" else have < bound
    return False


def node_selector_term_matches(term: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    """All matchExpressions (on labels) and matchFields (metadata.name only) hold; an empty term
    matches nothing (upstream: "a null or empty node selector term matches no objects")."""
    expressions = term.get("matchExpressions") or []
    fields = term.get("matchFields") or []
    if not expressions and not fields:
        return False
    metadata = node.get("metadata") or {}
    labels = metadata.get("labels") or {}
    if not all(_expression_matches(e, labels) for e in expressions):
        return False
    field_values = {"metadata.name": str(metadata.get("name", ""))}
    return all(
        f.get("key") == "metadata.name"
        and f.get("operator") in ("In", "NotIn")
        and _expression_matches(f, field_values)
        for f in fields
    )


def fits_affinity(pod: Mapping[str, Any], info: NodeInfo) -> list[str]:
    """spec.nodeSelector (all labels equal) AND any of the required nodeSelectorTerms."""
    spec = pod.get("spec") or {}
    labels = (info.node.get("metadata") or {}).get("labels") or {}
    selector = spec.get("nodeSelector") or {}
    if any(labels.get(k) != v for k, v in selector.items()):
        return [REASON_AFFINITY]
    node_affinity = (spec.get("affinity") or {}).get("nodeAffinity") or {}
    required = node_affinity.get("requiredDuringSchedulingIgnoredDuringExecution")
    if required is None:
        return []
    terms = required.get("nodeSelectorTerms") or []
    if any(node_selector_term_matches(term, info.node) for term in terms):
        return []
    return [REASON_AFFINITY]


# ---------------------------------------------------------------------------------------------
# Host ports


def pod_host_ports(pod: Mapping[str, Any]) -> set[HostPort]:
    """(hostIP, protocol, hostPort) the pod's containers claim; hostIP defaults to 0.0.0.0."""
    ports: set[HostPort] = set()
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            host_port = int(port.get("hostPort") or 0)
            if host_port > 0:
                ports.add((port.get("hostIP") or "0.0.0.0", port.get("protocol") or "TCP", host_port))
    return ports


def _ports_conflict(a: HostPort, b: HostPort) -> bool:
    # Same port and protocol; the wildcard address overlaps every specific address.
    same_ip = a[0] == b[0] or "0.0.0.0" in (a[0], b[0])
    return a[1:] == b[1:] and same_ip


def fits_ports(pod: Mapping[str, Any], info: NodeInfo) -> list[str]:
    wanted = pod_host_ports(pod)
    if any(_ports_conflict(w, used) for w in wanted for used in info.used_ports):
        return [REASON_PORTS]
    return []


# ---------------------------------------------------------------------------------------------
# Resources


def fits_resources(pod: Mapping[str, Any], info: NodeInfo) -> list[str]:
    """upstream noderesources.fitsRequest: pod count, then every requested resource."""
    reasons = []
    if len(info.pods) + 1 > info.allocatable.get(res.PODS, 0):
        reasons.append(REASON_TOO_MANY_PODS)
    for name, wanted in sorted(res.pod_requests(pod).items()):
        if name == res.PODS or wanted <= 0:
            continue
        if wanted > info.allocatable.get(name, 0) - info.requested.get(name, 0):
            reasons.append(f"Insufficient {name}")
    return reasons


Filter = Callable[[Mapping[str, Any], NodeInfo], list[str]]

# Upstream's default profile order (NodeUnschedulable, TaintToleration, NodeAffinity, NodePorts,
# NodeResourcesFit), with the Ready check first; the first failure is the one reported.
FILTERS: tuple[Filter, ...] = (
    is_ready,
    is_schedulable,
    fits_taints,
    fits_affinity,
    fits_ports,
    fits_resources,
)


def run_filters(pod: Mapping[str, Any], info: NodeInfo) -> list[str]:
    """Reasons the node is unfit for the pod (first failing filter's), or [] when it fits."""
    for check in FILTERS:
        reasons = check(pod, info)
        if reasons:
            return reasons
    return []
