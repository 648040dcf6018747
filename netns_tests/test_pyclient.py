"""The official `kubernetes` Python client and `lightkube` against a real podnet-apiserver on etcd:
CRUD, conflicts, watch with resume and 410 handling, pagination, selectors, pods/binding, services.

One server for the module; each test works in its own namespace.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes import watch as k8s_watch
from kubernetes.client.rest import ApiException
from lightkube import ApiError, Client
from lightkube.config.kubeconfig import KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap, Namespace
from lightkube.types import OnErrorAction, OnErrorResult, PatchType

from netns_tests.apiserver_fixtures import ApiServerProcess

_names = itertools.count()


@pytest.fixture(scope="module")
def api_client(shared_apiserver: ApiServerProcess) -> Iterator[k8s.ApiClient]:
    cfg = k8s.Configuration(host=shared_apiserver.url)
    cfg.api_key = {"authorization": shared_apiserver.token}
    cfg.api_key_prefix = {"authorization": "Bearer"}
    cfg.ssl_ca_cert = shared_apiserver.ca_file
    with k8s.ApiClient(cfg) as api:
        yield api


@pytest.fixture
def core(api_client: k8s.ApiClient) -> k8s.CoreV1Api:
    return k8s.CoreV1Api(api_client)


@pytest.fixture
def namespace(core: k8s.CoreV1Api) -> str:
    name = f"py{next(_names)}"
    core.create_namespace(k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name)))
    return name


def pod(name: str = "", labels: dict[str, str] | None = None, generate_name: str = "") -> k8s.V1Pod:
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name=name or None, generate_name=generate_name or None, labels=labels),
        spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="c", image="nginx")]))


def status_of(err: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(err.body)
    assert body["kind"] == "Status"
    return body


# ------------------------------------------------------------------------------ kubernetes client


def test_version(api_client: k8s.ApiClient) -> None:
    info = k8s.VersionApi(api_client).get_code()  # GET /version/ (trailing slash)
    assert (info.major, info.minor) == ("1", "31")


def test_crud_conflicts_and_errors(core: k8s.CoreV1Api, namespace: str) -> None:
    created = core.create_namespaced_pod(namespace, pod(generate_name="web-", labels={"app": "web"}))
    name = created.metadata.name
    assert name.startswith("web-") and len(name) == len("web-") + 5
    assert created.metadata.uid and created.metadata.resource_version
    assert created.spec.restart_policy == "Always"

    with pytest.raises(ApiException) as dup:
        core.create_namespaced_pod(namespace, pod(name))
    assert dup.value.status == 409 and status_of(dup.value)["reason"] == "AlreadyExists"

    patched = core.patch_namespaced_pod(name, namespace, {"metadata": {"labels": {"tier": "fe"}}})
    assert patched.metadata.labels == {"app": "web", "tier": "fe"}
    patched = core.patch_namespaced_pod(name, namespace,  # a list body is sent as JSON patch
                                        [{"op": "replace", "path": "/metadata/labels/tier", "value": "be"}])
    assert patched.metadata.labels["tier"] == "be"
    assert int(patched.metadata.resource_version) > int(created.metadata.resource_version)

    stale = created
    stale.metadata.labels = {"app": "stale"}
    with pytest.raises(ApiException) as conflict:
        core.replace_namespaced_pod(name, namespace, stale)
    assert conflict.value.status == 409 and status_of(conflict.value)["reason"] == "Conflict"
    fresh = core.read_namespaced_pod(name, namespace)
    fresh.metadata.labels["replaced"] = "yes"
    assert core.replace_namespaced_pod(name, namespace, fresh).metadata.labels["replaced"] == "yes"

    core.delete_namespaced_pod(name, namespace)
    with pytest.raises(ApiException) as gone:
        core.read_namespaced_pod(name, namespace)
    assert gone.value.status == 404
    assert status_of(gone.value)["message"] == f'pods "{name}" not found'

    with pytest.raises(ApiException) as missing_ns:
        core.create_namespaced_pod("no-such-namespace", pod("x"))
    assert missing_ns.value.status == 404
    with pytest.raises(ApiException) as invalid:
        core.create_namespaced_pod(namespace, pod("Bad_Name"))
    assert invalid.value.status == 422
    assert status_of(invalid.value)["details"]["causes"][0]["field"] == "metadata.name"


def test_watch_resume_without_loss_or_duplicates(core: k8s.CoreV1Api, namespace: str) -> None:
    start_rv = core.list_namespaced_pod(namespace).metadata.resource_version
    for i in range(3):
        core.create_namespaced_pod(namespace, pod(f"p{i}"))
    core.patch_namespaced_pod("p1", namespace, {"metadata": {"labels": {"x": "1"}}})
    core.delete_namespaced_pod("p2", namespace, grace_period_seconds=0)

    first = collect(core, namespace, start_rv, count=5)
    assert [(e["type"], e["object"].metadata.name) for e in first] == [
        ("ADDED", "p0"), ("ADDED", "p1"), ("ADDED", "p2"), ("MODIFIED", "p1"), ("DELETED", "p2")]
    versions = [int(e["object"].metadata.resource_version) for e in first]
    assert versions == sorted(versions)

    resume_rv = first[-1]["object"].metadata.resource_version
    core.create_namespaced_pod(namespace, pod("p3"))
    resumed = collect(core, namespace, resume_rv, count=1)
    assert [(e["type"], e["object"].metadata.name) for e in resumed] == [("ADDED", "p3")]

    # resourceVersion "0" / unset: the current state as synthetic ADDED events
    synthetic = collect(core, namespace, "0", count=3)
    assert sorted(e["object"].metadata.name for e in synthetic) == ["p0", "p1", "p3"]
    assert {e["type"] for e in synthetic} == {"ADDED"}


def collect(core: k8s.CoreV1Api, namespace: str, rv: str, count: int) -> list[dict[str, Any]]:
    """`count` events from a watch at `rv` (bookmarks skipped); the server's timeoutSeconds bounds it."""
    w = k8s_watch.Watch()
    events: list[dict[str, Any]] = []
    for event in w.stream(core.list_namespaced_pod, namespace, resource_version=rv, timeout_seconds=5,
                          allow_watch_bookmarks=True):
        if event["type"] == "BOOKMARK":
            continue
        events.append(event)
        if len(events) == count:
            w.stop()
    return events


def test_watch_ends_at_timeout_seconds(core: k8s.CoreV1Api, namespace: str) -> None:
    w = k8s_watch.Watch()
    rv = core.list_namespaced_pod(namespace).metadata.resource_version
    events = list(w.stream(core.list_namespaced_pod, namespace, resource_version=rv, timeout_seconds=1))
    assert [e for e in events if e["type"] != "BOOKMARK"] == []


def test_pagination_is_a_consistent_snapshot(core: k8s.CoreV1Api, namespace: str) -> None:
    for i in range(7):
        core.create_namespaced_config_map(namespace, k8s.V1ConfigMap(
            metadata=k8s.V1ObjectMeta(name=f"cm{i}"), data={"i": str(i)}))
    page = core.list_namespaced_config_map(namespace, limit=3)
    names, snapshot_rv = [c.metadata.name for c in page.items], page.metadata.resource_version
    core.create_namespaced_config_map(namespace, k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="cm9")))
    while page.metadata._continue:
        page = core.list_namespaced_config_map(namespace, limit=3, _continue=page.metadata._continue)
        assert page.metadata.resource_version == snapshot_rv
        names += [c.metadata.name for c in page.items]
    assert names == [f"cm{i}" for i in range(7)]  # cm9 came after the snapshot
    assert len(core.list_namespaced_config_map(namespace).items) == 8
    with pytest.raises(ApiException) as bad:
        core.list_namespaced_config_map(namespace, limit=3, _continue="not-a-token")
    assert bad.value.status in (400, 410)


def test_selectors(core: k8s.CoreV1Api, namespace: str) -> None:
    core.create_namespaced_pod(namespace, pod("a", {"a": "b", "c": "d"}))
    core.create_namespaced_pod(namespace, pod("b", {"a": "b", "c": "x"}))
    core.create_namespaced_pod(namespace, pod("c", {"a": "z"}))
    names = lambda **kw: [p.metadata.name for p in core.list_namespaced_pod(namespace, **kw).items]  # noqa: E731
    assert names(label_selector="a=b,c in (d,e)") == ["a"]
    assert names(label_selector="a=b,c notin (d)") == ["b"]
    assert names(label_selector="!c") == ["c"]
    assert names(field_selector="metadata.name!=a") == ["b", "c"]
    with pytest.raises(ApiException) as bad:
        names(field_selector="spec.unknown=1")
    assert bad.value.status == 400


def test_pod_binding(core: k8s.CoreV1Api, namespace: str) -> None:
    core.create_namespaced_pod(namespace, pod("bound"))
    binding = k8s.V1Binding(metadata=k8s.V1ObjectMeta(name="bound"),
                            target=k8s.V1ObjectReference(api_version="v1", kind="Node", name="node-7"))
    # the client cannot deserialize the Status a binding returns (kubernetes-client/python #825):
    # reference finding 0.6, hence _preload_content=False
    resp = core.create_namespaced_pod_binding("bound", namespace, binding, _preload_content=False)
    assert resp.status == 201
    assert json.loads(resp.data)["status"] == "Success"
    assert core.read_namespaced_pod("bound", namespace).spec.node_name == "node-7"
    with pytest.raises(ApiException) as again:
        core.create_namespaced_pod_binding("bound", namespace, binding, _preload_content=False)
    assert again.value.status == 409
    on_node = core.list_pod_for_all_namespaces(field_selector="spec.nodeName=node-7")
    assert [(p.metadata.namespace, p.metadata.name) for p in on_node.items] == [(namespace, "bound")]


def test_services_get_cluster_ips_and_node_ports(core: k8s.CoreV1Api, namespace: str) -> None:
    spec = k8s.V1ServiceSpec(type="NodePort", selector={"app": "x"},
                             ports=[k8s.V1ServicePort(port=80, target_port=8080)])
    svc = core.create_namespaced_service(namespace, k8s.V1Service(metadata=k8s.V1ObjectMeta(name="s"),
                                                                  spec=spec))
    assert svc.spec.cluster_ip.startswith("10.96.") and svc.spec.cluster_ips == [svc.spec.cluster_ip]
    assert 30000 <= svc.spec.ports[0].node_port <= 32767
    taken = k8s.V1ServiceSpec(cluster_ip=svc.spec.cluster_ip, ports=[k8s.V1ServicePort(port=80)])
    with pytest.raises(ApiException) as dup:
        core.create_namespaced_service(namespace, k8s.V1Service(metadata=k8s.V1ObjectMeta(name="t"),
                                                                spec=taken))
    assert dup.value.status == 422
    assert "provided IP is already allocated" in status_of(dup.value)["message"]
    core.delete_namespaced_service("s", namespace)
    again = core.create_namespaced_service(namespace, k8s.V1Service(metadata=k8s.V1ObjectMeta(name="t"),
                                                                    spec=taken))
    assert again.spec.cluster_ip == svc.spec.cluster_ip  # released on delete


# ------------------------------------------------------------------------------------- lightkube


@pytest.fixture(scope="module")
def lk(shared_apiserver: ApiServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Client:
    path = shared_apiserver.kubeconfig(tmp_path_factory.mktemp("lightkube") / "kubeconfig")
    return Client(config=KubeConfig.from_file(str(path)), field_manager="podnet-test")


@pytest.fixture
def lk_namespace(lk: Client) -> str:
    name = f"lk{next(_names)}"
    lk.create(Namespace(metadata=ObjectMeta(name=name)))
    return name


def test_lightkube_crud_and_pagination(lk: Client, lk_namespace: str) -> None:
    ns = lk_namespace
    for i in range(5):
        lk.create(ConfigMap(metadata=ObjectMeta(name=f"c{i}", labels={"n": str(i % 2)}), data={"i": str(i)}),
                  namespace=ns)
    assert lk.get(ConfigMap, "c3", namespace=ns).data == {"i": "3"}
    assert [c.metadata.name for c in lk.list(ConfigMap, namespace=ns, chunk_size=2)] == \
        [f"c{i}" for i in range(5)]
    assert [c.metadata.name for c in lk.list(ConfigMap, namespace=ns, labels={"n": "1"})] == ["c1", "c3"]

    lk.patch(ConfigMap, "c0", {"data": {"extra": "x"}}, namespace=ns, patch_type=PatchType.MERGE)
    lk.patch(ConfigMap, "c0", [{"op": "remove", "path": "/data/i"}], namespace=ns, patch_type=PatchType.JSON)
    applied = lk.apply(ConfigMap(metadata=ObjectMeta(name="c0", namespace=ns), data={"extra": "y"}),
                       force=True)
    assert applied.data["extra"] == "y"
    current = lk.get(ConfigMap, "c0", namespace=ns)
    current.data = {"replaced": "1"}
    assert lk.replace(current).data == {"replaced": "1"}
    with pytest.raises(ApiError) as conflict:
        lk.replace(current)  # current still carries the old resourceVersion
    assert conflict.value.status.code == 409

    lk.delete(ConfigMap, "c0", namespace=ns)
    with pytest.raises(ApiError) as gone:
        lk.get(ConfigMap, "c0", namespace=ns)
    assert (gone.value.status.code, gone.value.status.reason) == (404, "NotFound")


def test_lightkube_watch_resume_and_410(lk: Client, lk_namespace: str) -> None:
    ns = lk_namespace
    lk.create(ConfigMap(metadata=ObjectMeta(name="w0")), namespace=ns)
    listing = lk.list(ConfigMap, namespace=ns)
    names = [c.metadata.name for c in listing]
    assert names == ["w0"]
    events: list[tuple[str, str]] = []
    done = threading.Event()

    def watch() -> None:
        for kind, obj in lk.watch(ConfigMap, namespace=ns, resource_version=listing.resourceVersion,
                                  server_timeout=5):
            events.append((kind, obj.metadata.name))
            if len(events) == 3:
                done.set()
                return

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    lk.create(ConfigMap(metadata=ObjectMeta(name="w1")), namespace=ns)
    lk.patch(ConfigMap, "w1", {"data": {"a": "b"}}, namespace=ns, patch_type=PatchType.MERGE)
    lk.delete(ConfigMap, "w0", namespace=ns)
    assert done.wait(15), events
    assert events == [("ADDED", "w1"), ("MODIFIED", "w1"), ("DELETED", "w0")]


# ------------------------------------------------------------------------------------ 410 Expired


def test_watch_from_before_a_restart_is_410_expired(apiserver: ApiServerProcess, tmp_path: Any) -> None:
    """The watch cache starts at the store's revision: a resourceVersion from before an API server
    restart is too old (upstream cacher: 410 Expired as an ERROR event); both clients surface it and
    lightkube's documented recovery (forget the version, watch again) gets synthetic ADDED events."""
    code, body = apiserver.request("POST", "/api/v1/namespaces/default/configmaps",
                                   {"metadata": {"name": "before"}})
    assert code == 201, body
    old_rv = body["metadata"]["resourceVersion"]
    apiserver.request("PATCH", "/api/v1/namespaces/default/configmaps/before", {"data": {"a": "b"}},
                      content_type="application/merge-patch+json")
    apiserver.restart()

    cfg = k8s.Configuration(host=apiserver.url)
    cfg.api_key, cfg.api_key_prefix = {"authorization": apiserver.token}, {"authorization": "Bearer"}
    cfg.ssl_ca_cert = apiserver.ca_file
    with k8s.ApiClient(cfg) as api:
        core = k8s.CoreV1Api(api)
        with pytest.raises(ApiException) as expired:  # the client retries once, then raises
            for _ in k8s_watch.Watch().stream(core.list_namespaced_config_map, "default",
                                              resource_version=old_rv, timeout_seconds=5):
                pass
    assert expired.value.status == 410
    assert expired.value.reason.startswith(f"Expired: too old resource version: {old_rv} (")

    lk = Client(config=KubeConfig.from_file(str(apiserver.kubeconfig(tmp_path / "kc"))))
    with pytest.raises(ApiError) as lk_expired:
        next(iter(lk.watch(ConfigMap, namespace="default", resource_version=old_rv)))
    assert (lk_expired.value.status.code, lk_expired.value.status.reason) == (410, "Expired")

    def retry_after_410(err: Exception, count: int) -> OnErrorResult:
        return OnErrorResult(OnErrorAction.RETRY if count == 1 else OnErrorAction.RAISE)

    relisted = lk.watch(ConfigMap, namespace="default", resource_version=old_rv, on_error=retry_after_410)
    kind, obj = next(iter(relisted))
    assert (kind, obj.metadata.name, obj.data) == ("ADDED", "before", {"a": "b"})
