"""Real kubectl (1.27, 1.31, 1.33) against the discovery, OpenAPI and Table documents.

A tiny in-process aiohttp stub serves exactly what controlplane.apiserver.{discovery,openapi,
tables} produce plus an in-memory pod list, so these tests pin the documents themselves (shortNames,
aggregated discovery, the fieldValidation handshake of `create -f`, Table columns) independently of
the real server. kubectl runs with a fresh --cache-dir so every run really performs discovery.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from controlplane.apiserver import discovery, openapi, resources, tables
from netns_tests.apiserver_fixtures import kubectl_binary
from podnet.testing.etcd import free_port

TABLE_ACCEPT = "as=Table"


def _pod(name: str, phase: str, seconds_ago: int) -> dict[str, Any]:
    created = (datetime.now(UTC) - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
    running = phase == "Running"
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}", "resourceVersion": "7",
                     "creationTimestamp": created},
        "spec": {"containers": [{"name": "c", "image": "busybox"}], "nodeName": "node-1"},
        "status": {"phase": phase, "podIP": "10.1.0.7" if running else None,
                   "containerStatuses": [{"name": "c", "ready": running, "restartCount": 0,
                                          "state": {"running": {}} if running else
                                          {"waiting": {"reason": "ContainerCreating"}}}]},
    }


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """Enough of a merge for metadata/labels patches (the stub does not model list merging)."""
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        elif value is None:
            target.pop(key, None)
        else:
            target[key] = value


class Stub:
    """Records every request; serves our documents and a default/pods collection."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str]] = []  # (method, path_qs, accept)
        self.patch_types: list[str] = []
        # Ages far from a rounding boundary, so a slow run cannot change the AGE column.
        self.pods = [_pod("web", "Running", 20 * 86400 + 600), _pod("db", "Pending", 2 * 86400 + 600)]
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.record])
        r = app.router
        r.add_get("/api", self.api)
        r.add_get("/apis", self.apis)
        r.add_get("/api/{v}", self.group_version)
        r.add_get("/apis/{g}/{v}", self.group_version)
        r.add_get("/openapi/v2", self.openapi_v2)
        r.add_get("/openapi/v3", self.openapi_root)
        r.add_get("/openapi/v3/{path:.+}", self.openapi_doc)
        r.add_get("/api/v1/namespaces/default/pods", self.list_pods)
        r.add_post("/api/v1/namespaces/default/pods", self.create_pod)
        r.add_get("/api/v1/namespaces/default/pods/{name}", self.get_pod)
        r.add_patch("/api/v1/namespaces/default/pods/{name}", self.patch_pod)
        return app

    @web.middleware
    async def record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs, request.headers.get("Accept", "")))
        return await handler(request)

    async def api(self, request: web.Request) -> web.Response:
        version = discovery.negotiate_aggregated(request.headers.get("Accept", ""))
        if version:
            return web.Response(text=json.dumps(discovery.aggregated_discovery(True, version)),
                                headers={"Content-Type": discovery.AGGREGATED_CONTENT_TYPES[version]})
        return web.json_response(discovery.api_versions(f"127.0.0.1:{self.port}"))

    async def apis(self, request: web.Request) -> web.Response:
        version = discovery.negotiate_aggregated(request.headers.get("Accept", ""))
        if version:
            return web.Response(text=json.dumps(discovery.aggregated_discovery(False, version)),
                                headers={"Content-Type": discovery.AGGREGATED_CONTENT_TYPES[version]})
        return web.json_response(discovery.api_group_list())

    async def group_version(self, request: web.Request) -> web.Response:
        doc = discovery.api_resource_list(request.match_info.get("g", ""), request.match_info["v"])
        return web.json_response(doc) if doc else web.json_response({}, status=404)

    async def openapi_v2(self, request: web.Request) -> web.Response:
        return web.Response(body=openapi.openapi_v2_protobuf(),
                            headers={"Content-Type": openapi.OPENAPI_V2_CONTENT_TYPE})

    async def openapi_root(self, request: web.Request) -> web.Response:
        return web.json_response(openapi.openapi_v3_root())

    async def openapi_doc(self, request: web.Request) -> web.Response:
        doc = openapi.document_for_path(request.match_info["path"])
        return web.json_response(doc) if doc else web.json_response({}, status=404)

    async def list_pods(self, request: web.Request) -> web.Response:
        res = resources.find("", "v1", "pods")
        assert res is not None
        if TABLE_ACCEPT in request.headers.get("Accept", ""):
            return web.json_response(tables.to_table(res, self.pods, resource_version="7"))
        return web.json_response({"kind": "PodList", "apiVersion": "v1",
                                  "metadata": {"resourceVersion": "7"}, "items": self.pods})

    async def create_pod(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.pods.append(body)
        return web.json_response(body, status=201)

    def _find(self, name: str) -> dict[str, Any] | None:
        return next((p for p in self.pods if p["metadata"]["name"] == name), None)

    async def get_pod(self, request: web.Request) -> web.Response:
        pod = self._find(request.match_info["name"])
        if pod is None:
            return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                      "reason": "NotFound", "code": 404,
                                      "message": f'pods "{request.match_info["name"]}" not found'},
                                     status=404)
        return web.json_response(pod)

    async def patch_pod(self, request: web.Request) -> web.Response:
        pod = self._find(request.match_info["name"])
        assert pod is not None
        self.patch_types.append(request.content_type)
        _merge(pod, await request.json())
        return web.json_response(pod)

    def start(self) -> None:
        async def serve() -> None:
            self.runner = web.AppRunner(self.app())
            await self.runner.setup()
            await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(serve(), self.loop).result(10)

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


@pytest.fixture
def stub() -> Iterator[Stub]:
    s = Stub()
    s.start()
    try:
        yield s
    finally:
        s.stop()


def _kubectl(minor: int, stub: Stub, tmp_path: Path, *args: str, stdin: str | None = None) -> str:
    binary = kubectl_binary(minor)
    if binary is None:
        pytest.skip(f"kubectl.1.{minor} is not installed")
    config = tmp_path / "kubeconfig"
    config.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{stub.port}"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u", "namespace": "default"}}],
        "users": [{"name": "u", "user": {}}],
    }))
    cmd = [binary, f"--kubeconfig={config}", f"--cache-dir={tmp_path / 'cache'}", *args]
    done = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"{' '.join(args)}: {done.stderr} {stub.requests}"
    return done.stdout


def _row(output: str, first: str) -> list[str]:
    return next(line.split() for line in output.splitlines() if line.split() and line.split()[0] == first)


@pytest.mark.parametrize("minor", [27, 31, 33])
def test_api_resources_and_short_names(minor: int, stub: Stub, tmp_path: Path) -> None:
    out = _kubectl(minor, stub, tmp_path, "api-resources")
    assert _row(out, "pods") == ["pods", "po", "v1", "true", "Pod"]
    assert _row(out, "deployments") == ["deployments", "deploy", "apps/v1", "true", "Deployment"]
    assert _row(out, "networkpolicies") == ["networkpolicies", "netpol", "networking.k8s.io/v1", "true",
                                            "NetworkPolicy"]
    assert _row(out, "namespaces") == ["namespaces", "ns", "v1", "false", "Namespace"]
    # Every kubectl of the range understands our aggregated document: no per-group-version fetches.
    paths = [path for _, path, _ in stub.requests]
    assert not any(p.startswith(("/api/v1", "/apis/apps/v1")) for p in paths), paths


@pytest.mark.parametrize("minor", [27, 33])
def test_get_pods_prints_table_columns(minor: int, stub: Stub, tmp_path: Path) -> None:
    out = _kubectl(minor, stub, tmp_path, "get", "po")
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert _row(out, "web") == ["web", "1/1", "Running", "0", "20d"]
    assert _row(out, "db") == ["db", "0/1", "ContainerCreating", "0", "2d"]
    wide = _kubectl(minor, stub, tmp_path, "get", "pods", "-o", "wide")
    assert wide.splitlines()[0].split() == [
        "NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED", "NODE", "READINESS", "GATES"]
    assert _row(wide, "web")[5:] == ["10.1.0.7", "node-1", "<none>", "<none>"]


@pytest.mark.parametrize("minor", [27, 31, 33])
def test_create_f_trusts_server_side_field_validation(minor: int, stub: Stub, tmp_path: Path) -> None:
    manifest = json.dumps({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "new"},
                           "spec": {"containers": [{"name": "c", "image": "busybox"}]}})
    out = _kubectl(minor, stub, tmp_path, "create", "-f", "-", stdin=manifest)
    assert out.strip() == "pod/new created"
    posts = [path for method, path, _ in stub.requests if method == "POST"]
    assert len(posts) == 1 and "fieldValidation=Strict" in posts[0], posts
    assert any(path.startswith("/openapi/v3/api/v1?hash=") for _, path, _ in stub.requests)


@pytest.mark.parametrize("minor", [27, 31, 33])
def test_apply_twice_uses_strategic_merge_patch(minor: int, stub: Stub, tmp_path: Path) -> None:
    manifest: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod",
                                "metadata": {"name": "app", "labels": {"tier": "be"}},
                                "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
    assert _kubectl(minor, stub, tmp_path, "apply", "-f", "-", stdin=json.dumps(manifest)).strip() == (
        "pod/app created")
    assert _kubectl(minor, stub, tmp_path, "apply", "-f", "-", stdin=json.dumps(manifest)).strip() == (
        "pod/app unchanged")
    manifest["metadata"]["labels"] = {"tier": "fe"}
    assert _kubectl(minor, stub, tmp_path, "apply", "-f", "-", stdin=json.dumps(manifest)).strip() == (
        "pod/app configured")
    assert stub.patch_types == ["application/strategic-merge-patch+json"]
    pod = stub._find("app")
    assert pod is not None and pod["metadata"]["labels"] == {"tier": "fe"}
