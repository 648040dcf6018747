"""portmap on a real kernel: reference bridge + host-local (Debian v1.1.1) chained with OUR portmap,
and OUR bridge + OUR portmap, on a simulated host of the Topology.

Every plugin exec runs inside the simulated host's netns: the test thread enters it with
podnet.netns.enter() and the plugin processes inherit the thread's netns, so the nft rules land
in that namespace, never in the root one.  A server in the pod answers each TCP connection / UDP
datagram with the source address it saw, which proves DNAT and the masquerade decisions at once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from podnet import netns
from podnet.testing import cnirun
from podnet.testing.harness import Host, Topology

PEER_SERVER = r"""
import socket, sys, threading
port = int(sys.argv[1])
def udp():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("0.0.0.0", port))
    while True:
        _, peer = u.recvfrom(100)
        u.sendto(peer[0].encode(), peer)
threading.Thread(target=udp, daemon=True).start()
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port))
s.listen(16)
print("ready", flush=True)
while True:
    c, peer = s.accept()
    c.sendall(peer[0].encode())
    c.close()
"""
PEER_CLIENT = r"""
import socket, sys
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    if proto == "tcp":
        s = socket.create_connection((host, port), timeout=2)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(2)
        s.sendto(b"x", (host, port))
    print(s.recv(100).decode())
except OSError as exc:
    print("error:", exc)
"""
POD_NET = "10.88.0"
GATEWAY = f"{POD_NET}.1"
MAPPINGS = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 5353, "containerPort": 53, "protocol": "udp"}]


def start_peer_server(topo: Topology, where: str, port: int) -> subprocess.Popen[bytes]:
    proc = topo.spawn(where, [sys.executable, "-c", PEER_SERVER, str(port)], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    return proc


def peer_seen(where: str, proto: str, host: str, port: int) -> str:
    """What the server saw as our source address (or "error: ...")."""
    out = subprocess.run(["nsenter", f"--net={netns.path_of(where)}", "--", sys.executable, "-c",
                          PEER_CLIENT, proto, host, str(port)],
                         capture_output=True, text=True, timeout=20, check=True)
    return out.stdout.strip()


def ruleset(host: Host) -> str:
    return host.run("nft", "list", "ruleset").stdout


def pod_address(result: dict[str, Any]) -> str:
    return str(result["ips"][0]["address"].split("/")[0])


def assert_port_forwarding(topo: Topology, h1: Host, h2: Host, pod: str) -> None:
    start_peer_server(topo, pod, 80)
    start_peer_server(topo, pod, 53)
    assert peer_seen(h2.name, "tcp", h1.ip, 8080) == h2.ip  # from another host: no SNAT
    assert peer_seen(h1.name, "tcp", h1.ip, 8080) == h1.ip  # the host, to its own address
    assert peer_seen(h1.name, "tcp", "127.0.0.1", 8080) == GATEWAY  # localhost: masqueraded
    assert peer_seen(pod, "tcp", h1.ip, 8080) == GATEWAY  # hairpin: masqueraded
    assert peer_seen(h2.name, "udp", h1.ip, 5353) == h2.ip
    assert peer_seen(h1.name, "udp", "127.0.0.1", 5353) == GATEWAY
    assert h1.run("cat", "/proc/sys/net/ipv4/conf/cni0/route_localnet").stdout.strip() == "1"


def assert_nothing_of_ours(h1: Host, h2: Host) -> None:
    assert "podnet" not in ruleset(h1)
    assert peer_seen(h2.name, "tcp", h1.ip, 8080).startswith("error:")  # no DNAT any more


def portmap_del_without_anything(cni_path: list[str], container_id: str) -> None:
    conf = {"cniVersion": "1.0.0", "name": "pmtest", "type": "portmap"}
    cnirun.call("portmap", "DEL", conf, cni_path=cni_path, container_id=container_id, netns="")


@pytest.fixture
def only_our_portmap(cni_bin: Path, tmp_path: Path) -> Path:
    """A CNI_PATH entry holding only our portmap, so bridge/host-local resolve to the reference."""
    d = tmp_path / "ourpm"
    d.mkdir()
    os.symlink(cni_bin / "portmap", d / "portmap")
    return d


def test_reference_bridge_chained_with_our_portmap(topo: Topology, only_our_portmap: Path,
                                                   reference_cni: Path, tmp_path: Path) -> None:
    h1, h2 = topo.add_host(), topo.add_host()
    pod = topo.add_pod_netns("p1")
    conflist = {"cniVersion": "1.0.0", "name": "pmtest", "plugins": [
        {"type": "bridge", "bridge": "cni0", "isGateway": True, "isDefaultGateway": True,
         "hairpinMode": True, "ipam": {"type": "host-local", "subnet": f"{POD_NET}.0/24",
                                       "dataDir": str(tmp_path / "ipam")}},
        {"type": "portmap", "capabilities": {"portMappings": True}}]}
    cni_path = [str(only_our_portmap), str(reference_cni)]
    rt = cnirun.Runtime(conflist, cni_path)
    att = cnirun.Attachment("pm-ref-1", pod, capability_args={"portMappings": MAPPINGS})
    with netns.enter(h1.path):
        result = rt.add(att)
    assert pod_address(result).startswith(POD_NET)
    assert "table inet podnet_portmap" in ruleset(h1)
    assert "podnet" not in subprocess.run(["nft", "list", "tables"], capture_output=True,
                                          text=True, check=True).stdout  # root netns untouched
    assert_port_forwarding(topo, h1, h2, netns.path_of(pod))
    with netns.enter(h1.path):
        rt.check(att)
        rt.delete(att)
        portmap_del_without_anything(cni_path, att.container_id)  # repeated, no state at all
    assert_nothing_of_ours(h1, h2)


def test_our_bridge_with_ipmasq_chained_with_our_portmap(topo: Topology, cni_bin: Path,
                                                        tmp_path: Path) -> None:
    pytest.importorskip("cni.bridge")
    h1, h2 = topo.add_host(), topo.add_host()
    pod = topo.add_pod_netns("p1")
    conflist = {"cniVersion": "1.1.0", "name": "pmtest", "plugins": [
        {"type": "bridge", "bridge": "cni0", "isGateway": True, "isDefaultGateway": True,
         "hairpinMode": True, "ipMasq": True, "stateDir": str(tmp_path / "state"),
         "ipam": {"type": "host-local", "subnet": f"{POD_NET}.0/24", "dataDir": str(tmp_path / "ipam")}},
        {"type": "portmap", "capabilities": {"portMappings": True}}]}
    cni_path = [str(cni_bin)]
    rt = cnirun.Runtime(conflist, cni_path)
    att = cnirun.Attachment("pm-our-1", pod, capability_args={"portMappings": MAPPINGS})
    with netns.enter(h1.path):
        rt.add(att)
        rt.check(att)
    assert_port_forwarding(topo, h1, h2, netns.path_of(pod))
    start_peer_server(topo, h2.name, 9000)
    assert peer_seen(pod, "tcp", h2.ip, 9000) == h1.ip  # ipMasq: leaves as the host
    with netns.enter(h1.path):
        rt.delete(att)
        rt.delete(att)
        rt.gc([])
    assert_nothing_of_ours(h1, h2)


def test_portmap_exec_errors_are_spec_json(cni_bin: Path, topo: Topology) -> None:
    h1 = topo.add_host()
    pod = topo.add_pod_netns("p")
    conf = {"cniVersion": "1.0.0", "name": "pmtest", "type": "portmap", "backend": "iptables",
            "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.88.0.5/24"}]},
            "runtimeConfig": {"portMappings": MAPPINGS}}
    with netns.enter(h1.path):
        code, out, _ = cnirun.exec_plugin("portmap", "ADD", conf, cni_path=[str(cni_bin)],
                                          container_id="c1", netns=pod)
    assert code == 1 and out is not None and out["code"] == 7, json.dumps(out)
    assert "nftables" in out["msg"]
    assert "podnet" not in ruleset(h1)


def test_concurrent_adds_and_dels_leave_nothing(topo: Topology, cni_bin: Path) -> None:
    """The table is dropped with its last element: the per-table lock must keep a DEL's
    "delete table" from swallowing a concurrent ADD's elements."""
    from concurrent.futures import ThreadPoolExecutor

    h1 = topo.add_host()
    pod = topo.add_pod_netns("p")
    n = 12

    def run(command: str, i: int) -> None:
        conf: dict[str, Any] = {"cniVersion": "1.0.0", "name": "pmtest", "type": "portmap"}
        if command == "ADD":
            conf["prevResult"] = {"cniVersion": "1.0.0", "ips": [{"address": f"{POD_NET}.{i + 2}/24"}]}
            conf["runtimeConfig"] = {"portMappings": [{"hostPort": 7000 + i, "containerPort": 80}]}
        with netns.enter(h1.path):  # per thread: the netns is a property of the thread
            cnirun.call("portmap", command, conf, cni_path=[str(cni_bin)], container_id=f"c{i}",
                        netns=pod if command == "ADD" else "")

    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(lambda i: run("ADD", i), range(n)))
        assert ruleset(h1).count("comment") == 3 * n  # dnat + hairpin + localhost per pod
        # DELs of the first half race with ADDs of a second generation.
        jobs = [pool.submit(run, "DEL", i) for i in range(n)]
        jobs += [pool.submit(run, "ADD", i) for i in range(n, 2 * n)]
        for job in jobs:
            job.result()
        text = ruleset(h1)
        assert text.count("comment") == 3 * n and "pmtest:c0:" not in text
        list(pool.map(lambda i: run("DEL", i), range(n, 2 * n)))
    assert "podnet" not in ruleset(h1)
