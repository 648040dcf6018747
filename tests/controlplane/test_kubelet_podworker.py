"""The kubelet's pod worker and node agent against fakes of our seams (runtime, CNI, netns, API)."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from controlplane.kubelet.node import NodeAgent, NodeConfig
from controlplane.kubelet.podworker import PodSyncer, PodWorkers
from controlplane.kubelet.restart import BackOff
from controlplane.kubelet.sandbox import Sandboxes
from podnet.api.client import LEASES, NODES, PODS, ApiError, Resource
from podnet.cniruntime import Attachment, CniConfig
from podnet.runtime.fake import FakeRuntime

Obj = dict[str, Any]


class FakeCni:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.gc_valid: list[str] | None = None
        self.next_ip = 2

    def add(self, net: CniConfig, att: Attachment) -> Obj:
        self.calls.append(("ADD", att.container_id))
        self.next_ip += 1
        return {"interfaces": [{"name": "eth0", "sandbox": att.netns}],
                "ips": [{"address": f"10.1.0.{self.next_ip}/24", "interface": 0}]}

    def delete(self, net: CniConfig, att: Attachment) -> None:
        self.calls.append(("DEL", att.container_id))

    def gc(self, net: CniConfig, valid_attachments: list[Attachment]) -> None:
        self.gc_valid = [a.container_id for a in valid_attachments]


class FakeNamespaces:
    def __init__(self) -> None:
        self.names: set[str] = set()

    def create(self, name: str) -> str:
        self.names.add(name)
        return f"/run/netns/{name}"

    def delete(self, name: str) -> None:
        self.names.discard(name)

    def exists(self, name: str) -> bool:
        return name in self.names


class FakeApi:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], Obj] = {}
        self.patches: list[tuple[str, str, Any, str | None]] = []
        self.deletes: list[tuple[str, int | None, Mapping[str, str] | None]] = []

    def get(self, res: Resource, name: str, namespace: str | None = None) -> Obj:
        try:
            return copy.deepcopy(self.objects[(res.plural, name)])
        except KeyError:
            raise ApiError({"code": 404, "reason": "NotFound"}) from None

    def create(self, res: Resource, obj: Mapping[str, Any], namespace: str | None = None, **q: Any) -> Obj:
        name = obj["metadata"]["name"]
        if (res.plural, name) in self.objects:
            raise ApiError({"code": 409, "reason": "AlreadyExists"})
        stored = copy.deepcopy(dict(obj))
        stored["metadata"]["uid"] = "nu"
        self.objects[(res.plural, name)] = stored
        return copy.deepcopy(self.objects[(res.plural, name)])

    def patch(self, res: Resource, name: str, patch: Any, namespace: str | None = None, *,
              patch_type: str = "merge", subresource: str | None = None, field_manager: str | None = None,
              force: bool | None = None) -> Obj:
        self.patches.append((res.plural, name, patch, subresource))
        if res.plural in ("pods",):
            return {}
        obj = self.objects.get((res.plural, name))
        if obj is None:
            raise ApiError({"code": 404, "reason": "NotFound"})
        for k, v in patch.items():
            obj[k] = {**obj.get(k, {}), **v} if isinstance(v, dict) else v
        return copy.deepcopy(obj)

    def delete(self, res: Resource, name: str, namespace: str | None = None, *,
               propagation_policy: str | None = None, grace_period_seconds: int | None = None,
               preconditions: Mapping[str, str] | None = None) -> Obj:
        self.deletes.append((name, grace_period_seconds, preconditions))
        return {}


def make_pod(name: str = "p", uid: str = "uid-1111-2222", policy: str = "Always", **meta: Any) -> Obj:
    return {"metadata": {"name": name, "namespace": "ns", "uid": uid, **meta},
            "spec": {"nodeName": "n1", "restartPolicy": policy, "terminationGracePeriodSeconds": 7,
                     "containers": [{"name": "c", "command": ["sleep", "100"],
                                     "ports": [{"containerPort": 80, "hostPort": 8080}]}]}}


@pytest.fixture
def world(tmp_path: Path) -> tuple[PodSyncer, dict[str, Obj], FakeRuntime, FakeCni, FakeNamespaces, FakeApi]:
    conf = tmp_path / "net.d"
    conf.mkdir()
    (conf / "10-x.conflist").write_text('{"cniVersion": "1.0.0", "name": "x",'
                                        ' "plugins": [{"type": "bridge"}]}')
    cache: dict[str, Obj] = {}
    runtime, cni, nss, api = FakeRuntime(), FakeCni(), FakeNamespaces(), FakeApi()
    sandboxes = Sandboxes(str(tmp_path / "root"), cni, str(conf), nss)
    syncer = PodSyncer(api, cache, runtime, sandboxes, host_ip="10.0.0.1", logs_root=str(tmp_path / "logs"),
                       backoff=BackOff(initial=0.0))
    return syncer, cache, runtime, cni, nss, api


def test_live_pod_gets_sandbox_container_and_status(world: Any) -> None:
    syncer, cache, runtime, cni, nss, api = world
    cache["ns/p"] = make_pod()
    syncer.sync("ns/p")
    assert nss.names == {"podnet-uid11112222"}
    assert cni.calls == [("DEL", "podnet-uid11112222"), ("ADD", "podnet-uid11112222")]
    att = syncer.sandboxes.attachment(syncer.sandboxes.get("uid-1111-2222"), cache["ns/p"])
    assert att.capability_args == {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp",
                                                     "hostIP": ""}]}
    assert att.args["K8S_POD_NAME"] == "p" and att.args["IgnoreUnknown"] == "1"
    spec = runtime.specs["podnet-uid-1111-222-c-0"]
    assert spec.netns_path == "/run/netns/podnet-uid11112222" and spec.argv == ["sleep", "100"]
    (_, _, patch, sub), = [p for p in api.patches if p[0] == "pods"]
    assert sub == "status"
    assert patch["status"]["phase"] == "Running" and patch["status"]["podIP"] == "10.1.0.3"
    # a second sync with the posted status changes nothing: no new sandbox, container or write
    cache["ns/p"] = {**cache["ns/p"], "status": patch["status"]}
    syncer.sync("ns/p")
    assert len(cni.calls) == 2 and len(runtime.infos) == 1 and len(api.patches) == 1


def test_restart_policy(world: Any) -> None:
    syncer, cache, runtime, _, _, api = world
    cache["ns/p"] = make_pod(policy="Always")
    syncer.sync("ns/p")
    runtime.exit("podnet-uid-1111-222-c-0", 1)
    syncer.sync("ns/p")
    assert sorted(runtime.infos) == ["podnet-uid-1111-222-c-0", "podnet-uid-1111-222-c-1"]
    cache["ns/q"] = make_pod("q", "uid-3333", policy="Never")
    syncer.sync("ns/q")
    runtime.exit("podnet-uid-3333-c-0", 0)
    syncer.sync("ns/q")
    assert "podnet-uid-3333-c-1" not in runtime.infos
    assert api.patches[-1][2]["status"]["phase"] == "Succeeded"
    assert syncer.sandboxes.get("uid-3333") is None  # a finished pod's network is released


def test_backoff_requeues_instead_of_restarting(world: Any) -> None:
    syncer, cache, runtime, _, _, _ = world
    requeued: list[tuple[str, float]] = []
    syncer.backoff, syncer.requeue = BackOff(initial=10.0), lambda k, d: requeued.append((k, d))
    cache["ns/p"] = make_pod()
    syncer.sync("ns/p")
    runtime.exit("podnet-uid-1111-222-c-0", 1)
    syncer.sync("ns/p")  # the first restart is immediate (upstream), and arms a 10 s back-off
    runtime.exit("podnet-uid-1111-222-c-1", 1)
    syncer.sync("ns/p")
    assert "podnet-uid-1111-222-c-2" not in runtime.infos
    assert requeued and requeued[0][0] == "ns/p" and 9 < requeued[0][1] <= 10
    waiting = syncer.api.patches[-1][2]["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "CrashLoopBackOff" and waiting["message"].startswith("back-off 10s")


class DeadProbes:
    """A prober whose liveness probe of container "c" has failed."""

    def update(self, pod: Mapping[str, Any]) -> None:
        pass

    def ready(self, pod_uid: str, container: str) -> bool:
        return False

    def liveness_failure(self, pod_uid: str, container: str) -> str | None:
        return "Container c failed liveness probe, will be restarted" if container == "c" else None

    def forget(self, pod_uid: str) -> None:
        pass


def test_liveness_failure_kills_and_restart_policy_restarts(world: Any) -> None:
    syncer, cache, runtime, _, _, api = world
    cache["ns/p"] = make_pod()
    syncer.sync("ns/p")
    syncer.probes = DeadProbes()
    syncer.sync("ns/p")
    assert runtime.stop_graces == {"podnet-uid-1111-222-c-0": 7.0}  # terminationGracePeriodSeconds
    assert runtime.infos["podnet-uid-1111-222-c-1"].state == "running"
    cs = api.patches[-1][2]["status"]["containerStatuses"][0]
    assert cs["ready"] is False and cs["restartCount"] == 1


def test_graceful_termination_then_final_delete(world: Any) -> None:
    syncer, cache, runtime, cni, nss, api = world
    cache["ns/p"] = make_pod()
    syncer.sync("ns/p")
    cache["ns/p"] = make_pod(deletionTimestamp="2026-01-01T00:00:00Z", deletionGracePeriodSeconds=3)
    syncer.sync("ns/p")
    assert runtime.stop_graces == {"podnet-uid-1111-222-c-0": 3.0}
    assert runtime.infos == {} and nss.names == set() and cni.calls[-1] == ("DEL", "podnet-uid11112222")
    assert api.deletes == [("p", 0, {"uid": "uid-1111-2222"})]
    assert syncer.sandboxes.list() == []


def test_gone_pod_and_recreated_name_are_torn_down(world: Any) -> None:
    syncer, cache, runtime, _, nss, _ = world
    cache["ns/p"] = make_pod()
    syncer.sync("ns/p")
    cache["ns/p"] = make_pod(uid="uid-9999")  # same name, new pod
    syncer.sync("ns/p")
    assert nss.names == {"podnet-uid9999"} and list(runtime.infos) == ["podnet-uid-9999-c-0"]
    del cache["ns/p"]
    syncer.sync("ns/p")
    assert nss.names == set() and runtime.infos == {}


def test_orphan_cleanup_keeps_known_pods(world: Any) -> None:
    syncer, cache, runtime, cni, nss, _ = world
    cache["ns/p"] = make_pod()
    cache["ns/q"] = make_pod("q", "uid-3333")
    syncer.sync("ns/p")
    syncer.sync("ns/q")
    assert syncer.cleanup_orphans({"uid-1111-2222"}) == ["uid-3333"]
    assert nss.names == {"podnet-uid11112222"} and list(runtime.infos) == ["podnet-uid-1111-222-c-0"]
    syncer.sandboxes.gc(syncer.sandboxes.list())
    assert cni.gc_valid == ["podnet-uid11112222"]


def test_pod_workers_serialise_and_coalesce() -> None:
    seen: list[str] = []
    gate = threading.Event()

    def sync(key: str) -> None:
        seen.append(key)
        gate.wait(5)

    workers = PodWorkers(sync, lambda k, e: None)
    workers.dispatch("a")
    workers.dispatch("a")
    workers.dispatch("a")
    workers.dispatch("b")
    gate.set()
    deadline = time.monotonic() + 5
    while workers.busy() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sorted(seen) == ["a", "a", "b"]


def test_node_registration_lease_and_status() -> None:
    api = FakeApi()
    agent = NodeAgent(api, NodeConfig(name="n1", node_ip="10.0.0.1", labels={"role": "x"}, lease_duration=8))
    agent.register()
    api.objects[("nodes", "n1")]["spec"] = {"podCIDR": "10.244.1.0/24"}
    agent.register()  # a restarted kubelet adopts the node (podCIDR survives)
    assert agent.pod_cidr == "10.244.1.0/24"
    assert api.objects[("nodes", "n1")]["metadata"]["labels"]["role"] == "x"
    agent.renew_lease()
    lease = api.objects[("leases", "n1")]
    assert lease["spec"]["holderIdentity"] == "n1" and lease["spec"]["leaseDurationSeconds"] == 8
    assert lease["metadata"]["ownerReferences"][0]["uid"] == "nu"
    agent.renew_lease()
    assert api.patches[-1][0] == LEASES.plural
    agent.update_status(False)
    (_, _, patch, sub) = api.patches[-1]
    assert sub == "status"
    assert {c["type"]: c["status"] for c in patch["status"]["conditions"]}["Ready"] == "False"
    assert NODES.plural == "nodes" and PODS.plural == "pods"


def test_host_network_pod_gets_no_netns_or_cni_and_the_node_ip(world: Any) -> None:
    syncer, cache, runtime, cni, nss, api = world
    p = make_pod()
    p["spec"]["hostNetwork"] = True
    cache["ns/p"] = p
    syncer.sync("ns/p")
    assert cni.calls == [] and nss.names == set()
    assert runtime.specs["podnet-uid-1111-222-c-0"].netns_path == ""
    assert api.patches[-1][2]["status"]["podIP"] == "10.0.0.1"
    cache["ns/p"] = {**p, "metadata": {**p["metadata"], "deletionTimestamp": "2026-01-01T00:00:00Z"}}
    syncer.sync("ns/p")
    assert cni.calls == [] and runtime.infos == {} and api.deletes[-1][0] == "p"


def test_cni_failure_leaves_a_record_so_the_next_sync_retries(world: Any) -> None:
    syncer, cache, _, cni, nss, _ = world

    def broken(net: CniConfig, att: Attachment) -> Obj:
        raise RuntimeError("plugin failed")

    cni.add = broken
    cache["ns/p"] = make_pod()
    with pytest.raises(RuntimeError):
        syncer.sync("ns/p")
    sb = syncer.sandboxes.get("uid-1111-2222")
    assert sb is not None and not sb.ready  # recorded before the ADD: found again after a crash
    del cni.add
    syncer.sync("ns/p")
    sb = syncer.sandboxes.get("uid-1111-2222")
    assert sb is not None and sb.ready and sb.ips == ["10.1.0.3"] and nss.names == {"podnet-uid11112222"}
