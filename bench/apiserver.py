#!/usr/bin/env python3
"""podnet-apiserver latency and throughput: create/get/patch/list/watch at 1k and 10k pods, and the
watch fan-out delay to 100 watchers, against the Kubernetes API call SLOs.

Starts its own etcd and podnet-apiserver (HTTPS, token auth, as in the real-process tests) in a temp
dir, drives them from one asyncio client (aiohttp, keep-alive connections) on the same machine, and
kills both by PID at the end.

    .venv/bin/python bench/apiserver.py [--sizes 1000,10000] [--concurrency 16] [--watchers 100]
                                        [--write docs/BENCHMARKS.md]

Only the part of the report between `<!-- apiserver:start -->` and `<!-- apiserver:end -->` is
rewritten (appended when absent).  A benchmark, not a test: pytest does not collect it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import math
import os
import platform
import random
import shlex
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from netns_tests.apiserver_fixtures import ApiServerProcess, etcd_and_apiserver  # noqa: E402

NAMESPACE = "bench"
BEGIN, END = "<!-- apiserver:start -->", "<!-- apiserver:end -->"
TABLE_ACCEPT = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"


# ------------------------------------------------------------------------------------ statistics


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


@dataclass
class Result:
    """One measured operation: per-call latencies (seconds) and the wall time of the whole run."""

    name: str
    size: int
    latencies: list[float] = field(default_factory=list)
    wall: float = 0.0
    concurrency: int = 1
    errors: int = 0
    note: str = ""
    server_cpu: float = 0.0  # CPU seconds the apiserver / etcd processes used during the run
    etcd_cpu: float = 0.0

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.wall if self.wall else 0.0

    def cpu_per_call(self, seconds: float) -> str:
        return f"{seconds / len(self.latencies) * 1e3:.2f}" if self.latencies and seconds else "-"

    def row(self) -> str:
        lat = self.latencies or [float("nan")]
        return (f"| {self.name} | {self.size:,} | {len(self.latencies):,} | {self.concurrency} | "
                f"{statistics.median(lat) * 1e3:.1f} | {percentile(lat, 99) * 1e3:.1f} | "
                f"{max(lat) * 1e3:.1f} | {f'{self.throughput:,.0f}' if self.wall else '-'} | "
                f"{self.cpu_per_call(self.server_cpu)} | {self.cpu_per_call(self.etcd_cpu)} | "
                f"{self.errors} | {self.note} |")


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


# ----------------------------------------------------------------------------------------- client


class Client:
    """Bearer-token HTTPS calls over a pool of keep-alive connections; raises on non-2xx."""

    def __init__(self, server: ApiServerProcess, connections: int) -> None:
        ctx = ssl.create_default_context(cafile=server.ca_file)
        self.pids = (server.proc.pid if server.proc else None,
                     server.etcd.proc.pid if server.etcd.proc else None)
        self.base = server.url
        self.headers = {"Authorization": f"Bearer {server.token}", "Accept": "application/json"}
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ctx, limit=connections + 8),
            timeout=aiohttp.ClientTimeout(total=None, sock_read=300))

    async def call(self, method: str, path: str, body: Any = None, *, content_type: str =
                   "application/json", accept: str | None = None) -> Any:
        headers = dict(self.headers)
        if accept:
            headers["Accept"] = accept
        data = None
        if body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), content_type
        async with self.session.request(method, self.base + path, data=data, headers=headers) as resp:
            raw = await resp.read()
            if resp.status >= 300:
                raise RuntimeError(f"{method} {path}: {resp.status} {raw[:300]!r}")
            return json.loads(raw) if raw else None

    def cpu(self) -> tuple[float, float]:
        return cpu_seconds(self.pids[0]), cpu_seconds(self.pids[1])

    async def close(self) -> None:
        await self.session.close()


def pod(name: str) -> dict[str, Any]:
    """A pod the size of a small real one (~1 KiB of JSON once defaulted)."""
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE,
                         "labels": {"app": "bench", "shard": str(hash(name) % 10)}},
            "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.9",
                                     "ports": [{"containerPort": 8080, "name": "http"}],
                                     "env": [{"name": "MODE", "value": "bench"}],
                                     "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}


async def timed_calls(client: Client, name: str, size: int, count: int, concurrency: int,
                      make_call: Callable[[int], Awaitable[Any]], note: str = "") -> Result:
    """Run make_call(0..count-1) with `concurrency` in flight; one latency per call, and the CPU
    the server and etcd spent meanwhile."""
    result = Result(name, size, concurrency=concurrency, note=note)
    queue = iter(range(count))

    async def worker() -> None:
        for index in queue:
            start = time.perf_counter()
            try:
                await make_call(index)
            except Exception as err:  # counted and reported, not fatal
                result.errors += 1
                if result.errors <= 3:
                    print(f"  {name}: {err}", file=sys.stderr)
                continue
            result.latencies.append(time.perf_counter() - start)

    cpu_before, start = client.cpu(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.wall = time.perf_counter() - start
    cpu_after = client.cpu()
    result.server_cpu, result.etcd_cpu = (cpu_after[0] - cpu_before[0], cpu_after[1] - cpu_before[1])
    return result


# ----------------------------------------------------------------------------------------- phases

PODS = f"/api/v1/namespaces/{NAMESPACE}/pods"


async def create_pods(client: Client, start: int, size: int, concurrency: int) -> Result:
    return await timed_calls(client, "create pod", size, size - start, concurrency,
                             lambda i: client.call("POST", PODS, pod(f"pod-{start + i:05d}")),
                             note=f"pods {start:,}..{size:,}")


async def get_pods(client: Client, size: int, count: int, concurrency: int) -> Result:
    rng = random.Random(size)
    return await timed_calls(client, "get pod", size, count, concurrency,
                             lambda _: client.call("GET", f"{PODS}/pod-{rng.randrange(size):05d}"))


async def patch_pods(client: Client, size: int, count: int, concurrency: int) -> Result:
    rng = random.Random(size + 1)

    def patch(i: int) -> Awaitable[Any]:
        body = {"metadata": {"labels": {"iteration": str(i)}}}
        return client.call("PATCH", f"{PODS}/pod-{rng.randrange(size):05d}", body,
                           content_type="application/merge-patch+json")
    return await timed_calls(client, "patch pod (merge)", size, count, concurrency, patch)


async def list_all_pages(client: Client, path: str, limit: int, accept: str | None = None) -> int:
    """Walk a paginated list as kubectl does; returns the number of items (or Table rows)."""
    items, token = 0, ""
    while True:
        query = f"?limit={limit}" + (f"&continue={token}" if token else "")
        page = await client.call("GET", path + query, accept=accept)
        items += len(page.get("items") or page.get("rows") or [])
        token = (page.get("metadata") or {}).get("continue") or ""
        if not token:
            return items


async def list_pods(client: Client, size: int, repeat: int) -> list[Result]:
    async def whole(_: int) -> None:
        got = len((await client.call("GET", PODS))["items"])
        if got != size:
            raise RuntimeError(f"list returned {got} pods, expected {size}")

    async def paged(_: int) -> None:
        await list_all_pages(client, PODS, 500)

    async def table(_: int) -> None:
        await list_all_pages(client, PODS, 500, accept=TABLE_ACCEPT)

    async def selected(_: int) -> None:
        await client.call("GET", f"{PODS}?labelSelector=shard%3D3")

    return [
        await timed_calls(client, "list pods (one response)", size, repeat, 1, whole),
        await timed_calls(client, "list pods (limit=500 pages)", size, repeat, 1, paged, "whole walk"),
        await timed_calls(client, "list pods as Table (kubectl get)", size, repeat, 1, table, "whole walk"),
        await timed_calls(client, "list pods labelSelector shard=3", size, repeat, 1, selected,
                          "~10 % match"),
    ]


# ------------------------------------------------------------------------------ watch fan-out


class Watcher:
    """One watch stream on the bench namespace; records when each resourceVersion arrived."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.ready = asyncio.Event()

    async def run(self, session: aiohttp.ClientSession, client: Client, rv: str) -> None:
        url = f"{client.base}{PODS}?watch=1&resourceVersion={rv}&fieldSelector=metadata.name%3Dpod-00000"
        async with session.get(url, headers=client.headers) as resp:
            if resp.status != 200:
                raise RuntimeError(f"watch: {resp.status} {(await resp.read())[:200]!r}")
            self.ready.set()
            async for line in resp.content:
                if line.strip():
                    event = json.loads(line)
                    meta = event["object"].get("metadata") or {}
                    self.arrivals[meta.get("resourceVersion", "")] = time.perf_counter()


async def watch_fanout(client: Client, server: ApiServerProcess, size: int, watchers: int,
                       events: int) -> Result:
    """`watchers` streams on one pod; `events` patches 20 ms apart; delay = arrival at a watcher
    minus the moment the writer got its 200 (each (watcher, event) pair is one sample)."""
    rv = (await client.call("GET", f"{PODS}?limit=1"))["metadata"]["resourceVersion"]
    ctx = ssl.create_default_context(cafile=server.ca_file)
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=0),
                                    timeout=aiohttp.ClientTimeout(total=None, sock_read=None))
    streams = [Watcher() for _ in range(watchers)]
    tasks = [asyncio.ensure_future(w.run(session, client, rv)) for w in streams]
    try:
        await asyncio.wait_for(asyncio.gather(*(w.ready.wait() for w in streams)), 60)
        cpu_before = client.cpu()
        acks = await _write_events(client, events)
        await _wait_delivered(streams, acks, timeout=60)
        cpu_after = client.cpu()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await session.close()
    result = Result("watch fan-out delay", size, concurrency=watchers,
                    note=f"{watchers} watchers x {events} events")
    missing = 0
    for watcher in streams:
        for version, acked in acks.items():
            if version in watcher.arrivals:
                result.latencies.append(max(0.0, watcher.arrivals[version] - acked))
            else:
                missing += 1
    result.errors, result.wall = missing, 0.0
    # CPU per delivered event (one write fanned out to every watcher)
    result.server_cpu = (cpu_after[0] - cpu_before[0])
    result.etcd_cpu = (cpu_after[1] - cpu_before[1])
    return result


async def _write_events(client: Client, events: int) -> dict[str, float]:
    acks: dict[str, float] = {}
    for i in range(events):
        obj = await client.call("PATCH", f"{PODS}/pod-00000", {"metadata": {"annotations": {"n": str(i)}}},
                                content_type="application/merge-patch+json")
        acks[obj["metadata"]["resourceVersion"]] = time.perf_counter()
        await asyncio.sleep(0.02)
    return acks


async def _wait_delivered(streams: list[Watcher], acks: dict[str, float], timeout: float) -> None:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if all(all(v in w.arrivals for v in acks) for w in streams):
            return
        await asyncio.sleep(0.05)


# ------------------------------------------------------------------------------------- the run


@dataclass
class Options:
    sizes: list[int]
    concurrency: int
    gets: int
    patches: int
    list_repeat: int
    watchers: int
    watch_events: int


async def measure(server: ApiServerProcess, opts: Options) -> list[Result]:
    client = Client(server, opts.concurrency)
    results: list[Result] = []
    try:
        await client.call("POST", "/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
        count = 0
        for size in opts.sizes:
            print(f"== {size} pods", file=sys.stderr)
            results.append(await create_pods(client, count, size, opts.concurrency))
            count = size
            results.append(await get_pods(client, size, opts.gets, opts.concurrency))
            results.append(await get_pods(client, size, opts.gets // 4, 1))
            results.append(await patch_pods(client, size, opts.patches, opts.concurrency))
            results.append(await patch_pods(client, size, opts.patches // 2, 1))
            results.extend(await list_pods(client, size, opts.list_repeat))
            results.append(await watch_fanout(client, server, size, opts.watchers, opts.watch_events))
            for r in results:
                if r.size == size:
                    print("  " + r.row(), file=sys.stderr)
    finally:
        await client.close()
    return results


def rss_mib(pid: int) -> float:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# ------------------------------------------------------------------------------------ the report


def worst(results: list[Result], names: tuple[str, ...], size: int | None = None,
          concurrency: int | None = None) -> float:
    values = [percentile(r.latencies, 99) for r in results
              if r.name in names and r.latencies and (size is None or r.size == size)
              and (concurrency is None or r.concurrency == concurrency)]
    return max(values) if values else float("nan")


def slo_table(results: list[Result], largest: int, concurrency: int) -> list[str]:
    single = ("get pod",)
    mutating = ("create pod", "patch pod (merge)")
    lists = ("list pods (one response)", "list pods (limit=500 pages)", "list pods as Table (kubectl get)")
    rows = [("mutating single-object calls, p99, 1 in flight", worst(results, mutating, None, 1), 1.0, 0.050),
            (f"mutating single-object calls, p99, {concurrency} in flight",
             worst(results, mutating, None, concurrency), 1.0, 0.050),
            ("single-object reads, p99, 1 in flight", worst(results, single, None, 1), 1.0, 0.050),
            (f"single-object reads, p99, {concurrency} in flight", worst(results, single, None, concurrency),
             1.0, 0.050),
            (f"list of {largest:,} pods, p99", worst(results, lists, largest), 30.0, 1.0)]
    lines = ["| SLI | measured | Kubernetes SLO | podnet goal | verdict |", "|---|---|---|---|---|"]
    for name, value, slo, goal in rows:
        verdict = "meets goal" if value <= goal else ("meets SLO" if value <= slo else "MISSES SLO")
        lines.append(f"| {name} | {value * 1e3:,.1f} ms | <= {slo:g} s | < {goal * 1e3:g} ms | {verdict} |")
    return lines


def machine_facts(argv: list[str], server_rss: float) -> list[str]:
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"* date: {datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"* machine: {os.cpu_count()} CPUs ({cpu}), kernel {platform.release()}, load avg at end {load}",
        f"* python {platform.python_version()}, aiohttp {aiohttp.__version__}, etcd 3.4 (/usr/bin/etcd, "
        "fresh data dir in a temp dir)",
        f"* podnet-apiserver RSS at the end: {server_rss:,.0f} MiB",
        f"* command: `{shlex.join(['.venv/bin/python', 'bench/apiserver.py', *argv])}`",
    ]


def render(results: list[Result], argv: list[str], server_rss: float, concurrency: int) -> str:
    largest = max(r.size for r in results)
    header = ("| operation | pods stored | calls | in flight | p50 ms | p99 ms | max ms | calls/s | "
              "apiserver CPU ms/call | etcd CPU ms/call | errors | note |")
    return "\n".join([
        "## API server: latency and throughput",
        "",
        "Generated by `bench/apiserver.py`: one etcd and one podnet-apiserver process (HTTPS, bearer "
        "token of a `system:masters` user) started for the run; one asyncio client (aiohttp, "
        "keep-alive connections) on the same 2-core machine, so client and server share the CPUs.  "
        "Latency is per call as the client sees it (request sent to body read).  Watch fan-out "
        "delay is, per (watcher, event), the arrival of the event minus the moment the writer got "
        "its response.  CPU columns: CPU time the apiserver / etcd processes used during the "
        "phase divided by its calls (for the fan-out row: by delivered events); they include "
        "background work such as the watch cache and etcd's own timers.",
        "",
        *machine_facts(argv, server_rss),
        "",
        *slo_table(results, largest, concurrency),
        "",
        header,
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *(r.row() for r in results),
    ])


def write_section(path: Path, section: str) -> None:
    """Replace the text between the apiserver markers, or append the block; the rest of the file
    (the CNI section) is left as it is."""
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
    parser.add_argument("--sizes", default="1000,10000", help="pod counts to measure at (ascending)")
    parser.add_argument("--concurrency", type=int, default=16, help="calls in flight")
    parser.add_argument("--gets", type=int, default=2000)
    parser.add_argument("--patches", type=int, default=1000)
    parser.add_argument("--list-repeat", type=int, default=5)
    parser.add_argument("--watchers", type=int, default=100)
    parser.add_argument("--watch-events", type=int, default=50)
    parser.add_argument("--write", metavar="PATH", help="write the report section into this markdown file")
    args = parser.parse_args(argv)
    opts = Options(sorted(int(s) for s in args.sizes.split(",")), args.concurrency, args.gets,
                   args.patches, args.list_repeat, args.watchers, args.watch_events)
    with tempfile.TemporaryDirectory(prefix="podnet-bench-apiserver-") as work, \
            etcd_and_apiserver(Path(work)) as server:
        results = asyncio.run(measure(server, opts))
        rss = rss_mib(server.proc.pid) if server.proc else float("nan")
    section = render(results, argv, rss, opts.concurrency)
    print(section)
    if args.write:
        write_section(Path(args.write), section)


if __name__ == "__main__":
    main()
