"""Pure parts of the kubelet: node status, pod status/phase, container specs, CNI args."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.kubelet import node, status
from controlplane.kubelet.sandbox import pod_ips, port_mappings, sandbox_id
from podnet.runtime.base import ContainerInfo


def info(name: str, attempt: int, state: str, code: int | None = None) -> ContainerInfo:
    return ContainerInfo(id=f"podnet-u1-{name}-{attempt}", state=state,  # type: ignore[arg-type]
                         exit_code=code, started_at=1.0e9,
                         finished_at=1.0e9 + 5 if state == "exited" else None,
                         labels={"io.kubernetes.container.name": name,
                                 "io.kubernetes.container.attempt": str(attempt)})


def pod(policy: str = "Always", names: tuple[str, ...] = ("a",)) -> dict[str, Any]:
    return {"metadata": {"name": "p", "namespace": "ns", "uid": "u1"},
            "spec": {"restartPolicy": policy, "containers": [{"name": n, "image": "busybox"} for n in names]}}


def test_node_ready_condition_follows_cni_config() -> None:
    conds = {c["type"]: c for c in node.conditions(False, "T1", [])}
    assert conds["Ready"]["status"] == "False" and conds["Ready"]["reason"] == "KubeletNotReady"
    assert conds["Ready"]["message"] == "container runtime network not ready: cni config uninitialized"
    later = {c["type"]: c for c in node.conditions(True, "T2", list(conds.values()))}
    assert (later["Ready"]["status"], later["Ready"]["lastTransitionTime"]) == ("True", "T2")
    assert later["MemoryPressure"]["lastTransitionTime"] == "T1"  # unchanged status keeps its time
    assert later["MemoryPressure"]["lastHeartbeatTime"] == "T2"


def test_node_status_reports_addresses_capacity_and_endpoint() -> None:
    cfg = node.NodeConfig(name="n1", node_ip="10.0.0.5", port=10555, max_pods=7)
    st = node.node_status(cfg, node.host_capacity(7), True, "T", [])
    assert st["addresses"][0] == {"type": "InternalIP", "address": "10.0.0.5"}
    assert st["capacity"]["pods"] == "7" and int(st["capacity"]["cpu"]) >= 1
    assert st["capacity"]["memory"].endswith("Ki") and st["allocatable"] == st["capacity"]
    assert st["daemonEndpoints"] == {"kubeletEndpoint": {"Port": 10555}}


def test_memory_from_meminfo() -> None:
    assert node.memory_bytes("MemTotal:       2048 kB\nMemFree: 1 kB\n") == 2048 * 1024


@pytest.mark.parametrize(("policy", "infos", "phase"), [
    ("Always", [], "Pending"),
    ("Always", [info("a", 0, "running")], "Running"),
    ("Never", [info("a", 0, "exited", 0)], "Succeeded"),
    ("Never", [info("a", 0, "exited", 3)], "Failed"),
    ("OnFailure", [info("a", 0, "exited", 0)], "Succeeded"),
    ("OnFailure", [info("a", 0, "exited", 1)], "Running"),
    ("Always", [info("a", 0, "exited", 0)], "Running"),
])
def test_phase(policy: str, infos: list[ContainerInfo], phase: str) -> None:
    st = status.pod_status(pod(policy), infos, ["10.1.0.5"], "10.0.0.1", lambda n: True, "process", "T")
    assert st["phase"] == phase


def test_pending_while_one_container_never_started() -> None:
    st = status.pod_status(pod("Always", ("a", "b")), [info("a", 0, "running")], [], "10.0.0.1",
                           lambda n: True, "process", "T")
    assert st["phase"] == "Pending"
    assert st["containerStatuses"][1]["state"] == {"waiting": {"reason": "ContainerCreating"}}


def test_running_status_fields_and_readiness() -> None:
    st = status.pod_status(pod(), [info("a", 1, "running"), info("a", 0, "exited", 2)], ["10.1.0.5"],
                           "10.0.0.1", lambda n: False, "process", "T")
    cs = st["containerStatuses"][0]
    assert (cs["restartCount"], cs["ready"], cs["started"]) == (1, False, True)
    assert cs["lastState"]["terminated"]["exitCode"] == 2 and cs["containerID"] == "process://podnet-u1-a-1"
    assert (st["podIP"], st["podIPs"], st["hostIP"]) == ("10.1.0.5", [{"ip": "10.1.0.5"}], "10.0.0.1")
    conds = {c["type"]: c["status"] for c in st["conditions"]}
    assert conds == {"PodScheduled": "True", "Initialized": "True", "ContainersReady": "False",
                     "Ready": "False"}
    ready = status.pod_status(pod(), [info("a", 1, "running")], [], "h", lambda n: True, "process", "T2")
    assert {c["type"]: c["status"] for c in ready["conditions"]}["Ready"] == "True"


def test_crashloop_shows_waiting_with_last_state() -> None:
    st = status.pod_status(pod(), [info("a", 0, "exited", 1)], [], "h", lambda n: True, "process", "T")
    cs = st["containerStatuses"][0]
    assert cs["state"] == {"waiting": {"reason": "CrashLoopBackOff"}}
    assert cs["lastState"]["terminated"]["reason"] == "Error"


def test_status_is_stable_so_no_rewrite() -> None:
    p = pod()
    running = [info("a", 0, "running")]
    first = status.pod_status(p, running, ["10.1.0.5"], "h", lambda n: True, "process", "T1")
    p["status"] = first
    second = status.pod_status(p, running, ["10.1.0.5"], "h", lambda n: True, "process", "T2")
    assert not status.differs(first, second)


def test_container_spec() -> None:
    p = pod()
    c = {"name": "a", "command": ["sh", "-c"], "args": ["echo hi"], "env": [{"name": "X", "value": "1"}],
         "workingDir": "/tmp", "resources": {"limits": {"cpu": "250m", "memory": "64Mi"}}}
    spec = status.container_spec(p, c, 2, "/run/netns/podnet-u1", "/logs")
    assert spec.argv == ["sh", "-c", "echo hi"] and spec.env == {"X": "1"} and spec.attempt == 2
    assert (spec.cpu_limit_millis, spec.memory_limit_bytes) == (250, 64 * 2**20)
    assert spec.log_path == "/logs/ns_p_u1/a/2.log" and spec.netns_path == "/run/netns/podnet-u1"
    assert status.cpu_millis("2") == 2000 and status.memory_bytes("1G") == 10**9


def test_sandbox_naming_and_cni_inputs() -> None:
    assert sandbox_id("0F1E2D3C-4B5A-6978-8796-a5b4c3d2e1f0") == "podnet-0f1e2d3c4b5a"
    result = {"interfaces": [{"name": "cni0"}, {"name": "veth1"},
                             {"name": "eth0", "sandbox": "/run/netns/x"}],
              "ips": [{"address": "10.1.0.7/24", "interface": 2, "gateway": "10.1.0.1"}]}
    assert pod_ips(result) == ["10.1.0.7"]
    p = pod()
    p["spec"]["containers"][0]["ports"] = [{"containerPort": 80, "hostPort": 8080},
                                           {"containerPort": 53, "protocol": "UDP"}]
    assert port_mappings(p) == [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""}]


def test_env_values_field_refs_and_expansion() -> None:
    p = pod()
    c = {"name": "a", "env": [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "URL", "value": "http://$(POD_IP):80/$(NAME)/$(MISSING)"},
        {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}
    spec = status.container_spec(p, c, 0, "", "/logs", fields=status.field_values(p, "10.1.0.5", "10.0.0.1"))
    assert spec.env == {"POD_IP": "10.1.0.5", "NAME": "p", "URL": "http://10.1.0.5:80/p/$(MISSING)"}


def test_volume_mounts_host_path_and_empty_dir() -> None:
    p = pod()
    p["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}, {"name": "etc", "hostPath": {"path": "/etc"}},
                            {"name": "cfg", "configMap": {"name": "x"}}]
    c = {"name": "a", "volumeMounts": [{"name": "data", "mountPath": "/data"},
                                       {"name": "etc", "mountPath": "/host-etc", "readOnly": True},
                                       {"name": "cfg", "mountPath": "/cfg"}]}
    mounts = status.container_spec(p, c, 0, "", "/logs", pods_dir="/var/lib/kubelet/pods").mounts
    assert [(m.host_path, m.container_path, m.read_only) for m in mounts] == [
        ("/var/lib/kubelet/pods/u1/volumes/kubernetes.io~empty-dir/data", "/data", False),
        ("/etc", "/host-etc", True)]
