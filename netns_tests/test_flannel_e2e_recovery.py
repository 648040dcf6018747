"""flanneld end to end, failures (issue 5 "Tests"): kill -9 and restart keeps the subnet and a
running ping stream loses nothing; etcd down for 30 s leaves the dataplane alone and the daemons
pick up changes once it is back; a watch that falls behind a compaction re-lists and reconciles to
the full lease set; routes/FDB/neighbours deleted by hand come back, and flannel-owned entries
without a lease go, within the resync period."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from netns_tests.flannel_fixtures import (
    PREFIX,
    FlannelCluster,
    FlannelHost,
    link_mac,
    ping_loss,
)
from podnet.testing.etcd import ETCD
from podnet.testing.harness import Pod, Topology
from podnet.testing.wait import wait_until

RESYNC = "1s"
RTPROT_PODNET_FLANNEL = "151"  # podnet.netlink.RTPROT_PODNET_FLANNEL: how flanneld marks its routes


@pytest.fixture
def cluster(topo: Topology, tmp_path: Path) -> Iterator[FlannelCluster]:
    if not os.path.exists(ETCD):
        pytest.skip("etcd missing: apt-get install etcd-server")
    c = FlannelCluster(topo, tmp_path)
    try:
        yield c
    finally:
        for fh in c.hosts:
            c.kill_flanneld(fh)
        if c.etcd is not None:
            c.etcd.cleanup()


def boot_two(cluster: FlannelCluster, backend: str = "vxlan") -> tuple[list[FlannelHost], list[Pod]]:
    cluster.start_etcd()
    cluster.write_config({"Type": backend})
    fhs = [cluster.add_host() for _ in range(2)]
    for fh in fhs:
        cluster.start_flanneld(fh, "--resync-period", RESYNC, wait=False)
    for fh in fhs:
        cluster.wait_ready(fh)
    pods = [cluster.add_pod(fh) for fh in fhs]
    wait_until(lambda: pods[0].run("ping", "-c1", "-W1", pods[1].ip, check=False).returncode == 0,
               10, "pod-to-pod")
    return fhs, pods


def ping_stream(cluster: FlannelCluster, pod: Pod, ip: str, count: int, interval: float,
                name: str) -> tuple[subprocess.Popen[bytes], Path]:
    out = cluster.workdir / f"{name}.ping"
    with open(out, "wb") as f:
        proc = cluster.topo.spawn(pod.name, ["ping", "-c", str(count), "-i", str(interval), "-W",
                                             "1", ip], stdout=f, stderr=f)
    return proc, out


def finish_stream(proc: subprocess.Popen[bytes], out: Path, timeout: float) -> float:
    proc.wait(timeout=timeout)
    return ping_loss(out.read_text())


def fake_lease(cluster: FlannelCluster, third: int) -> tuple[str, ipaddress.IPv4Network]:
    """A peer known only to etcd (upstream lease JSON, with a TTL like flanneld's own)."""
    assert cluster.etcd is not None
    kv = cluster.etcd.kv()
    subnet = ipaddress.IPv4Network(f"10.244.{third}.0/24")
    key = f"{PREFIX}/subnets/10.244.{third}.0-24"
    value = {"PublicIP": f"10.250.0.{200 + third % 50}", "BackendType": "vxlan",
             "BackendData": {"VNI": 1, "VtepMAC": f"0e:00:00:00:02:{third % 256:02x}"}}
    kv.put(key, json.dumps(value), lease=kv.grant(600))
    return key, subnet


def has_route(fh: FlannelHost, subnet: ipaddress.IPv4Network) -> bool:
    return any(line.startswith(f"{subnet} ") for line in fh.routes().splitlines())


# udp is left out on purpose: its encapsulation lives in the daemon, so killing it stops that
# traffic (upstream's too); the kernel backends must not notice a restart.
@pytest.mark.parametrize("backend", ["vxlan", "host-gw"])
def test_kill9_restart_keeps_subnet_and_traffic(cluster: FlannelCluster, backend: str) -> None:
    fhs, pods = boot_two(cluster, backend)
    subnets = [fh.subnet() for fh in fhs]
    proc, out = ping_stream(cluster, pods[0], pods[1].ip, 400, 0.01, "restart")
    for fh in fhs:
        cluster.kill_flanneld(fh)
        fh.subnet_file.unlink()  # so wait_ready sees the restarted daemon's own write
        cluster.start_flanneld(fh, "--resync-period", RESYNC)
    assert proc.poll() is None, "the ping stream must outlast both restarts"
    assert [fh.subnet() for fh in fhs] == subnets
    assert finish_stream(proc, out, 15) == 0.0, out.read_text()[-800:]


def test_etcd_down_30s_dataplane_unchanged_then_recovers(cluster: FlannelCluster) -> None:
    fhs, pods = boot_two(cluster)
    assert cluster.etcd is not None
    routes = [fh.routes() for fh in fhs]
    cluster.etcd.kill()
    proc, out = ping_stream(cluster, pods[0], pods[1].ip, 150, 0.2, "outage")  # 30 s
    assert finish_stream(proc, out, 45) == 0.0, out.read_text()[-800:]
    assert all(fh.proc is not None and fh.proc.poll() is None for fh in fhs)
    assert [fh.routes() for fh in fhs] == routes
    cluster.etcd.start()
    _, subnet = fake_lease(cluster, 201)
    wait_until(lambda: all(has_route(fh, subnet) for fh in fhs), 15, "a new lease after the outage")


def test_watch_behind_compaction_relists(cluster: FlannelCluster) -> None:
    fhs, _ = boot_two(cluster)
    assert cluster.etcd is not None
    kv = cluster.etcd.kv()
    stale_key, stale = fake_lease(cluster, 202)
    wait_until(lambda: has_route(fhs[0], stale), 5, "the soon-stale lease programmed")
    assert fhs[0].proc is not None
    # Freeze host 1's daemon and break its watch (etcd restart), then change and compact history.
    cluster.topo.signal(fhs[0].proc, signal.SIGSTOP)
    try:
        cluster.etcd.kill()
        cluster.etcd.start()
        _, fresh = fake_lease(cluster, 203)
        kv.delete(stale_key)
        kv.compact()
    finally:
        cluster.topo.signal(fhs[0].proc, signal.SIGCONT)
    wait_until(lambda: has_route(fhs[0], fresh) and not has_route(fhs[0], stale), 15,
               "host 1 reconciled to the full lease set after compaction")


def test_tampering_restored_and_orphans_removed(cluster: FlannelCluster) -> None:
    fhs, pods = boot_two(cluster)
    host, peer = fhs[0].host, fhs[1]
    subnet, via = str(peer.subnet()), str(peer.subnet().network_address)
    mac = link_mac(peer.host, "flannel.1")
    host.run("ip", "route", "del", subnet)
    host.run("bridge", "fdb", "del", mac, "dev", "flannel.1", "dst", peer.host.ip, "self")
    host.run("ip", "neigh", "del", via, "dev", "flannel.1")
    # An entry flanneld owns (its route protocol) for a lease that does not exist.
    host.run("ip", "route", "add", "10.244.254.0/24", "via", "10.244.254.0", "dev", "flannel.1",
             "onlink", "proto", RTPROT_PODNET_FLANNEL)

    def repaired() -> bool:
        routes = host.run("ip", "route", "show").stdout
        return (f"{subnet} via {via}" in routes and "10.244.254.0/24" not in routes
                and mac in host.run("bridge", "fdb", "show", "dev", "flannel.1").stdout
                and mac in host.run("ip", "neigh", "show", "dev", "flannel.1").stdout)
    wait_until(repaired, 3, "route/FDB/neighbour restored and the orphan removed (resync 1 s)")
    out = pods[0].run("ping", "-c1", "-W2", pods[1].ip, check=False).stdout
    assert ping_loss(out) == 0.0, out
