"""Probes: thresholds, initial delay and period, startup gating, liveness holds and restarts, readiness
(a fake Prober and a fake clock drive ProbeManager; RuntimeProber with a fake exec and real sockets)."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from controlplane.kubelet.probes import (
    ProbeManager,
    ProbeSpec,
    ProbeTarget,
    RuntimeProber,
    Worker,
    apply_outcome,
    resolve_port,
)
from podnet.probe import ProbeResult
from podnet.testing.wait import wait_until

T0 = 1_800_000_000.0
STARTED = "2027-01-15T08:00:00Z"  # == T0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class FakeProber:
    """Answers per probe kind from `results` (default success); records (kind, target) per call."""

    def __init__(self) -> None:
        self.results: dict[str, ProbeResult] = {}
        self.calls: list[tuple[str, ProbeTarget]] = []

    def probe(self, spec: ProbeSpec, target: ProbeTarget) -> ProbeResult:
        self.calls.append((spec.kind, target))
        return self.results.get(spec.kind, ProbeResult(True))

    def kinds(self) -> list[str]:
        return [k for k, _ in self.calls]


def pod(probes: dict[str, dict[str, Any]], *, cid: str = "c1", running: bool = True) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}
    container.update(probes)
    state = {"running": {"startedAt": STARTED}} if running else {"terminated": {"exitCode": 1}}
    return {"metadata": {"name": "web", "namespace": "ns", "uid": "u1"},
            "spec": {"containers": [container]},
            "status": {"podIP": "10.244.1.5", "containerStatuses": [
                {"name": "app", "containerID": f"podnet://{cid}", "state": state}]}}


def http_probe(**kw: Any) -> dict[str, Any]:
    return {"httpGet": {"port": "http", "path": "/healthz"}, **kw}


@pytest.fixture
def env() -> Iterator[tuple[ProbeManager, FakeProber, Clock, list[str]]]:
    prober, clock, changes = FakeProber(), Clock(), []
    mgr = ProbeManager(prober, clock=clock, on_change=changes.append)
    yield mgr, prober, clock, changes
    mgr.stop()


def test_spec_defaults_as_upstream() -> None:
    spec = ProbeSpec.from_api("liveness", {"exec": {"command": ["true"]}, "successThreshold": 3})
    assert (spec.initial_delay, spec.period, spec.timeout, spec.success_threshold,
            spec.failure_threshold) == (0, 10, 1, 1, 3)  # liveness needs successThreshold 1
    assert ProbeSpec.from_api("readiness", http_probe(successThreshold=2)).success_threshold == 2


@pytest.mark.parametrize(("kind", "outcomes", "results"), [
    ("readiness", [True], [True]),
    ("readiness", [False, False, False], [False, False, False]),
    ("liveness", [False, False, False], [True, True, False]),  # failureThreshold 3
    ("liveness", [False, True, False, False], [True, True, True, True]),  # runs must be consecutive
])
def test_thresholds(kind: str, outcomes: list[bool], results: list[bool]) -> None:
    w = Worker(ProbeSpec.from_api(kind, http_probe()))
    w.initial()
    seen = []
    for ok in outcomes:
        apply_outcome(w, ok, "")
        seen.append(w.result)
    assert seen == results


def test_readiness_starts_false_and_follows_the_probe(env: Any) -> None:
    mgr, prober, clock, changes = env
    mgr.update(pod({"readinessProbe": http_probe(periodSeconds=5, successThreshold=2)}))
    assert not mgr.ready("u1", "app")
    assert mgr.run_once() == 1
    assert prober.calls[0][1] == ProbeTarget("10.244.1.5", "c1", {"http": 8080})
    assert not mgr.ready("u1", "app")  # one success of two
    assert mgr.run_once() == 0  # not due before the period
    clock.now += 5
    mgr.run_once()
    assert mgr.ready("u1", "app") and changes == ["ns/web"]
    prober.results["readiness"] = ProbeResult(False, "HTTP probe failed with statuscode: 503")
    for _ in range(3):
        clock.now += 5
        mgr.run_once()
    assert not mgr.ready("u1", "app") and changes == ["ns/web", "ns/web"]
    assert mgr.liveness_failure("u1", "app") is None  # readiness never restarts a container


def test_initial_delay(env: Any) -> None:
    mgr, _prober, clock, _ = env
    mgr.update(pod({"livenessProbe": http_probe(initialDelaySeconds=15)}))
    clock.now += 14
    assert mgr.run_once() == 0
    clock.now += 1
    assert mgr.run_once() == 1


def test_startup_gates_liveness_and_readiness_then_stops(env: Any) -> None:
    mgr, prober, clock, _ = env
    prober.results["startup"] = ProbeResult(False, "not yet")
    mgr.update(pod({"startupProbe": http_probe(periodSeconds=1, failureThreshold=30),
                    "livenessProbe": http_probe(periodSeconds=1),
                    "readinessProbe": http_probe(periodSeconds=1)}))
    for _ in range(3):
        mgr.run_once()
        clock.now += 1
    assert prober.kinds() == ["startup"] * 3
    assert not mgr.started("u1", "app") and not mgr.ready("u1", "app")
    del prober.results["startup"]
    mgr.run_once()
    assert mgr.started("u1", "app")
    clock.now += 1
    mgr.run_once()
    assert sorted(prober.kinds()[4:]) == ["liveness", "readiness"]  # startup never again
    assert mgr.ready("u1", "app")


def test_liveness_failure_holds_until_the_container_restarts(env: Any) -> None:
    mgr, prober, clock, changes = env
    prober.results["liveness"] = ProbeResult(False, "dial tcp 10.244.1.5:8080: connect: connection refused")
    mgr.update(pod({"livenessProbe": http_probe(periodSeconds=2, failureThreshold=2)}))
    mgr.run_once()
    assert mgr.liveness_failure("u1", "app") is None
    clock.now += 2
    mgr.run_once()
    assert mgr.liveness_failure("u1", "app") == (
        "Container app failed liveness probe, will be restarted: "
        "dial tcp 10.244.1.5:8080: connect: connection refused")
    assert changes == ["ns/web"]
    clock.now += 2
    assert mgr.run_once() == 0  # on hold: the kubelet is restarting it
    mgr.update(pod({"livenessProbe": http_probe(periodSeconds=2, failureThreshold=2)}, running=False))
    assert mgr.liveness_failure("u1", "app") is not None
    del prober.results["liveness"]
    mgr.update(pod({"livenessProbe": http_probe(periodSeconds=2, failureThreshold=2)}, cid="c2"))
    assert mgr.liveness_failure("u1", "app") is None  # a new container starts over
    assert mgr.run_once() == 1


def test_a_container_that_is_not_running_is_not_ready_nor_probed(env: Any) -> None:
    mgr, _prober, clock, _ = env
    mgr.update(pod({"readinessProbe": http_probe()}))
    mgr.run_once()
    assert mgr.ready("u1", "app")
    mgr.update(pod({"readinessProbe": http_probe()}, running=False))
    clock.now += 60
    assert mgr.run_once() == 0
    assert not mgr.ready("u1", "app")


def test_without_probes_ready_and_workers_go_with_the_pod(env: Any) -> None:
    mgr, _prober, _clock, _ = env
    assert mgr.ready("u1", "app") and mgr.started("u1", "app")
    mgr.update(pod({"readinessProbe": http_probe()}))
    assert not mgr.ready("u1", "app")
    mgr.update(pod({}))  # the probe was removed from the spec
    assert mgr.ready("u1", "app")
    mgr.update(pod({"readinessProbe": http_probe()}))
    mgr.forget("u1")
    assert mgr.ready("u1", "app") and mgr.run_once() == 0


def test_a_raising_prober_is_a_failure(env: Any) -> None:
    mgr, prober, _clock, _ = env

    def boom(spec: ProbeSpec, target: ProbeTarget) -> ProbeResult:
        raise RuntimeError("runtime gone")
    prober.probe = boom  # type: ignore[method-assign]
    mgr.update(pod({"readinessProbe": http_probe()}))
    mgr.run_once()
    assert not mgr.ready("u1", "app")


def test_the_loop_thread_probes_by_itself() -> None:
    prober, changes = FakeProber(), []
    mgr = ProbeManager(prober, on_change=changes.append).start()
    try:
        p = pod({"readinessProbe": http_probe(periodSeconds=1)})
        p["status"]["containerStatuses"][0]["state"]["running"]["startedAt"] = "2020-01-01T00:00:00Z"
        mgr.update(p)
        wait_until(lambda: changes == ["ns/web"], 5, "the readiness change")
    finally:
        mgr.stop()


# ------------------------------------------------------------------ RuntimeProber


def test_resolve_port() -> None:
    assert resolve_port(80, {}) == 80
    assert resolve_port("8080", {}) == 8080
    assert resolve_port("http", {"http": 8080}) == 8080
    assert resolve_port("nope", {"http": 8080}) is None
    assert resolve_port(0, {}) is None


class ExecTimeout(Exception):
    """Named as podnet.runtime's exec timeout."""


def test_exec_probe_through_the_runtime() -> None:
    calls: list[tuple[str, list[str], float]] = []

    def exec_in(cid: str, argv: list[str], timeout: float) -> tuple[int, str]:
        calls.append((cid, argv, timeout))
        if argv[0] == "sleep":
            raise ExecTimeout("exec timed out")
        return (0, "ok") if argv[0] == "true" else (1, "bad")

    prober = RuntimeProber(exec_in)
    target = ProbeTarget("10.0.0.1", "c1", {})
    spec = ProbeSpec.from_api("liveness", {"exec": {"command": ["true"]}, "timeoutSeconds": 2})
    assert prober.probe(spec, target) == ProbeResult(True, "ok")
    assert calls == [("c1", ["true"], 2.0)]
    bad = ProbeSpec.from_api("liveness", {"exec": {"command": ["false"]}})
    assert prober.probe(bad, target) == ProbeResult(False, "command ['false'] exited 1: bad")
    slow = ProbeSpec.from_api("liveness", {"exec": {"command": ["sleep", "9"]}})
    assert prober.probe(slow, target) == ProbeResult(False, "command ['sleep', '9'] timed out")
    assert not prober.probe(spec, ProbeTarget("10.0.0.1", "", {})).ok
    assert not prober.probe(ProbeSpec.from_api("liveness", {"grpc": {"port": 1}}), target).ok


@pytest.fixture
def web() -> Iterator[tuple[int, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
            code = 200 if self.path == "/healthz" else 302 if self.path == "/moved" else 500
            self.send_response(code)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1]), seen
    finally:
        server.shutdown()
        server.server_close()


def test_http_and_tcp_probes_against_a_real_server(web: tuple[int, list[dict[str, str]]]) -> None:
    port, seen = web
    prober = RuntimeProber(lambda cid, argv, timeout: (0, ""))
    target = ProbeTarget("127.0.0.1", "c1", {"http": port})
    get = ProbeSpec.from_api("readiness", {"httpGet": {
        "port": "http", "path": "/healthz", "httpHeaders": [{"name": "Host", "value": "example.test"},
                                                            {"name": "X-Probe", "value": "1"}]}})
    assert prober.probe(get, target) == ProbeResult(True, "ok")
    assert seen[0]["host"] == "example.test" and seen[0]["x-probe"] == "1"
    assert seen[0]["user-agent"].startswith("kube-probe/")
    moved = ProbeSpec.from_api("readiness", {"httpGet": {"port": port, "path": "moved"}})
    assert prober.probe(moved, target).ok  # 3xx counts as success
    broken = ProbeSpec.from_api("readiness", {"httpGet": {"port": port, "path": "/broken"}})
    assert prober.probe(broken, target) == ProbeResult(False, "HTTP probe failed with statuscode: 500")
    assert prober.probe(ProbeSpec.from_api("liveness", {"tcpSocket": {"port": "http"}}), target).ok
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    refused = prober.probe(ProbeSpec.from_api("liveness", {"tcpSocket": {"port": free}}), target)
    assert refused == ProbeResult(False, f"dial tcp 127.0.0.1:{free}: connect: connection refused")
    assert not prober.probe(ProbeSpec.from_api("liveness", {"httpGet": {"port": free}}), target).ok
    assert not prober.probe(ProbeSpec.from_api("liveness", {"tcpSocket": {"port": "nope"}}), target).ok


class FakeRecorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str, str]] = []

    def event(self, obj: Any, type_: str, reason: str, message: str, *, kind: str | None = None,
              api_version: str | None = None) -> bool:
        self.events.append((obj["metadata"]["name"], type_, reason, message))
        return True


def test_every_failed_probe_is_an_unhealthy_event() -> None:
    prober, clock, recorder = FakeProber(), Clock(), FakeRecorder()
    mgr = ProbeManager(prober, clock=clock, recorder=recorder)
    try:
        prober.results["readiness"] = ProbeResult(False, "HTTP probe failed with statuscode: 503")
        mgr.update(pod({"readinessProbe": http_probe(periodSeconds=1)}))
        mgr.run_once()
        clock.now += 1
        mgr.run_once()
        assert recorder.events == [("web", "Warning", "Unhealthy",
                                    "Readiness probe failed: HTTP probe failed with statuscode: 503")] * 2
    finally:
        mgr.stop()


def test_runtime_states_override_the_posted_status(env: Any) -> None:
    mgr, _prober, _clock, _ = env
    probes = {"readinessProbe": http_probe()}
    mgr.update(pod(probes))
    mgr.run_once()
    assert mgr.ready("u1", "app")
    # the container crashed and was restarted before any status was posted: the runtime knows
    mgr.update(pod(probes), {"app": ("c2", T0 + 30)})
    assert not mgr.ready("u1", "app")
    mgr.update(pod(probes), {"app": ("c2", None)})
    assert not mgr.ready("u1", "app")
