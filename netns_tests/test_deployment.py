"""Deployments end to end: a real podnet-apiserver, podnet-controller-manager (replicaset +
deployment controllers) as a process, and real kubectl.  No kubelet exists, so the test plays it:
`Kubelet.ready()` patches pods Running + Ready through the status subresource.

Rollout, an image update whose every observed step stays within replicas + maxSurge pods and
replicas - maxUnavailable ready pods, `kubectl rollout status/history/undo`, `kubectl set image` and
`kubectl scale deployment`.
"""

from __future__ import annotations

import datetime
import itertools
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from netns_tests.apiserver_fixtures import (
    ApiServerProcess,
    component_command,
    component_process,
    kubectl_binary,
)
from podnet.api.client import DEPLOYMENTS, EVENTS, PODS, REPLICASETS, ApiError, Client
from podnet.testing.wait import wait_until

KUBECTL_MINOR = 33
NS = "default"
Obj = dict[str, Any]


def manager_command(*controllers: str) -> list[str]:
    """podnet-controller-manager with only `controllers`, short resyncs, no leader election."""
    return [*component_command("podnet-controller-manager", "controlplane.controllers"),
            f"--controllers={','.join(controllers)}", "--resync-period=5s", "--leader-elect=false"]


def deployment(name: str, replicas: int, image: str = "pause:1", *, surge: int | str = 1,
               unavailable: int | str = 1) -> Obj:
    template = {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "c", "image": image}]}}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}}, "template": template,
                     "strategy": {"type": "RollingUpdate",
                                  "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}}}}


def live_pods(client: Client, selector: str) -> list[Obj]:
    return [p for p in client.list(PODS, NS, label_selector=selector)["items"]
            if not p["metadata"].get("deletionTimestamp")]


def is_ready(pod: Obj) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


@dataclass
class Kubelet:
    """Plays the node agent: a pod it readies gets phase Running, a podIP and Ready=True."""
    client: Client
    ips: Iterator[int] = field(default_factory=lambda: itertools.count(2))

    def ready(self, pod: Obj) -> None:
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        n = next(self.ips)
        status = {"phase": "Running", "podIP": f"10.244.{n // 250}.{n % 250 + 2}",
                  "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}]}
        try:
            self.client.patch(PODS, pod["metadata"]["name"], {"status": status}, NS, subresource="status")
        except Exception as e:  # the controller may have deleted it meanwhile
            if "404" not in str(e):
                raise

    def ready_all(self, selector: str) -> int:
        pods = [p for p in live_pods(self.client, selector) if not is_ready(p)]
        for pod in pods:
            self.ready(pod)
        return len(pods)


def owned_rss(client: Client, name: str) -> list[Obj]:
    uid = client.get(DEPLOYMENTS, name, NS)["metadata"]["uid"]
    return [rs for rs in client.list(REPLICASETS, NS)["items"]
            if any(r.get("uid") == uid for r in rs["metadata"].get("ownerReferences") or [])]


def revisions(client: Client, name: str) -> dict[str, tuple[str, int]]:
    """RS name -> (revision annotation, spec.replicas)."""
    return {rs["metadata"]["name"]: (rs["metadata"].get("annotations", {}).get(
        "deployment.kubernetes.io/revision", ""), rs["spec"]["replicas"]) for rs in owned_rss(client, name)}


def complete(client: Client, name: str) -> bool:
    d = client.get(DEPLOYMENTS, name, NS)
    s, want = d.get("status") or {}, d["spec"]["replicas"]
    return (s.get("observedGeneration", 0) >= d["metadata"]["generation"]
            and s.get("updatedReplicas", 0) == want
            and s.get("replicas", 0) == want and s.get("availableReplicas", 0) == want)


@dataclass
class Kubectl:
    binary: str
    kubeconfig: Path

    def argv(self, *args: str) -> list[str]:
        return [self.binary, f"--kubeconfig={self.kubeconfig}", f"--namespace={NS}", *args]

    def out(self, *args: str) -> str:
        proc = subprocess.run(self.argv(*args), capture_output=True, text=True, timeout=60, check=False,
                              stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
        return proc.stdout

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                stdin=subprocess.DEVNULL)


@pytest.fixture
def manager(apiserver: ApiServerProcess, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with component_process(apiserver, tmp_path / "controller-manager.log",
                           manager_command("replicaset", "deployment")) as proc:
        yield proc


@pytest.fixture
def kubectl(request: pytest.FixtureRequest, apiserver: ApiServerProcess, tmp_path: Path) -> Kubectl:
    """kubectl 1.<param> (KUBECTL_MINOR unless parametrized indirectly)."""
    minor = int(getattr(request, "param", KUBECTL_MINOR))
    binary = kubectl_binary(minor)
    if binary is None:
        pytest.skip(f"kubectl 1.{minor} not installed")
    return Kubectl(binary, apiserver.kubeconfig(tmp_path / "kubeconfig"))


def roll(client: Client, kubelet: Kubelet, name: str, check: Callable[[], None], timeout: float = 40.0
         ) -> subprocess.Popen[str] | None:
    """Play kubelet until the rollout completes, calling `check` before every readiness change."""
    deadline = time.monotonic() + timeout
    while not complete(client, name):
        assert time.monotonic() < deadline, f"rollout of {name} did not complete: {revisions(client, name)}"
        check()
        for pod in live_pods(client, f"app={name}"):
            if not is_ready(pod):
                kubelet.ready(pod)
                break  # one at a time: every intermediate state gets observed
        time.sleep(0.1)
    return None


def rollout_status(kubectl: Kubectl, client: Client, kubelet: Kubelet, name: str) -> str:
    """`kubectl rollout status` running while the kubelet readies pods; returns its output."""
    proc = kubectl.popen("rollout", "status", f"deployment/{name}", "--timeout=40s")
    try:
        roll(client, kubelet, name, lambda: None)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    return out


def test_rollout_and_image_update_respect_bounds(client: Client, manager: subprocess.Popen[bytes],
                                                 kubectl: Kubectl) -> None:
    kubelet = Kubelet(client)
    client.create(DEPLOYMENTS, deployment("web", 4), NS)
    out = rollout_status(kubectl, client, kubelet, "web")
    assert 'deployment "web" successfully rolled out' in out
    (rs,) = owned_rss(client, "web")
    pod_hash = rs["metadata"]["labels"]["pod-template-hash"]
    assert rs["metadata"]["name"] == f"web-{pod_hash}"
    assert rs["spec"]["selector"]["matchLabels"] == {"app": "web", "pod-template-hash": pod_hash}
    assert rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
    assert rs["metadata"]["annotations"]["deployment.kubernetes.io/max-replicas"] == "5"
    assert all(p["metadata"]["labels"]["pod-template-hash"] == pod_hash for p in live_pods(client, "app=web"))
    d = client.get(DEPLOYMENTS, "web", NS)
    assert d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
    conditions = {c["type"]: c["reason"] for c in d["status"]["conditions"]}
    assert conditions == {"Available": "MinimumReplicasAvailable", "Progressing": "NewReplicaSetAvailable"}

    states: list[tuple[int, ...]] = []

    def bounds() -> None:
        rss = owned_rss(client, "web")
        pods = live_pods(client, "app=web")
        asked = sum(r["spec"]["replicas"] for r in rss)
        assert asked <= 4 + 1, f"ReplicaSets ask for {asked} pods"
        assert len(pods) <= 4 + 1, f"{len(pods)} pods exist"
        assert sum(is_ready(p) for p in pods) >= 4 - 1, "fewer than 3 pods ready"
        rss.sort(key=lambda r: r["metadata"]["creationTimestamp"])
        state = tuple(r["spec"]["replicas"] for r in rss)
        if not states or states[-1] != state:
            states.append(state)

    assert kubectl.out("set", "image", "deployment/web", "c=pause:2") == "deployment.apps/web image updated\n"
    roll(client, kubelet, "web", bounds)
    bounds()
    new_name = next(n for n in revisions(client, "web") if n != rs["metadata"]["name"])
    assert revisions(client, "web") == {rs["metadata"]["name"]: ("1", 0), new_name: ("2", 4)}
    assert len(states) >= 4, f"the update went in too few steps: {states}"
    assert all(p["spec"]["containers"][0]["image"] == "pause:2" for p in live_pods(client, "app=web"))
    assert len(live_pods(client, "app=web")) == 4


@pytest.mark.parametrize("kubectl", [27, KUBECTL_MINOR], indirect=True)
def test_undo_history_and_scale(client: Client, manager: subprocess.Popen[bytes], kubectl: Kubectl) -> None:
    kubelet = Kubelet(client)
    client.create(DEPLOYMENTS, deployment("api", 2, surge="50%", unavailable=0), NS)
    rollout_status(kubectl, client, kubelet, "api")
    (first,) = revisions(client, "api")
    kubectl.out("set", "image", "deployment/api", "c=pause:2")
    kubectl.out("annotate", "deployment/api", "kubernetes.io/change-cause=image 2")
    rollout_status(kubectl, client, kubelet, "api")
    second = next(n for n in revisions(client, "api") if n != first)
    history = kubectl.out("rollout", "history", "deployment/api")
    assert [line.split()[0] for line in history.splitlines()[2:] if line.strip()] == ["1", "2"]
    assert "image 2" in history

    assert "rolled back" in kubectl.out("rollout", "undo", "deployment/api")
    rollout_status(kubectl, client, kubelet, "api")
    assert revisions(client, "api") == {first: ("3", 2), second: ("2", 0)}  # reused, not a new RS
    d = client.get(DEPLOYMENTS, "api", NS)
    assert d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"
    assert d["spec"]["template"]["spec"]["containers"][0]["image"] == "pause:1"

    def events() -> set[str]:
        items = client.list(EVENTS, NS, field_selector="involvedObject.name=api")["items"]
        return {e["message"].rsplit(" ", 2)[0] if "from" in e["message"] else e["message"] for e in items}

    wait_until(lambda: f"Scaled up replica set {first} to 2" in events(), 10.0, "ScalingReplicaSet events")
    assert f"Scaled down replica set {second} to 0" in events()  # `kubectl describe` shows them
    assert kubectl.out("scale", "deployment/api", "--replicas=5") == "deployment.apps/api scaled\n"
    rollout_status(kubectl, client, kubelet, "api")
    assert revisions(client, "api") == {first: ("3", 5), second: ("2", 0)}
    assert len(live_pods(client, "app=api")) == 5
    kubectl.out("scale", "deployment/api", "--replicas=1")
    wait_until(lambda: len(live_pods(client, "app=api")) == 1 and complete(client, "api"), 20.0,
               "scaled to 1")
    status = client.get(DEPLOYMENTS, "api", NS)["status"]
    assert (status["replicas"], status["updatedReplicas"], status["availableReplicas"]) == (1, 1, 1)


def test_recreate_with_min_ready_seconds(client: Client, manager: subprocess.Popen[bytes],
                                         kubectl: Kubectl) -> None:
    """Recreate: the old pods are all gone before a new one exists; pods count as available only
    minReadySeconds after they became ready."""
    kubelet = Kubelet(client)
    body = deployment("rec", 3)
    body["spec"]["strategy"] = {"type": "Recreate"}
    body["spec"]["minReadySeconds"] = 2
    client.create(DEPLOYMENTS, body, NS)
    started = time.monotonic()
    rollout_status(kubectl, client, kubelet, "rec")
    assert time.monotonic() - started >= 2.0  # minReadySeconds held availability back
    (first,) = revisions(client, "rec")

    def never_mixed() -> None:
        hashes = {p["metadata"]["labels"]["pod-template-hash"] for p in live_pods(client, "app=rec")}
        assert len(hashes) <= 1, f"old and new pods together: {hashes}"

    kubectl.out("set", "image", "deployment/rec", "c=pause:2")
    roll(client, kubelet, "rec", never_mixed)
    second = next(n for n in revisions(client, "rec") if n != first)
    assert revisions(client, "rec") == {first: ("1", 0), second: ("2", 3)}
    client.patch(DEPLOYMENTS, "rec", {"spec": {"revisionHistoryLimit": 0}}, NS)
    wait_until(lambda: revisions(client, "rec") == {second: ("2", 3)}, 10.0, "the old RS cleaned up")


def test_pause_resume_and_progress_deadline(client: Client, manager: subprocess.Popen[bytes],
                                            kubectl: Kubectl) -> None:
    kubelet = Kubelet(client)
    with pytest.raises(ApiError) as invalid:  # upstream validation: the rollout could never move
        client.create(DEPLOYMENTS, deployment("zero", 2, surge=0, unavailable="0%"), NS)
    assert invalid.value.code == 422 and "may not be 0 when `maxSurge` is 0" in invalid.value.message
    client.create(DEPLOYMENTS, deployment("pz", 2), NS)
    rollout_status(kubectl, client, kubelet, "pz")
    kubectl.out("rollout", "pause", "deployment/pz")
    kubectl.out("set", "image", "deployment/pz", "c=pause:2")

    def progressing() -> tuple[str, str]:
        conds = client.get(DEPLOYMENTS, "pz", NS).get("status", {}).get("conditions") or []
        cond = next((c for c in conds if c["type"] == "Progressing"), {})
        return cond.get("status", ""), cond.get("reason", "")

    wait_until(lambda: progressing() == ("Unknown", "DeploymentPaused"), 10.0, "DeploymentPaused")
    time.sleep(0.5)
    assert len(revisions(client, "pz")) == 1  # paused: no rollout
    client.patch(DEPLOYMENTS, "pz", {"spec": {"progressDeadlineSeconds": 2}}, NS)
    kubectl.out("rollout", "resume", "deployment/pz")
    wait_until(lambda: len(revisions(client, "pz")) == 2, 10.0, "the rollout after resume")
    # nobody readies the new pods: the rollout stalls and passes its 2 s deadline
    wait_until(lambda: progressing() == ("False", "ProgressDeadlineExceeded"), 15.0, "the deadline")
    proc = subprocess.run(kubectl.argv("rollout", "status", "deployment/pz", "--timeout=10s"),
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode != 0 and "exceeded its progress deadline" in proc.stdout + proc.stderr
    status = client.get(DEPLOYMENTS, "pz", NS)["status"]
    assert (status["replicas"], status["updatedReplicas"], status["availableReplicas"]) == (3, 2, 1)
    # the pods come up late: the rollout completes after all (kubectl gives up on a timed-out
    # rollout at once, so it is asked only after the controller saw the progress)
    roll(client, kubelet, "pz", lambda: None)
    wait_until(lambda: progressing() == ("True", "NewReplicaSetAvailable"), 10.0, "NewReplicaSetAvailable")
    assert 'deployment "pz" successfully rolled out' in kubectl.out("rollout", "status", "deployment/pz")
