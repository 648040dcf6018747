"""The aiohttp application end to end over a MemoryStore-backed Registry (aiohttp's test client):
routing, negotiation, Status errors, authn/authz, watch over HTTP, subresources."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from controlplane.apiserver import auth, resources
from controlplane.apiserver.admission import Admission
from controlplane.apiserver.allocators import ClusterIPAllocator, NodePortAllocator, ServiceAllocators
from controlplane.apiserver.context import Access
from controlplane.apiserver.server import Limits, build_app
from podnet.store.base import StoreUnavailable
from podnet.store.memory import MemoryStore

ADMIN = {"Authorization": "Bearer admin-token"}
NOBODY = {"Authorization": "Bearer nobody-token"}
TABLE = {**ADMIN, "Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"}
AGGREGATED = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
NS = "/api/v1/namespaces/default"


class FlakyStore(MemoryStore):
    """A MemoryStore whose writes fail as if etcd were down while `down` is set, and whose reads
    wait while `gate` is cleared."""

    down = False
    gate: threading.Event | None = None

    def get(self, key: str) -> Any:
        if self.gate is not None:
            self.gate.wait(10)
        return super().get(key)

    def _check(self) -> None:
        if self.down:
            raise StoreUnavailable("connection refused")

    def create(self, key: str, value: bytes) -> int:
        self._check()
        return super().create(key, value)

    def update(self, key: str, value: bytes, expected_mod_revision: int | None) -> int:
        self._check()
        return super().update(key, value, expected_mod_revision)

    def healthy(self) -> bool:
        return not self.down


Scenario = Callable[[TestClient, FlakyStore], Awaitable[None]]


def serve(scenario: Scenario, cache_capacity: int = 10_000, limits: Limits | None = None) -> None:
    """Run `scenario(client, store)` against a fresh app (admin and nobody tokens, RBAC bootstrap)."""
    from controlplane.apiserver.registry import Registry

    async def main() -> None:
        store = FlakyStore()
        services = ServiceAllocators(ClusterIPAllocator(store, "10.96.0.0/24"),
                                     NodePortAllocator(store, "30000-30100"))
        admission = Admission(services)
        registry = Registry(store, admit=admission.admit, on_delete=admission.on_delete,
                            cache_capacity=cache_capacity)
        await registry.start()
        tokens = {"admin-token": auth.User("admin", "1", ("system:masters",)),
                  "nobody-token": auth.User("nobody", "2", ())}
        access = Access(auth.TokenAuthenticator(tokens), auth.Authorizer(auth.StoreRbacSource(
            store, "/registry/rbac.authorization.k8s.io")), insecure_is_admin=False)
        app = build_app(registry, store, access, bookmark_interval=0.2, limits=limits)
        try:
            async with TestClient(TestServer(app)) as client:
                await scenario(client, store)
        finally:
            await registry.stop()

    asyncio.run(asyncio.wait_for(main(), 30))


async def call(client: TestClient, method: str, path: str, body: Any = None, *,
               headers: dict[str, str] | None = None, content_type: str = "application/json",
               raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (None if body is None else json.dumps(body))
    hdrs = dict(ADMIN if headers is None else headers)
    if data is not None:
        hdrs["Content-Type"] = content_type
    async with client.request(method, path, data=data, headers=hdrs) as resp:
        text = await resp.text()
        ct = resp.headers.get("Content-Type", "")
        return resp.status, json.loads(text) if ct.startswith("application/json") and text else text


def cm(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


def pod(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "nginx"}]}}


def assert_status(body: Any, code: int, reason: str) -> None:
    assert isinstance(body, dict) and body["kind"] == "Status", body
    assert (body["code"], body["reason"], body["status"]) == (code, reason, "Failure"), body


# ------------------------------------------------------------------------------ open endpoints, auth


def test_health_and_version_are_open_and_resources_need_a_token() -> None:
    async def scenario(client: TestClient, store: FlakyStore) -> None:
        for path in ("/healthz", "/livez", "/readyz"):
            assert await call(client, "GET", path, headers={}) == (200, "ok")
        status, text = await call(client, "GET", "/readyz?verbose", headers={})
        assert status == 200 and "[+]etcd ok" in text and "readyz check passed" in text
        assert (await call(client, "GET", "/readyz/etcd", headers={}))[0] == 200
        status, info = await call(client, "GET", "/version/", headers={})
        assert status == 200 and info["minor"] == "31"
        status, body = await call(client, "GET", "/api/v1/namespaces", headers={})
        assert_status(body, 401, "Unauthorized")
        status, body = await call(client, "GET", "/api", headers={"Authorization": "Bearer wrong"})
        assert status == 401
        store.down = True
        status, text = await call(client, "GET", "/readyz?verbose", headers={})
        assert status == 500 and "[-]etcd failed" in text

    serve(scenario)


def test_rbac_forbids_a_user_without_bindings_but_allows_discovery() -> None:
    async def scenario(client: TestClient, store: FlakyStore) -> None:
        _status, body = await call(client, "GET", f"{NS}/pods", headers=NOBODY)
        assert_status(body, 403, "Forbidden")
        assert body["message"] == ('pods is forbidden: User "nobody" cannot list resource "pods" in API '
                                   'group "" in the namespace "default"')
        assert (await call(client, "GET", "/api", headers=NOBODY))[0] == 200
        assert (await call(client, "GET", "/apis/apps/v1", headers=NOBODY))[0] == 200
        # grant: a Role + RoleBinding created by the admin
        role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                "metadata": {"name": "pod-reader"},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "get"]}]}
        binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                   "metadata": {"name": "nobody-reads"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
                   "subjects": [{"kind": "User", "name": "nobody", "apiGroup": "rbac.authorization.k8s.io"}]}
        rbac = "/apis/rbac.authorization.k8s.io/v1/namespaces/default"
        assert (await call(client, "POST", f"{rbac}/roles", role))[0] == 201
        assert (await call(client, "POST", f"{rbac}/rolebindings", binding))[0] == 201
        assert (await call(client, "GET", f"{NS}/pods", headers=NOBODY))[0] == 200
        assert (await call(client, "POST", f"{NS}/pods", pod("p"), headers=NOBODY))[0] == 403

    serve(scenario)


def test_self_subject_access_review() -> None:
    async def scenario(client: TestClient, store: FlakyStore) -> None:
        review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                  "spec": {"resourceAttributes": {"verb": "get", "resource": "pods", "namespace": "default"}}}
        path = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
        status, body = await call(client, "POST", path, review)
        assert status == 201 and body["status"]["allowed"] is True
        status, body = await call(client, "POST", path, review, headers=NOBODY)
        assert status == 201 and body["status"]["allowed"] is False
        whoami = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
        status, body = await call(client, "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", whoami,
                                  headers=NOBODY)
        assert status == 201 and body["status"]["userInfo"]["username"] == "nobody"
        rules = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
                 "spec": {"namespace": "default"}}
        status, body = await call(client, "POST", "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
                                  rules)
        assert status == 201 and {"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]} in \
            body["status"]["resourceRules"]

    serve(scenario)


# ------------------------------------------------------------------------------ discovery, openapi


def test_discovery_legacy_and_aggregated() -> None:
    async def scenario(client: TestClient, store: FlakyStore) -> None:
        status, body = await call(client, "GET", "/api")
        assert status == 200 and body["kind"] == "APIVersions" and body["versions"] == ["v1"]
        async with client.get("/apis", headers={**ADMIN, "Accept": AGGREGATED}) as resp:
            assert resp.headers["Content-Type"] == \
                "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
            assert (await resp.json(content_type=None))["kind"] == "APIGroupDiscoveryList"
        status, body = await call(client, "GET", "/api/v1")
        names = {r["name"]: r for r in body["resources"]}
        assert "ns" in names["namespaces"]["shortNames"] and "pods/binding" in names
        status, body = await call(client, "GET", "/apis/apps/v1")
        assert status == 200 and body["groupVersion"] == "apps/v1"
        status, body = await call(client, "GET", "/apis/nope/v1")
        assert_status(body, 404, "NotFound")
        status, body = await call(client, "GET", "/")
        assert status == 200 and {"/api", "/apis/apps/v1", "/version"} <= set(body["paths"])
        status, body = await call(client, "GET", "/openapi/v3")
        assert status == 200 and "api/v1" in body["paths"]
        url = body["paths"]["api/v1"]["serverRelativeURL"]
        assert (await call(client, "GET", url))[0] == 200
        async with client.get("/openapi/v2", headers=ADMIN) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"] == "application/octet-stream"
            assert (await resp.read()).startswith(b"\n\x032.0")

    serve(scenario)


# ------------------------------------------------------------------------------ CRUD


def test_create_get_conflicts_and_delete() -> None:
    async def scenario(client: TestClient, store: FlakyStore) -> None:
        status, created = await call(client, "POST", f"{NS}/configmaps", cm("c1", a="1"))
        assert status == 201 and created["metadata"]["resourceVersion"] and created["metadata"]["uid"]
        status, body = await call(client, "POST", f"{NS}/configmaps", cm("c1"))
        assert_status(body, 409, "AlreadyExists")
        assert body["message"] == 'configmaps "c1" already exists'
        status, got = await call(client, "GET", f"{NS}/configmaps/c1")
        assert status == 200 and got["data"] == {"a": "1"}
        stale = {**got, "data": {"a": "2"}}
        assert (await call(client, "PUT", f"{NS}/configmaps/c1", stale))[0] == 200
        status, body = await call(client, "PUT", f"{NS}/configmaps/c1", stale)
        assert_status(body, 409, "Conflict")
        status, body = await call(client, "PUT", f"{NS}/configmaps/other", stale)
        assert_status(body, 400, "BadRequest")
        status, body = await call(client, "POST", f"{NS}/configmaps", {**cm("x"), "kind": "Secret"})
        assert_status(body, 400, "BadRequest")
        status, body = await call(client, "DELETE", f"{NS}/configmaps/c1",
                                  {"propagationPolicy": "Background"})
        assert status == 200 and body["status"] == "Success" and body["details"]["name"] == "c1"
        status, body = await call(client, "GET", f"{NS}/configmaps/c1")
        assert_status(body, 404, "NotFound")
        status, body = await call(client, "POST", "/api/v1/namespaces/missing/configmaps", cm("c"))
        assert_status(body, 404, "NotFound")
        status, body = await call(client, "GET", "/api/v1/widgets")
        assert_status(body, 404, "NotFound")

    serve(scenario)


def test_field_validation_strict_and_warn() -> None:
    async def scenario(client: TestClient, store: FlakyStore) -> None:
        bad = {**cm("fv"), "dta": {"a": "1"}}
        _, body = await call(client, "POST", f"{NS}/configmaps?fieldValidation=Strict", bad)
        assert_status(body, 400, "BadRequest")
        assert 'unknown field "dta"' in body["message"]
        async with client.post(f"{NS}/configmaps", data=json.dumps(bad),
                               headers={**ADMIN, "Content-Type": "application/json"}) as resp:
            assert resp.status == 201 and resp.headers["Warning"] == '299 - "unknown field \\"dta\\""'

    serve(scenario)


def test_yaml_answers_when_preferred() -> None:
    async def scenario(client: TestClient, store: FlakyStore) -> None:
        async with client.get("/api/v1/namespaces/default", headers={**ADMIN, "Accept": "application/yaml"}) \
                as resp:
            assert resp.status == 200 and resp.content_type == "application/yaml"
            assert "kind: Namespace\n" in await resp.text()
        async with client.get("/api/v1/namespaces/nope", headers={**ADMIN, "Accept": "application/yaml"}) \
                as resp:
            assert resp.status == 404 and "reason: NotFound" in await resp.text()

    serve(scenario)


def test_dry_run_and_bad_bodies() -> None:
    async def scenario(client: TestClient, store: FlakyStore) -> None:
        status, _ = await call(client, "POST", f"{NS}/configmaps?dryRun=All", cm("dry"))
        assert status == 201
        assert (await call(client, "GET", f"{NS}/configmaps/dry"))[0] == 404
        status, body = await call(client, "POST", f"{NS}/configmaps", raw=b"{not json")
        assert_status(body, 400, "BadRequest")
        status, body = await call(client, "POST", f"{NS}/configmaps", raw=b"\x00garbage",
                                  content_type="application/vnd.kubernetes.protobuf")
        assert_status(body, 415, "UnsupportedMediaType")
        status, body = await call(client, "GET", f"{NS}/pods?labelSelector=a%20in%20(")
        assert_status(body, 400, "BadRequest")
        status, body = await call(client, "GET", f"{NS}/pods?fieldSelector=spec.bogus=1")
        assert_status(body, 400, "BadRequest")
        huge = {**cm("huge"), "data": {"a": "x" * (9 * 1024 * 1024)}}
        status, body = await call(client, "POST", f"{NS}/configmaps", huge)
        assert_status(body, 413, "RequestEntityTooLarge")
        status, body = await call(client, "PUT", "/api/v1/namespaces/default/pods")
        assert_status(body, 405, "MethodNotAllowed")

    serve(scenario)


def test_patch_types() -> None:
    async def scenario(client: TestClient, store: FlakyStore) -> None:
        await call(client, "POST", f"{NS}/pods", pod("p"))
        path = f"{NS}/pods/p"
        status, body = await call(client, "PATCH", path, {"metadata": {"labels": {"tier": "fe"}}},
                                  content_type="application/merge-patch+json")
        assert status == 200 and body["metadata"]["labels"] == {"app": "web", "tier": "fe"}
        status, body = await call(client, "PATCH", path, [{"op": "remove", "path": "/metadata/labels/tier"}],
                                  content_type="application/json-patch+json")
        assert status == 200 and body["metadata"]["labels"] == {"app": "web"}
        smp = {"spec": {"containers": [{"name": "c", "image": "nginx:2"}]}}
        status, body = await call(client, "PATCH", path, smp,
                                  content_type="application/strategic-merge-patch+json")
        assert status == 200 and body["spec"]["containers"][0]["image"] == "nginx:2"
        status, body = await call(client, "PATCH", path, [{"op": "test", "path": "/spec/nodeName",
                                                           "value": "x"}],
                                  content_type="application/json-patch+json")
        assert status == 422
        status, body = await call(client, "PATCH", path, {}, content_type="application/xml")
        assert_status(body, 415, "UnsupportedMediaType")
        status, body = await call(client, "PATCH", f"{NS}/pods/missing", {},
                                  content_type="application/merge-patch+json")
        assert_status(body, 404, "NotFound")

    serve(scenario)


def test_server_side_apply_creates_then_updates() -> None:
    async def scenario(client: TestClient, store: FlakyStore) -> None:
        path = f"{NS}/configmaps/applied?fieldManager=kubectl&force=false"
        status, body = await call(client, "PATCH", path, cm("applied", a="1"),
                                  content_type="application/apply-patch+yaml")
        assert status == 201, body
        assert body["data"] == {"a": "1"}
        status, body = await call(client, "PATCH", path, raw=b"apiVersion: v1\nkind: ConfigMap\n"
                                  b"metadata:\n  name: applied\ndata:\n  a: '2'\n",
                                  content_type="application/apply-patch+yaml")
        assert status == 200 and body["data"] == {"a": "2"}

    serve(scenario)


# ------------------------------------------------------------------------------ lists, tables


def test_list_selectors_paging_and_tables() -> None:
    async def scenario(client: TestClient, store: FlakyStore) -> None:
        for i in range(5):
            await call(client, "POST", f"{NS}/configmaps", {**cm(f"c{i}"),
                                                             "metadata": {"name": f"c{i}",
                                                                          "labels": {"i": str(i % 2)}}})
        _, body = await call(client, "GET", f"{NS}/configmaps?labelSelector=i%3D1")
        assert [o["metadata"]["name"] for o in body["items"]] == ["c1", "c3"]
        assert body["kind"] == "ConfigMapList" and body["metadata"]["resourceVersion"]
        _, page = await call(client, "GET", f"{NS}/configmaps?limit=2")
        assert len(page["items"]) == 2 and page["metadata"]["continue"]
        _, rest = await call(client, "GET", f"{NS}/configmaps?limit=10&continue="
                                  f"{page['metadata']['continue']}")
        assert [o["metadata"]["name"] for o in rest["items"]] == ["c2", "c3", "c4"]
        _, body = await call(client, "GET", f"{NS}/configmaps?fieldSelector=metadata.name%3Dc4")
        assert [o["metadata"]["name"] for o in body["items"]] == ["c4"]
        _, table = await call(client, "GET", "/api/v1/namespaces", headers=TABLE)
        assert table["kind"] == "Table" and table["columnDefinitions"][0]["name"] == "Name"
        assert {r["cells"][0] for r in table["rows"]} >= {"default", "kube-system"}
        _, one = await call(client, "GET", "/api/v1/namespaces/default", headers=TABLE)
        assert one["kind"] == "Table" and len(one["rows"]) == 1
        _, allns = await call(client, "GET", "/api/v1/configmaps")
        assert len(allns["items"]) == 5

    serve(scenario)


# ------------------------------------------------------------------------------ watch


async def read_events(resp: Any, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    events = []
    while len(events) < count:
        line = await asyncio.wait_for(resp.content.readline(), timeout)
        if not line:
            break
        events.append(json.loads(line))
    return events


def test_watch_stream_events_bookmarks_and_timeout() -> None:
    async def scenario(client: TestClient, store: FlakyStore) -> None:
        _, listed = await call(client, "GET", f"{NS}/configmaps")
        rv = listed["metadata"]["resourceVersion"]
        url = (f"{NS}/configmaps?watch=True&resourceVersion={rv}&allowWatchBookmarks=True"
               "&timeoutSeconds=3")
        async with client.get(url, headers=ADMIN) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"].startswith("application/json")
            await call(client, "POST", f"{NS}/configmaps", cm("w1"))
            await call(client, "DELETE", f"{NS}/configmaps/w1")
            events = await read_events(resp, 2)
            assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == \
                [("ADDED", "w1"), ("DELETED", "w1")]
            bookmark = (await read_events(resp, 1))[0]
            assert bookmark["type"] == "BOOKMARK" and bookmark["object"]["kind"] == "ConfigMap"
            assert int(bookmark["object"]["metadata"]["resourceVersion"]) >= int(rv)
            rest = await asyncio.wait_for(resp.content.read(), 6)  # ends at timeoutSeconds
            assert all(json.loads(line)["type"] == "BOOKMARK" for line in rest.splitlines() if line)

    serve(scenario)


def test_bookmarks_move_past_events_a_selector_filters_out() -> None:
    async def scenario(client: TestClient, store: FlakyStore) -> None:
        _, listed = await call(client, "GET", f"{NS}/configmaps")
        rv = listed["metadata"]["resourceVersion"]
        url = (f"{NS}/configmaps?watch=1&resourceVersion={rv}&labelSelector=app%3Dnone"
               "&allowWatchBookmarks=true&timeoutSeconds=3")
        async with client.get(url, headers=ADMIN) as resp:
            last = 0
            for i in range(3):
                _, created = await call(client, "POST", f"{NS}/configmaps", cm(f"other{i}"))
                last = int(created["metadata"]["resourceVersion"])
            seen: list[dict[str, Any]] = []
            while not seen or int(seen[-1]["object"]["metadata"]["resourceVersion"]) < last:
                more = await read_events(resp, 1)  # bookmarks every 0.2 s, until the stream ends
                if not more:
                    break
                seen += more
        assert {e["type"] for e in seen} == {"BOOKMARK"}
        assert int(seen[-1]["object"]["metadata"]["resourceVersion"]) == last

    serve(scenario)


def test_watch_delivers_a_burst_in_order() -> None:
    async def scenario(client: TestClient, store: FlakyStore) -> None:
        _, listed = await call(client, "GET", f"{NS}/configmaps")
        rv = listed["metadata"]["resourceVersion"]
        async with client.get(f"{NS}/configmaps?watch=1&resourceVersion={rv}&timeoutSeconds=20",
                              headers=ADMIN) as resp:
            await asyncio.gather(*(call(client, "POST", f"{NS}/configmaps", cm(f"b{i}"))
                                   for i in range(300)))
            events = await read_events(resp, 300, timeout=10)
        rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
        assert len(events) == 300 and rvs == sorted(rvs) and len(set(rvs)) == 300
        assert {e["object"]["metadata"]["name"] for e in events} == {f"b{i}" for i in range(300)}

    serve(scenario)


def test_watch_of_one_item() -> None:
    async def scenario(client: TestClient, store: FlakyStore) -> None:
        await call(client, "POST", f"{NS}/configmaps", cm("one"))
        await call(client, "POST", f"{NS}/configmaps", cm("two"))
        async with client.get(f"{NS}/configmaps/one?watch=true&timeoutSeconds=2", headers=ADMIN) as resp:
            events = [json.loads(line) for line in (await resp.read()).splitlines() if line]
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "one")]
        async with client.get("/api/v1/watch/namespaces/default/configmaps/two?timeoutSeconds=2",
                              headers=ADMIN) as resp:
            events = [json.loads(line) for line in (await resp.read()).splitlines() if line]
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "two")]

    serve(scenario)


def test_watch_synthetic_added_and_table_events() -> None:
    async def scenario(client: TestClient, store: FlakyStore) -> None:
        await call(client, "POST", f"{NS}/configmaps", cm("pre"))
        async with client.get(f"{NS}/configmaps?watch=1&timeoutSeconds=2", headers=ADMIN) as resp:
            first = (await read_events(resp, 1))[0]
            assert first["type"] == "ADDED" and first["object"]["metadata"]["name"] == "pre"
        async with client.get(f"{NS}/configmaps?watch=true&timeoutSeconds=2", headers=TABLE) as resp:
            first = (await read_events(resp, 1))[0]
            assert first["type"] == "ADDED" and first["object"]["kind"] == "Table"
            assert first["object"]["rows"][0]["cells"][0] == "pre"

    serve(scenario)


def test_watch_from_compacted_revision_is_an_error_event() -> None:
    async def scenario(client: TestClient, store: FlakyStore) -> None:
        _, listed = await call(client, "GET", f"{NS}/configmaps")
        old_rv = listed["metadata"]["resourceVersion"]
        for i in range(6):  # more events than the watch cache keeps
            await call(client, "POST", f"{NS}/configmaps", cm(f"old{i}"))
            await call(client, "DELETE", f"{NS}/configmaps/old{i}")
        store.compact(store.current_revision())
        async with client.get(f"{NS}/configmaps?watch=true&resourceVersion={old_rv}&timeoutSeconds=2",
                              headers=ADMIN) as resp:
            assert resp.status == 200
            events = await read_events(resp, 1)
        assert events[0]["type"] == "ERROR"
        assert_status(events[0]["object"], 410, "Expired")

    serve(scenario, cache_capacity=4)


# ------------------------------------------------------------------------------ subresources


def test_binding_scale_and_status() -> None:
    async def scenario(client: TestClient, store: FlakyStore) -> None:
        await call(client, "POST", f"{NS}/pods", pod("p"))
        binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"},
                   "target": {"apiVersion": "v1", "kind": "Node", "name": "node1"}}
        status, body = await call(client, "POST", f"{NS}/pods/p/binding", binding)
        assert status == 201 and body["status"] == "Success"
        assert (await call(client, "GET", f"{NS}/pods/p"))[1]["spec"]["nodeName"] == "node1"
        status, body = await call(client, "POST", f"{NS}/pods/p/binding", binding)
        assert_status(body, 409, "Conflict")
        status, body = await call(client, "PATCH", f"{NS}/pods/p/status", {"status": {"phase": "Running"}},
                                  content_type="application/merge-patch+json")
        assert status == 200 and body["status"]["phase"] == "Running"
        rc = {"apiVersion": "v1", "kind": "ReplicationController", "metadata": {"name": "rc"},
              "spec": {"replicas": 1, "selector": {"app": "web"},
                       "template": {"metadata": {"labels": {"app": "web"}},
                                    "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}}
        assert (await call(client, "POST", f"{NS}/replicationcontrollers", rc))[0] == 201
        status, scale = await call(client, "GET", f"{NS}/replicationcontrollers/rc/scale")
        assert scale["kind"] == "Scale" and scale["apiVersion"] == "autoscaling/v1"
        assert scale["spec"]["replicas"] == 1 and scale["status"]["selector"] == "app=web"
        status, scale = await call(client, "PATCH", f"{NS}/replicationcontrollers/rc/scale",
                                   {"spec": {"replicas": 3}}, content_type="application/merge-patch+json")
        assert status == 200 and scale["spec"]["replicas"] == 3
        assert (await call(client, "GET", f"{NS}/replicationcontrollers/rc"))[1]["spec"]["replicas"] == 3

    serve(scenario)


def test_service_cluster_ip_allocated_and_released() -> None:
    async def scenario(client: TestClient, store: FlakyStore) -> None:
        svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
               "spec": {"type": "NodePort", "selector": {"app": "web"}, "ports": [{"port": 80}]}}
        status, body = await call(client, "POST", f"{NS}/services", svc)
        assert status == 201, body
        ip = body["spec"]["clusterIP"]
        assert ip.startswith("10.96.0.") and body["spec"]["ports"][0]["nodePort"] >= 30000
        status, body = await call(client, "POST", f"{NS}/services", svc)
        assert_status(body, 409, "AlreadyExists")
        assert (await call(client, "DELETE", f"{NS}/services/s"))[0] == 200
        again = {**svc, "metadata": {"name": "s2"}, "spec": {**svc["spec"], "clusterIP": ip}}
        status, body = await call(client, "POST", f"{NS}/services", again)
        assert status == 201 and body["spec"]["clusterIP"] == ip

    serve(scenario)


# ------------------------------------------------------------------------------ etcd down


@pytest.mark.timeout(30)
def test_store_down_is_503_and_recovers() -> None:
    async def scenario(client: TestClient, store: FlakyStore) -> None:
        store.down = True
        status, body = await call(client, "POST", f"{NS}/configmaps", cm("c"))
        assert status in (503, 504), body
        assert body["kind"] == "Status" and body["reason"] in ("ServiceUnavailable", "Timeout")
        store.down = False
        assert (await call(client, "POST", f"{NS}/configmaps", cm("c")))[0] == 201

    serve(scenario)


def test_kubernetes_service_bootstrap_is_idempotent() -> None:
    from controlplane.apiserver import bootstrap, resources
    from controlplane.apiserver.registry import Registry

    async def main() -> None:
        store = MemoryStore()
        ips = ClusterIPAllocator(store, "10.96.0.0/24")
        admission = Admission(ServiceAllocators(ips, NodePortAllocator(store, "30000-30100")))
        registry = Registry(store, admit=admission.admit, on_delete=admission.on_delete)
        await registry.start()
        try:
            await bootstrap.ensure_kubernetes_service(registry, ips.kubernetes_ip, "127.0.0.1", 6443)
            await bootstrap.ensure_kubernetes_service(registry, ips.kubernetes_ip, "127.0.0.2", 6444)
            svc = await registry.get(resources.find("", "v1", "services"), "default", "kubernetes")
            assert svc["spec"]["clusterIP"] == "10.96.0.1" and svc["spec"]["ports"][0]["port"] == 443
            ep = await registry.get(resources.find("", "v1", "endpoints"), "default", "kubernetes")
            assert ep["subsets"] == [{"addresses": [{"ip": "127.0.0.2"}],
                                      "ports": [{"name": "https", "port": 6444, "protocol": "TCP"}]}]
        finally:
            await registry.stop()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_delete_options_collections_and_query_errors() -> None:
    async def scenario(client: TestClient, store: FlakyStore) -> None:
        for i in range(3):
            labelled = {**cm(f"d{i}"), "metadata": {"name": f"d{i}", "labels": {"x": "y"}}}
            await call(client, "POST", f"{NS}/configmaps", labelled)
        await call(client, "POST", f"{NS}/configmaps", cm("keep"))
        status, body = await call(client, "DELETE", f"{NS}/configmaps?labelSelector=x%3Dy")
        assert status == 200 and body["kind"] == "ConfigMapList" and len(body["items"]) == 3
        _, left = await call(client, "GET", f"{NS}/configmaps")
        assert [o["metadata"]["name"] for o in left["items"]] == ["keep"]
        status, body = await call(client, "DELETE", "/api/v1/namespaces")
        assert_status(body, 405, "MethodNotAllowed")
        status, body = await call(client, "DELETE", f"{NS}/configmaps/keep?propagationPolicy=Sideways")
        assert_status(body, 400, "BadRequest")
        status, body = await call(client, "POST", f"{NS}/configmaps?dryRun=Some", cm("x"))
        assert_status(body, 400, "BadRequest")
        status, body = await call(client, "GET", f"{NS}/configmaps?includeObject=All", headers=TABLE)
        assert_status(body, 400, "BadRequest")
        status, body = await call(client, "GET", f"{NS}/configmaps?limit=many")
        assert_status(body, 400, "BadRequest")
        # a pod bound to a node is deleted gracefully (kept with deletionTimestamp) unless grace 0
        await call(client, "POST", f"{NS}/pods", {**pod("g"), "spec": {**pod("g")["spec"], "nodeName": "n1"}})
        status, body = await call(client, "DELETE", f"{NS}/pods/g")
        assert status == 200 and body["metadata"]["deletionTimestamp"]
        status, body = await call(client, "DELETE", f"{NS}/pods/g?gracePeriodSeconds=0")
        assert status == 200
        assert (await call(client, "GET", f"{NS}/pods/g"))[0] == 404

    serve(scenario)


def test_scale_put_and_deployment_selector() -> None:
    async def scenario(client: TestClient, store: FlakyStore) -> None:
        deploy = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
                  "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "d"}},
                           "template": {"metadata": {"labels": {"app": "d"}},
                                        "spec": {"containers": [{"name": "c", "image": "nginx"}]}}}}
        path = "/apis/apps/v1/namespaces/default/deployments/d"
        assert (await call(client, "POST", "/apis/apps/v1/namespaces/default/deployments", deploy))[0] == 201
        _, scale = await call(client, "GET", f"{path}/scale")
        assert scale["status"]["selector"] == "app=d" and scale["spec"]["replicas"] == 2
        scale["spec"]["replicas"] = 5
        status, body = await call(client, "PUT", f"{path}/scale", scale)
        assert status == 200 and body["spec"]["replicas"] == 5
        status, body = await call(client, "PUT", f"{path}/scale", scale)  # stale resourceVersion
        assert_status(body, 409, "Conflict")
        status, body = await call(client, "PATCH", f"{path}/scale", {"spec": {"replicas": -1}},
                                  content_type="application/merge-patch+json")
        assert_status(body, 422, "Invalid")
        status, body = await call(client, "GET", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews")
        assert status == 405

    serve(scenario)


def test_inflight_limit_answers_429_and_watches_are_exempt() -> None:
    async def scenario(client: TestClient, store: FlakyStore) -> None:
        store.gate = threading.Event()
        slow = asyncio.ensure_future(call(client, "GET", f"{NS}/configmaps/x"))
        await asyncio.sleep(0.3)
        async with client.get(f"{NS}/configmaps/y", headers=ADMIN) as resp:
            assert resp.status == 429 and resp.headers["Retry-After"] == "1"
            assert_status(await resp.json(), 429, "TooManyRequests")
        async with client.get(f"{NS}/configmaps?watch=1&timeoutSeconds=1", headers=ADMIN) as resp:
            assert resp.status == 200
        assert (await call(client, "GET", "/healthz", headers={}))[0] == 200
        store.gate.set()
        assert (await slow)[0] == 404
        assert (await call(client, "GET", f"{NS}/configmaps/y"))[0] == 404

    serve(scenario, limits=Limits(max_readonly=1, max_mutating=1))


def test_resource_requests_wait_for_the_registry_to_start() -> None:
    async def main() -> None:
        store = MemoryStore()
        started = asyncio.Event()
        tokens = {"admin-token": auth.User("admin", "1", ("system:masters",))}
        access = Access(auth.TokenAuthenticator(tokens), auth.Authorizer(), insecure_is_admin=False)
        app = build_app(object(), store, access, started=started)
        async with TestClient(TestServer(app)) as client:
            _, body = await call(client, "GET", "/api/v1/namespaces")
            assert_status(body, 503, "ServiceUnavailable")
            status, text = await call(client, "GET", "/readyz?verbose", headers={})
            assert status == 500 and "[-]poststarthook/podnet-registry failed" in text
            assert (await call(client, "GET", "/livez", headers={}))[0] == 200
            assert (await call(client, "GET", "/version", headers={}))[0] == 200
            started.set()
            assert (await call(client, "GET", "/readyz", headers={})) == (200, "ok")
            assert (await call(client, "GET", "/api"))[0] == 200

    asyncio.run(asyncio.wait_for(main(), 30))


def test_allocation_repair_pass_releases_leaks_and_keeps_used_values() -> None:
    from controlplane.apiserver import bootstrap
    from controlplane.apiserver.allocators import AllocationRepair
    from controlplane.apiserver.registry import Registry

    async def main() -> None:
        store = MemoryStore()
        services = ServiceAllocators(ClusterIPAllocator(store, "10.96.0.0/24"),
                                     NodePortAllocator(store, "30000-30100"))
        admission = Admission(services)
        registry = Registry(store, admit=admission.admit, on_delete=admission.on_delete)
        await registry.start()
        try:
            svc_res = resources.find("", "v1", "services")
            svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
                   "spec": {"selector": {"a": "b"}, "ports": [{"port": 80}]}}
            used = (await registry.create(svc_res, "default", svc))["spec"]["clusterIP"]
            leaked = services.ips.allocate()  # reserved, but no service holds it (a crash)
            repair = AllocationRepair(services, rounds=2)
            assert await bootstrap.repair_allocations_once(registry, services, repair) == ([], [])
            assert await bootstrap.repair_allocations_once(registry, services, repair) == ([leaked], [])
            assert services.ips.allocated() == {used}
        finally:
            await registry.stop()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_propagation_policy_and_namespace_finalize_over_http() -> None:
    """DeleteOptions' orphanDependents (body or query) maps to the orphan finalizer (false clears it);
    PUT namespaces/<name>/finalize takes only spec.finalizers and ends a Terminating namespace."""
    async def scenario(client: TestClient, store: FlakyStore) -> None:
        for name in ("a", "b"):
            await call(client, "POST", f"{NS}/configmaps", cm(name))
        _, body = await call(client, "DELETE", f"{NS}/configmaps/a", {"orphanDependents": True})
        assert body["metadata"]["finalizers"] == ["orphan"]
        _, body = await call(client, "DELETE", f"{NS}/configmaps/a?orphanDependents=false")
        assert body["status"] == "Success"  # the orphan finalizer removed: deleted
        _, body = await call(client, "DELETE", f"{NS}/configmaps/b?propagationPolicy=Foreground")
        assert body["metadata"]["finalizers"] == ["foregroundDeletion"]
        _, v1 = await call(client, "GET", "/api/v1")
        subs = {r["name"]: r["verbs"] for r in v1["resources"] if r["name"].startswith("namespaces/")}
        assert subs == {"namespaces/finalize": ["update"], "namespaces/status": ["get", "patch", "update"]}

        await call(client, "POST", "/api/v1/namespaces", {"metadata": {"name": "t"}})
        status, ns = await call(client, "DELETE", "/api/v1/namespaces/t")
        assert status == 200 and ns["status"]["phase"] == "Terminating"
        assert ns["spec"]["finalizers"] == ["kubernetes"]  # waits for the namespace controller
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "t"},
                "spec": {"finalizers": []}, "status": {"phase": "Active"}}
        status, done = await call(client, "PUT", "/api/v1/namespaces/t/finalize", body)
        assert status == 200 and done["spec"]["finalizers"] == []
        assert (await call(client, "GET", "/api/v1/namespaces/t"))[0] == 404
        status, _ = await call(client, "POST", "/api/v1/namespaces/default/finalize", body)
        assert status == 405

    serve(scenario)
