"""Namespace deletion, garbage collection and default service accounts end to end: a real
podnet-apiserver, one podnet-controller-manager (--controllers namespace,garbagecollector,
serviceaccount,replicationcontroller,replicaset,deployment) for the module, and real kubectl 1.33.

Pods stay unscheduled (no scheduler, no kubelet), so deleting one is immediate, as upstream.  Every
test works in its own namespace and ends by deleting it: nothing is left behind.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from netns_tests.apiserver_fixtures import (
    ApiServerProcess,
    component_command,
    component_process,
    kubectl_binary,
)
from podnet.api.client import (
    CONFIGMAPS,
    DEPLOYMENTS,
    NAMESPACES,
    PODS,
    REPLICASETS,
    REPLICATIONCONTROLLERS,
    SERVICEACCOUNTS,
    SERVICES,
    ApiError,
    Client,
    Resource,
)
from podnet.api.kubeconfig import load_kubeconfig
from podnet.testing.wait import wait_until

SECRETS = Resource("", "v1", "secrets")
CONTROLLERS = "namespace,garbagecollector,serviceaccount,replicationcontroller,replicaset,deployment"
Obj = dict[str, Any]


@pytest.fixture(scope="module")
def manager(shared_apiserver: ApiServerProcess, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[subprocess.Popen[bytes]]:
    """The controller manager with short periods (the API server is the module's); killed by PID."""
    log_path = tmp_path_factory.mktemp("controller-manager") / "controller-manager.log"
    command = [*component_command("podnet-controller-manager", "controlplane.controllers"),
               f"--controllers={CONTROLLERS}", "--resync-period=5s", "--leader-elect=false"]
    with component_process(shared_apiserver, log_path, command) as proc:
        yield proc
        assert proc.poll() is None, "the controller manager died"
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(15) == 0
        # no failed sync in this module's controllers (conflicts are retried quietly)
        failed = re.findall(r"ERROR podnet\.controllers\.(?:garbagecollector|namespace|serviceaccount):.*",
                            log_path.read_text(errors="replace"))
        assert not failed


@pytest.fixture(scope="module")
def client(shared_apiserver: ApiServerProcess) -> Iterator[Client]:
    c = Client.from_config(load_kubeconfig(shared_apiserver.kubeconfig()))
    yield c
    c.close()


class Kubectl:
    def __init__(self, binary: str, server: ApiServerProcess, base: Path) -> None:
        self.argv = [binary, f"--kubeconfig={server.kubeconfig(base / 'kubeconfig')}",
                     f"--cache-dir={base / 'cache'}"]
        self.server = server

    def run(self, *args: str, check: bool = True, timeout: float = 40) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*self.argv, *args], text=True, capture_output=True, timeout=timeout,
                              check=False, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}"
                                 f"\nserver log:\n{self.server.log_tail()}")
        return proc


@pytest.fixture(scope="module")
def kubectl(shared_apiserver: ApiServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Kubectl:
    binary = kubectl_binary(33)
    if binary is None:
        pytest.skip("kubectl 1.33 not installed")
    return Kubectl(binary, shared_apiserver, tmp_path_factory.mktemp("kubectl"))


@pytest.fixture
def ns(request: pytest.FixtureRequest, client: Client, kubectl: Kubectl,
       manager: subprocess.Popen[bytes]) -> Iterator[str]:
    """A fresh namespace for the test, deleted (by the namespace controller) and gone afterwards."""
    name = request.node.name.lower().replace("_", "-").replace("[", "-").replace("]", "")[-40:].strip("-")
    client.create(NAMESPACES, {"metadata": {"name": name}})
    yield name
    kubectl.run("delete", "namespace", name, "--ignore-not-found", "--timeout=30s")
    assert namespace_empty(client, name)


def namespace_empty(client: Client, name: str) -> bool:
    return all(not client.list(res, name)["items"]
               for res in (PODS, REPLICATIONCONTROLLERS, REPLICASETS, DEPLOYMENTS, CONFIGMAPS, SECRETS,
                           SERVICES, SERVICEACCOUNTS))


def rc(name: str, replicas: int) -> Obj:
    template = {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": "pause"}]}}
    return {"apiVersion": "v1", "kind": "ReplicationController", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"app": name}, "template": template}}


def owned_pods(client: Client, ns: str, uid: str) -> list[Obj]:
    return [p for p in client.list(PODS, ns)["items"]
            if any(r.get("uid") == uid for r in p["metadata"].get("ownerReferences") or [])]


def start_rc(client: Client, ns: str, name: str = "web", replicas: int = 3) -> Obj:
    created = client.create(REPLICATIONCONTROLLERS, rc(name, replicas), ns)
    uid = created["metadata"]["uid"]
    wait_until(lambda: len(owned_pods(client, ns, uid)) == replicas, 20, f"{replicas} pods of {name}")
    return created


def gone(client: Client, res: Resource, name: str, ns: str | None) -> bool:
    try:
        client.get(res, name, ns)
    except ApiError as e:
        return e.not_found
    return False


def owner_ref(owner: Obj, kind: str) -> Obj:
    meta = owner["metadata"]
    return {"apiVersion": "v1", "kind": kind, "name": meta["name"], "uid": meta["uid"],
            "blockOwnerDeletion": True}


# ---------------------------------------------------------------------------------- namespaces
def test_namespace_deletion_removes_content_then_namespace(client: Client, kubectl: Kubectl,
                                                           manager: subprocess.Popen[bytes]) -> None:
    name = "doomed"
    client.create(NAMESPACES, {"metadata": {"name": name}})
    start_rc(client, name, "web", 2)
    loner = {"metadata": {"name": "loner"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
    client.create(PODS, loner, name)
    client.create(CONFIGMAPS, {"metadata": {"name": "conf"}, "data": {"a": "1"}}, name)
    client.create(SECRETS, {"metadata": {"name": "pw"}, "stringData": {"p": "x"}}, name)
    client.create(SERVICES, {"metadata": {"name": "svc"}, "spec": {"selector": {"app": "web"},
                                                                   "ports": [{"port": 80}]}}, name)
    wait_until(lambda: not gone(client, SERVICEACCOUNTS, "default", name), 10, "the default service account")
    out = kubectl.run("delete", "namespace", name, "--timeout=30s").stdout  # waits until it is gone
    assert out == f'namespace "{name}" deleted\n'
    missing = kubectl.run("get", "namespace", name, check=False)
    assert missing.returncode == 1
    assert missing.stderr.strip() == f'Error from server (NotFound): namespaces "{name}" not found'
    assert namespace_empty(client, name)


def test_namespace_waits_for_content_with_finalizers(client: Client, ns: str) -> None:
    """A finalizer on content keeps the namespace Terminating (with upstream's conditions)."""
    client.create(CONFIGMAPS, {"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}, ns)
    client.delete(NAMESPACES, ns)

    def conditions() -> dict[str, Obj]:
        status = client.get(NAMESPACES, ns).get("status") or {}
        return {c["type"]: c for c in status.get("conditions") or []}

    wait_until(lambda: conditions().get("NamespaceFinalizersRemaining", {}).get("status") == "True", 10,
               "NamespaceFinalizersRemaining")
    assert conditions()["NamespaceContentRemaining"]["message"] == (
        "Some resources are remaining: configmaps. has 1 resource instances")
    assert client.get(NAMESPACES, ns)["status"]["phase"] == "Terminating"
    client.patch(CONFIGMAPS, "held", {"metadata": {"finalizers": None}}, ns)
    wait_until(lambda: gone(client, NAMESPACES, ns, None), 15, "the namespace finalized")


# ---------------------------------------------------------------------------------- service accounts
def test_default_service_account_created_and_recreated(client: Client, ns: str) -> None:
    wait_until(lambda: not gone(client, SERVICEACCOUNTS, "default", ns), 10, "the default service account")
    first = client.get(SERVICEACCOUNTS, "default", ns)["metadata"]["uid"]
    client.delete(SERVICEACCOUNTS, "default", ns)

    def recreated() -> bool:
        try:
            return bool(client.get(SERVICEACCOUNTS, "default", ns)["metadata"]["uid"] != first)
        except ApiError:
            return False

    wait_until(recreated, 10, "the default service account recreated")


# ---------------------------------------------------------------------------------- garbage collection
def test_cascade_background(client: Client, kubectl: Kubectl, ns: str) -> None:
    uid = start_rc(client, ns)["metadata"]["uid"]
    assert kubectl.run("delete", "rc", "web", "-n", ns, "--cascade=background").stdout == \
        'replicationcontroller "web" deleted\n'
    wait_until(lambda: not owned_pods(client, ns, uid), 15, "the RC's pods deleted")
    assert client.list(PODS, ns)["items"] == []


def test_cascade_foreground(client: Client, kubectl: Kubectl, ns: str) -> None:
    """The RC stays (deletionTimestamp, foregroundDeletion) until its last pod is gone; one pod held
    by a finalizer makes the wait observable."""
    uid = start_rc(client, ns)["metadata"]["uid"]
    held = owned_pods(client, ns, uid)[0]["metadata"]["name"]
    client.patch(PODS, held, {"metadata": {"finalizers": ["example.com/hold"]}}, ns)
    kubectl.run("delete", "rc", "web", "-n", ns, "--cascade=foreground", "--wait=false")
    wait_until(lambda: [p["metadata"]["name"] for p in owned_pods(client, ns, uid)] == [held], 15,
               "the other pods deleted")
    waiting = client.get(REPLICATIONCONTROLLERS, "web", ns)["metadata"]
    assert waiting["deletionTimestamp"] and waiting["finalizers"] == ["foregroundDeletion"]
    assert client.get(PODS, held, ns)["metadata"]["deletionTimestamp"]
    client.patch(PODS, held, {"metadata": {"finalizers": None}}, ns)
    wait_until(lambda: gone(client, REPLICATIONCONTROLLERS, "web", ns), 15, "the RC gone after its pods")
    assert client.list(PODS, ns)["items"] == []


def test_cascade_foreground_with_kubectl_wait(client: Client, kubectl: Kubectl, ns: str) -> None:
    uid = start_rc(client, ns)["metadata"]["uid"]
    kubectl.run("delete", "rc", "web", "-n", ns, "--cascade=foreground", "--timeout=20s")  # waits
    assert gone(client, REPLICATIONCONTROLLERS, "web", ns) and not owned_pods(client, ns, uid)


def test_cascade_orphan(client: Client, kubectl: Kubectl, ns: str) -> None:
    uid = start_rc(client, ns)["metadata"]["uid"]
    pods = sorted(p["metadata"]["name"] for p in owned_pods(client, ns, uid))
    kubectl.run("delete", "rc", "web", "-n", ns, "--cascade=orphan", "--timeout=20s")
    assert gone(client, REPLICATIONCONTROLLERS, "web", ns)
    left = client.list(PODS, ns)["items"]
    assert sorted(p["metadata"]["name"] for p in left) == pods
    assert all(not p["metadata"].get("ownerReferences") and not p["metadata"].get("deletionTimestamp")
               for p in left)


@pytest.mark.parametrize("cascade", ["background", "foreground"])
def test_chain_cascades(client: Client, kubectl: Kubectl, ns: str, cascade: str) -> None:
    """RC <- cm1 <- cm2: deleting the RC takes the whole chain."""
    owner = start_rc(client, ns, replicas=1)
    cm1 = client.create(CONFIGMAPS, {"metadata": {"name": "cm1", "ownerReferences": [
        owner_ref(owner, "ReplicationController")]}}, ns)
    client.create(CONFIGMAPS, {"metadata": {"name": "cm2", "ownerReferences": [owner_ref(cm1, "ConfigMap")]}},
                  ns)
    kubectl.run("delete", "rc", "web", "-n", ns, f"--cascade={cascade}", "--timeout=20s")
    wait_until(lambda: not client.list(CONFIGMAPS, ns)["items"] and not client.list(PODS, ns)["items"], 15,
               "the chain deleted")
    assert gone(client, REPLICATIONCONTROLLERS, "web", ns)


def test_dependent_with_a_live_owner_only_loses_the_reference(client: Client, ns: str) -> None:
    keep = client.create(CONFIGMAPS, {"metadata": {"name": "keep"}}, ns)
    doomed = client.create(CONFIGMAPS, {"metadata": {"name": "doomed"}}, ns)
    client.create(CONFIGMAPS, {"metadata": {"name": "shared", "ownerReferences": [
        owner_ref(keep, "ConfigMap"), owner_ref(doomed, "ConfigMap")]}}, ns)
    client.delete(CONFIGMAPS, "doomed", ns)

    def refs() -> list[str]:
        meta = client.get(CONFIGMAPS, "shared", ns)["metadata"]
        return [r["name"] for r in meta.get("ownerReferences") or []]

    wait_until(lambda: refs() == ["keep"], 15, "the dangling reference removed")


@pytest.mark.parametrize("cascade", ["background", "foreground"])
def test_deployment_cascades_through_replica_sets(client: Client, kubectl: Kubectl, ns: str,
                                                  cascade: str) -> None:
    """Deployment <- ReplicaSet <- pods, with the real deployment and replicaset controllers."""
    template = {"metadata": {"labels": {"app": "api"}},
                "spec": {"containers": [{"name": "c", "image": "pause"}]}}
    client.create(DEPLOYMENTS, {"metadata": {"name": "api"}, "spec": {
        "replicas": 2, "selector": {"matchLabels": {"app": "api"}}, "template": template}}, ns)
    wait_until(lambda: len(client.list(PODS, ns)["items"]) == 2
               and len(client.list(REPLICASETS, ns)["items"]) == 1, 20, "a ReplicaSet with 2 pods")
    kubectl.run("delete", "deployment", "api", "-n", ns, f"--cascade={cascade}", "--timeout=20s")
    wait_until(lambda: not client.list(REPLICASETS, ns)["items"] and not client.list(PODS, ns)["items"], 15,
               "the ReplicaSet and its pods deleted")
    assert gone(client, DEPLOYMENTS, "api", ns)


def test_foreground_on_any_discovered_kind(client: Client, kubectl: Kubectl, ns: str) -> None:
    """The collector watches every listable+watchable+deletable kind it discovered: a Role deleted in
    the foreground (no dependents) loses its finalizer and goes."""
    role = Resource("rbac.authorization.k8s.io", "v1", "roles")
    client.create(role, {"metadata": {"name": "reader"}, "rules": [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}, ns)
    kubectl.run("delete", "role", "reader", "-n", ns, "--cascade=foreground", "--timeout=15s")
    assert gone(client, role, "reader", ns)


@pytest.mark.parametrize("cascade", ["foreground", "orphan"])
def test_namespace_deleted_with_a_policy_finalizer(client: Client, kubectl: Kubectl, cascade: str,
                                                   manager: subprocess.Popen[bytes]) -> None:
    """The namespace itself carries the policy's finalizer: the collector removes it, the namespace
    controller finalizes, and only then does the namespace go."""
    name = f"ns-{cascade}"
    client.create(NAMESPACES, {"metadata": {"name": name}})
    client.create(CONFIGMAPS, {"metadata": {"name": "c"}}, name)
    kubectl.run("delete", "namespace", name, f"--cascade={cascade}", "--timeout=20s")
    assert gone(client, NAMESPACES, name, None) and namespace_empty(client, name)
