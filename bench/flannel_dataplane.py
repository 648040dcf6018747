#!/usr/bin/env python3
"""flanneld dataplane: iperf3 TCP throughput and ping latency pod-to-pod across two simulated hosts
for flanneld's vxlan, host-gw and udp backends, against two baselines measured in the same run
(plain routes between the same namespaces; a hand-configured kernel vxlan with upstream flannel's
layout), and convergence time (a new lease in etcd -> its route on every host) for 3 and 20 hosts.

Every measurement builds a fresh topology (netns fabric + hosts + one pod per host, the helpers of
netns_tests/flannel_fixtures.py) and tears it down; rounds interleave the modes so machine load
drifts hit them alike.  Needs root, iperf3 and /usr/bin/etcd.

    .venv/bin/python bench/flannel_dataplane.py [--rounds 3] [--seconds 3] [--modes ...]
                                                [--convergence 3,20] [--write docs/BENCHMARKS.md]

Only the part of the report between `<!-- flannel:start -->` and `<!-- flannel:end -->` is
rewritten (appended when absent).  A benchmark, not a test: pytest does not collect it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import ipaddress
import json
import math
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from netns_tests.flannel_fixtures import (  # noqa: E402
    PREFIX,
    UNDERLAY_MTU,
    VXLAN_OVERHEAD,
    FlannelCluster,
    FlannelHost,
    configure_routed,
    configure_vxlan,
    gateway_of,
    pod_subnet,
)
from podnet.testing.etcd import ETCD  # noqa: E402
from podnet.testing.harness import Pod, Topology  # noqa: E402
from podnet.testing.wait import wait_until  # noqa: E402

BEGIN, END = "<!-- flannel:start -->", "<!-- flannel:end -->"
NOTES = "<!-- flannel:notes -->"
BASELINES = {"routed": "plain routes (hand)", "kvxlan": "kernel vxlan (hand)"}
FLANNEL: dict[str, dict[str, object]] = {
    "vxlan": {"Type": "vxlan"}, "host-gw": {"Type": "host-gw"}, "udp": {"Type": "udp"}}
BASELINE_OF = {"vxlan": "kvxlan", "host-gw": "routed", "udp": "kvxlan"}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, min(len(ordered), math.ceil(q / 100 * len(ordered)))) - 1]


@dataclass
class Sample:
    """Pooled measurements of one mode over all rounds."""

    gbps: list[float] = field(default_factory=list)
    rtt_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------- topologies


@contextlib.contextmanager
def two_pods(mode: str, workdir: Path) -> Iterator[tuple[Topology, Pod, Pod]]:
    """Two hosts with one pod each, wired by `mode` (a baseline or a flanneld backend)."""
    topo = Topology()
    cluster = FlannelCluster(topo, Path(tempfile.mkdtemp(prefix=f"{mode}-", dir=workdir)))
    try:
        if mode in BASELINES:
            cluster.start_etcd()  # idle, but the same background processes as flanneld's runs
            yield (topo, *baseline_pods(topo, mode))
        else:
            yield (topo, *flannel_pods(cluster, FLANNEL[mode]))
    finally:
        topo.cleanup()  # flanneld first (by PID), then etcd, then the namespaces
        if cluster.etcd is not None:
            cluster.etcd.cleanup()


def baseline_pods(topo: Topology, mode: str) -> tuple[Pod, Pod]:
    mtu = UNDERLAY_MTU - VXLAN_OVERHEAD if mode == "kvxlan" else UNDERLAY_MTU
    pods = []
    for index in (1, 2):
        host, subnet = topo.add_host(), pod_subnet(index)
        pods.append(topo.add_pod(host, f"p{index}", str(subnet.network_address + 10),
                                 gateway_of(subnet), mtu=mtu))
        pods[-1].run("ip", "link", "set", "eth0", "mtu", str(mtu))
    configure = configure_vxlan if mode == "kvxlan" else configure_routed
    configure([p.host for p in pods], [pod_subnet(1), pod_subnet(2)])
    return pods[0], pods[1]


def flannel_pods(cluster: FlannelCluster, backend: dict[str, object]) -> tuple[Pod, Pod]:
    cluster.start_etcd()
    cluster.write_config(backend)
    hosts = [cluster.add_host() for _ in range(2)]
    for fh in hosts:
        cluster.start_flanneld(fh, wait=False)
    for fh in hosts:
        cluster.wait_ready(fh)
    a, b = cluster.add_pod(hosts[0]), cluster.add_pod(hosts[1])
    wait_until(lambda: a.run("ping", "-c1", "-W1", b.ip, check=False).returncode == 0, 15,
               f"{a.ip} -> {b.ip} through flanneld")
    return a, b


# -------------------------------------------------------------------------------- measurements


def iperf3_gbps(topo: Topology, client: Pod, server: Pod, seconds: float) -> float:
    with open(os.devnull, "wb") as null:
        proc = topo.spawn(server.name, ["iperf3", "-s", "-1", "-p", "5201"], stdout=null,
                          stderr=null, stdin=null)
    try:
        out = None
        for _ in range(50):  # the server may not listen yet
            # -O 1: the first second (slow start, cold caches) is not counted
            out = client.run("iperf3", "-c", server.ip, "-p", "5201", "-t", str(seconds), "-O",
                             "1", "-J", check=False, timeout=seconds + 30)
            report = json.loads(out.stdout) if out.stdout.strip().startswith("{") else {}
            received = report.get("end", {}).get("sum_received", {}).get("bits_per_second")
            if out.returncode == 0 and received:
                return float(received) / 1e9
            if report.get("error") and "connect" not in str(report["error"]):
                raise RuntimeError(f"iperf3: {report['error']}")
            time.sleep(0.1)
        raise RuntimeError(f"iperf3 failed: {out.stdout[-300:] if out else ''}")
    finally:
        topo.kill(proc)


def ping_rtts(client: Pod, server: Pod, count: int) -> list[float]:
    out = client.run("ping", "-c", str(count), "-i", "0.005", "-W", "1", server.ip,
                     timeout=count * 0.1 + 10).stdout
    return [float(t) for t in re.findall(r"time=([\d.]+) ms", out)]


def measure(mode: str, workdir: Path, seconds: float, pings: int, sample: Sample) -> None:
    try:
        with two_pods(mode, workdir) as (topo, a, b):
            sample.rtt_ms += ping_rtts(a, b, pings)
            sample.gbps.append(iperf3_gbps(topo, a, b, seconds))
    except Exception as err:  # reported in the table; the other modes still run
        sample.errors.append(f"{type(err).__name__}: {str(err)[:300]}")
        print(f"  {mode}: {sample.errors[-1]}", file=sys.stderr)


# --------------------------------------------------------------------------------- convergence


@dataclass
class Convergence:
    hosts: int
    add_last: list[float] = field(default_factory=list)  # s until the LAST host has the route
    add_first: list[float] = field(default_factory=list)
    del_last: list[float] = field(default_factory=list)  # lease deleted -> route gone everywhere
    startup: float = 0.0  # all daemons started -> every host has every other host's route
    error: str = ""


def monitor_times(paths: list[Path], needle: str, deleted: bool) -> list[float] | None:
    """Per host, the `ip -ts monitor route` timestamp of the first line about `needle` (a route
    add, or a `Deleted` line); None while some host has not seen it."""
    times = []
    for path in paths:
        found = None
        for line in path.read_text(errors="replace").splitlines():
            match = re.match(r"\[([^\]]+)\] (Deleted )?(\S+)", line)
            if match and match.group(3) == needle and bool(match.group(2)) == deleted:
                found = datetime.datetime.fromisoformat(match.group(1)).timestamp()
                break
        if found is None:
            return None
        times.append(found)
    return times


def wait_times(paths: list[Path], needle: str, deleted: bool, t0: float) -> list[float]:
    result: list[list[float]] = []

    def seen() -> bool:
        times = monitor_times(paths, needle, deleted)
        if times is not None:
            result.append([t - t0 for t in times])
        return times is not None
    wait_until(seen, 30, f"{'removal' if deleted else 'route'} {needle} on every host", 0.02)
    return result[0]


def free_subnet(cluster: FlannelCluster, sample: int) -> ipaddress.IPv4Network:
    assert cluster.etcd is not None
    taken = set(cluster.etcd.kv().get_prefix(f"{PREFIX}/subnets/"))
    for third in range(250 - sample, 0, -1):
        subnet = ipaddress.IPv4Network(f"10.244.{third}.0/24")
        if f"{PREFIX}/subnets/10.244.{third}.0-24" not in taken:
            return subnet
    raise LookupError("no free /24")


def lease_value(index: int) -> str:
    """A peer that exists only in etcd (its PublicIP is unused on the fabric): what a joining
    host's flanneld writes (upstream JSON)."""
    return json.dumps({"PublicIP": f"10.250.0.{200 + index}", "BackendType": "vxlan",
                       "BackendData": {"VNI": 1, "VtepMAC": f"0e:00:00:00:01:{index:02x}"}})


def converge(n: int, samples: int, workdir: Path) -> Convergence:
    result = Convergence(n)
    topo = Topology()
    cluster = FlannelCluster(topo, Path(tempfile.mkdtemp(prefix=f"conv{n}-", dir=workdir)))
    try:
        converge_run(cluster, n, samples, result)
    except Exception as err:
        result.error = f"{type(err).__name__}: {str(err)[:300]}"
        print(f"  convergence N={n}: {result.error}", file=sys.stderr)
    finally:
        topo.cleanup()
        if cluster.etcd is not None:
            cluster.etcd.cleanup()
    return result


def converge_run(cluster: FlannelCluster, n: int, samples: int, result: Convergence) -> None:
    etcd = cluster.start_etcd()
    cluster.write_config({"Type": "vxlan"})
    hosts = [cluster.add_host() for _ in range(n)]
    start = time.monotonic()
    for fh in hosts:
        cluster.start_flanneld(fh, wait=False)
    for fh in hosts:
        cluster.wait_ready(fh, timeout=120)
    wait_until(lambda: all(routes_to_peers(fh) == n - 1 for fh in hosts), 120, "full mesh", 0.1)
    result.startup = time.monotonic() - start
    paths = []
    for fh in hosts:
        path = cluster.workdir / f"{fh.host.name}.monitor"
        with open(path, "wb") as out:
            cluster.topo.spawn(fh.host.name, ["ip", "-ts", "monitor", "route"], stdout=out,
                               stdin=subprocess.DEVNULL)
        paths.append(path)
    time.sleep(0.5)  # every monitor subscribed
    kv = etcd.kv()
    for sample in range(samples):
        subnet = free_subnet(cluster, sample)
        key = f"{PREFIX}/subnets/{subnet.network_address}-{subnet.prefixlen}"
        lease = kv.grant(600)
        t0 = time.time()
        kv.put(key, lease_value(sample), lease=lease)
        added = wait_times(paths, str(subnet), False, t0)
        result.add_last.append(max(added))
        result.add_first.append(min(added))
        t0 = time.time()
        kv.revoke(lease)  # what an expired lease looks like to the watchers
        result.del_last.append(max(wait_times(paths, str(subnet), True, t0)))


def routes_to_peers(fh: FlannelHost) -> int:
    out = fh.routes()
    return sum(1 for line in out.splitlines() if "dev flannel.1" in line and "onlink" in line)


# -------------------------------------------------------------------------------------- report


def fmt(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values) * scale:.{digits}f}"


def dataplane_table(results: dict[str, Sample]) -> list[str]:
    lines = ["| mode | TCP Gbit/s (median of rounds) | vs baseline | ping RTT median / p99 (ms) "
             "| vs baseline (median) | baseline | errors |", "|---|---|---|---|---|---|---|"]
    for mode, sample in results.items():
        label = BASELINES.get(mode, f"flanneld {mode}")
        base = results.get(BASELINE_OF.get(mode, ""))
        tp_ratio = rtt_ratio = "-"
        if base and sample.gbps and base.gbps:
            tp_ratio = f"{statistics.median(sample.gbps) / statistics.median(base.gbps):.3f}"
        if base and sample.rtt_ms and base.rtt_ms:
            rtt_ratio = f"{statistics.median(sample.rtt_ms) / statistics.median(base.rtt_ms):.2f}"
        rtt = (f"{fmt(sample.rtt_ms, digits=3)} / {percentile(sample.rtt_ms, 99):.3f}"
               if sample.rtt_ms else "-")
        lines.append(f"| {label} | {fmt(sample.gbps)} ({', '.join(f'{g:.2f}' for g in sample.gbps)}) "
                     f"| {tp_ratio} | {rtt} | {rtt_ratio} | "
                     f"{BASELINES.get(BASELINE_OF.get(mode, ''), '-')} | "
                     f"{'; '.join(sample.errors) or '-'} |")
    return lines


def convergence_table(results: list[Convergence]) -> list[str]:
    lines = ["| hosts | samples | new lease -> route on first host (ms, median) | on all hosts "
             "(median / max) | lease revoked -> route gone everywhere (median / max) | all daemons "
             "started -> full mesh (s) | errors |", "|---|---|---|---|---|---|---|"]
    for r in results:
        last = f"{fmt(r.add_last, 1e3, 0)} / {max(r.add_last) * 1e3:.0f}" if r.add_last else "-"
        gone = f"{fmt(r.del_last, 1e3, 0)} / {max(r.del_last) * 1e3:.0f}" if r.del_last else "-"
        lines.append(f"| {r.hosts} | {len(r.add_last)} | {fmt(r.add_first, 1e3, 0)} | {last} | "
                     f"{gone} | {r.startup:.1f} | {r.error or '-'} |")
    return lines


def render(args: argparse.Namespace, results: dict[str, Sample], conv: list[Convergence]) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    iperf = os.popen("iperf3 --version 2>&1").read().splitlines()[0]
    head = [
        "## flanneld dataplane and convergence", "",
        "Generated by `bench/flannel_dataplane.py`.  Two simulated hosts (netns) on a fabric "
        "bridge, one pod per host on the host's `cni0`; each mode gets a fresh topology, rounds "
        "interleave the modes (order rotated each round); iperf3 omits its first second.  "
        "Baselines: **plain routes (hand)** = each host routes the other's "
        "pod /24 via its eth0 address (what host-gw programs); **kernel vxlan (hand)** = "
        "`flannel.1` with upstream's layout (VNI 1, port 8472, MTU 1450, /32 address, permanent "
        "neighbour + FDB + onlink route) set up with iproute2.  flanneld rows run the real "
        "`python -m flanneld` per host against etcd in the fabric namespace.  Pods use the mode's "
        "MTU (1500 routed, 1450 vxlan, FLANNEL_MTU under flanneld).", "",
        f"* date: {now}",
        f"* machine: {os.cpu_count()} CPUs, kernel {platform.release()}, load avg at end "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"* {iperf}; TCP {args.seconds:g} s per round, {args.rounds} rounds; ping every 5 ms, "
        f"{args.pings} per round",
        f"* command: `python bench/flannel_dataplane.py {shlex.join(sys.argv[1:])}`", "",
        "### Pod-to-pod across hosts", "", *dataplane_table(results), "",
        "vs baseline = flanneld / its hand-configured baseline (vxlan and udp against the kernel "
        "vxlan, host-gw against plain routes); goal <= 5 % apart for vxlan and host-gw.", "",
    ]
    if conv:
        head += ["### Convergence (vxlan, real flanneld per host)", "",
                 "A lease for a peer that exists only in etcd is written (then its etcd lease "
                 "revoked); every host runs `ip -ts monitor route`, times are kernel-event "
                 "timestamps minus the moment before the etcd write.", "",
                 *convergence_table(conv), ""]
    return "\n".join(head)


def write_section(path: Path, section: str) -> None:
    """Replace the generated part of the flannel block; hand-written notes that follow a
    NOTES line inside the block are kept."""
    current = path.read_text() if path.exists() else ""
    if BEGIN in current and END in current:
        head, rest = current.split(BEGIN, 1)
        old, tail = rest.split(END, 1)
        notes = NOTES + old.split(NOTES, 1)[1].rstrip() if NOTES in old else ""
        block = f"{BEGIN}\n{section.rstrip()}\n{notes}\n{END}" if notes else \
            f"{BEGIN}\n{section.rstrip()}\n{END}"
        text = head + block + tail
    else:
        text = current.rstrip() + f"\n\n{BEGIN}\n{section.rstrip()}\n{END}\n"
    path.write_text(text)


def main() -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--pings", type=int, default=200)
    p.add_argument("--modes", default="routed,kvxlan,vxlan,host-gw,udp")
    p.add_argument("--convergence", default="3,20", help="host counts ('' to skip)")
    p.add_argument("--samples", type=int, default=5, help="new leases per convergence run")
    p.add_argument("--write", type=Path)
    args = p.parse_args()
    if os.geteuid() != 0 or not shutil.which("iperf3") or not os.path.exists(ETCD):
        sys.exit("needs root, iperf3 (apt-get install iperf3) and /usr/bin/etcd (etcd-server)")
    modes = [m for m in args.modes.split(",") if m]
    results = {m: Sample() for m in modes}
    with tempfile.TemporaryDirectory(prefix="flannel-bench-") as tmp:
        for rnd in range(args.rounds):
            # rotate the order each round: no mode always runs first (or right after another)
            for mode in modes[rnd % len(modes):] + modes[:rnd % len(modes)]:
                print(f"round {rnd + 1}: {mode}", file=sys.stderr)
                measure(mode, Path(tmp), args.seconds, args.pings, results[mode])
        conv = [converge(int(n), args.samples, Path(tmp))
                for n in args.convergence.split(",") if n]
    report = render(args, results, conv)
    print(report)
    if args.write:
        write_section(args.write, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
