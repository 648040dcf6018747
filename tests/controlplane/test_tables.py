"""Table output: upstream columns, cells and kubectl's human durations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from controlplane.apiserver import tables
from controlplane.apiserver.resources import Resource, find

NOW = datetime(2026, 1, 10, 12, 0, 0, tzinfo=UTC)


def _ts(seconds_ago: float) -> str:
    return (NOW - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _res(group: str, plural: str) -> Resource:
    res = find(group, "v1", plural)
    assert res is not None
    return res


def _meta(name: str, seconds_ago: float = 5, **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": "default", "creationTimestamp": _ts(seconds_ago), **extra}


def _row(group: str, plural: str, obj: dict[str, Any]) -> list[Any]:
    table = tables.to_table(_res(group, plural), [obj], now=NOW)
    cells: list[Any] = table["rows"][0]["cells"]
    assert len(cells) == len(table["columnDefinitions"])
    return cells


def _headers(group: str, plural: str, wide: bool = False) -> list[str]:
    cols = tables.column_definitions(_res(group, plural))
    return [c["name"].upper() for c in cols if wide or c["priority"] == 0]


@pytest.mark.parametrize(("seconds", "text"), [
    (-5, "<invalid>"), (-1, "0s"), (0, "0s"), (5, "5s"), (119, "119s"), (120, "2m"), (182, "3m2s"),
    (599, "9m59s"), (600, "10m"), (10799, "179m"), (3 * 3600, "3h"), (3 * 3600 + 60 * 25, "3h25m"),
    (8 * 3600, "8h"), (47 * 3600, "47h"), (2 * 86400, "2d"), (2 * 86400 + 3 * 3600, "2d3h"),
    (8 * 86400, "8d"), (729 * 86400, "729d"), (730 * 86400, "2y"), (800 * 86400, "2y70d"),
    (9 * 365 * 86400, "9y"),
])
def test_human_duration_matches_apimachinery(seconds: int, text: str) -> None:
    assert tables.human_duration(seconds) == text


def test_headers_match_kubectl() -> None:
    assert _headers("", "pods") == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert _headers("", "pods", wide=True)[5:] == ["IP", "NODE", "NOMINATED NODE", "READINESS GATES"]
    assert _headers("", "services") == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"]
    assert _headers("", "services", wide=True)[-1] == "SELECTOR"
    assert _headers("", "nodes") == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    assert _headers("", "nodes", wide=True)[5:] == [
        "INTERNAL-IP", "EXTERNAL-IP", "OS-IMAGE", "KERNEL-VERSION", "CONTAINER-RUNTIME"]
    assert _headers("", "namespaces") == ["NAME", "STATUS", "AGE"]
    assert _headers("", "endpoints") == ["NAME", "ENDPOINTS", "AGE"]
    assert _headers("", "replicationcontrollers") == ["NAME", "DESIRED", "CURRENT", "READY", "AGE"]
    assert _headers("", "replicationcontrollers", wide=True)[5:] == ["CONTAINERS", "IMAGES", "SELECTOR"]
    assert _headers("networking.k8s.io", "networkpolicies") == ["NAME", "POD-SELECTOR", "AGE"]
    assert _headers("apps", "deployments") == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    assert _headers("", "configmaps") == ["NAME", "DATA", "AGE"]
    assert _headers("", "secrets") == ["NAME", "TYPE", "DATA", "AGE"]
    assert _headers("", "events") == ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert _headers("rbac.authorization.k8s.io", "clusterroles") == ["NAME", "CREATED AT"]


def test_table_envelope_and_row_objects() -> None:
    pod = {"metadata": _meta("p", labels={"a": "b"}), "spec": {"containers": [{"name": "c"}]}}
    table = tables.to_table(_res("", "pods"), [pod], resource_version="42", continue_token="tok", now=NOW)
    assert table["kind"] == "Table" and table["apiVersion"] == "meta.k8s.io/v1"
    assert table["metadata"] == {"resourceVersion": "42", "continue": "tok"}
    assert table["columnDefinitions"][0] == {
        "name": "Name", "type": "string", "format": "name", "description": "", "priority": 0}
    obj = table["rows"][0]["object"]
    assert obj["kind"] == "PartialObjectMetadata" and obj["metadata"]["namespace"] == "default"
    full = tables.to_table(_res("", "pods"), [pod], include_object="Object", now=NOW)
    assert full["rows"][0]["object"] is pod
    bare = tables.to_table(_res("", "pods"), [pod], include_object="None", include_headers=False, now=NOW)
    assert "object" not in bare["rows"][0] and bare["columnDefinitions"] == []


def _pod(statuses: list[dict[str, Any]] | None = None, phase: str = "Pending", **kw: Any) -> dict[str, Any]:
    containers = [{"name": f"c{i}"} for i in range(max(1, len(statuses or [])))]
    return {"metadata": _meta("p", 65, **kw.pop("meta", {})), "spec": {"containers": containers, **kw},
            "status": {"phase": phase, "containerStatuses": statuses or []}}


def test_pod_pending_and_container_creating() -> None:
    assert _row("", "pods", _pod())[:5] == ["p", "0/1", "Pending", "0", "65s"]
    waiting = [{"name": "c0", "ready": False, "restartCount": 0,
                "state": {"waiting": {"reason": "ContainerCreating"}}}]
    assert _row("", "pods", _pod(waiting))[2] == "ContainerCreating"


def test_pod_running_ready_and_wide_cells() -> None:
    running = [{"name": "c0", "ready": True, "restartCount": 0, "state": {"running": {}}},
               {"name": "c1", "ready": False, "restartCount": 0, "state": {"running": {}}}]
    pod = _pod(running, "Running", nodeName="n1")
    pod["status"]["podIP"] = "10.1.0.5"
    assert _row("", "pods", pod) == ["p", "1/2", "Running", "0", "65s", "10.1.0.5", "n1", "<none>", "<none>"]


def test_pod_crashloop_with_restart_age() -> None:
    status = [{"name": "c0", "ready": False, "restartCount": 4,
               "state": {"waiting": {"reason": "CrashLoopBackOff"}},
               "lastState": {"terminated": {"exitCode": 1, "finishedAt": _ts(125)}}}]
    assert _row("", "pods", _pod(status, "Running"))[1:4] == ["0/1", "CrashLoopBackOff", "4 (2m5s ago)"]


def test_pod_completed_error_and_terminating() -> None:
    done = [{"name": "c0", "ready": False, "restartCount": 0,
             "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}]
    table = tables.to_table(_res("", "pods"), [_pod(done, "Succeeded")], now=NOW)
    assert table["rows"][0]["cells"][2] == "Completed"
    assert table["rows"][0]["conditions"][0]["reason"] == "Succeeded"
    failed = [{"name": "c0", "state": {"terminated": {"exitCode": 137}}}]
    assert _row("", "pods", _pod(failed, "Failed"))[2] == "ExitCode:137"
    signalled = [{"name": "c0", "state": {"terminated": {"exitCode": 0, "signal": 9}}}]
    assert _row("", "pods", _pod(signalled, "Failed"))[2] == "Signal:9"
    deleting = _pod([{"name": "c0", "ready": True, "state": {"running": {}}}], "Running",
                    meta={"deletionTimestamp": _ts(1)})
    assert _row("", "pods", deleting)[2] == "Terminating"
    gone = _pod([], "Succeeded", meta={"deletionTimestamp": _ts(1)})
    assert _row("", "pods", gone)[2] == "Succeeded"


def test_pod_init_containers_and_sidecars() -> None:
    pod = _pod([{"name": "c0", "state": {"waiting": {"reason": "PodInitializing"}}}],
               initContainers=[{"name": "i0"}, {"name": "i1"}])
    pod["status"]["initContainerStatuses"] = [
        {"name": "i0", "state": {"terminated": {"exitCode": 0}}},
        {"name": "i1", "state": {"running": {}}},
    ]
    assert _row("", "pods", pod)[2] == "Init:1/2"
    pull_error = {"waiting": {"reason": "ErrImagePull"}}
    pod["status"]["initContainerStatuses"][1] = {"name": "i1", "state": pull_error}
    assert _row("", "pods", pod)[2] == "Init:ErrImagePull"
    sidecar = _pod([{"name": "c0", "ready": True, "state": {"running": {}}}], "Running",
                   initContainers=[{"name": "s", "restartPolicy": "Always"}])
    sidecar["status"]["initContainerStatuses"] = [
        {"name": "s", "started": True, "ready": True, "restartCount": 1, "state": {"running": {}}}]
    assert _row("", "pods", sidecar)[1:4] == ["2/2", "Running", "1"]


def test_service_rows() -> None:
    svc = {"metadata": _meta("web", 700), "spec": {
        "type": "ClusterIP", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
        "ports": [{"port": 80, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}],
        "selector": {"app": "web"}}}
    assert _row("", "services", svc) == ["web", "ClusterIP", "10.96.0.10", "<none>", "80/TCP,53/UDP", "11m",
                                         "app=web"]
    svc["spec"].update(type="NodePort", ports=[{"port": 80, "nodePort": 30080, "protocol": "TCP"}])
    assert _row("", "services", svc)[4] == "80:30080/TCP"
    svc["spec"]["type"] = "LoadBalancer"
    assert _row("", "services", svc)[3] == "<pending>"
    headless = {"metadata": _meta("h"), "spec": {"type": "ClusterIP", "clusterIP": "None"}}
    assert _row("", "services", headless)[2:5] == ["None", "<none>", "<none>"]
    ext = {"metadata": _meta("e"), "spec": {"type": "ExternalName", "externalName": "example.com"}}
    assert _row("", "services", ext)[2:4] == ["<none>", "example.com"]


def test_node_rows() -> None:
    node = {"metadata": _meta("n1", 3 * 86400, labels={"node-role.kubernetes.io/control-plane": ""}),
            "spec": {"unschedulable": True},
            "status": {"conditions": [{"type": "MemoryPressure", "status": "False"},
                                      {"type": "Ready", "status": "True"}],
                       "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
                       "nodeInfo": {"kubeletVersion": "v1.31.0", "osImage": "Debian GNU/Linux 12"}}}
    assert _row("", "nodes", node) == [
        "n1", "Ready,SchedulingDisabled", "control-plane", "3d", "v1.31.0", "10.0.0.1", "<none>",
        "Debian GNU/Linux 12", "<unknown>", "<unknown>"]
    bare = {"metadata": _meta("n2"), "status": {"conditions": [{"type": "Ready", "status": "Unknown"}]}}
    assert _row("", "nodes", bare)[1:3] == ["NotReady", "<none>"]
    assert _row("", "nodes", {"metadata": _meta("n3")})[1] == "Unknown"


def test_endpoints_and_slices() -> None:
    ep = {"metadata": _meta("web"), "subsets": [{
        "addresses": [{"ip": "10.1.0.1"}, {"ip": "10.1.0.2"}, {"ip": "fd00::3"}, {"ip": "10.1.0.4"}],
        "ports": [{"port": 8080}]}]}
    assert _row("", "endpoints", ep)[1] == "10.1.0.1:8080,10.1.0.2:8080,[fd00::3]:8080 + 1 more..."
    assert _row("", "endpoints", {"metadata": _meta("none")})[1] == "<none>"
    eps = {"metadata": _meta("web-abc"), "addressType": "IPv4", "ports": [{"port": 8080}, {"name": "x"}],
           "endpoints": [{"addresses": ["10.1.0.1"]}]}
    assert _row("discovery.k8s.io", "endpointslices", eps)[1:4] == ["IPv4", "8080,x", "10.1.0.1"]
    empty = {"metadata": _meta("e"), "addressType": "IPv4"}
    assert _row("discovery.k8s.io", "endpointslices", empty)[2:4] == ["<unset>", "<unset>"]


def test_workload_rows() -> None:
    template = {"metadata": {"labels": {"app": "x"}},
                "spec": {"containers": [{"name": "a", "image": "busybox"}, {"name": "b", "image": "nginx"}]}}
    rc = {"metadata": _meta("rc1"), "spec": {"replicas": 3, "selector": {"app": "x"}, "template": template},
          "status": {"replicas": 2, "readyReplicas": 1}}
    assert _row("", "replicationcontrollers", rc) == ["rc1", 3, 2, 1, "5s", "a,b", "busybox,nginx", "app=x"]
    rs = {"metadata": _meta("rs1"), "spec": {"replicas": 1, "template": template, "selector": {
        "matchLabels": {"app": "x"}, "matchExpressions": [{"key": "tier", "operator": "In",
                                                            "values": ["fe", "be"]}]}}}
    assert _row("apps", "replicasets", rs)[-1] == "app=x,tier in (be,fe)"
    deploy = {"metadata": _meta("d1"), "spec": {"replicas": 2, "template": template,
                                                "selector": {"matchLabels": {"app": "x"}}},
              "status": {"readyReplicas": 1, "updatedReplicas": 2, "availableReplicas": 1}}
    assert _row("apps", "deployments", deploy)[:5] == ["d1", "1/2", 2, 1, "5s"]


def test_small_kinds() -> None:
    ns = {"metadata": _meta("default", 90000), "status": {"phase": "Active"}}
    assert _row("", "namespaces", ns) == ["default", "Active", "25h"]
    cm = {"metadata": _meta("c"), "data": {"a": "1", "b": "2"}, "binaryData": {"c": "AA=="}}
    assert _row("", "configmaps", cm) == ["c", 3, "5s"]
    secret = {"metadata": _meta("s"), "type": "Opaque", "data": {"k": "dg=="}}
    assert _row("", "secrets", secret) == ["s", "Opaque", 1, "5s"]
    assert _row("", "serviceaccounts", {"metadata": _meta("default")}) == ["default", 0, "5s"]
    np = {"metadata": _meta("deny"), "spec": {"podSelector": {}}}
    assert _row("networking.k8s.io", "networkpolicies", np) == ["deny", "<none>", "5s"]
    np["spec"]["podSelector"] = {"matchLabels": {"role": "db"}}
    assert _row("networking.k8s.io", "networkpolicies", np)[1] == "role=db"
    lease = {"metadata": _meta("l"), "spec": {"holderIdentity": "node-1"}}
    assert _row("coordination.k8s.io", "leases", lease) == ["l", "node-1", "5s"]


def test_rbac_rows() -> None:
    role = {"metadata": {"name": "admin", "creationTimestamp": "2026-01-01T00:00:00Z"}}
    assert _row("rbac.authorization.k8s.io", "clusterroles", role) == ["admin", "2026-01-01T00:00:00Z"]
    binding = {"metadata": _meta("b"), "roleRef": {"kind": "ClusterRole", "name": "view"},
               "subjects": [{"kind": "User", "name": "alice"}, {"kind": "Group", "name": "devs"},
                            {"kind": "ServiceAccount", "namespace": "kube-system", "name": "ctrl"}]}
    assert _row("rbac.authorization.k8s.io", "rolebindings", binding) == [
        "b", "ClusterRole/view", "5s", "alice", "devs", "kube-system/ctrl"]


def test_event_rows() -> None:
    event = {"metadata": _meta("p.123"), "type": "Normal", "reason": "Scheduled",
             "message": " Successfully assigned default/p to n1\n", "firstTimestamp": _ts(300),
             "lastTimestamp": _ts(30), "count": 2, "source": {"component": "default-scheduler"},
             "involvedObject": {"kind": "Pod", "name": "p", "fieldPath": "spec.containers{c}"}}
    assert _row("", "events", event) == [
        "30s", "Normal", "Scheduled", "pod/p", "spec.containers{c}", "default-scheduler",
        "Successfully assigned default/p to n1", "5m", 2, "p.123"]
    new_api = {"metadata": _meta("e2"), "eventTime": _ts(10), "reportingComponent": "kubelet",
               "reportingInstance": "n1", "involvedObject": {"kind": "Node"}}
    assert _row("", "events", new_api)[:6] == ["10s", "", "", "node", "", "kubelet, n1"]


def test_generic_and_missing_timestamp() -> None:
    sar = find("authorization.k8s.io", "v1", "selfsubjectaccessreviews")
    assert sar is not None
    table = tables.to_table(sar, [{"metadata": {"name": "x"}}], now=NOW)
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Age"]
    assert table["rows"][0]["cells"] == ["x", "<unknown>"]


def test_malformed_object_still_gets_a_row() -> None:
    broken = {"metadata": _meta("e"), "involvedObject": "oops"}
    events = tables.to_table(_res("", "events"), [broken], now=NOW)
    cells = events["rows"][0]["cells"]
    assert cells[-1] == "e" and cells[0] == "<unknown>"
    pods = tables.to_table(_res("", "pods"), [{"metadata": _meta("p"), "status": "x"}], now=NOW)
    assert pods["rows"][0]["cells"][:2] == ["p", "<unknown>"]
