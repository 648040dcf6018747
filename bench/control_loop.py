#!/usr/bin/env python3
"""Control loop: time from `kubectl scale rc --replicas=N` to all N pods bound, and scheduler
throughput, on 10 fake Ready nodes.

Starts its own etcd, podnet-apiserver, podnet-scheduler and podnet-controller-manager
(--controllers replicationcontroller) processes in a temp dir (the real-process tests' helpers),
creates 10 Node objects and a ReplicationController at 0 replicas, then for each N: scales it with
the real kubectl, watches the pods until all N are bound, scales back to 0 and waits for the pods
to be gone.  No kubelet exists, so the bench plays its part at scale-down: pods the controller
deleted (Terminating, waiting for a kubelet) are deleted with gracePeriodSeconds=0.  Every process
is stopped by its PID at the end.

    .venv/bin/python bench/control_loop.py [--sizes 100,1000] [--repeat 3] [--write docs/BENCHMARKS.md]

Only the part of the report between `<!-- control-loop:start -->` and `<!-- control-loop:end -->`
is rewritten (appended when absent).  A benchmark, not a test: pytest does not collect it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import math
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from netns_tests.apiserver_fixtures import (  # noqa: E402
    ApiServerProcess,
    component_command,
    component_process,
    etcd_and_apiserver,
    kubectl_binary,
)
from podnet.api.client import NODES, PODS, REPLICATIONCONTROLLERS, ApiError, Client  # noqa: E402
from podnet.api.kubeconfig import load_kubeconfig  # noqa: E402

BEGIN, END = "<!-- control-loop:start -->", "<!-- control-loop:end -->"
NAMESPACE, RC_NAME, NODE_COUNT = "default", "x", 10
KUBECTL_MINOR = 33


def cpu_seconds(pid: int | None) -> float:
    """utime + stime of a process from /proc (0 when it is gone)."""
    if pid is None:
        return 0.0
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------------ the cluster


def node(name: str) -> dict[str, Any]:
    allocatable = {"cpu": "64", "memory": "256Gi", "pods": "110"}
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "status": {"allocatable": allocatable, "capacity": dict(allocatable),
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def replication_controller() -> dict[str, Any]:
    container = {"name": "app", "image": "registry.k8s.io/pause:3.9",
                 "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}
    return {"apiVersion": "v1", "kind": "ReplicationController", "metadata": {"name": RC_NAME},
            "spec": {"replicas": 0, "selector": {"app": RC_NAME},
                     "template": {"metadata": {"labels": {"app": RC_NAME}},
                                  "spec": {"containers": [container]}}}}


@dataclass
class PodTimes:
    created: float  # when the watch first showed it
    bound: float | None = None  # when the watch first showed a nodeName
    nodes: list[str] = field(default_factory=list)  # every distinct nodeName seen, in order
    terminating: bool = False
    gone: bool = False


class PodWatch:
    """Every pod of the namespace as one watch stream shows it, timed on arrival (by uid)."""

    def __init__(self, client: Client) -> None:
        rv = client.list(PODS, NAMESPACE, limit=1)["metadata"]["resourceVersion"]
        self.stream = client.watch(PODS, NAMESPACE, resource_version=rv, timeout_seconds=3600,
                                   allow_bookmarks=True)
        self.pods: dict[str, PodTimes] = {}
        self.names: dict[str, str] = {}  # uid -> name
        self.lock = threading.Lock()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="pod-watch", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for event in self.stream:
                if event.type != "BOOKMARK":
                    self._apply(event.type, event.object, time.perf_counter())
        except BaseException as e:  # reported by the waits
            self.error = e

    def _apply(self, kind: str, obj: dict[str, Any], now: float) -> None:
        meta = obj["metadata"]
        with self.lock:
            times = self.pods.setdefault(meta["uid"], PodTimes(now))
            self.names[meta["uid"]] = meta["name"]
            host = (obj.get("spec") or {}).get("nodeName")
            if host and (not times.nodes or times.nodes[-1] != host):
                times.nodes.append(host)
                if times.bound is None:
                    times.bound = now
            times.terminating = times.terminating or bool(meta.get("deletionTimestamp"))
            times.gone = times.gone or kind == "DELETED"

    def live(self) -> dict[str, PodTimes]:
        with self.lock:
            return {uid: t for uid, t in self.pods.items() if not t.gone}

    def wait(self, what: str, predicate: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.error is not None:
                raise RuntimeError(f"pod watch failed: {self.error!r}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
            time.sleep(0.02)

    def close(self) -> None:
        self.stream.close()
        self.thread.join(10)


# ----------------------------------------------------------------------------------------- a run


@dataclass
class Run:
    size: int
    repetition: int
    mode: str  # "scale": the whole loop; "backlog": the scheduler alone, N pods already pending
    to_all_bound: float  # kubectl scale started -> the last pod seen bound
    first_bound: float  # kubectl scale started -> the first pod seen bound
    bind_span: float  # first -> last binding
    create_span: float  # first -> last pod creation seen
    double_bound: int  # pods whose nodeName changed after the first binding
    cpu: dict[str, float]  # process -> CPU seconds during the scale-up
    waits: list[float] = field(default_factory=list)  # per pod: seen created -> seen bound

    @property
    def throughput(self) -> float:
        """Bound pods / time between the first and last binding."""
        return self.size / self.bind_span if self.bind_span > 0 else float("inf")

    @property
    def create_rate(self) -> float:
        return self.size / self.create_span if self.create_span > 0 else float("inf")


@dataclass
class Cluster:
    server: ApiServerProcess
    client: Client
    watch: PodWatch
    kubectl: str
    pids: dict[str, int | None]

    def cpu(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def scale(self, replicas: int) -> None:
        subprocess.run([self.kubectl, f"--kubeconfig={self.server.kubeconfig()}", "scale", "rc", RC_NAME,
                        f"--replicas={replicas}"], check=True, capture_output=True, timeout=60)


def scale_up(cluster: Cluster, size: int, repetition: int, timeout: float, *, backlog: bool = False) -> Run:
    """One scale-up, timed from `kubectl scale`.  With `backlog`, the scheduler is paused (SIGSTOP
    by its PID) until the controller has created all N pods, and the clock starts when it resumes:
    the scheduler's own rate on a queue of N pending pods, whatever the creation rate."""
    before = set(cluster.watch.live())
    scheduler = cluster.pids["scheduler"]
    if backlog and scheduler is not None:
        os.kill(scheduler, signal.SIGSTOP)
        try:
            cluster.scale(size)
            cluster.watch.wait(f"{size} pods created", lambda: len(cluster.watch.live()) == size, timeout)
        finally:
            os.kill(scheduler, signal.SIGCONT)
    cpu_before = cluster.cpu()
    start = time.perf_counter()
    if not backlog:
        cluster.scale(size)

    def all_bound() -> bool:
        live = cluster.watch.live()
        return len(live) == size and all(t.bound is not None for t in live.values())

    cluster.watch.wait(f"{size} pods bound", all_bound, timeout)
    cpu_after = cluster.cpu()
    pods = [t for uid, t in cluster.watch.live().items() if uid not in before]
    bound = sorted(t.bound for t in pods if t.bound is not None)
    created = sorted(t.created for t in pods)
    return Run(size, repetition, "backlog" if backlog else "scale", bound[-1] - start, bound[0] - start,
               bound[-1] - bound[0], created[-1] - created[0], sum(1 for t in pods if len(t.nodes) > 1),
               {k: cpu_after[k] - cpu_before[k] for k in cpu_after},
               [t.bound - t.created for t in pods if t.bound is not None])


def scale_down(cluster: Cluster, timeout: float) -> None:
    """Scale to 0, then be the missing kubelet: finish the graceful deletions of bound pods."""
    cluster.scale(0)
    cluster.watch.wait("every pod terminating",
                       lambda: all(t.terminating for t in cluster.watch.live().values()), timeout)
    with cluster.watch.lock:
        names = [cluster.watch.names[uid] for uid, t in cluster.watch.pods.items() if not t.gone]

    def force_delete(name: str) -> None:
        with contextlib.suppress(ApiError):  # already gone
            cluster.client.delete(PODS, name, NAMESPACE, grace_period_seconds=0)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(force_delete, names))
    cluster.watch.wait("no pods left", lambda: not cluster.watch.live(), timeout)


def has_flag(command: list[str], flag: str) -> bool:
    out = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=60, cwd=REPO)
    return flag in out.stdout


@contextlib.contextmanager
def cluster(work: Path) -> Iterator[Cluster]:
    kubectl = kubectl_binary(KUBECTL_MINOR)
    if kubectl is None:
        raise SystemExit(f"kubectl 1.{KUBECTL_MINOR} not found")
    scheduler_cmd = component_command("podnet-scheduler", "controlplane.scheduler")
    manager_cmd = [*component_command("podnet-controller-manager", "controlplane.controllers"),
                   "--controllers=replicationcontroller"]
    for cmd in (scheduler_cmd, manager_cmd):
        if has_flag(cmd, "--leader-elect"):
            cmd.append("--leader-elect=false")
    with etcd_and_apiserver(work) as server:
        client = Client.from_config(load_kubeconfig(server.kubeconfig()))
        for i in range(NODE_COUNT):
            client.create(NODES, node(f"node-{i:02d}"))
        client.create(REPLICATIONCONTROLLERS, replication_controller(), NAMESPACE)
        with component_process(server, work / "scheduler.log", scheduler_cmd) as sched, \
                component_process(server, work / "controller-manager.log", manager_cmd) as manager:
            watch = PodWatch(client)
            pids = {"apiserver": server.proc.pid if server.proc else None,
                    "etcd": server.etcd.proc.pid if server.etcd.proc else None,
                    "scheduler": sched.pid, "controller-manager": manager.pid}
            try:
                yield Cluster(server, client, watch, kubectl, pids)
            finally:
                watch.close()
                client.close()


def measure(work: Path, sizes: list[int], repeat: int, timeout: float, modes: list[str]) -> list[Run]:
    runs: list[Run] = []
    with cluster(work) as c:
        time.sleep(2.0)  # both components list, sync and start; the first scale must not wait on that
        for mode, size, rep in [(m, n, r) for m in modes for n in sizes for r in range(1, repeat + 1)]:
            run = scale_up(c, size, rep, timeout, backlog=mode == "backlog")
            runs.append(run)
            print(f"{mode} N={size} #{rep}: all bound after {run.to_all_bound:.2f} s, "
                  f"{run.throughput:.0f} pods/s bound, {run.create_rate:.0f} pods/s created, "
                  f"cpu {', '.join(f'{k} {v:.1f}s' for k, v in run.cpu.items())}", file=sys.stderr)
            scale_down(c, timeout)
    return runs


# ------------------------------------------------------------------------------------ the report


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample."""
    ordered = sorted(values)
    return ordered[max(1, min(len(ordered), math.ceil(q / 100 * len(ordered)))) - 1]


def _med(values: list[float], fmt: str) -> str:
    """median (min-max)"""
    return f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def machine_facts(argv: list[str]) -> list[str]:
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"* date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"* machine: {os.cpu_count()} CPUs ({cpu}), kernel {platform.release()}, load avg at end {load}",
        f"* python {platform.python_version()}, etcd 3.4 (/usr/bin/etcd), kubectl 1.{KUBECTL_MINOR}; "
        f"{NODE_COUNT} fake Ready nodes (64 cpu, 256Gi, 110 pods), pods request 10m / 16Mi",
        f"* command: `{shlex.join(['.venv/bin/python', 'bench/control_loop.py', *argv])}`",
    ]


def _waits(mode: str, waits: list[float]) -> str:
    if mode == "backlog" or not waits:
        return "-"  # the pods waited for the paused scheduler by design
    return f"{percentile(waits, 50) * 1e3:.0f} / {percentile(waits, 99) * 1e3:.0f}"


def summary_rows(runs: list[Run]) -> list[str]:
    rows = ["| mode | N | runs | -> all bound, s | first pod bound after, s | scheduler throughput, pods/s | "
            "RC creation rate, pods/s | created -> bound p50 / p99, ms | pods bound twice |",
            "|---|---|---|---|---|---|---|---|---|"]
    for mode, size in sorted({(r.mode, r.size) for r in runs}, key=lambda m: (m[0] != "scale", m[1])):
        rs = [r for r in runs if r.size == size and r.mode == mode]
        waits = [w for r in rs for w in r.waits]
        rows.append(f"| {mode} | {size:,} | {len(rs)} | {_med([r.to_all_bound for r in rs], '.2f')} | "
                    f"{_med([r.first_bound for r in rs], '.2f')} | "
                    f"{_med([r.throughput for r in rs], '.0f')} | "
                    f"{_med([r.create_rate for r in rs], '.0f')} | "
                    f"{_waits(mode, waits)} | "
                    f"{sum(r.double_bound for r in rs)} |")
    return rows


def run_rows(runs: list[Run]) -> list[str]:
    names = list(runs[0].cpu)
    rows = ["| mode | N | # | all bound, s | binding span, s | creation span, s | "
            + " | ".join(f"{n} CPU s" for n in names) + " |",
            "|---|---|---|---|---|---|" + "---|" * len(names)]
    for r in runs:
        rows.append(f"| {r.mode} | {r.size:,} | {r.repetition} | {r.to_all_bound:.2f} | {r.bind_span:.2f} | "
                    f"{r.create_span:.2f} | " + " | ".join(f"{r.cpu[n]:.1f}" for n in names) + " |")
    return rows


def render(runs: list[Run], argv: list[str]) -> str:
    return "\n".join([
        "## Control loop: `kubectl scale rc` to all pods bound",
        "",
        "Generated by `bench/control_loop.py`: etcd, podnet-apiserver, podnet-scheduler and "
        "podnet-controller-manager (`--controllers=replicationcontroller`, leader election off) as "
        "separate processes on this 2-core machine, with kubectl and the bench's own pod watch.  "
        "**scale**: from starting `kubectl scale rc x --replicas=N` (RC at 0) until the watch has "
        "shown every one of the N pods with a nodeName -- the whole loop (kubectl, API server, RC "
        "controller, scheduler).  **backlog**: the scheduler is paused (SIGSTOP) while the RC "
        "controller creates the N pods, and the clock starts when it resumes -- the scheduler "
        "alone draining N pending pods through the real API server.  Scheduler throughput is N "
        "divided by the time between the first and the last binding the watch saw; RC creation "
        "rate is N over the span of the pods' creations; created -> bound is per pod, pooled over "
        "the runs.  Between runs the RC is scaled to 0 and the pods are gone.  Cells: median "
        "(min-max) of the repetitions.",
        "",
        *machine_facts(argv),
        "",
        *summary_rows(runs),
        "",
        "Per run (CPU: seconds each process used from the start of the clock to the last binding):",
        "",
        *run_rows(runs),
    ])


def write_section(path: Path, section: str) -> None:
    """Replace the text between the control-loop markers, or append the block."""
    block = f"{BEGIN}\n{section.rstrip()}\n{END}"
    current = path.read_text() if path.exists() else ""
    if BEGIN in current and END in current:
        head, rest = current.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = current.rstrip("\n") + ("\n\n" if current else "") + block + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--sizes", default="100,1000", help="replica counts to scale to")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per size (the median is reported)")
    parser.add_argument("--modes", default="scale,backlog",
                        help="scale: the whole loop; backlog: the scheduler alone on N pending pods")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for one scale")
    parser.add_argument("--write", metavar="PATH", help="write the report section into this markdown file")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="podnet-bench-control-loop-") as work:
        runs = measure(Path(work), sizes, args.repeat, args.timeout, args.modes.split(","))
    section = render(runs, argv)
    print(section)
    if args.write:
        write_section(Path(args.write), section)


if __name__ == "__main__":
    main()
