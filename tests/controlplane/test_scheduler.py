"""Scheduler filters, scores and one scheduling cycle, table-driven over plain Kubernetes dicts."""

from __future__ import annotations

import random
from typing import Any

import pytest

from controlplane.scheduler import Unschedulable, build_node_infos, schedule, schedule_on
from controlplane.scheduler.filters import (
    REASON_AFFINITY,
    REASON_NOT_READY,
    REASON_PORTS,
    REASON_TOO_MANY_PODS,
    REASON_UNSCHEDULABLE,
    NodeInfo,
    fits_affinity,
    fits_ports,
    fits_resources,
    fits_taints,
    is_ready,
    is_schedulable,
    run_filters,
    toleration_matches,
)
from controlplane.scheduler.framework import NO_NODES_MESSAGE, fit_error_message, select_host
from controlplane.scheduler.scoring import (
    least_allocated,
    prefer_no_schedule_scores,
    score_nodes,
    spread_scores,
)

# ---------------------------------------------------------------------------------------------
# Builders (also used by test_scheduler_scale)


def make_node(
    name: str,
    cpu: str = "4",
    memory: str = "8Gi",
    pods: str = "110",
    *,
    labels: dict[str, str] | None = None,
    taints: list[dict[str, str]] | None = None,
    ready: str | None = "True",
    unschedulable: bool = False,
    extra: dict[str, str] | None = None,
) -> dict[str, Any]:
    allocatable = {"cpu": cpu, "memory": memory, "pods": pods, **(extra or {})}
    status: dict[str, Any] = {"allocatable": allocatable, "capacity": dict(allocatable)}
    if ready is not None:
        status["conditions"] = [{"type": "Ready", "status": ready}]
    spec: dict[str, Any] = {"taints": taints or []}
    if unschedulable:
        spec["unschedulable"] = True
    return {
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
        "spec": spec,
        "status": status,
    }


def make_pod(
    name: str = "p",
    cpu: str | None = None,
    memory: str | None = None,
    *,
    node: str | None = None,
    owner: str | None = None,
    phase: str = "Pending",
    ports: list[dict[str, Any]] | None = None,
    tolerations: list[dict[str, Any]] | None = None,
    node_selector: dict[str, str] | None = None,
    terms: list[dict[str, Any]] | None = None,
    requests: dict[str, str] | None = None,
) -> dict[str, Any]:
    reqs = dict(requests or {})
    if cpu is not None:
        reqs["cpu"] = cpu
    if memory is not None:
        reqs["memory"] = memory
    container: dict[str, Any] = {"name": "c", "image": "img", "resources": {"requests": reqs}}
    if ports:
        container["ports"] = ports
    spec: dict[str, Any] = {"containers": [container], "tolerations": tolerations or []}
    if node is not None:
        spec["nodeName"] = node
    if node_selector is not None:
        spec["nodeSelector"] = node_selector
    if terms is not None:
        required = {"nodeSelectorTerms": terms}
        spec["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}}
    metadata: dict[str, Any] = {"name": name, "namespace": "default", "uid": f"uid-{name}"}
    if owner is not None:
        ref = {"apiVersion": "v1", "kind": "ReplicationController", "name": owner, "uid": owner}
        metadata["ownerReferences"] = [{**ref, "controller": True}]
    return {"kind": "Pod", "metadata": metadata, "spec": spec, "status": {"phase": phase}}


def info_of(node: dict[str, Any], *pods: dict[str, Any]) -> NodeInfo:
    info = NodeInfo.of(node)
    for pod in pods:
        info.add_pod(pod)
    return info


# ---------------------------------------------------------------------------------------------
# Ready condition and spec.unschedulable

NOT_READY_TOL = {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoSchedule"}
UNREACHABLE_TOL = {"key": "node.kubernetes.io/unreachable", "operator": "Exists"}


@pytest.mark.parametrize(
    ("ready", "tolerations", "expected"),
    [
        ("True", [], []),
        (None, [], []),  # no Ready condition reported yet: not ruled out (CheckNodeCondition)
        ("False", [], [REASON_NOT_READY]),
        ("Unknown", [], [REASON_NOT_READY]),
        ("False", [NOT_READY_TOL], []),
        ("Unknown", [NOT_READY_TOL], [REASON_NOT_READY]),
        ("Unknown", [UNREACHABLE_TOL], []),
        ("False", [{"operator": "Exists"}], []),
    ],
)
def test_ready_filter(ready: str | None, tolerations: list[dict[str, Any]], expected: list[str]) -> None:
    assert is_ready(make_pod(tolerations=tolerations), info_of(make_node("n", ready=ready))) == expected


def test_ready_filter_ignores_other_conditions() -> None:
    node = make_node("n")
    node["status"]["conditions"].append({"type": "MemoryPressure", "status": "True"})
    assert is_ready(make_pod(), info_of(node)) == []


UNSCHED_TOL = {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}


@pytest.mark.parametrize(
    ("unschedulable", "tolerations", "expected"),
    [
        (False, [], []),
        (True, [], [REASON_UNSCHEDULABLE]),
        (True, [UNSCHED_TOL], []),
        (True, [{"operator": "Exists"}], []),
        (True, [{**UNSCHED_TOL, "effect": "NoExecute"}], [REASON_UNSCHEDULABLE]),
        (True, [{"key": "other", "operator": "Exists"}], [REASON_UNSCHEDULABLE]),
    ],
)
def test_unschedulable_filter(
    unschedulable: bool, tolerations: list[dict[str, Any]], expected: list[str]
) -> None:
    node = make_node("n", unschedulable=unschedulable)
    assert is_schedulable(make_pod(tolerations=tolerations), info_of(node)) == expected


# ---------------------------------------------------------------------------------------------
# Taints and tolerations

TAINT = {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}


@pytest.mark.parametrize(
    ("toleration", "taint", "expected"),
    [
        ({"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}, TAINT, True),
        ({"key": "dedicated", "value": "gpu"}, TAINT, True),  # operator defaults to Equal, any effect
        ({"key": "dedicated", "operator": "Equal", "value": "cpu"}, TAINT, False),
        ({"key": "dedicated", "operator": "Exists"}, TAINT, True),
        ({"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}, TAINT, False),
        ({"key": "other", "operator": "Exists"}, TAINT, False),
        ({"operator": "Exists"}, TAINT, True),  # empty key + Exists tolerates everything
        ({"operator": "Exists", "effect": "NoExecute"}, TAINT, False),
        ({"key": "k", "operator": "Equal"}, {"key": "k", "effect": "NoSchedule"}, True),  # empty values
        ({"key": "dedicated", "operator": "Bogus", "value": "gpu"}, TAINT, False),
    ],
)
def test_toleration_matches(toleration: dict[str, Any], taint: dict[str, Any], expected: bool) -> None:
    assert toleration_matches(toleration, taint) is expected


@pytest.mark.parametrize(
    ("taints", "tolerations", "expected"),
    [
        ([], [], []),
        ([TAINT], [], ["node(s) had untolerated taint {dedicated: gpu}"]),
        ([{"key": "k", "effect": "NoExecute"}], [], ["node(s) had untolerated taint {k: }"]),
        ([{"key": "k", "value": "v", "effect": "PreferNoSchedule"}], [], []),  # scoring only
        ([TAINT], [{"key": "dedicated", "operator": "Exists"}], []),
        # Equal: key, value and (when given) effect must all match.
        ([TAINT], [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}], []),
        (
            [TAINT],
            [{"key": "dedicated", "operator": "Equal", "value": "cpu", "effect": "NoSchedule"}],
            ["node(s) had untolerated taint {dedicated: gpu}"],
        ),
        # NoExecute repels like NoSchedule, and only a toleration of that effect (or any) waives it.
        (
            [{"key": "k", "value": "v", "effect": "NoExecute"}],
            [{"key": "k", "operator": "Equal", "value": "v", "effect": "NoExecute"}],
            [],
        ),
        (
            [{"key": "k", "value": "v", "effect": "NoExecute"}],
            [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}],
            ["node(s) had untolerated taint {k: v}"],
        ),
        ([{"key": "k", "value": "v", "effect": "NoExecute"}], [{"key": "k", "operator": "Exists"}], []),
        # A PreferNoSchedule taint next to a tolerated hard one: still fits.
        (
            [TAINT, {"key": "soft", "effect": "PreferNoSchedule"}],
            [{"key": "dedicated", "operator": "Equal", "value": "gpu"}],
            [],
        ),
        # The first untolerated taint is the one reported.
        (
            [TAINT, {"key": "b", "value": "2", "effect": "NoExecute"}],
            [{"key": "dedicated", "operator": "Exists"}],
            ["node(s) had untolerated taint {b: 2}"],
        ),
    ],
)
def test_taint_filter(
    taints: list[dict[str, Any]], tolerations: list[dict[str, Any]], expected: list[str]
) -> None:
    node = make_node("n", taints=taints)
    assert fits_taints(make_pod(tolerations=tolerations), info_of(node)) == expected


# ---------------------------------------------------------------------------------------------
# nodeSelector and required node affinity

LABELS = {"zone": "a", "disk": "ssd", "cores": "8"}


def _expr(key: str, operator: str, *values: str) -> dict[str, Any]:
    return {"key": key, "operator": operator, "values": list(values)}


@pytest.mark.parametrize(
    ("node_selector", "terms", "fits"),
    [
        (None, None, True),
        ({"zone": "a"}, None, True),
        ({"zone": "a", "disk": "ssd"}, None, True),
        ({"zone": "b"}, None, False),
        ({"missing": "x"}, None, False),
        (None, [{"matchExpressions": [_expr("zone", "In", "a", "b")]}], True),
        (None, [{"matchExpressions": [_expr("zone", "In", "b")]}], False),
        (None, [{"matchExpressions": [_expr("zone", "NotIn", "b")]}], True),
        (None, [{"matchExpressions": [_expr("zone", "NotIn", "a")]}], False),
        (None, [{"matchExpressions": [_expr("missing", "NotIn", "a")]}], True),
        (None, [{"matchExpressions": [_expr("disk", "Exists")]}], True),
        (None, [{"matchExpressions": [_expr("missing", "Exists")]}], False),
        (None, [{"matchExpressions": [_expr("missing", "DoesNotExist")]}], True),
        (None, [{"matchExpressions": [_expr("disk", "DoesNotExist")]}], False),
        (None, [{"matchExpressions": [_expr("cores", "Gt", "4")]}], True),
        (None, [{"matchExpressions": [_expr("cores", "Gt", "8")]}], False),
        (None, [{"matchExpressions": [_expr("cores", "Lt", "9")]}], True),
        (None, [{"matchExpressions": [_expr("cores", "Lt", "8")]}], False),
        (None, [{"matchExpressions": [_expr("zone", "Gt", "1")]}], False),  # label not an integer
        (None, [{"matchExpressions": [_expr("cores", "Gt", "x")]}], False),  # malformed bound
        (None, [{"matchExpressions": [_expr("missing", "Lt", "9")]}], False),
        (None, [{"matchExpressions": [_expr("zone", "Bogus", "a")]}], False),
        # Expressions in a term are ANDed ...
        (None, [{"matchExpressions": [_expr("zone", "In", "a"), _expr("disk", "In", "hdd")]}], False),
        # ... terms are ORed.
        (
            None,
            [
                {"matchExpressions": [_expr("zone", "In", "b")]},
                {"matchExpressions": [_expr("disk", "Exists")]},
            ],
            True,
        ),
        (None, [{}], False),  # an empty term matches nothing
        (None, [], False),
        (None, [{"matchFields": [_expr("metadata.name", "In", "n")]}], True),
        (None, [{"matchFields": [_expr("metadata.name", "In", "other")]}], False),
        (None, [{"matchFields": [_expr("metadata.name", "NotIn", "other")]}], True),
        (None, [{"matchFields": [_expr("metadata.name", "Exists")]}], False),  # only In/NotIn
        (None, [{"matchFields": [_expr("metadata.uid", "In", "n")]}], False),  # only metadata.name
        (
            None,
            [
                {
                    "matchExpressions": [_expr("zone", "In", "a")],
                    "matchFields": [_expr("metadata.name", "In", "x")],
                }
            ],
            False,
        ),
        # nodeSelector and affinity must both hold.
        ({"zone": "b"}, [{"matchExpressions": [_expr("zone", "In", "a")]}], False),
    ],
)
def test_affinity_filter(
    node_selector: dict[str, str] | None, terms: list[dict[str, Any]] | None, fits: bool
) -> None:
    pod = make_pod(node_selector=node_selector, terms=terms)
    assert fits_affinity(pod, info_of(make_node("n", labels=LABELS))) == ([] if fits else [REASON_AFFINITY])


# ---------------------------------------------------------------------------------------------
# Host ports


def _port(host_port: int, protocol: str | None = None, host_ip: str | None = None) -> dict[str, Any]:
    port: dict[str, Any] = {"containerPort": 80, "hostPort": host_port}
    if protocol:
        port["protocol"] = protocol
    if host_ip:
        port["hostIP"] = host_ip
    return port


@pytest.mark.parametrize(
    ("existing", "wanted", "conflict"),
    [
        ([_port(80)], [_port(80)], True),
        ([_port(80)], [_port(81)], False),
        ([_port(80, "TCP")], [_port(80, "UDP")], False),
        ([_port(80, "UDP")], [_port(80, "UDP")], True),
        ([_port(80, "SCTP")], [_port(80)], False),
        ([_port(80, host_ip="10.0.0.1")], [_port(80, host_ip="10.0.0.2")], False),
        ([_port(80, host_ip="10.0.0.1")], [_port(80, host_ip="10.0.0.1")], True),
        ([_port(80, host_ip="10.0.0.1")], [_port(80)], True),  # 0.0.0.0 conflicts with all
        ([_port(80)], [_port(80, host_ip="10.0.0.1")], True),
        ([_port(80, host_ip="0.0.0.0")], [_port(80, "UDP", "10.0.0.1")], False),
        ([{"containerPort": 80}], [{"containerPort": 80}], False),  # no hostPort, no claim
        ([], [_port(80)], False),
    ],
)
def test_ports_filter(existing: list[dict[str, Any]], wanted: list[dict[str, Any]], conflict: bool) -> None:
    info = info_of(make_node("n"), make_pod("old", node="n", ports=existing))
    assert fits_ports(make_pod(ports=wanted), info) == ([REASON_PORTS] if conflict else [])


# ---------------------------------------------------------------------------------------------
# Resources


@pytest.mark.parametrize(
    ("node_kw", "existing", "pod", "expected"),
    [
        ({}, [], make_pod(cpu="4", memory="8Gi"), []),  # exactly full fits
        ({}, [], make_pod(cpu="4001m"), ["Insufficient cpu"]),
        ({}, [make_pod("a", cpu="3", node="n")], make_pod(cpu="1"), []),
        ({}, [make_pod("a", cpu="3", node="n")], make_pod(cpu="1001m"), ["Insufficient cpu"]),
        ({}, [make_pod("a", memory="7Gi", node="n")], make_pod(memory="2Gi"), ["Insufficient memory"]),
        ({}, [], make_pod(cpu="5", memory="9Gi"), ["Insufficient cpu", "Insufficient memory"]),
        ({"pods": "1"}, [make_pod("a", node="n")], make_pod(), [REASON_TOO_MANY_PODS]),
        (
            {"pods": "1"},
            [make_pod("a", node="n")],
            make_pod(cpu="5"),
            [REASON_TOO_MANY_PODS, "Insufficient cpu"],
        ),
        # A pod requesting nothing fits a node whose cpu is fully requested (only the pod count counts).
        ({}, [make_pod("a", cpu="4", node="n")], make_pod(), []),
        ({}, [], make_pod(requests={"example.com/gpu": "1"}), ["Insufficient example.com/gpu"]),
        ({"extra": {"example.com/gpu": "2"}}, [], make_pod(requests={"example.com/gpu": "2"}), []),
        ({}, [], make_pod(requests={"ephemeral-storage": "1Gi"}), ["Insufficient ephemeral-storage"]),
    ],
)
def test_resources_filter(
    node_kw: dict[str, Any], existing: list[dict[str, Any]], pod: dict[str, Any], expected: list[str]
) -> None:
    assert fits_resources(pod, info_of(make_node("n", **node_kw), *existing)) == expected


def _with_init(pod: dict[str, Any], *inits: dict[str, Any], overhead: dict[str, str] | None = None
               ) -> dict[str, Any]:
    pod["spec"]["initContainers"] = list(inits)
    if overhead:
        pod["spec"]["overhead"] = overhead
    return pod


def _init(cpu: str, sidecar: bool = False) -> dict[str, Any]:
    container: dict[str, Any] = {"name": f"i{cpu}", "resources": {"requests": {"cpu": cpu}}}
    if sidecar:
        container["restartPolicy"] = "Always"
    return container


@pytest.mark.parametrize(
    ("pod", "fits_on_2_free_cpus"),
    [
        (_with_init(make_pod(cpu="1"), _init("2")), True),  # init max(2) vs containers (1): 2
        (_with_init(make_pod(cpu="1"), _init("2001m")), False),
        (_with_init(make_pod(cpu="1"), _init("1500m"), _init("2")), True),  # init containers run one by one
        (_with_init(make_pod(cpu="1500m"), _init("500m", sidecar=True)), True),  # sidecar adds: 2
        (_with_init(make_pod(cpu="1500m"), _init("501m", sidecar=True)), False),
        # a sidecar keeps running while later init containers run: 500m + 1600m > 2
        (_with_init(make_pod(cpu="100m"), _init("500m", sidecar=True), _init("1600m")), False),
        (_with_init(make_pod(cpu="1900m"), overhead={"cpu": "100m"}), True),  # RuntimeClass overhead
        (_with_init(make_pod(cpu="1900m"), overhead={"cpu": "101m"}), False),
    ],
)
def test_resources_filter_init_containers_sidecars_and_overhead(
    pod: dict[str, Any], fits_on_2_free_cpus: bool
) -> None:
    info = info_of(make_node("n", cpu="3"), make_pod("a", cpu="1", node="n"))
    assert fits_resources(pod, info) == ([] if fits_on_2_free_cpus else ["Insufficient cpu"])


def test_resources_filter_uses_init_max_and_limits() -> None:
    pod = make_pod()
    pod["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "2"}}  # request defaults to limit
    pod["spec"]["initContainers"] = [{"name": "i", "resources": {"requests": {"cpu": "3"}}}]
    info = info_of(make_node("n"), make_pod("a", cpu="1500m", node="n"))
    assert fits_resources(pod, info) == ["Insufficient cpu"]  # needs max(2, 3) = 3 > 2.5 free


def test_terminated_pods_free_their_resources() -> None:
    pods = [
        make_pod("done", cpu="4", node="n", phase="Succeeded"),
        make_pod("failed", cpu="4", node="n", phase="Failed"),
        make_pod("elsewhere", cpu="4", node="unknown"),
    ]
    infos = build_node_infos([make_node("n")], pods)
    assert infos["n"].requested == {} and infos["n"].pods == []
    assert schedule(make_pod(cpu="4"), [make_node("n")], pods) == "n"


def test_first_failing_filter_decides() -> None:
    node = make_node("n", cpu="1", taints=[TAINT], unschedulable=True)
    assert run_filters(make_pod(cpu="2"), info_of(node)) == [REASON_UNSCHEDULABLE]


# ---------------------------------------------------------------------------------------------
# Scores


@pytest.mark.parametrize(
    ("existing_cpu", "existing_mem", "pod_cpu", "pod_mem", "expected"),
    [
        ("0", "0", "1", "2Gi", (75 + 75) // 2),
        ("2", "4Gi", "1", "2Gi", (25 + 25) // 2),
        ("3", "0", "1", "0", (0 + 100) // 2),  # an explicit "0" request stays 0
        ("3", None, "1", None, (0 + 95) // 2),  # memory: 200Mi defaults in for pods asking none
        ("4", "8Gi", "1", "1Gi", 0),  # over-committed scores 0, never negative
    ],
)
def test_least_allocated(
    existing_cpu: str, existing_mem: str | None, pod_cpu: str, pod_mem: str | None, expected: int
) -> None:
    existing = make_pod("a", cpu=existing_cpu, memory=existing_mem, node="n")
    score = least_allocated(make_pod(cpu=pod_cpu, memory=pod_mem), info_of(make_node("n"), existing))
    assert score == expected


def test_least_allocated_on_node_without_allocatable_is_zero() -> None:
    node = make_node("n")
    node["status"] = {}
    assert least_allocated(make_pod(cpu="1"), info_of(node)) == 0


def test_spread_prefers_nodes_with_fewer_siblings() -> None:
    infos = [
        info_of(make_node("a"), make_pod("x1", node="a", owner="rc1"), make_pod("x2", node="a", owner="rc1")),
        info_of(make_node("b"), make_pod("x3", node="b", owner="rc1"), make_pod("y1", node="b", owner="rc2")),
        info_of(make_node("c"), make_pod("y2", node="c", owner="rc2")),
    ]
    assert spread_scores(make_pod(owner="rc1"), infos) == {"a": 0, "b": 50, "c": 100}
    assert spread_scores(make_pod(owner="rc2"), infos) == {"a": 100, "b": 0, "c": 0}
    assert spread_scores(make_pod(), infos) == {"a": 100, "b": 100, "c": 100}  # no controller
    assert spread_scores(make_pod(owner="rc3"), infos) == {"a": 100, "b": 100, "c": 100}


@pytest.mark.parametrize(
    ("siblings_per_node", "expected"),
    [
        ([0, 0, 0], [100, 100, 100]),  # nothing to spread yet
        ([3, 3, 3], [100, 100, 100]),  # even: spreading has no preference
        ([1, 0, 0], [0, 100, 100]),
        ([4, 3, 3], [0, 100, 100]),  # one behind gets the full 100 however many siblings exist
        ([2, 1, 0], [0, 50, 100]),  # scaled between the fewest and the most
        ([10, 5, 0], [0, 50, 100]),
        ([3, 1, 0], [0, 66, 100]),  # integer arithmetic, rounded down
    ],
)
def test_spread_scores_table(siblings_per_node: list[int], expected: list[int]) -> None:
    infos = []
    for n, count in enumerate(siblings_per_node):
        pods = [make_pod(f"s{n}-{i}", node=f"n{n}", owner="rc") for i in range(count)]
        infos.append(info_of(make_node(f"n{n}"), *pods, make_pod(f"other{n}", node=f"n{n}", owner="rc2")))
    scores = spread_scores(make_pod(owner="rc"), infos)
    assert [scores[f"n{n}"] for n in range(len(siblings_per_node))] == expected


SOFT_TAINT = {"key": "k", "value": "v", "effect": "PreferNoSchedule"}


@pytest.mark.parametrize(
    ("node_cpu", "spread_counts", "n1_taints", "winner"),
    [
        (["4", "8"], [0, 0], [], "n1"),  # even spreading: least-allocated picks the emptier node
        (["4", "8"], [0, 1], [], "n0"),  # one sibling behind (2 x 100) beats more free room (1 x <=100)
        (["8", "8"], [1, 0], [SOFT_TAINT], "n0"),  # PreferNoSchedule (3 x 100) beats spreading
    ],
)
def test_scores_combined_by_weight(
    node_cpu: list[str], spread_counts: list[int], n1_taints: list[dict[str, str]], winner: str
) -> None:
    nodes = [make_node("n0", cpu=node_cpu[0]), make_node("n1", cpu=node_cpu[1], taints=n1_taints)]
    pods = [make_pod(f"x{i}-{k}", cpu="10m", memory="10Mi", node=f"n{i}", owner="rc")
            for i, count in enumerate(spread_counts) for k in range(count)]
    assert schedule(make_pod(cpu="1", memory="1Gi", owner="rc"), nodes, pods) == winner


def test_spread_ignores_non_controller_owner_references() -> None:
    pod = make_pod(owner="rc1")
    pod["metadata"]["ownerReferences"][0]["controller"] = False
    infos = [info_of(make_node("a"), make_pod("x", node="a", owner="rc1")), info_of(make_node("b"))]
    assert spread_scores(pod, infos) == {"a": 100, "b": 100}


def test_prefer_no_schedule_penalty() -> None:
    soft = {"key": "k", "value": "v", "effect": "PreferNoSchedule"}
    soft2 = {"key": "k2", "value": "v", "effect": "PreferNoSchedule"}
    hard = {"key": "h", "value": "v", "effect": "NoSchedule"}
    infos = [
        info_of(make_node("a")),
        info_of(make_node("b", taints=[soft])),
        info_of(make_node("c", taints=[soft, soft2, hard])),
    ]
    assert prefer_no_schedule_scores(make_pod(), infos) == {"a": 100, "b": 50, "c": 0}
    tolerate_k = [{"key": "k", "operator": "Exists"}]
    assert prefer_no_schedule_scores(make_pod(tolerations=tolerate_k), infos) == {"a": 100, "b": 100, "c": 0}
    # A toleration for another effect does not soften PreferNoSchedule.
    no_exec = [{"key": "k", "operator": "Exists", "effect": "NoExecute"}]
    assert prefer_no_schedule_scores(make_pod(tolerations=no_exec), infos)["b"] == 50
    assert prefer_no_schedule_scores(make_pod(), infos[:1]) == {"a": 100}


def test_score_is_weighted_sum() -> None:
    infos = [
        info_of(make_node("a")),
        info_of(make_node("b", taints=[{"key": "k", "effect": "PreferNoSchedule"}])),
    ]
    pod = make_pod(cpu="1", memory="2Gi")
    assert score_nodes(pod, infos) == {"a": 75 + 2 * 100 + 3 * 100, "b": 75 + 2 * 100 + 3 * 0}


# ---------------------------------------------------------------------------------------------
# schedule()


def test_schedule_picks_least_allocated_node() -> None:
    nodes = [make_node("a"), make_node("b")]
    pods = [make_pod("x", cpu="2", node="a")]
    assert schedule(make_pod(cpu="1"), nodes, pods) == "b"


def test_schedule_tie_break_by_name_and_random() -> None:
    nodes = [make_node(n) for n in ("c", "a", "b")]
    assert schedule(make_pod(), nodes, []) == "a"
    picks = {schedule(make_pod(), nodes, [], rng=random.Random(seed)) for seed in range(50)}
    assert picks == {"a", "b", "c"}


def test_select_host() -> None:
    assert select_host({"b": 3, "a": 1, "c": 3}) == "b"
    assert select_host({"b": 3, "a": 1, "c": 3}, random.Random(0)) in {"b", "c"}


def test_schedule_prefers_untainted_over_prefer_no_schedule() -> None:
    nodes = [make_node("a", taints=[{"key": "k", "effect": "PreferNoSchedule"}]), make_node("b")]
    assert schedule(make_pod(), nodes, []) == "b"


def test_schedule_only_feasible_node_wins_even_if_busy() -> None:
    nodes = [make_node("a", cpu="8"), make_node("b", taints=[TAINT])]
    pods = [make_pod("x", cpu="7", node="a")]
    assert schedule(make_pod(cpu="1"), nodes, pods) == "a"


def test_unschedulable_message_aggregates_like_upstream() -> None:
    nodes = [
        make_node("a", taints=[{"key": "key", "value": "value", "effect": "NoSchedule"}]),
        make_node("b", cpu="1"),
        make_node("c", cpu="1"),
    ]
    with pytest.raises(Unschedulable) as caught:
        schedule(make_pod(cpu="2"), nodes, [])
    expected = "0/3 nodes are available: 1 node(s) had untolerated taint {key: value}, 2 Insufficient cpu."
    assert caught.value.message == expected == str(caught.value)
    assert caught.value.reasons == {
        "a": ["node(s) had untolerated taint {key: value}"],
        "b": ["Insufficient cpu"],
        "c": ["Insufficient cpu"],
    }


def test_unschedulable_message_counts_every_reason_of_a_node() -> None:
    nodes = [
        make_node("a", cpu="1", memory="1Gi"),
        make_node("b", ready="False"),
        make_node("c", unschedulable=True),
    ]
    with pytest.raises(Unschedulable) as caught:
        schedule(make_pod(cpu="2", memory="2Gi"), nodes, [])
    assert caught.value.message == (
        "0/3 nodes are available: 1 Insufficient cpu, 1 Insufficient memory, "
        "1 node(s) were not ready, 1 node(s) were unschedulable."
    )


def test_no_nodes() -> None:
    with pytest.raises(Unschedulable, match=r"^no nodes available to schedule pods$"):
        schedule(make_pod(), [], [])
    assert fit_error_message(0, {}) == NO_NODES_MESSAGE


def test_schedule_does_not_mutate_inputs() -> None:
    nodes = [make_node("a"), make_node("b")]
    pods = [make_pod("x", cpu="1", node="a", owner="rc")]
    pod = make_pod(cpu="1", owner="rc")
    before = repr((nodes, pods, pod))
    schedule(pod, nodes, pods)
    assert repr((nodes, pods, pod)) == before


# ---------------------------------------------------------------------------------------------
# NodeInfo bookkeeping (the daemon assumes a pod, then forgets it if the binding fails)


def test_node_info_add_then_remove_restores_the_empty_state() -> None:
    empty = info_of(make_node("n"))
    info = info_of(make_node("n"))
    a = make_pod("a", cpu="1", memory="1Gi", node="n", owner="rc", ports=[_port(80)])
    b = make_pod("b", cpu="500m", node="n", owner="rc", ports=[_port(80, host_ip="10.0.0.1")])
    info.add_pod(a)
    info.add_pod(b)
    assert info.requested == {"cpu": 1500, "memory": 2**30}
    assert info.controller_counts["rc"] == 2
    assert fits_ports(make_pod(ports=[_port(80)]), info) == [REASON_PORTS]
    assert info.remove_pod(make_pod("a")) is True  # matched by namespace/name
    assert info.used_ports == {("10.0.0.1", "TCP", 80)}
    assert info.controller_counts["rc"] == 1
    assert info.remove_pod(b) is True
    assert info.remove_pod(b) is False
    assert info.pods == [] and info.used_ports == set() and info.controller_counts["rc"] == 0
    assert {k: v for k, v in info.requested.items() if v} == {}
    assert info.nonzero_requested == empty.nonzero_requested


def test_removed_pod_frees_room_for_the_next_one() -> None:
    infos = build_node_infos([make_node("n", cpu="1")], [make_pod("a", cpu="1", node="n")])
    with pytest.raises(Unschedulable, match=r"Insufficient cpu"):
        schedule_on(make_pod(cpu="1"), infos)
    infos["n"].remove_pod(make_pod("a"))
    assert schedule_on(make_pod(cpu="1"), infos) == "n"
