"""Liveness, readiness and startup probes (upstream pkg/kubelet/prober semantics).

One worker per (pod uid, container, probe kind), fed by `ProbeManager.update(pod)` from the pod
worker's sync (the pod as the kubelet last posted it: podIP, containerStatuses with containerID and
state.running.startedAt):
- a probe runs every periodSeconds once initialDelaySeconds have passed since the container started,
  each attempt bounded by timeoutSeconds;
- a result only flips after successThreshold consecutive successes / failureThreshold consecutive
  failures; readiness starts as failure, liveness as success, startup as "not started";
- while a startup probe has not succeeded, liveness and readiness do not run; once it succeeds it
  stops (until the container restarts);
- a liveness or startup failure means "kill and restart the container": the worker holds (no more
  probing) until a new containerID appears, when every worker of the container starts over;
- a container that is not running is not ready.
Results reach the pod worker through `ready()` (Ready/ContainersReady, so endpoints follow),
`started()` and `liveness_failure()`, and `on_change(pod_key)` asks for a sync when one flips.

The probing itself goes through a `Prober` seam; RuntimeProber is the real one (exec through the
container runtime, httpGet/tcpSocket through podnet.probe against the pod IP from the host netns).
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from podnet import probe as netprobe
from podnet.probe import ProbeResult

log = logging.getLogger("podnet.kubelet.probes")

KINDS = ("startup", "liveness", "readiness")
FIELDS = {"startup": "startupProbe", "liveness": "livenessProbe", "readiness": "readinessProbe"}
WorkerKey = tuple[str, str, str]  # (pod uid, container name, kind)


@dataclass(frozen=True)
class ProbeSpec:
    """A container's probe with upstream defaults (initialDelay 0, period 10, timeout 1, success 1,
    failure 3; liveness and startup need successThreshold 1)."""

    kind: str
    handler: Mapping[str, Any]  # {"exec": ...} | {"httpGet": ...} | {"tcpSocket": ...} | {"grpc": ...}
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3

    @classmethod
    def from_api(cls, kind: str, probe: Mapping[str, Any]) -> ProbeSpec:
        handler = {k: probe[k] for k in ("exec", "httpGet", "tcpSocket", "grpc") if k in probe}
        success = int(probe.get("successThreshold") or 1)
        return cls(kind, handler, float(probe.get("initialDelaySeconds") or 0),
                   float(probe.get("periodSeconds") or 10), float(probe.get("timeoutSeconds") or 1),
                   1 if kind != "readiness" else max(1, success),
                   max(1, int(probe.get("failureThreshold") or 3)))


@dataclass(frozen=True)
class ProbeTarget:
    """Where a probe goes: the pod IP (http/tcp), the container (exec), its named ports."""

    pod_ip: str
    container_id: str
    ports: Mapping[str, int]


class Prober(Protocol):
    def probe(self, spec: ProbeSpec, target: ProbeTarget) -> ProbeResult: ...


class Recorder(Protocol):
    """podnet.api.events.EventRecorder's caller side."""

    def event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str, *,
              kind: str | None = None, api_version: str | None = None) -> bool: ...


@dataclass
class Worker:
    spec: ProbeSpec
    container_id: str = ""
    started_at: float | None = None  # None: the container is not running
    result: bool | None = None  # None: no result yet (startup: not started)
    last: bool | None = None  # the previous raw outcome, for the consecutive-run count
    run: int = 0
    on_hold: bool = False
    next_due: float = 0.0
    message: str = ""

    def initial(self) -> None:
        """The result before any probe ran (upstream initialValue)."""
        self.result = {"readiness": False, "liveness": True}.get(self.spec.kind)
        self.last, self.run, self.on_hold, self.message = None, 0, False, ""


def apply_outcome(w: Worker, ok: bool, message: str) -> bool:
    """Fold one probe outcome into the worker (thresholds, hold after a liveness/startup failure);
    True when the visible result changed."""
    w.run = w.run + 1 if w.last == ok else 1
    w.last = ok
    threshold = w.spec.success_threshold if ok else w.spec.failure_threshold
    if w.run < threshold:
        return False  # not enough consecutive outcomes to flip the result
    changed = w.result != ok
    w.result, w.message = ok, message
    if not ok and w.spec.kind in ("liveness", "startup"):
        w.on_hold, w.run = True, 0  # the container will be restarted; wait for its new ID
    return changed


def should_probe(w: Worker, started: bool, now: float) -> bool:
    """Whether a worker's probe is due now (upstream worker.doProbe's early returns)."""
    if w.on_hold or w.started_at is None or now < w.next_due:
        return False
    if w.spec.kind == "startup" and w.result:
        return False  # started: a startup probe never runs again for this container
    if w.spec.kind != "startup" and not started:
        return False  # liveness/readiness wait for the startup probe
    return now - w.started_at >= w.spec.initial_delay


def parse_time(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def container_ports(container: Mapping[str, Any]) -> dict[str, int]:
    return {str(p["name"]): int(p["containerPort"]) for p in container.get("ports") or []
            if p.get("name") and p.get("containerPort")}


def running_state(pod: Mapping[str, Any], name: str) -> tuple[str, float | None]:
    """(container ID without the runtime prefix, running since) from the pod's status."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == name:
            cid = str(status.get("containerID") or "").split("://")[-1]
            running = (status.get("state") or {}).get("running")
            return cid, parse_time(running.get("startedAt")) if running is not None else None
    return "", None


class ProbeManager:
    """The probe workers of every pod on the node, run by one thread (`start`) or `run_once`."""

    def __init__(self, prober: Prober, *, clock: Callable[[], float] = time.time,
                 on_change: Callable[[str], None] | None = None, recorder: Recorder | None = None,
                 parallel: int = 8) -> None:
        self.prober, self.clock, self.recorder = prober, clock, recorder
        self.on_change = on_change or (lambda key: None)
        self._pods: dict[str, Mapping[str, Any]] = {}  # uid -> the pod, for events
        self._workers: dict[WorkerKey, Worker] = {}
        self._targets: dict[WorkerKey, ProbeTarget] = {}
        self._pod_keys: dict[str, str] = {}  # uid -> namespace/name
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="probe")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ the pod worker's side
    def update(self, pod: Mapping[str, Any],
               states: Mapping[str, tuple[str, float | None]] | None = None) -> None:
        """Add/refresh/remove the workers of `pod` from its spec and its last posted status, or -
        fresher - `states`: container name -> (container ID, running since or None) as the runtime
        reports it (so a container restarted between two status posts starts over at once)."""
        meta = pod.get("metadata") or {}
        uid = str(meta.get("uid") or "")
        pod_ip = str((pod.get("status") or {}).get("podIP") or "")
        wanted: set[WorkerKey] = set()
        with self._lock:
            self._pod_keys[uid] = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
            self._pods[uid] = pod
            for container in (pod.get("spec") or {}).get("containers") or []:
                name = str(container.get("name", ""))
                cid, started_at = states[name] if states and name in states else running_state(pod, name)
                for kind in KINDS:
                    probe = container.get(FIELDS[kind])
                    if not probe:
                        continue
                    key = (uid, name, kind)
                    wanted.add(key)
                    self._refresh(key, ProbeSpec.from_api(kind, probe), cid, started_at)
                    self._targets[key] = ProbeTarget(pod_ip, cid, container_ports(container))
            for key in [k for k in self._workers if k[0] == uid and k not in wanted]:
                del self._workers[key]
                self._targets.pop(key, None)

    def _refresh(self, key: WorkerKey, spec: ProbeSpec, cid: str, started_at: float | None) -> None:
        w = self._workers.get(key)
        if w is None or w.spec != spec or (cid and cid != w.container_id):
            w = self._workers[key] = Worker(spec, cid)  # new container instance: start over
            w.initial()
        if started_at is None:  # not running: not ready; a stopped container is not probed
            if spec.kind == "readiness":
                w.result = False
        elif w.started_at is None:
            w.next_due = started_at + spec.initial_delay
        w.started_at = started_at

    def ready(self, pod_uid: str, container: str) -> bool:
        """Readiness: the probe's result; without a readiness probe, whether it has started."""
        with self._lock:
            w = self._workers.get((pod_uid, container, "readiness"))
            if w is not None:
                return bool(w.result) and self._started(pod_uid, container)
            return self._started(pod_uid, container)

    def started(self, pod_uid: str, container: str) -> bool:
        with self._lock:
            return self._started(pod_uid, container)

    def _started(self, pod_uid: str, container: str) -> bool:
        w = self._workers.get((pod_uid, container, "startup"))
        return w is None or bool(w.result)

    def liveness_failure(self, pod_uid: str, container: str) -> str | None:
        """Why the container must be killed and restarted (a failed liveness or startup probe)."""
        with self._lock:
            for kind in ("liveness", "startup"):
                w = self._workers.get((pod_uid, container, kind))
                if w is not None and w.result is False and w.on_hold:
                    return f"Container {container} failed {kind} probe, will be restarted: {w.message}"
        return None

    def forget(self, pod_uid: str) -> None:
        with self._lock:
            for key in [k for k in self._workers if k[0] == pod_uid]:
                del self._workers[key]
                self._targets.pop(key, None)
            self._pod_keys.pop(pod_uid, None)
            self._pods.pop(pod_uid, None)

    # ------------------------------------------------------------------ probing
    def due(self, now: float) -> list[tuple[WorkerKey, Worker, ProbeTarget]]:
        """The probes to run now; each is re-armed for its next period."""
        picked = []
        with self._lock:
            for key, w in self._workers.items():
                if should_probe(w, self._started(key[0], key[1]), now):
                    w.next_due = now + w.spec.period
                    picked.append((key, w, self._targets[key]))
        return picked

    def run_once(self, now: float | None = None) -> int:
        """Run every due probe (in parallel, each bounded by its timeout); returns how many ran."""
        picked = self.due(self.clock() if now is None else now)
        futures = [(key, w, self._pool.submit(self._probe, w.spec, target)) for key, w, target in picked]
        changed: set[str] = set()
        for key, w, future in futures:
            result = future.result()
            with self._lock:
                if self._workers.get(key) is not w:
                    continue  # the container restarted or the pod went while probing
                pod = self._pods.get(key[0])
                if not result.ok and self.recorder is not None and pod is not None:
                    # upstream: a Warning "Unhealthy" event for every failed probe, thresholds aside
                    self.recorder.event(pod, "Warning", "Unhealthy",
                                        f"{key[2].capitalize()} probe failed: {result.message}",
                                        kind="Pod", api_version="v1")
                if apply_outcome(w, result.ok, result.message):
                    log.info("%s probe of %s/%s: %s %s", key[2], self._pod_keys.get(key[0], key[0]), key[1],
                             "success" if result.ok else "failure", result.message[:200])
                    changed.add(self._pod_keys.get(key[0], ""))
        for pod_key in sorted(changed - {""}):
            self.on_change(pod_key)
        return len(picked)

    def _probe(self, spec: ProbeSpec, target: ProbeTarget) -> ProbeResult:
        try:
            return self.prober.probe(spec, target)
        except Exception as e:  # a broken prober must not kill the probe loop
            return ProbeResult(False, f"probe error: {e}")

    def next_wakeup(self, now: float) -> float:
        """Seconds until the earliest due probe (bounded, so new workers are noticed)."""
        with self._lock:
            dues = [w.next_due for w in self._workers.values() if w.started_at is not None and not w.on_hold]
        return max(0.01, min([0.5, *(d - now for d in dues)]))

    def start(self) -> ProbeManager:
        self._thread = threading.Thread(target=self._loop, name="probes", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.run_once()
            self._stop.wait(self.next_wakeup(self.clock()))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._pool.shutdown(wait=False, cancel_futures=True)


class RuntimeProber:
    """The real probes: exec through the container runtime, httpGet/tcpSocket from the host netns to
    the pod IP (routable through the node's bridge)."""

    def __init__(self, exec_in: Callable[[str, list[str], float], tuple[int, str]]) -> None:
        self.exec_in = exec_in  # ContainerRuntime.exec

    def probe(self, spec: ProbeSpec, target: ProbeTarget) -> ProbeResult:
        h = spec.handler
        if "exec" in h:
            return self._exec(list((h["exec"] or {}).get("command") or []), target, spec.timeout)
        if "httpGet" in h:
            get = h["httpGet"]
            port = resolve_port(get.get("port"), target.ports)
            if port is None:
                return ProbeResult(False, f"unknown port {get.get('port')!r}")
            headers = [(str(x.get("name")), str(x.get("value", ""))) for x in get.get("httpHeaders") or []]
            return netprobe.http_get(str(get.get("host") or target.pod_ip), port, str(get.get("path") or "/"),
                                     scheme=str(get.get("scheme") or "HTTP"), headers=headers,
                                     timeout=spec.timeout)
        if "tcpSocket" in h:
            tcp = h["tcpSocket"]
            port = resolve_port(tcp.get("port"), target.ports)
            if port is None:
                return ProbeResult(False, f"unknown port {tcp.get('port')!r}")
            return netprobe.tcp_connect(str(tcp.get("host") or target.pod_ip), port, timeout=spec.timeout)
        return ProbeResult(False, f"unsupported probe handler {sorted(h)}")

    def _exec(self, argv: list[str], target: ProbeTarget, timeout: float) -> ProbeResult:
        if not target.container_id:
            return ProbeResult(False, "the container has no ID yet")
        try:
            code, output = self.exec_in(target.container_id, argv, timeout)
        except Exception as e:  # the runtime's failure (not running, timed out) is the probe's failure
            # podnet.runtime raises ExecTimeout (a RuntimeFailure) when the timeout passes
            timed_out = isinstance(e, TimeoutError) or type(e).__name__ == "ExecTimeout"
            return ProbeResult(False, f"command {argv!r} timed out" if timed_out else str(e))
        return ProbeResult(code == 0, output if code == 0 else f"command {argv!r} exited {code}: {output}")


def resolve_port(port: Any, named: Mapping[str, int]) -> int | None:
    """A probe's port: a number (or numeric string) or the name of one of the container's ports."""
    if isinstance(port, int) and not isinstance(port, bool):
        return port if 0 < port < 65536 else None
    text = str(port or "")
    if text.isdigit():
        return resolve_port(int(text), named)
    return named.get(text)
