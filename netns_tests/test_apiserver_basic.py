"""A real podnet-apiserver process on a real etcd: TLS + token, discovery, CRUD/list/watch with the
official `kubernetes` Python client, `kubectl.1.31 get ns`, and etcd outages answered with 503/504."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from netns_tests.apiserver_fixtures import ApiServerProcess, kubectl_binary
from podnet.testing.etcd import EtcdProcess, free_port

kubernetes = pytest.importorskip("kubernetes")
from kubernetes import client as k8s  # noqa: E402
from kubernetes import watch as k8s_watch  # noqa: E402
from kubernetes.client.rest import ApiException  # noqa: E402


def api_client(server: ApiServerProcess, token: str | None = None) -> k8s.ApiClient:
    cfg = k8s.Configuration()
    cfg.host = server.url
    cfg.ssl_ca_cert = server.ca_file
    cfg.api_key = {"authorization": f"Bearer {token or server.token}"}
    return k8s.ApiClient(cfg)


def test_tls_tokens_health_and_discovery(apiserver: ApiServerProcess) -> None:
    assert apiserver.request("GET", "/healthz", auth=False) == (200, "ok")
    status, text = apiserver.request("GET", "/readyz?verbose", auth=False)
    assert status == 200 and "[+]etcd ok" in text
    assert apiserver.request("GET", "/version", auth=False)[1]["minor"] == "31"
    status, body = apiserver.request("GET", "/api/v1/namespaces", auth=False)
    assert status == 401 and body["reason"] == "Unauthorized"
    status, body = apiserver.request("GET", "/api/v1/namespaces/default/pods", token=apiserver.nobody_token)
    assert status == 403 and body["reason"] == "Forbidden"
    status, body = apiserver.request("GET", "/api/v1")
    assert status == 200 and any(r["name"] == "pods" for r in body["resources"])
    status, body = apiserver.request("GET", "/api/v1/namespaces")
    names = {n["metadata"]["name"] for n in body["items"]}
    assert {"default", "kube-system", "kube-public", "kube-node-lease"} <= names
    status, svc = apiserver.request("GET", "/api/v1/namespaces/default/services/kubernetes")
    assert status == 200 and svc["spec"]["clusterIP"] == "10.96.0.1"
    status, ep = apiserver.request("GET", "/api/v1/namespaces/default/endpoints/kubernetes")
    assert ep["subsets"][0]["addresses"] == [{"ip": "127.0.0.1"}]
    assert ep["subsets"][0]["ports"][0]["port"] == apiserver.port


def test_python_client_crud_list_watch(apiserver: ApiServerProcess) -> None:
    v1 = k8s.CoreV1Api(api_client(apiserver))
    assert k8s.VersionApi(api_client(apiserver)).get_code().minor == "31"
    body = k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="c1", labels={"app": "web"}), data={"a": "1"})
    created = v1.create_namespaced_config_map("default", body)
    assert created.metadata.resource_version and created.metadata.uid
    with pytest.raises(ApiException) as e:
        v1.create_namespaced_config_map("default", body)
    assert e.value.status == 409
    got = v1.read_namespaced_config_map("c1", "default")
    assert got.data == {"a": "1"}
    patched = v1.patch_namespaced_config_map("c1", "default", {"data": {"b": "2"}})
    assert patched.data == {"a": "1", "b": "2"}
    stale = got
    stale.data = {"x": "y"}
    with pytest.raises(ApiException) as e:
        v1.replace_namespaced_config_map("c1", "default", stale)
    assert e.value.status == 409
    for i in range(4):
        v1.create_namespaced_config_map("default", k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name=f"p{i}")))
    page = v1.list_namespaced_config_map("default", limit=2)
    assert len(page.items) == 2 and page.metadata._continue
    rest = v1.list_namespaced_config_map("default", limit=10, _continue=page.metadata._continue)
    assert len(page.items) + len(rest.items) == 5
    labelled = v1.list_namespaced_config_map("default", label_selector="app=web").items
    assert [c.metadata.name for c in labelled] == ["c1"]

    rv = v1.list_namespaced_config_map("default").metadata.resource_version
    seen: list[tuple[str, str]] = []

    def watch() -> None:
        w = k8s_watch.Watch()
        for ev in w.stream(v1.list_namespaced_config_map, "default", resource_version=rv,
                           timeout_seconds=5, allow_watch_bookmarks=True):
            seen.append((ev["type"], ev["object"].metadata.name))
            if ev["type"] == "DELETED":
                w.stop()

    t = threading.Thread(target=watch)
    t.start()
    time.sleep(0.5)
    v1.create_namespaced_config_map("default", k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="w1")))
    v1.delete_namespaced_config_map("w1", "default")
    t.join(10)
    assert ("ADDED", "w1") in seen and ("DELETED", "w1") in seen
    v1.delete_namespaced_config_map("c1", "default")
    with pytest.raises(ApiException) as e:
        v1.read_namespaced_config_map("c1", "default")
    assert e.value.status == 404


def test_kubectl_131_get_ns(apiserver: ApiServerProcess, tmp_path: Path) -> None:
    kubectl = kubectl_binary(31)
    if kubectl is None:
        pytest.skip("kubectl.1.31 not installed")
    kubeconfig = apiserver.kubeconfig()
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(tmp_path)}
    out = subprocess.run([kubectl, "--cache-dir", str(tmp_path / "cache"), "get", "ns"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "AGE"]
    assert any(line.split()[:2] == ["default", "Active"] for line in lines[1:])


def test_etcd_down_fails_fast_and_recovers(apiserver: ApiServerProcess) -> None:
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "before"}}
    assert apiserver.request("POST", "/api/v1/namespaces/default/configmaps", cm)[0] == 201
    apiserver.etcd.kill()
    start = time.monotonic()
    status, body = apiserver.request("POST", "/api/v1/namespaces/default/configmaps",
                                     {**cm, "metadata": {"name": "during"}}, timeout=30)
    assert status in (503, 504) and body["kind"] == "Status", body
    assert time.monotonic() - start < 10
    status, _ = apiserver.request("GET", "/readyz", auth=False, timeout=30)
    assert status == 500
    apiserver.etcd.restart()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status, body = apiserver.request("POST", "/api/v1/namespaces/default/configmaps",
                                         {**cm, "metadata": {"name": "after"}}, timeout=30)
        if status == 201:
            break
        time.sleep(0.3)
    assert status == 201, body
    status, body = apiserver.request("GET", "/api/v1/namespaces/default/configmaps")
    assert {"before", "after"} <= {c["metadata"]["name"] for c in body["items"]}


def test_insecure_port_is_loopback_http_without_auth_and_sigterm_exits_cleanly(
        etcd: EtcdProcess, tmp_path: Path) -> None:
    import json
    import urllib.request

    insecure = free_port()
    server = ApiServerProcess(etcd, tmp_path / "api", extra_args=[f"--insecure-port={insecure}"])
    try:
        server.start()
        with urllib.request.urlopen(f"http://127.0.0.1:{insecure}/api/v1/namespaces", timeout=10) as resp:
            names = {n["metadata"]["name"] for n in json.load(resp)["items"]}
        assert "default" in names
        # the secure port still wants a token
        assert server.request("GET", "/api/v1/namespaces", auth=False)[0] == 401
        assert server.proc is not None
        server.stop()
        assert server.proc.returncode == 0, server.log_tail()
        # restart on the same cert dir keeps the CA (clients keep trusting it) and the data
        ca_before = Path(server.ca_file).read_bytes()
        server.start()
        assert Path(server.ca_file).read_bytes() == ca_before
        assert server.request("GET", "/api/v1/namespaces/default")[0] == 200
        assert server.request("GET", "/api/v1/namespaces/default/services/kubernetes")[0] == 200
    finally:
        server.cleanup()


def test_help_documents_every_flag() -> None:
    from netns_tests.apiserver_fixtures import _server_command

    out = subprocess.run([*_server_command(), "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0
    for flag in ("--etcd-servers", "--etcd-prefix", "--secure-port", "--bind-address", "--tls-cert-file",
                 "--tls-private-key-file", "--cert-dir", "--token-auth-file", "--service-cluster-ip-range",
                 "--service-node-port-range", "--insecure-port"):
        assert flag in out.stdout


def test_bad_token_file_fails_fast(etcd: EtcdProcess, tmp_path: Path) -> None:
    server = ApiServerProcess(etcd, tmp_path / "api")
    server.token_file.write_text('only-a-token\n')
    try:
        with pytest.raises(RuntimeError, match="exited 1"):
            server.start(timeout=20)
    finally:
        server.cleanup()


def test_http_watch_survives_an_etcd_restart(apiserver: ApiServerProcess) -> None:
    import http.client
    import json

    path = "/api/v1/namespaces/default/configmaps"
    rv = apiserver.request("GET", path)[1]["metadata"]["resourceVersion"]
    conn = http.client.HTTPSConnection("127.0.0.1", apiserver.port, context=apiserver.ssl_context(),
                                       timeout=40)
    conn.request("GET", f"{path}?watch=true&resourceVersion={rv}&timeoutSeconds=60",
                 headers={"Authorization": f"Bearer {apiserver.token}"})
    resp = conn.getresponse()
    assert resp.status == 200
    try:
        apiserver.request("POST", path, {"metadata": {"name": "before"}})
        assert json.loads(resp.readline())["object"]["metadata"]["name"] == "before"
        apiserver.etcd.kill()
        time.sleep(1)
        apiserver.etcd.restart()
        deadline = time.monotonic() + 20
        while apiserver.request("POST", path, {"metadata": {"name": "after"}}, timeout=30)[0] != 201:
            assert time.monotonic() < deadline
            time.sleep(0.3)
        event = json.loads(resp.readline())
        assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "after")
    finally:
        conn.close()


def test_starts_before_etcd_and_becomes_ready_when_it_comes(tmp_path: Path) -> None:
    etcd_proc = EtcdProcess(str(tmp_path / "etcd"))  # ports chosen, not started yet
    server = ApiServerProcess(etcd_proc, tmp_path / "api")
    try:
        server.start(wait=False)
        deadline = time.monotonic() + 20
        while True:  # listening (TLS set up) while etcd is still missing
            try:
                status, text = server.request("GET", "/livez?verbose", auth=False, timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, server.log_tail()
                time.sleep(0.1)
        assert status == 500 and "[+]ping ok" in text and "[-]etcd failed" in text
        status, text = server.request("GET", "/readyz?verbose", auth=False, timeout=10)
        assert status == 500 and "[-]poststarthook/podnet-registry failed" in text
        status, body = server.request("GET", "/api/v1/namespaces")
        assert status == 503 and body["reason"] == "ServiceUnavailable"
        etcd_proc.start()
        server.wait_ready(30)
        assert server.request("GET", "/api/v1/namespaces/default")[0] == 200
    finally:
        server.cleanup()
        etcd_proc.cleanup()


def test_sigterm_with_open_watches_exits_promptly(apiserver: ApiServerProcess) -> None:
    import http.client

    conns = []
    for _ in range(3):
        conn = http.client.HTTPSConnection("127.0.0.1", apiserver.port, context=apiserver.ssl_context(),
                                           timeout=20)
        conn.request("GET", "/api/v1/pods?watch=true", headers={"Authorization": f"Bearer {apiserver.token}"})
        assert conn.getresponse().status == 200
        conns.append(conn)
    start = time.monotonic()
    apiserver.stop(timeout=15)
    assert apiserver.proc is not None and apiserver.proc.returncode == 0, apiserver.log_tail()
    assert time.monotonic() - start < 8
    for conn in conns:
        conn.close()
