"""`kubectl logs` (1.33) through a real podnet-apiserver's pods/log to a kubelet log server.

The log server (controlplane.kubelet.logserver on podnet.httpserve) runs in this process in the root
netns on 127.0.0.1 and serves hand-written CRI log files; the node's InternalIP is 127.0.0.1 and its
status.daemonEndpoints.kubeletEndpoint.Port the server's port, so the API server proxies there.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.kubelet.logserver import ContainerLogs, container_log_path, routes
from netns_tests.apiserver_fixtures import ApiServerProcess, kubectl_binary
from podnet.api.client import NODES, PODS, Client
from podnet.api.kubeconfig import load_kubeconfig
from podnet.httpserve import HttpServer
from podnet.testing.etcd import free_port
from podnet.testing.wait import wait_until

NS = "default"
ATTEMPT0 = ["2026-11-27T10:00:00.000000001Z stdout F first run\n",
            "2026-11-27T10:00:01.000000002Z stderr F first run failed\n"]
ATTEMPT1 = ["2026-11-27T10:01:00.100000000Z stdout F one\n",
            "2026-11-27T10:01:01.200000000Z stderr F two\n",
            "2026-11-27T10:01:02.300000000Z stdout P thr\n",
            "2026-11-27T10:01:02.300000001Z stdout F ee\n",
            "2026-11-27T10:01:03.400000000Z stdout F four\n"]


class Env:
    def __init__(self, server: ApiServerProcess, client: Client, root: Path, kubeconfig: Path,
                 kubectl: str, cache: Path, kubelet: HttpServer) -> None:
        self.server, self.client, self.root, self.kubelet = server, client, root, kubelet
        self.kubeconfig, self.kubectl, self.cache = kubeconfig, kubectl, cache
        self.uids: dict[str, str] = {}

    def argv(self, *args: str) -> list[str]:
        return [self.kubectl, f"--kubeconfig={self.kubeconfig}", f"--cache-dir={self.cache}",
                f"--namespace={NS}", *args]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*args), text=True, capture_output=True, timeout=30, check=False)

    def logs(self, *args: str) -> str:
        proc = self.run("logs", *args)
        assert proc.returncode == 0, f"{proc.stderr}\nserver log:\n{self.server.log_tail()}"
        return proc.stdout

    def log_file(self, pod: str, container: str, attempt: int) -> Path:
        return container_log_path(self.root, NS, pod, self.uids[pod], container, attempt)

    def write(self, pod: str, container: str, attempt: int, lines: list[str]) -> None:
        path = self.log_file(pod, container, attempt)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(lines))

    def pod(self, name: str, containers: list[str], node: str | None) -> None:
        spec: dict[str, object] = {"containers": [{"name": c, "image": "busybox"} for c in containers]}
        if node:
            spec["nodeName"] = node
        created = self.client.create(PODS, {"apiVersion": "v1", "kind": "Pod",
                                            "metadata": {"name": name, "namespace": NS}, "spec": spec})
        self.uids[name] = created["metadata"]["uid"]

    def node(self, name: str, port: int) -> None:
        self.client.create(NODES, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
        self.client.patch(NODES, name, {"status": {
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                          {"type": "Hostname", "address": name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": port}}}}, subresource="status")


@pytest.fixture(scope="module")
def env(shared_apiserver: ApiServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    kubectl = kubectl_binary(33)
    if kubectl is None:
        pytest.skip("kubectl 1.33 not installed")
    base = tmp_path_factory.mktemp("pod-logs")
    root = base / "pods"
    root.mkdir()
    server = HttpServer("127.0.0.1", 0, routes(ContainerLogs(root, poll=0.05)), name="kubelet-logs")
    client = Client.from_config(load_kubeconfig(shared_apiserver.kubeconfig()))
    try:
        server.start()
        e = Env(shared_apiserver, client, root, shared_apiserver.kubeconfig(base / "kubeconfig"),
                kubectl, base / "cache", server)
        e.node("logs-node", server.port)
        e.node("dead-node", free_port())  # nothing listens there
        e.pod("web", ["web"], "logs-node")
        e.write("web", "web", 0, ATTEMPT0)
        e.write("web", "web", 1, ATTEMPT1)
        e.pod("two", ["a", "b"], "logs-node")
        e.write("two", "a", 0, ["2026-11-27T10:00:00Z stdout F from a\n"])
        e.write("two", "b", 0, ["2026-11-27T10:00:00Z stdout F from b\n"])
        e.pod("pending", ["p"], None)
        e.pod("orphan", ["o"], "dead-node")
        e.pod("fresh", ["f"], "logs-node")
        e.write("fresh", "f", 0, [])
        e.pod("tailme", ["t"], "logs-node")
        e.write("tailme", "t", 0, ATTEMPT1)
        yield e
    finally:
        server.stop()
        client.close()


def test_logs_show_the_current_attempt_with_partial_lines_joined(env: Env) -> None:
    assert env.logs("web") == "one\ntwo\nthree\nfour\n"


def test_tail_timestamps_and_limit_bytes(env: Env) -> None:
    assert env.logs("web", "--tail=2") == "three\nfour\n"
    assert env.logs("web", "--tail=1", "--timestamps") == "2026-11-27T10:01:03.400000000Z four\n"
    assert env.logs("web", "--limit-bytes=6") == "one\ntw"
    assert env.logs("web", "--tail=0") == ""


def test_previous_is_the_attempt_before(env: Env) -> None:
    assert env.logs("web", "--previous") == "first run\nfirst run failed\n"
    proc = env.run("logs", "fresh", "--previous")
    assert proc.returncode != 0
    assert 'previous terminated container "f" in pod "fresh" not found' in proc.stderr


def test_container_choice_as_upstream(env: Env) -> None:
    assert env.logs("two", "-c", "b") == "from b\n"
    status, body = env.server.request("GET", f"/api/v1/namespaces/{NS}/pods/two/log")
    assert status == 400
    assert body["message"] == "a container name must be specified for pod two, choose one of: [a b]"
    proc = env.run("logs", "web", "-c", "nope")
    assert proc.returncode != 0
    assert "container nope is not valid for pod web" in proc.stderr
    status, body = env.server.request("GET", f"/api/v1/namespaces/{NS}/pods/web/log?tailLines=-1")
    assert status == 422
    assert "tailLines: Invalid value: -1: must be greater than or equal to 0" in body["message"]


def test_unbound_pod_has_an_empty_log_and_a_dead_kubelet_is_an_error(env: Env) -> None:
    assert env.logs("pending") == ""
    proc = env.run("logs", "orphan")
    assert proc.returncode != 0
    assert "connect" in proc.stderr.lower() or "refused" in proc.stderr.lower(), proc.stderr


def test_follow_streams_appended_lines_and_ends_when_the_container_restarts(env: Env) -> None:
    proc = subprocess.Popen(env.argv("logs", "-f", "tailme", "--tail=1"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),  # type: ignore[union-attr]
                              daemon=True)
    reader.start()
    try:
        wait_until(lambda: lines == ["four\n"], 10, "the tail line")
        with open(env.log_file("tailme", "t", 0), "a") as f:
            f.write("2026-11-27T10:01:04Z stdout F five\n")
        wait_until(lambda: lines == ["four\n", "five\n"], 10, "the appended line")
        env.write("tailme", "t", 1, [])  # a restart: attempt 1 begins, the followed one is over
        wait_until(lambda: proc.poll() is not None, 10, "kubectl logs -f to end")
        assert proc.returncode == 0
        wait_until(lambda: env.kubelet.active_streams == 0, 10, "the kubelet's stream to end")
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        reader.join(5)


def test_a_follower_that_leaves_ends_the_kubelet_stream(env: Env) -> None:
    proc = subprocess.Popen(env.argv("logs", "-f", "web", "--tail=0"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: env.kubelet.active_streams == 1, 10, "the follow to reach the kubelet")
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # like Ctrl-C: the connection to the API server drops
        proc.wait(10)
    # the API server notices within a second of idling, closes its kubelet connection, and the
    # kubelet's next heartbeat sees the peer gone
    wait_until(lambda: env.kubelet.active_streams == 0, 10, "the kubelet's stream to end")
