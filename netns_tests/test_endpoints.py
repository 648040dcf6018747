"""podnet-controller-manager --controllers endpoint,endpointslice against a real podnet-apiserver.

The test plays kubelet: it binds pods (at creation or through pods/binding) and patches their status
(podIP, phase, Ready) through the status subresource.  No scheduler, no kubelet, no dataplane."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from netns_tests.apiserver_fixtures import (
    ApiServerProcess,
    component_command,
    component_process,
    kubectl_binary,
)
from podnet.api.client import ENDPOINTS, ENDPOINTSLICES, NODES, PODS, SERVICES, ApiError, Client
from podnet.testing.wait import wait_until

Obj = dict[str, Any]
NS = "default"
MANAGED = "endpointslice.kubernetes.io/managed-by=endpointslice-controller.k8s.io"


@pytest.fixture
def manager(apiserver: ApiServerProcess, tmp_path: Path
            ) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """The two controllers, a 1 s resync (so "a resync writes nothing" is observable) and slices of at
    most 2 endpoints (so splitting happens with a handful of pods)."""
    log_path = tmp_path / "controller-manager.log"
    command = [*component_command("podnet-controller-manager", "controlplane.controllers"),
               "--controllers=endpoint,endpointslice", "--resync-period=1s", "--leader-elect=false",
               "--max-endpoints-per-slice=2"]
    with component_process(apiserver, log_path, command) as proc:
        yield proc, log_path


def _service(name: str, *, target: Any = "http", cluster_ip: str | None = None, publish: bool = False) -> Obj:
    spec: Obj = {"selector": {"app": name}, "ports": [{"name": "web", "port": 80, "targetPort": target}]}
    if cluster_ip:
        spec["clusterIP"] = cluster_ip
    if publish:
        spec["publishNotReadyAddresses"] = True
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": {"team": "t1"}},
            "spec": spec}


def _pod(name: str, app: str, port: int, *, node: str = "", hostname: str = "", subdomain: str = "") -> Obj:
    spec: Obj = {"containers": [{"name": "c", "image": "pause",
                                 "ports": [{"name": "http", "containerPort": port}]}]}
    for key, value in (("nodeName", node), ("hostname", hostname), ("subdomain", subdomain)):
        if value:
            spec[key] = value
    meta = {"name": name, "labels": {"app": app}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def _kubelet(client: Client, name: str, ip: str, ready: bool) -> None:
    """What a kubelet reports: Running, the pod IP, the Ready condition."""
    status = {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
              "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    client.patch(PODS, name, {"status": status}, NS, subresource="status")


def _endpoints(client: Client, name: str) -> Obj | None:
    try:
        return client.get(ENDPOINTS, name, NS)
    except ApiError as e:
        if e.not_found:
            return None
        raise


def _slices(client: Client, name: str) -> list[Obj]:
    selector = f"kubernetes.io/service-name={name},{MANAGED}"
    return list(client.list(ENDPOINTSLICES, NS, label_selector=selector)["items"])


def _subsets(client: Client, name: str) -> list[tuple[int, list[str], list[str]]]:
    """(port, ready pod names, not-ready pod names) per subset, sorted by port."""
    ep = _endpoints(client, name) or {}
    out = []
    for subset in ep.get("subsets") or []:
        port = subset["ports"][0]["port"] if subset.get("ports") else 0
        names = [sorted(a["targetRef"]["name"] for a in subset.get(k) or [])
                 for k in ("addresses", "notReadyAddresses")]
        out.append((port, names[0], names[1]))
    return sorted(out)


def _slice_view(client: Client, name: str) -> dict[str, tuple[int, tuple[bool, bool, bool]]]:
    """pod -> (port, (ready, serving, terminating)) across the service's slices."""
    view = {}
    for s in _slices(client, name):
        port = s["ports"][0]["port"] if s.get("ports") else 0
        for e in s.get("endpoints") or []:
            c = e["conditions"]
            view[e["targetRef"]["name"]] = (port, (c["ready"], c["serving"], c["terminating"]))
    return view


def _versions(client: Client, name: str) -> dict[str, str]:
    out = {s["metadata"]["name"]: s["metadata"]["resourceVersion"] for s in _slices(client, name)}
    ep = _endpoints(client, name)
    if ep is not None:
        out["<endpoints>"] = ep["metadata"]["resourceVersion"]
    return out


def _until(what: str, check: Callable[[], bool], timeout: float = 15.0) -> None:
    wait_until(check, timeout, what)


def test_endpoints_follow_pod_readiness_and_termination(
        client: Client, apiserver: ApiServerProcess, manager: tuple[subprocess.Popen[bytes], Path]) -> None:
    proc, log_path = manager
    node_meta = {"name": "node-1", "labels": {"topology.kubernetes.io/zone": "zone-a"}}
    client.create(NODES, {"apiVersion": "v1", "kind": "Node", "metadata": node_meta})
    client.create(SERVICES, _service("web"), NS)
    # the named targetPort "http" is 8080 in one pod and 9090 in the other
    client.create(PODS, _pod("web-a", "web", 8080, node="node-1"), NS)
    client.create(PODS, _pod("web-b", "web", 9090), NS)
    client.create(PODS, _pod("other", "db", 8080, node="node-1"), NS)
    client.bind("web-b", "node-2", NS)
    _until("a placeholder slice and empty Endpoints", lambda: _endpoints(client, "web") is not None
           and len(_slices(client, "web")) == 1 and not _slices(client, "web")[0].get("endpoints"))

    for name, ip in (("web-a", "10.244.1.5"), ("web-b", "10.244.2.7"), ("other", "10.244.1.6")):
        _kubelet(client, name, ip, ready=True)
    _until("both pods ready, one subset per resolved port", lambda: _subsets(client, "web") == [
        (8080, ["web-a"], []), (9090, ["web-b"], [])])
    _until("one slice per port", lambda: _slice_view(client, "web") == {
        "web-a": (8080, (True, True, False)), "web-b": (9090, (True, True, False))})
    ep = _endpoints(client, "web")
    assert ep is not None and ep["metadata"]["labels"] == {"team": "t1"}
    address = ep["subsets"][1]["addresses"][0]
    assert (address["ip"], address["nodeName"], address["targetRef"]["kind"]) == (
        "10.244.2.7", "node-2", "Pod")
    zones = {}
    for s in _slices(client, "web"):
        assert s["metadata"]["name"].startswith("web-") and s["addressType"] == "IPv4"
        assert s["metadata"]["ownerReferences"][0]["kind"] == "Service"
        zones.update({e["targetRef"]["name"]: e.get("zone") for e in s["endpoints"]})
    assert zones == {"web-a": "zone-a", "web-b": None}  # node-2 exists only in the pod's binding

    _kubelet(client, "web-b", "10.244.2.7", ready=False)
    _until("not ready: notReadyAddresses", lambda: _subsets(client, "web") == [
        (8080, ["web-a"], []), (9090, [], ["web-b"])])
    _until("not ready in its slice",
           lambda: _slice_view(client, "web")["web-b"] == (9090, (False, False, False)))

    client.patch(SERVICES, "web", {"spec": {"publishNotReadyAddresses": True}}, NS)
    _until("publishNotReadyAddresses: everyone ready", lambda: _subsets(client, "web") == [
        (8080, ["web-a"], []), (9090, ["web-b"], [])])
    _until("publishNotReadyAddresses in slices", lambda: _slice_view(client, "web")["web-b"][1][0] is True)
    client.patch(SERVICES, "web", {"spec": {"publishNotReadyAddresses": False}}, NS)

    client.delete(PODS, "web-a", NS)  # bound, so graceful: it stays Terminating
    assert client.get(PODS, "web-a", NS)["metadata"].get("deletionTimestamp")
    _until("terminating pod leaves Endpoints", lambda: _subsets(client, "web") == [(9090, [], ["web-b"])])
    _until("terminating pod stays in its slice", lambda: _slice_view(client, "web") == {
        "web-a": (8080, (False, True, True)), "web-b": (9090, (False, False, False))})

    before = _versions(client, "web")
    time.sleep(2.5)  # more than two resync periods
    assert _versions(client, "web") == before, "a resync wrote"

    kubectl = kubectl_binary(31) or kubectl_binary(33)
    if kubectl is not None:
        argv = [kubectl, f"--kubeconfig={apiserver.kubeconfig()}", "get", "endpoints,endpointslices"]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert "endpoints/web" in out.stdout and "10.244.2.7" in out.stdout
        assert "endpointslice.discovery.k8s.io/web-" in out.stdout

    client.delete(SERVICES, "web", NS)
    _until("service deleted: Endpoints and slices gone",
           lambda: _endpoints(client, "web") is None and not _slices(client, "web"))
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(15) == 0
    assert b"Traceback" not in log_path.read_bytes()


def test_headless_split_slices_and_user_managed_endpoints(
        client: Client, manager: tuple[subprocess.Popen[bytes], Path]) -> None:
    proc, log_path = manager
    # a service without a selector: its Endpoints belong to the user
    manual = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "manual"},
              "spec": {"ports": [{"port": 80}]}}
    client.create(SERVICES, manual, NS)
    mine = client.create(ENDPOINTS, {
        "apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "manual"},
        "subsets": [{"addresses": [{"ip": "192.0.2.1"}], "ports": [{"port": 80}]}]}, NS)

    client.create(SERVICES, _service("db", target=5432, cluster_ip="None"), NS)
    for i in range(5):
        client.create(PODS, _pod(f"db-{i}", "db", 5432, node="node-1", hostname=f"db-{i}",
                                 subdomain="db" if i < 3 else "elsewhere"), NS)
        _kubelet(client, f"db-{i}", f"10.244.3.{10 + i}", ready=True)

    def hostnames() -> dict[str, str | None]:
        ep = _endpoints(client, "db") or {}
        return {a["targetRef"]["name"]: a.get("hostname")
                for s in ep.get("subsets") or [] for a in s.get("addresses") or []}

    _until("headless Endpoints with hostnames", lambda: hostnames() == {
        "db-0": "db-0", "db-1": "db-1", "db-2": "db-2", "db-3": None, "db-4": None})
    _until("5 endpoints in slices of at most 2", lambda: sorted(
        len(s.get("endpoints") or []) for s in _slices(client, "db")) == [1, 2, 2])
    slices = _slices(client, "db")
    assert all(s["metadata"]["labels"]["service.kubernetes.io/headless"] == "" for s in slices)
    hosts = {e["targetRef"]["name"]: e.get("hostname") for s in slices for e in s["endpoints"]}
    assert hosts["db-0"] == "db-0" and hosts["db-4"] is None

    tampered = _endpoints(client, "db")
    assert tampered is not None
    client.update(ENDPOINTS, {**tampered, "subsets": []}, NS)
    _until("a managed Endpoints edited by hand is restored", lambda: len(hostnames()) == 5)

    client.delete(PODS, "db-1", NS, grace_period_seconds=0)  # gone at once
    _until("4 endpoints: one slice updated, none recreated", lambda: sorted(
        len(s.get("endpoints") or []) for s in _slices(client, "db")) == [1, 1, 2])
    before = _versions(client, "db")
    time.sleep(2.5)
    assert _versions(client, "db") == before, "a resync wrote"

    again = _endpoints(client, "manual")
    assert again is not None and again["metadata"]["resourceVersion"] == mine["metadata"]["resourceVersion"]
    assert not _slices(client, "manual")
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(15) == 0
    assert b"Traceback" not in log_path.read_bytes()
