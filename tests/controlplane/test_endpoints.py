"""The Endpoints controller: desired subsets as a table, semantic equality, and the sync and event
plumbing against fakes of its own seams (Api, Cache)."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Mapping
from typing import Any

import pytest

from controlplane.controllers import catalog
from controlplane.controllers.__main__ import parse_args
from controlplane.controllers.context import ControllerContext
from controlplane.controllers.endpoint_common import (
    HEADLESS_LABEL,
    WrittenVersions,
    find_port,
    service_labels,
    service_selector,
)
from controlplane.controllers.endpoints import (
    OVER_CAPACITY_ANNOTATION,
    EndpointsController,
    build,
    desired_endpoints,
    endpoints_unchanged,
    truncate_subsets,
)
from podnet.api.client import ENDPOINTS, ApiError, Resource
from tests.controlplane.fakes import FakeCache

Obj = dict[str, Any]


def make_service(name: str = "web", *, selector: Mapping[str, str] | None = None,
                 ports: list[Obj] | None = None, cluster_ip: str = "10.96.0.10",
                 families: list[str] | None = None, publish: bool = False,
                 labels: Mapping[str, str] | None = None, namespace: str = "default", **extra: Any) -> Obj:
    spec: Obj = {"clusterIP": cluster_ip, "ipFamilies": families or ["IPv4"],
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "web"}]
                 if ports is None else ports}
    if selector is None:
        selector = {"app": name}
    if selector:
        spec["selector"] = dict(selector)
    if publish:
        spec["publishNotReadyAddresses"] = True
    spec.update(extra)
    meta: Obj = {"name": name, "namespace": namespace, "uid": f"svc-uid-{name}", "resourceVersion": "3"}
    if labels:
        meta["labels"] = dict(labels)
    return {"metadata": meta, "spec": spec}


def make_pod(name: str, ip: str | None = "10.244.0.1", *, ready: bool = True, app: str = "web",
             ports: list[Obj] | None = None, node: str = "node-a", phase: str = "Running",
             deleting: bool = False, hostname: str = "", subdomain: str = "", ips: list[str] | None = None,
             namespace: str = "default") -> Obj:
    meta: Obj = {"name": name, "namespace": namespace, "uid": f"uid-{name}", "labels": {"app": app},
                 "resourceVersion": "7"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:30Z"
    default_ports = [{"name": "web", "containerPort": 8080, "protocol": "TCP"}]
    spec: Obj = {"containers": [{"name": "c", "ports": default_ports if ports is None else ports}]}
    if node:
        spec["nodeName"] = node
    if hostname:
        spec["hostname"] = hostname
    if subdomain:
        spec["subdomain"] = subdomain
    status: Obj = {"phase": phase, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    if ip:
        status["podIP"] = ip
    if ips:
        status["podIPs"] = [{"ip": i} for i in ips]
    return {"metadata": meta, "spec": spec, "status": status}


def ref(name: str) -> Obj:
    return {"kind": "Pod", "namespace": "default", "name": name, "uid": f"uid-{name}"}


def addr(name: str, ip: str, node: str = "node-a", **extra: str) -> Obj:
    return {"ip": ip, "targetRef": ref(name), "nodeName": node, **extra}


HTTP = [{"name": "http", "port": 8080, "protocol": "TCP"}]
HTTP_9090 = [{"name": "http", "port": 9090, "protocol": "TCP"}]
METRICS = [{"name": "metrics", "port": 9100, "protocol": "TCP"}]


# ---------------------------------------------------------------------------------- the table
CASES: list[tuple[str, Obj, list[Obj], list[Obj]]] = [
    ("ready and not ready", make_service(),
     [make_pod("b", "10.244.0.2", ready=False), make_pod("a", "10.244.0.10"), make_pod("c", "10.244.0.9")],
     [{"addresses": [addr("c", "10.244.0.9"), addr("a", "10.244.0.10")],
       "notReadyAddresses": [addr("b", "10.244.0.2")], "ports": HTTP}]),
    ("publishNotReadyAddresses puts everyone in addresses, terminating too", make_service(publish=True),
     [make_pod("a", "10.244.0.1", ready=False), make_pod("b", "10.244.0.2", deleting=True)],
     [{"addresses": [addr("a", "10.244.0.1"), addr("b", "10.244.0.2")], "ports": HTTP}]),
    ("terminating, finished and IP-less pods are left out", make_service(),
     [make_pod("t", "10.244.0.1", deleting=True), make_pod("s", "10.244.0.2", phase="Succeeded"),
      make_pod("f", "10.244.0.3", phase="Failed"), make_pod("n", None), make_pod("ok", "10.244.0.4")],
     [{"addresses": [addr("ok", "10.244.0.4")], "ports": HTTP}]),
    ("a named targetPort resolves per pod: one subset per port set", make_service(),
     [make_pod("a", "10.244.0.1", ports=[{"name": "web", "containerPort": 8080}]),
      make_pod("b", "10.244.0.2", ports=[{"name": "web", "containerPort": 9090}]),
      make_pod("c", "10.244.0.3", ports=[{"name": "other", "containerPort": 8080}])],
     [{"addresses": [addr("a", "10.244.0.1")], "ports": HTTP},
      {"addresses": [addr("b", "10.244.0.2")], "ports": HTTP_9090}]),
    ("a pod lacking one named port keeps the others",
     make_service(ports=[{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "web"},
                         {"name": "metrics", "port": 9100, "protocol": "TCP", "targetPort": 9100}]),
     [make_pod("a", "10.244.0.1"), make_pod("b", "10.244.0.2", ports=[])],
     [{"addresses": [addr("a", "10.244.0.1")],
       "ports": [*HTTP, *METRICS]},
      {"addresses": [addr("b", "10.244.0.2")], "ports": METRICS}]),
    ("a named port must match the protocol too",
     make_service(ports=[{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns"}]),
     [make_pod("tcp", "10.244.0.1", ports=[{"name": "dns", "containerPort": 5353, "protocol": "TCP"}]),
      make_pod("udp", "10.244.0.2", ports=[{"name": "dns", "containerPort": 53, "protocol": "UDP"}])],
     [{"addresses": [addr("udp", "10.244.0.2")], "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}]),
    ("headless: hostname only when the subdomain is the service", make_service(cluster_ip="None"),
     [make_pod("a", "10.244.0.1", hostname="a-host", subdomain="web"),
      make_pod("b", "10.244.0.2", hostname="b-host", subdomain="other"),
      make_pod("c", "10.244.0.3", node="")],
     [{"addresses": [addr("a", "10.244.0.1", hostname="a-host"), addr("b", "10.244.0.2"),
                     {"ip": "10.244.0.3", "targetRef": ref("c")}], "ports": HTTP}]),
    ("headless without ports: addresses alone", make_service(cluster_ip="None", ports=[]),
     [make_pod("a", "10.244.0.1")], [{"addresses": [addr("a", "10.244.0.1")]}]),
    ("a ClusterIP service without ports gets nothing", make_service(ports=[]), [make_pod("a")], []),
    ("selector and namespace decide", make_service(),
     [make_pod("mine", "10.244.0.1"), make_pod("theirs", "10.244.0.2", app="db"),
      make_pod("elsewhere", "10.244.0.3", namespace="prod")],
     [{"addresses": [addr("mine", "10.244.0.1")], "ports": HTTP}]),
    ("an IPv6 service takes the pods' IPv6 addresses", make_service(families=["IPv6"], cluster_ip="fd00::a"),
     [make_pod("dual", "10.244.0.1", ips=["10.244.0.1", "fd00:244::1"]), make_pod("v4only", "10.244.0.2")],
     [{"addresses": [addr("dual", "fd00:244::1")], "ports": HTTP}]),
    ("a numeric targetPort is used as is",
     make_service(ports=[{"port": 80, "protocol": "TCP", "targetPort": 8000}]),
     [make_pod("a", "10.244.0.1", ports=[])],
     [{"addresses": [addr("a", "10.244.0.1")], "ports": [{"port": 8000, "protocol": "TCP"}]}]),
]


@pytest.mark.parametrize(("svc", "pods", "want"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_desired_endpoints(svc: Obj, pods: list[Obj], want: list[Obj]) -> None:
    assert desired_endpoints(svc, pods) == want
    assert desired_endpoints(svc, list(reversed(pods))) == want  # deterministic


def test_services_without_selector_or_external_name_are_not_managed() -> None:
    assert service_selector(make_service(selector={})) is None
    assert service_selector(make_service(type="ExternalName")) is None
    assert service_selector(make_service()) is not None
    assert desired_endpoints(make_service(selector={}), [make_pod("a")]) == []


def test_find_port_sidecar_and_default_target() -> None:
    pod = make_pod("a", ports=[])
    pod["spec"]["initContainers"] = [{"name": "proxy", "restartPolicy": "Always",
                                      "ports": [{"name": "web", "containerPort": 15001}]},
                                     {"name": "init", "ports": [{"name": "web", "containerPort": 1}]}]
    assert find_port(pod, {"port": 80, "targetPort": "web"}) == 15001
    assert find_port(pod, {"port": 80}) == 80
    assert find_port(pod, {"port": 80, "targetPort": "missing"}) is None


def test_labels_copy_the_service_and_mark_headless() -> None:
    assert service_labels(make_service(labels={"team": "a"})) == {"team": "a"}
    headless = make_service(cluster_ip="None", labels={"team": "a", HEADLESS_LABEL: "x"})
    assert service_labels(headless) == {"team": "a", HEADLESS_LABEL: ""}


def test_unchanged_ignores_order_and_omitted_fields() -> None:
    subsets = desired_endpoints(CASES[0][1], CASES[0][2])
    stored = {"metadata": {"name": "web", "labels": {}},
              "subsets": [{"notReadyAddresses": subsets[0]["notReadyAddresses"],
                           "addresses": list(reversed(subsets[0]["addresses"])),
                           "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]}
    assert endpoints_unchanged(stored, subsets, {})
    assert not endpoints_unchanged(stored, subsets, {"team": "a"})
    assert not endpoints_unchanged(stored, [], {})
    assert endpoints_unchanged({"metadata": {}}, [], {})


# ---------------------------------------------------------------------------------- fakes
class FakeApi:
    """Records writes, returns them as the server would (a name, a resourceVersion); `fail` maps a
    verb to the ApiError code it raises next."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Obj | str]] = []
        self.fail: dict[str, int] = {}
        self.message = {403: 'endpoints "web" is forbidden: unable to create new content in namespace '
                             "default because it is being terminated"}
        self._rv = itertools.count(100)

    def _check(self, verb: str) -> None:
        code = self.fail.pop(verb, None)
        if code is not None:
            raise ApiError({"code": code, "reason": "Test", "message": self.message.get(code, verb)})

    def _stored(self, obj: Mapping[str, Any], namespace: str | None) -> Obj:
        out = dict(obj)
        out["metadata"] = {**obj["metadata"], "namespace": namespace, "resourceVersion": str(next(self._rv))}
        return out

    def create(self, res: Resource, obj: Mapping[str, Any], namespace: str | None = None,
               **query: Any) -> Obj:
        self._check("create")
        self.calls.append(("create", dict(obj)))
        return self._stored(obj, namespace)

    def update(self, res: Resource, obj: Mapping[str, Any], namespace: str | None = None,
               subresource: str | None = None, **query: Any) -> Obj:
        self._check("update")
        self.calls.append(("update", dict(obj)))
        return self._stored(obj, namespace)

    def delete(self, res: Resource, name: str, namespace: str | None = None, *,
               propagation_policy: str | None = None, grace_period_seconds: int | None = None,
               preconditions: Mapping[str, str] | None = None) -> Obj:
        self.calls.append(("delete", f"{namespace}/{name}"))
        self._check("delete")
        return {}


def controller(*objs: Obj) -> tuple[EndpointsController, FakeApi, FakeCache, FakeCache, FakeCache]:
    services = FakeCache(*[o for o in objs if "clusterIP" in o.get("spec", {})])
    pods = FakeCache(*[o for o in objs if "containers" in o.get("spec", {})])
    endpoints = FakeCache()
    api = FakeApi()
    return EndpointsController(api, services, pods, endpoints), api, services, pods, endpoints


def test_sync_creates_then_leaves_it_alone() -> None:
    ctl, api, _, _, endpoints = controller(make_service(labels={"team": "a"}), make_pod("a", "10.244.0.1"))
    ctl.sync("default/web")
    [(verb, obj)] = api.calls
    assert verb == "create" and isinstance(obj, dict)
    assert obj["metadata"] == {"name": "web", "namespace": "default", "labels": {"team": "a"}}
    assert obj["subsets"] == [{"addresses": [addr("a", "10.244.0.1")], "ports": HTTP}]
    endpoints.put(api._stored(obj, "default"))
    ctl.sync("default/web")
    assert len(api.calls) == 1  # the resync writes nothing


def test_sync_updates_on_change_with_the_cached_version() -> None:
    ctl, api, _, pods, endpoints = controller(make_service(), make_pod("a", "10.244.0.1"))
    endpoints.put({"metadata": {"name": "web", "namespace": "default", "resourceVersion": "50",
                                "annotations": {"note": "kept"}}, "subsets": []})
    ctl.sync("default/web")
    [(verb, obj)] = api.calls
    assert verb == "update" and isinstance(obj, dict)
    assert obj["metadata"]["resourceVersion"] == "50" and obj["metadata"]["annotations"] == {"note": "kept"}
    pods.put(make_pod("a", "10.244.0.1", ready=False))
    endpoints.put(api._stored(obj, "default"))
    ctl.sync("default/web")
    assert api.calls[-1][1]["subsets"] == [{"notReadyAddresses": [addr("a", "10.244.0.1")], "ports": HTTP}]  # type: ignore[index]


def test_cache_lag_after_a_write_does_not_create_twice() -> None:
    ctl, api, _, _, endpoints = controller(make_service(), make_pod("a", "10.244.0.1"))
    ctl.sync("default/web")
    ctl.sync("default/web")  # the watch has not delivered our Endpoints yet
    assert [c[0] for c in api.calls] == ["create"]
    assert "default/web" in ctl._retry
    endpoints.put(api._stored(api.calls[0][1], "default"))  # type: ignore[arg-type]
    endpoints.items["default/web"]["metadata"]["resourceVersion"] = "100"
    ctl.sync("default/web")
    assert len(api.calls) == 1


def test_conflict_requeues_without_raising() -> None:
    ctl, api, *_ = controller(make_service(), make_pod("a", "10.244.0.1"))
    api.fail["create"] = 409
    ctl.sync("default/web")
    assert api.calls == [] and "default/web" in ctl._retry
    api.fail["create"] = 500
    with pytest.raises(ApiError):
        ctl.sync("default/web")


def test_selectorless_service_is_never_touched_and_deleted_service_loses_endpoints() -> None:
    ctl, api, services, _, endpoints = controller(make_service(selector={}), make_pod("a"))
    endpoints.put({"metadata": {"name": "web", "namespace": "default"},
                   "subsets": [{"addresses": [{"ip": "1.2.3.4"}]}]})
    ctl.sync("default/web")
    assert api.calls == []
    services.items.clear()
    ctl.sync("default/web")
    assert api.calls == [("delete", "default/web")]
    api.fail["delete"] = 404
    ctl.sync("default/web")  # already gone: fine


def test_pod_events_mark_the_services_selecting_the_pod() -> None:
    web, db = make_service("web"), make_service("db")
    other_ns = make_service("web", namespace="prod")
    ctl, *_ = controller(web, db, other_ns)
    pod = make_pod("a", app="web")
    ctl.pod_added(pod)
    assert ctl.dirty.take() == {"default/web"}
    relabelled = make_pod("a", app="db")
    ctl.pod_updated(pod, relabelled)
    assert ctl.dirty.take() == {"default/web", "default/db"}
    annotated = make_pod("a", app="web")
    annotated["metadata"]["annotations"] = {"x": "y"}
    ctl.pod_updated(pod, annotated)
    ctl.pod_updated(pod, pod)
    assert ctl.dirty.take() == set()  # nothing an endpoint shows changed
    ctl.pod_updated(pod, make_pod("a", app="web", ready=False))
    ctl.pod_deleted(pod)
    assert ctl.dirty.take() == {"default/web"}


def test_endpoints_events_and_leftovers() -> None:
    ctl, _, _, _, endpoints = controller(make_service("web"))
    ctl.endpoints_changed("default/web")
    ctl.endpoints_changed("default/orphan")
    assert ctl.dirty.take() == {"default/web"}
    endpoints.put({"metadata": {"name": "orphan", "namespace": "default"}})
    endpoints.put({"metadata": {"name": "web", "namespace": "default"}})
    endpoints.put({"metadata": {"name": "lock", "namespace": "kube-system",
                                "annotations": {"control-plane.alpha.kubernetes.io/leader": "{}"}}})
    assert ctl.leftover_keys() == ["default/orphan"]
    stop = threading.Event()
    stop.set()
    ctl.run(stop)
    assert ctl.dirty.take() == {"default/orphan"}
    assert set(ctl.resync_keys()) == {"default/web"}


def test_written_versions_expire() -> None:
    now = [0.0]
    written = WrittenVersions(ttl=5.0, clock=lambda: now[0])
    cache = FakeCache()
    written.wrote("k", "default/x", "10")
    assert not written.caught_up("k", cache)
    now[0] = 6.0
    assert written.caught_up("k", cache)
    written.wrote("k", "default/x", "")  # a delete: caught up once the cache lacks it
    assert written.caught_up("k", cache)


def test_build_and_catalog() -> None:
    assert catalog.select("endpoint,endpointslice") == ["endpoint", "endpointslice"]
    options = parse_args(["--kubeconfig", "/dev/null", "--controllers", "endpoint", "--resync-period", "2s"])
    ctx = ControllerContext(object(), options)  # type: ignore[arg-type]
    ctl = build(ctx)
    assert ctl.resync_period == 2.0 and ctl.name == "endpoint"
    assert ENDPOINTS in ctx.informers._informers


def _ips(prefix: str, n: int) -> list[Obj]:
    return [{"ip": f"{prefix}.{i // 250}.{i % 250}"} for i in range(n)]


TRUNCATION = [
    ("under capacity: untouched", [{"addresses": _ips("10.1", 3), "notReadyAddresses": _ips("10.2", 2)}], 5,
     ([3], [2]), False),
    ("not-ready ones go first, shared in proportion (rounded up)",
     [{"addresses": _ips("10.1", 4), "notReadyAddresses": _ips("10.2", 3)},
      {"addresses": _ips("10.3", 2), "notReadyAddresses": _ips("10.4", 3)}], 8, ([4, 2], [1, 1]), True),
    ("too many ready: ready ones shared, every not-ready one dropped",
     [{"addresses": _ips("10.1", 6), "notReadyAddresses": _ips("10.2", 3)},
      {"addresses": _ips("10.3", 3)}], 4, ([3, 1], [0, 0]), True),
    ("a subset left empty disappears",
     [{"addresses": _ips("10.1", 5)}, {"notReadyAddresses": _ips("10.2", 2)}], 5, ([5], [0]), True),
]


@pytest.mark.parametrize(("subsets", "limit", "sizes", "truncated"), [c[1:] for c in TRUNCATION],
                         ids=[c[0] for c in TRUNCATION])
def test_truncate_subsets(subsets: list[Obj], limit: int, sizes: tuple[list[int], list[int]],
                          truncated: bool) -> None:
    out, was = truncate_subsets(subsets, limit)
    assert was is truncated
    assert ([len(s.get("addresses") or []) for s in out],
            [len(s.get("notReadyAddresses") or []) for s in out]) == sizes
    assert sum(len(s.get("addresses") or []) + len(s.get("notReadyAddresses") or []) for s in out) <= limit


def test_over_capacity_annotation_set_and_cleared() -> None:
    many = [make_pod(f"p{i}", f"10.244.0.{i + 1}") for i in range(3)]
    ctl, api, _, pods, endpoints = controller(make_service(), *many)
    ctl.max_capacity = 2
    ctl.sync("default/web")
    created = api.calls[-1][1]
    assert isinstance(created, dict)
    assert created["metadata"]["annotations"] == {OVER_CAPACITY_ANNOTATION: "truncated"}
    assert len(created["subsets"][0]["addresses"]) == 2
    endpoints.put(api._stored(created, "default"))
    ctl.written.forget("default/web")
    ctl.sync("default/web")
    assert len(api.calls) == 1  # stable while still over capacity
    del pods.items["default/p2"]
    ctl.sync("default/web")
    updated = api.calls[-1][1]
    assert isinstance(updated, dict) and "annotations" not in updated["metadata"]


@pytest.mark.parametrize(("verb", "code"),
                         [("create", 403), ("create", 404), ("update", 404), ("update", 409)])
def test_quiet_write_errors_requeue(verb: str, code: int) -> None:
    ctl, api, *_, endpoints = controller(make_service(), make_pod("a", "10.244.0.1"))
    if verb == "update":
        endpoints.put({"metadata": {"name": "web", "namespace": "default", "resourceVersion": "5"}})
    api.fail[verb] = code
    ctl.sync("default/web")
    assert "default/web" in ctl._retry


def test_other_forbidden_errors_raise() -> None:
    ctl, api, *_ = controller(make_service(), make_pod("a", "10.244.0.1"))
    api.message[403] = "no"
    api.fail["create"] = 403
    with pytest.raises(ApiError):
        ctl.sync("default/web")
