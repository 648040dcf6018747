"""Interoperability with the reference plugins (Debian containernetworking-plugins v1.1.1).

* the REFERENCE bridge delegating IPAM to OUR host-local (our host-local comes first in CNI_PATH);
* OUR bridge chained with the REFERENCE portmap, reached from another simulated host;
* the reference loopback and ours print the same result.

Every plugin runs as a real executable inside a simulated host's namespace.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from netns_tests.test_bridge import GATEWAY, SUBNET, ping, pod_ip
from podnet import execs, netns
from podnet.testing import cnirun
from podnet.testing.harness import Topology

SERVER = """
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 80))
s.listen()
while True:
    c, _ = s.accept()
    c.sendall(b"hello from the pod\\n")
    c.close()
"""

CLIENT = """
import socket, sys, time
deadline = time.monotonic() + 5
while True:
    try:
        with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1) as c:
            print(c.recv(100).decode().strip())
            break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.05)
"""


def ipam_files(ipam_dir: Path, network: str) -> list[str]:
    d = ipam_dir / network
    return sorted(p.name for p in d.iterdir() if p.name[0].isdigit()) if d.exists() else []


def test_reference_bridge_with_our_host_local(topo: Topology, cni_bin: Path, reference_cni: Path,
                                              tmp_path: Path) -> None:
    host = topo.add_host()
    conf = {"cniVersion": "1.0.0", "name": "refbr", "type": "bridge", "isGateway": True,
            "ipam": {"type": "host-local", "subnet": SUBNET, "dataDir": str(tmp_path)}}
    # The reference bridge is found in /usr/lib/cni; CNI_PATH puts our host-local first.
    path_env = {"CNI_PATH": f"{cni_bin}:{reference_cni}"}
    pods = {cid: topo.add_pod_netns(cid) for cid in ("ref1", "ref2")}
    results = {}
    with netns.enter(host.name):
        for cid, pod in pods.items():
            results[cid] = cnirun.call("bridge", "ADD", conf, cni_path=[str(reference_cni)],
                                       container_id=cid, netns=pod, extra_env=path_env)
    ips = {cid: pod_ip(r) for cid, r in results.items() if r is not None}
    assert len(set(ips.values())) == 2
    assert ipam_files(tmp_path, "refbr") == sorted(ips.values())
    assert ping(pods["ref1"], ips["ref2"]) and ping(pods["ref2"], GATEWAY)
    with netns.enter(host.name):
        for cid, pod in pods.items():
            cnirun.call("bridge", "DEL", conf, cni_path=[str(reference_cni)], container_id=cid,
                        netns=pod, extra_env=path_env)
    assert ipam_files(tmp_path, "refbr") == []


def chain_dir(tmp_path: Path, cni_bin: Path, reference_cni: Path) -> Path:
    """A CNI_PATH holding our bridge and host-local next to the reference portmap."""
    d = tmp_path / "bin"
    d.mkdir()
    for name, src in (("bridge", cni_bin), ("host-local", cni_bin), ("portmap", reference_cni)):
        (d / name).symlink_to(src / name)
    return d


def test_our_bridge_chained_with_the_reference_portmap(topo: Topology, cni_bin: Path,
                                                       reference_cni: Path, tmp_path: Path) -> None:
    host, other = topo.add_host(), topo.add_host()
    conflist: dict[str, Any] = {"cniVersion": "1.0.0", "name": "pmnet", "plugins": [
        {"type": "bridge", "isDefaultGateway": True, "stateDir": str(tmp_path / "state"),
         "ipam": {"type": "host-local", "subnet": SUBNET, "dataDir": str(tmp_path / "ipam")}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ]}
    runtime = cnirun.Runtime(conflist, [str(chain_dir(tmp_path, cni_bin, reference_cni))])
    pod = topo.add_pod_netns("pm1")
    att = cnirun.Attachment(container_id="pm1", netns=pod, capability_args={
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]})
    with netns.enter(host.name):
        result = runtime.add(att)
    assert result["interfaces"][2]["sandbox"] == pod
    topo.spawn(pod, [sys.executable, "-c", SERVER])
    reply = other.run(sys.executable, "-c", CLIENT, host.ip, "8080").stdout
    assert reply.strip() == "hello from the pod"
    with netns.enter(host.name):
        runtime.delete(att)
        runtime.delete(att)
    rules = execs.run(["iptables-save", "-t", "nat"], netns=host.name).stdout
    assert "CNI-DN-" not in rules
    assert ipam_files(tmp_path / "ipam", "pmnet") == []


def test_reference_and_our_loopback_print_the_same_result(topo: Topology, cni_bin: Path,
                                                          reference_cni: Path) -> None:
    host = topo.add_host()
    conf = {"cniVersion": "1.0.0", "name": "cni-loopback", "type": "loopback"}
    results = []
    for plugin_dir in (reference_cni, cni_bin):
        pod = topo.add_pod_netns(f"lo-{plugin_dir.name}")
        execs.run(["ip", "link", "set", "lo", "down"], netns=pod)
        with netns.enter(host.name):
            result = cnirun.call("loopback", "ADD", conf, cni_path=[str(plugin_dir)],
                                 container_id="c1", netns=pod)
        assert result is not None
        if result.get("dns") == {}:
            del result["dns"]  # v1.1.1 prints an empty dns object; the spec omits empty ones
        result["interfaces"][0]["sandbox"] = "<pod>"
        results.append(result)
    assert results[0] == results[1]
