"""A real podnet-kubelet in a simulated host namespace against a real API server.

The kubelet runs inside a Topology host netns (its CNI plugins, bridge and pod namespaces live
there or in their own namespaces, never in the root one), with our `bridge` + `host-local`
plugins installed by `podnet cni install` and every state directory under tmp_path.  Pods are
created with spec.nodeName set (no scheduler needed).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controlplane.kubelet.__main__ import make_runtime
from netns_tests.apiserver_fixtures import ApiServerProcess, component_command
from podnet import netns
from podnet.api.client import LEASES, NODES, PODS, ApiError, Client
from podnet.testing.harness import Host, Topology

SUBNET = "10.78.0"


def wait_until(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `fn` until it returns something truthy, and return that (AssertionError on timeout)."""
    deadline = time.monotonic() + timeout
    while not (value := fn()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)
    return value


def connects(host: Host, ip: str, port: int) -> bool:
    with netns.enter(host.name), contextlib.suppress(OSError), socket.create_connection((ip, port), 1):
        return True
    return False


@dataclass
class Node:
    name: str
    host: Host
    work: Path
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None


def conflist(data_dir: Path) -> dict[str, Any]:
    return {"cniVersion": "1.0.0", "name": "kubelet-test", "plugins": [
        {"type": "bridge", "bridge": "cni0", "isGateway": True, "isDefaultGateway": True, "ipMasq": False,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": f"{SUBNET}.0/24"}]],
                  "dataDir": str(data_dir)}},
        {"type": "portmap", "capabilities": {"portMappings": True}}]}


@pytest.fixture
def node(request: pytest.FixtureRequest, topo: Topology, apiserver: ApiServerProcess, cni_bin: Path,
         tmp_path: Path) -> Iterator[Node]:
    runtime_name = getattr(request, "param", "process")
    if runtime_name == "crun" and not shutil.which("crun"):
        pytest.skip("crun missing: apt-get install crun")
    host = topo.add_host()
    topo.forward_loopback(host, apiserver.port)
    work = tmp_path / "node"
    (work / "net.d").mkdir(parents=True)
    (work / "net.d" / "10-test.conflist").write_text(json.dumps(conflist(work / "ipam")))
    name = f"kn-{uuid.uuid4().hex[:6]}"
    argv = [*component_command("podnet-kubelet", "controlplane.kubelet"),
            f"--kubeconfig={apiserver.kubeconfig()}", f"--hostname-override={name}", f"--node-ip={host.ip}",
            f"--cni-conf-dir={work / 'net.d'}", f"--cni-bin-dir={cni_bin}", f"--cni-cache-dir={work / 'cni'}",
            f"--root-dir={work / 'root'}", f"--pod-logs-dir={work / 'logs'}",
            f"--container-runtime={runtime_name}",
            "--node-status-update-frequency=1s", "--node-lease-duration-seconds=4", "--sync-frequency=3s"]
    n = Node(name=name, host=host, work=work, argv=argv, log=work / "kubelet.log")
    try:
        yield n
    finally:
        if n.proc is not None:
            topo.kill(n.proc)  # first, so nothing is restarted while we clean up
        if n.log.exists():
            print(n.log.read_text(errors="replace")[-5000:])
        # containers the kubelet left (a failed test): stopped by the PIDs in their state dirs
        runtime = make_runtime(runtime_name, str(work / "root"))
        for info in runtime.list():
            with contextlib.suppress(Exception):
                runtime.stop(info.id, 0)
                runtime.remove(info.id)
        # pod namespaces the kubelet made carry its prefix; only those left behind are removed
        root = work / "root" / "sandboxes"
        for rec in root.glob("*.json") if root.exists() else []:
            with contextlib.suppress(Exception):
                netns.delete(json.loads(rec.read_text())["netns"] or "-")


def start(topo: Topology, n: Node) -> None:
    n.proc = topo.spawn_on(n.host, n.argv, log_path=str(n.log),
                           env={**os.environ, "PYTHONUNBUFFERED": "1"})


def pod(name: str, node_name: str, *, command: list[str], grace: int = 5) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": node_name, "terminationGracePeriodSeconds": grace, "restartPolicy": "Always",
                     "containers": [{"name": "main", "image": "busybox", "command": command}]}}


def get_pod(client: Client, name: str) -> dict[str, Any] | None:
    try:
        return client.get(PODS, name, "default")
    except ApiError as e:
        if e.not_found:
            return None
        raise


def running(client: Client, name: str) -> dict[str, Any] | None:
    p = get_pod(client, name)
    return p if p and (p.get("status") or {}).get("phase") == "Running" and p["status"].get("podIP") else None


def test_node_registers_heartbeats_and_is_ready(topo: Topology, node: Node, client: Client) -> None:
    start(topo, node)
    ready = wait_until(lambda: _ready(client, node.name), timeout=20, what="node Ready=True")
    assert ready["status"]["addresses"][0] == {"type": "InternalIP", "address": node.host.ip}
    assert int(ready["status"]["capacity"]["pods"]) == 110
    first = client.get(LEASES, node.name, "kube-node-lease")["spec"]["renewTime"]
    wait_until(lambda: client.get(LEASES, node.name, "kube-node-lease")["spec"]["renewTime"] != first,
               timeout=10, what="the lease renewed")
    # no CNI config -> Ready=False with the runtime-network reason, as upstream
    (node.work / "net.d" / "10-test.conflist").unlink()
    cond = wait_until(lambda: _condition(client, node.name, "False"), timeout=10, what="Ready=False")
    assert cond["reason"] == "KubeletNotReady" and "cni config uninitialized" in cond["message"]


def _condition(client: Client, name: str, status: str) -> dict[str, Any] | None:
    try:
        node = client.get(NODES, name)
    except ApiError:
        return None
    for c in (node.get("status") or {}).get("conditions") or []:
        if c["type"] == "Ready" and c["status"] == status:
            return dict(c)
    return None


def _ready(client: Client, name: str) -> dict[str, Any] | None:
    return client.get(NODES, name) if _condition(client, name, "True") else None


@pytest.mark.parametrize("node", ["process", "crun"], indirect=True)
def test_pod_runs_is_reachable_and_terminates_gracefully(topo: Topology, node: Node, client: Client) -> None:
    start(topo, node)
    wait_until(lambda: _ready(client, node.name), timeout=20, what="node Ready")
    began = time.monotonic()
    web = pod("web", node.name, command=["busybox", "httpd", "-f", "-p", "8080"])
    web["spec"]["containers"][0]["ports"] = [{"containerPort": 8080, "hostPort": 18080}]
    client.create(PODS, web, "default")
    p = wait_until(lambda: running(client, "web"), timeout=30, what="pod web Running with an IP")
    print(f"pod web Running with IP {p['status']['podIP']} {time.monotonic() - began:.2f}s after create")
    ip, uid = p["status"]["podIP"], p["metadata"]["uid"]
    assert ip.startswith(f"{SUBNET}.") and p["status"]["hostIP"] == node.host.ip
    cs = p["status"]["containerStatuses"][0]
    assert cs["state"].get("running") and cs["restartCount"] == 0
    sandbox = f"podnet-{uid.replace('-', '')[:12]}"
    assert netns.exists(sandbox)
    wait_until(lambda: connects(node.host, ip, 8080), timeout=15, what="httpd answering on the pod IP")
    assert node.host.run("ping", "-c1", "-W2", ip, check=False).returncode == 0
    other = topo.add_host()  # hostPort through the portmap plugin, from another machine
    wait_until(lambda: connects(other, node.host.ip, 18080), timeout=10, what="hostPort 18080 answering")
    client.delete(PODS, "web", "default")  # graceful: the kubelet stops it and deletes it
    wait_until(lambda: get_pod(client, "web") is None, timeout=20, what="pod web gone")
    assert not netns.exists(sandbox)
    assert not list((node.work / "cni" / "results").glob("*")), "CNI DEL dropped the cached result"


def test_termination_waits_the_grace_period_for_a_process_ignoring_sigterm(topo: Topology, node: Node,
                                                                          client: Client) -> None:
    """`sleep` as its pid namespace's init ignores SIGTERM: the kubelet must wait the pod's
    terminationGracePeriodSeconds, then SIGKILL, then remove the pod."""
    start(topo, node)
    client.create(PODS, pod("stubborn", node.name, command=["sleep", "1000"], grace=2), "default")
    wait_until(lambda: running(client, "stubborn"), timeout=30, what="pod stubborn Running")
    began = time.monotonic()
    client.delete(PODS, "stubborn", "default")
    wait_until(lambda: get_pod(client, "stubborn") is None, timeout=15, what="pod stubborn gone")
    took = time.monotonic() - began
    assert 1.8 <= took < 8, f"deletion took {took:.1f}s with a 2 s grace period"


def test_container_logs_are_served_on_the_kubelet_port(topo: Topology, node: Node, client: Client) -> None:
    start(topo, node)
    client.create(PODS, pod("talker", node.name, command=["sh", "-c", "echo hello from talker; sleep 1000"]),
                  "default")
    wait_until(lambda: running(client, "talker"), timeout=30, what="pod talker Running")
    url = "http://127.0.0.1:10250/containerLogs/default/talker/main"
    body = wait_until(lambda: "hello from talker" in (text := fetch(node.host, url)) and text, timeout=10,
                      what="the container's log line on the kubelet server")
    assert body == "hello from talker\n"
    # an emptyDir shared by two containers, and the downward API's status.podIP in env
    shared = pod("shared", node.name, command=["sh", "-c", "echo $POD_IP > /data/ip; sleep 1000"])
    writer = shared["spec"]["containers"][0]
    writer["env"] = [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    writer["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
    shared["spec"]["containers"].append({
        "name": "reader", "image": "busybox", "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        "command": ["sh", "-c", "while [ ! -s /data/ip ]; do sleep 0.1; done; cat /data/ip; sleep 1000"]})
    shared["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
    client.create(PODS, shared, "default")
    s = wait_until(lambda: running(client, "shared"), timeout=30, what="pod shared Running")
    url = "http://127.0.0.1:10250/containerLogs/default/shared/reader"
    wait_until(lambda: fetch(node.host, url) == s["status"]["podIP"] + "\n", timeout=10,
               what="the reader container printing the writer's POD_IP from the shared emptyDir")


def test_probes_drive_readiness_and_liveness_restarts(topo: Topology, node: Node, client: Client) -> None:
    start(topo, node)
    slow = pod("slow", node.name, command=["sh", "-c", "sleep 2; touch /tmp/ready; sleep 1000"])
    slow["spec"]["containers"][0]["readinessProbe"] = {
        "exec": {"command": ["test", "-e", "/tmp/ready"]}, "periodSeconds": 1}
    sick = pod("sick", node.name, command=["sleep", "1000"], grace=1)
    sick["spec"]["containers"][0]["livenessProbe"] = {
        "exec": {"command": ["false"]}, "periodSeconds": 1, "failureThreshold": 1}
    client.create(PODS, slow, "default")
    client.create(PODS, sick, "default")
    p = wait_until(lambda: running(client, "slow"), timeout=30, what="pod slow Running")
    assert {c["type"]: c["status"] for c in p["status"]["conditions"]}["Ready"] == "False"
    wait_until(lambda: _pod_ready(client, "slow"), timeout=15, what="pod slow Ready once its probe passes")
    wait_until(lambda: (s := get_pod(client, "sick")) and any(
        c["restartCount"] >= 1 for c in (s.get("status") or {}).get("containerStatuses") or []),
        timeout=20, what="pod sick restarted after its liveness probe failed")


def _pod_ready(client: Client, name: str) -> bool:
    p = get_pod(client, name) or {}
    conditions = (p.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def fetch(host: Host, url: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", 10250, timeout=5)
    try:
        with netns.enter(host.name):  # the socket is made here, so it lives in the host's netns
            conn.connect()
        conn.request("GET", url.removeprefix("http://127.0.0.1:10250"))
        return conn.getresponse().read().decode()
    except OSError:
        return ""
    finally:
        conn.close()


def test_kill_9_and_restart_adopts_without_a_second_sandbox(topo: Topology, node: Node,
                                                            client: Client) -> None:
    start(topo, node)
    client.create(PODS, pod("sleeper", node.name, command=["sleep", "1000"]), "default")
    client.create(PODS, pod("doomed", node.name, command=["sleep", "1000"]), "default")
    p = wait_until(lambda: (r := running(client, "sleeper"))
                   and r["status"]["containerStatuses"][0]["state"].get("running", {}).get("startedAt") and r,
                   timeout=30, what="pod sleeper Running with its start time")
    d = wait_until(lambda: running(client, "doomed"), timeout=30, what="pod doomed Running")
    doomed_netns = f"podnet-{d['metadata']['uid'].replace('-', '')[:12]}"
    ip, started = p["status"]["podIP"], p["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
    assert node.proc is not None
    topo.kill(node.proc, signal.SIGKILL)
    # while the kubelet is down one pod is force-deleted and another created: the restarted kubelet
    # tears down the first's sandbox (CNI DEL, netns, containers) and starts the second
    client.delete(PODS, "doomed", "default", grace_period_seconds=0)
    client.create(PODS, pod("other", node.name, command=["sleep", "1000"]), "default")
    start(topo, node)
    o = wait_until(lambda: running(client, "other"), timeout=30, what="pod other Running after restart")
    again = get_pod(client, "sleeper")
    assert again is not None and again["status"]["podIP"] == ip
    cs = again["status"]["containerStatuses"][0]
    assert cs["restartCount"] == 0 and cs["state"]["running"]["startedAt"] == started
    assert len(list((node.work / "root" / "sandboxes").glob("*.json"))) == 2
    # level-triggered and quiet: a settled pod's status is not rewritten on every sync
    rv = (get_pod(client, "sleeper") or {})["metadata"]["resourceVersion"]
    time.sleep(2.5)  # > 2 PLEG relists and the next periodic sync of every pod
    assert (get_pod(client, "sleeper") or {})["metadata"]["resourceVersion"] == rv
    assert o["status"]["podIP"] != ip
    wait_until(lambda: not netns.exists(doomed_netns), timeout=10, what="the force-deleted pod's netns gone")
    cached = [p.name for p in (node.work / "cni" / "results").glob("*")]
    assert len(cached) == 2 and not any(doomed_netns in n for n in cached)
    for name in ("sleeper", "other"):
        client.delete(PODS, name, "default", grace_period_seconds=1)
    wait_until(lambda: get_pod(client, "sleeper") is None and get_pod(client, "other") is None, timeout=20,
               what="both pods gone")
    assert not list((node.work / "root" / "sandboxes").glob("*.json"))
