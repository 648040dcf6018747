#!/usr/bin/env python3
"""CNI ADD/DEL latency: podnet's plugins (through the per-node daemon, and exec-only) side by side
with the reference plugins (/usr/lib/cni), in one run on this machine.

Everything happens inside simulated hosts built with podnet.testing.harness.Topology (never the
root network namespace): one fresh host netns per (scenario, implementation), one netns per pod,
host-local state in a temp dataDir, conflist cniVersion 1.0.0.  Plugins are exec'd through
podnet.testing.cnirun exactly as a runtime does, so each time is one conflist operation as a
runtime sees it (every plugin exec of the chain, plus ~1 ms of the runtime's own fork/exec).

    sudo .venv/bin/python bench/cni_latency.py [--n 50] [--parallel 20] [--write docs/BENCHMARKS.md]

A benchmark, not a test: it is not collected by pytest.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from podnet import netns  # noqa: E402
from podnet.testing import cnirun  # noqa: E402
from podnet.testing.harness import Host, Topology  # noqa: E402

REFERENCE_DIR = "/usr/lib/cni"
SUBNET = "10.88.0.0/16"
IMPLS = ("reference", "podnet+daemon", "podnet")
SCENARIOS = ("bridge", "bridge-ipmasq", "bridge-portmap")
SCENARIO_TITLES = {
    "bridge": "bridge+host-local",
    "bridge-ipmasq": "bridge+host-local, ipMasq",
    "bridge-portmap": "bridge+host-local+portmap",
}


# ------------------------------------------------------------------ configs
def conflist(scenario: str, data_dir: str) -> dict[str, Any]:
    # stateDir: podnet's attachment records (the reference ignores unknown keys).
    bridge: dict[str, Any] = {
        "type": "bridge", "bridge": "cni0", "isGateway": True, "stateDir": f"{data_dir}/state",
        "ipam": {"type": "host-local", "dataDir": data_dir, "ranges": [[{"subnet": SUBNET}]],
                 "routes": [{"dst": "0.0.0.0/0"}]},
    }
    if scenario == "bridge-ipmasq":
        bridge["ipMasq"] = True
    plugins = [bridge]
    if scenario == "bridge-portmap":
        plugins.append({"type": "portmap", "capabilities": {"portMappings": True}, "snat": True})
    return {"cniVersion": "1.0.0", "name": f"bench-{scenario}", "plugins": plugins}


def attachment(scenario: str, index: int, pod_netns: str) -> cnirun.Attachment:
    cid = hashlib.sha256(f"{scenario}-{index}-{pod_netns}".encode()).hexdigest()
    args = (f"IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=pod-{index};"
            f"K8S_POD_INFRA_CONTAINER_ID={cid}")
    caps: dict[str, Any] = {}
    if scenario == "bridge-portmap":
        caps["portMappings"] = [{"hostPort": 30000 + index, "containerPort": 80, "protocol": "tcp"}]
    return cnirun.Attachment(container_id=cid, netns=pod_netns, args=args, capability_args=caps)


@dataclass
class EnvRuntime(cnirun.Runtime):
    """cnirun.Runtime that also passes extra environment (PODNET_CNI_SOCKET) to every exec."""

    extra_env: dict[str, str] = field(default_factory=dict)

    def _kw(self, att: cnirun.Attachment) -> dict[str, Any]:
        return {**super()._kw(att), "extra_env": self.extra_env}


# ------------------------------------------------------------------ results
def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


@dataclass
class Stats:
    median: float
    p95: float
    wall: float | None = None
    samples: list[float] = field(default_factory=list, repr=False)
    walls: list[float] = field(default_factory=list, repr=False)

    @classmethod
    def of(cls, values: list[float], wall: float | None = None) -> Stats:
        walls = [] if wall is None else [wall]
        return cls(statistics.median(values), p95(values), wall, list(values), walls)

    @classmethod
    def merge(cls, parts: list[Stats]) -> Stats | None:
        """Pool the samples of several rounds; the wall is the median round's."""
        if not parts:
            return None
        samples = [v for p in parts for v in p.samples]
        walls = [w for p in parts for w in p.walls]
        return cls(statistics.median(samples), p95(samples),
                   statistics.median(walls) if walls else None, samples, walls)


@dataclass
class RunResult:
    scenario: str
    impl: str
    seq_add: Stats | None = None
    seq_del: Stats | None = None
    par_add: Stats | None = None
    par_del: Stats | None = None
    error: str = ""

    @classmethod
    def merge(cls, runs: list[RunResult]) -> RunResult:
        ok = [r for r in runs if not r.error]
        merged = cls(runs[0].scenario, runs[0].impl,
                     error="; ".join(dict.fromkeys(r.error for r in runs if r.error)))
        for attr in STAT_ATTRS:
            setattr(merged, attr, Stats.merge([getattr(r, attr) for r in ok if getattr(r, attr)]))
        return merged


STAT_ATTRS = ("seq_add", "seq_del", "par_add", "par_del")


# ------------------------------------------------------------------ running
def timed(fn: Any, *args: Any) -> float:
    started = time.perf_counter()
    fn(*args)
    return (time.perf_counter() - started) * 1000


def run_sequential(rt: cnirun.Runtime, host: Host, atts: list[cnirun.Attachment]) -> tuple[Stats, Stats]:
    with netns.enter(host.path):  # this thread (and the plugins it forks) live in the host netns
        adds = [timed(rt.add, att) for att in atts]
        dels = [timed(rt.delete, att) for att in atts]
    return Stats.of(adds), Stats.of(dels)


def run_parallel_op(op: Any, host: Host, atts: list[cnirun.Attachment]) -> Stats:
    """`op` for every attachment at once, one thread each, released together by a barrier."""
    barrier = threading.Barrier(len(atts))
    spans: list[tuple[float, float]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(att: cnirun.Attachment) -> None:
        try:
            with netns.enter(host.path):
                barrier.wait()
                started = time.perf_counter()
                op(att)
                ended = time.perf_counter()
            with lock:
                spans.append((started, ended))
        except BaseException as exc:
            with lock:
                errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=worker, args=(att,)) for att in atts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    wall = (max(e for _, e in spans) - min(s for s, _ in spans)) * 1000
    return Stats.of([(e - s) * 1000 for s, e in spans], wall)


@contextlib.contextmanager
def daemon_in(topo: Topology, host: Host, sock: str, log_path: str) -> Iterator[None]:
    """The podnet CNI daemon running inside the host netns (stopped with SIGTERM afterwards)."""
    with open(log_path, "ab") as log:
        proc = topo.spawn(host.name, [sys.executable, "-m", "cni.daemon", "--socket", sock, "--quiet"],
                          stdout=log, stderr=log, cwd=str(REPO))
    deadline = time.monotonic() + 30
    while not os.path.exists(sock):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"CNI daemon did not start (see {log_path})")
        time.sleep(0.02)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


@dataclass
class Setup:
    our_bin: str
    workdir: str
    n: int
    parallel: int


def impl_runtime(impl: str, scenario: str, setup: Setup, data_dir: str, sock: str) -> EnvRuntime:
    if impl == "reference":
        return EnvRuntime(conflist(scenario, data_dir), [REFERENCE_DIR])
    env = {"PODNET_CNI_SOCKET": sock if impl == "podnet+daemon" else ""}
    return EnvRuntime(conflist(scenario, data_dir), [setup.our_bin], extra_env=env)


def measure(rt: EnvRuntime, topo: Topology, host: Host, scenario: str, setup: Setup,
            result: RunResult) -> None:
    warm = attachment(scenario, 9999, topo.add_pod_netns("warm"))
    with netns.enter(host.path):  # first ADD creates the bridge; steady state is what we compare
        rt.add(warm)
        rt.delete(warm)
    seq = [attachment(scenario, i, topo.add_pod_netns(f"s{i}")) for i in range(setup.n)]
    result.seq_add, result.seq_del = run_sequential(rt, host, seq)
    par = [attachment(scenario, 1000 + i, topo.add_pod_netns(f"p{i}")) for i in range(setup.parallel)]
    result.par_add = run_parallel_op(rt.add, host, par)
    result.par_del = run_parallel_op(rt.delete, host, par)


def run_one(scenario: str, impl: str, setup: Setup) -> RunResult:
    result = RunResult(scenario, impl)
    topo = Topology()
    work = tempfile.mkdtemp(prefix=f"{scenario}-{impl}-", dir=setup.workdir)
    try:
        host = topo.add_host()
        sock = os.path.join(work, "cni.sock")
        rt = impl_runtime(impl, scenario, setup, os.path.join(work, "ipam"), sock)
        if impl == "podnet+daemon":
            with daemon_in(topo, host, sock, os.path.join(setup.workdir, "daemon.log")):
                measure(rt, topo, host, scenario, setup, result)
        else:
            measure(rt, topo, host, scenario, setup, result)
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        topo.cleanup()
    return result


def floor_commands(setup: Setup, sock: str) -> dict[str, tuple[list[str], dict[str, str], bytes]]:
    """Cheap invocations that show each path's fixed cost: nothing to do but start and answer."""
    ipam = {"type": "host-local", "dataDir": f"{setup.workdir}/floor-ipam", "ranges": [[{"subnet": SUBNET}]]}
    conf = json.dumps({"cniVersion": "1.0.0", "name": "floor", "type": "bridge",
                       "stateDir": f"{setup.workdir}/floor-state", "ipam": ipam}).encode()
    version = {"CNI_COMMAND": "VERSION"}
    # DEL of an attachment that never existed: every plugin must answer it, and it is all
    # fixed cost (bridge: netlink socket + lookups; host-local: lock + scan of an empty dir).
    delete = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "floor", "CNI_IFNAME": "eth0", "CNI_NETNS": "",
              "CNI_PATH": setup.our_bin, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    py = os.path.realpath(sys.executable)
    ours = os.path.join(setup.our_bin, "bridge")
    return {
        "/bin/true": (["/bin/true"], {}, b""),
        "reference bridge VERSION": ([f"{REFERENCE_DIR}/bridge"], version, b"{}"),
        "python -IS -c pass": ([py, "-IS", "-c", "pass"], {}, b""),
        "podnet bridge VERSION": ([ours], version, b"{}"),
        "podnet bridge DEL (no-op) via daemon": ([ours], {**delete, "PODNET_CNI_SOCKET": sock}, conf),
        "podnet host-local DEL (no-op) in-process": (
            [os.path.join(setup.our_bin, "host-local")], {**delete, "PODNET_CNI_SOCKET": ""}, conf),
        "podnet bridge DEL (no-op) in-process": ([ours], {**delete, "PODNET_CNI_SOCKET": ""}, conf),
    }


def measure_floor(setup: Setup, n: int) -> dict[str, Stats]:
    """Per-exec fixed cost of each path, interleaved, inside a simulated host (never the root netns)."""
    topo = Topology()
    try:
        host = topo.add_host()
        sock = os.path.join(setup.workdir, "floor.sock")
        commands = floor_commands(setup, sock)
        samples: dict[str, list[float]] = {name: [] for name in commands}
        with daemon_in(topo, host, sock, os.path.join(setup.workdir, "daemon.log")), \
                netns.enter(host.path):
            for _ in range(n):
                for name, (argv, env, stdin) in commands.items():
                    started = time.perf_counter()
                    proc = subprocess.run(argv, input=stdin, env=env, capture_output=True, check=False)
                    samples[name].append((time.perf_counter() - started) * 1000)
                    if proc.returncode != 0:
                        raise RuntimeError(f"{name}: exit {proc.returncode}: {proc.stdout[:300]!r}")
        return {name: Stats.of(values) for name, values in samples.items()}
    finally:
        topo.cleanup()


def install_ours(directory: str) -> None:
    subprocess.run([sys.executable, "-m", "cni.install", "--dir", directory], check=True, cwd=REPO,
                   capture_output=True)


# ------------------------------------------------------------------ report
def fmt(stats: Stats | None, wall: bool = False) -> str:
    if stats is None:
        return "n/a"
    text = f"{stats.median:.1f} / {stats.p95:.1f}"
    if wall and stats.wall is not None:
        text += f" / {stats.wall:.0f}"
    return text


def ratio(ours: Stats | None, ref: Stats | None) -> str:
    if ours is None or ref is None or ref.median <= 0:
        return "n/a"
    return f"{ours.median / ref.median:.2f}"


def _rows(results: list[RunResult], attr: str, wall: bool) -> list[str]:
    by_key = {(r.scenario, r.impl): r for r in results}
    rows = []
    for scenario in dict.fromkeys(r.scenario for r in results):
        ref = by_key.get((scenario, "reference"))
        ref_stats = getattr(ref, attr) if ref else None
        cells = [SCENARIO_TITLES.get(scenario, scenario), attr.split("_")[1].upper(), fmt(ref_stats, wall)]
        for impl in ("podnet+daemon", "podnet"):
            r = by_key.get((scenario, impl))
            stats = getattr(r, attr) if r else None
            cells += [fmt(stats, wall), ratio(stats, ref_stats)]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def render_tables(results: list[RunResult], n: int, parallel: int, rounds: int = 1) -> str:
    head = ("| scenario | op | reference | podnet + daemon | ratio | podnet exec-only | ratio |\n"
            "|---|---|---|---|---|---|---|")
    per = f", {rounds} rounds pooled" if rounds > 1 else ""
    lines = [f"### Sequential, N={n}{per} (median / p95, ms per conflist op)", "", head]
    for attr in ("seq_add", "seq_del"):
        lines += _rows(results, attr, wall=False)
    lines += ["", f"### {parallel} in parallel{per} (median / p95 / wall for all {parallel}, ms)", "",
              head]
    for attr in ("par_add", "par_del"):
        lines += _rows(results, attr, wall=True)
    errors = [f"* {r.scenario} / {r.impl}: {r.error}" for r in results if r.error]
    if errors:
        lines += ["", "Failed runs:", "", *errors]
    lines += ["", "ratio = podnet median / reference median (< 1 means podnet is faster)."]
    return "\n".join(lines) + "\n"


def machine_facts(argv: list[str]) -> str:
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    ref = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "containernetworking-plugins"],
                         capture_output=True, text=True, check=False).stdout.strip() or "?"
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return "\n".join([
        f"* date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"* machine: {os.cpu_count()} CPUs ({cpu}), kernel {platform.release()}, load avg at end {load}",
        f"* python: {platform.python_version()} ({os.path.realpath(sys.executable)})",
        f"* reference plugins: containernetworking-plugins {ref} ({REFERENCE_DIR})",
        f"* command: `{shlex.join(['python', 'bench/cni_latency.py', *argv])}`",
    ])


def render_floor(floor: dict[str, Stats], n: int) -> str:
    lines = [f"### Fixed cost per exec, N={n} interleaved (ms, as the runtime sees it)", "",
             "| invocation | median | p95 |", "|---|---|---|"]
    lines += [f"| {name} | {st.median:.1f} | {st.p95:.1f} |" for name, st in floor.items()]
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def write_report(path: str, generated: str) -> None:
    """Replace the generated part of `path`, keeping any hand-written text around the markers."""
    block = f"{BEGIN}\n{generated.rstrip()}\n{END}\n"
    try:
        current = Path(path).read_text()
    except FileNotFoundError:
        current = ""
    if BEGIN in current and END in current:
        head, rest = current.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        text = head + block + ("\n" + tail if tail else "")
    else:
        text = "# CNI latency: podnet vs the reference plugins\n\n" + block
    Path(path).write_text(text)


def render_document(results: list[RunResult], n: int, parallel: int, argv: list[str],
                    rounds: int = 1) -> str:
    return "\n".join([
        "Generated by `bench/cni_latency.py` (`make bench`): all implementations measured side by "
        "side in the same run on the machine below.  Each (scenario, implementation) gets a fresh "
        "simulated host netns, one netns per pod, host-local state in a temp dataDir, conflist "
        "cniVersion 1.0.0, plugins exec'd by a libcni-like runtime (podnet.testing.cnirun).  One "
        "warm-up ADD+DEL precedes each measurement.  Times are per conflist operation as a runtime "
        "sees it (every exec of the chain plus ~1 ms of the runtime's own fork/exec).",
        "",
        "* **reference**: containernetworking-plugins from /usr/lib/cni (Go).",
        "* **podnet + daemon**: our executables forwarding to `python -m cni.daemon` (default "
        "workers) running in the host netns.",
        "* **podnet exec-only**: our executables with no daemon (`PODNET_CNI_SOCKET=`), the "
        "fallback path.",
        "",
        machine_facts(argv),
        "",
        render_tables(results, n, parallel, rounds),
    ])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=50, help="sequential pods per run")
    parser.add_argument("--parallel", type=int, default=20, help="pods added/deleted at once")
    parser.add_argument("--rounds", type=int, default=1, help="repeat everything, interleaved; "
                        "samples are pooled")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--impls", default=",".join(IMPLS))
    parser.add_argument("--floor", type=int, default=100, metavar="N",
                        help="fixed-cost execs per invocation kind (0: skip)")
    parser.add_argument("--write", metavar="PATH", help="write the markdown report here (only the "
                        "part between the bench markers is replaced)")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    runs: dict[tuple[str, str], list[RunResult]] = {}
    with tempfile.TemporaryDirectory(prefix="podnet-bench-") as work:
        setup = Setup(os.path.join(work, "bin"), work, args.n, args.parallel)
        install_ours(setup.our_bin)
        floor = measure_floor(setup, args.floor) if args.floor else {}
        # Rounds interleave the implementations, so background load hits all of them alike.
        for _ in range(args.rounds):
            for scenario in args.scenarios.split(","):
                for impl in args.impls.split(","):
                    result = run_one(scenario, impl, setup)
                    print(json.dumps({"scenario": scenario, "impl": impl, "error": result.error,
                                      **{k: [round(getattr(result, k).median, 1),
                                             round(getattr(result, k).p95, 1)]
                                         for k in STAT_ATTRS if getattr(result, k) is not None}}),
                          flush=True)
                    runs.setdefault((scenario, impl), []).append(result)
        log = os.path.join(work, "daemon.log")
        if os.path.exists(log) and any(r.error for rs in runs.values() for r in rs):
            print(Path(log).read_text()[-3000:], file=sys.stderr)
    results = [RunResult.merge(rs) for rs in runs.values()]
    document = render_document(results, args.n, args.parallel, argv, args.rounds)
    if floor:
        document += "\n" + render_floor(floor, args.floor)
    print(document)
    if args.write:
        write_report(args.write, document)


if __name__ == "__main__":
    main()
