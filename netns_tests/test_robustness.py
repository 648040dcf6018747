"""The bridge plugin under concurrency and crashes, as real executables in a simulated host.

* 20 concurrent ADDs get 20 distinct addresses, and 20 concurrent DELs leave nothing behind.
* ADDs killed with SIGKILL half-way (after their write-ahead record exists), then GC with the
  attachments that completed as the valid list: no leaked IPAM reservation, no stray host veth,
  no masquerade entry of a dead attachment.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from netns_tests.test_bridge import BridgeNet, net, pod_ip
from podnet import netns
from podnet.netlink import Netlink
from podnet.testing import cnirun

__all__ = ["net"]  # the fixture, re-exported for pytest
N = 20


@dataclass
class Call:
    cid: str
    proc: subprocess.Popen[bytes]

    def finish(self) -> tuple[int, dict[str, Any] | None]:
        assert self.proc.stdout is not None and self.proc.stderr is not None
        out = self.proc.stdout.read()
        self.proc.stderr.read()
        code = self.proc.wait(timeout=60)
        return code, (json.loads(out) if out.strip() else None)


def spawn(net: BridgeNet, command: str, cid: str, conf: dict[str, Any]) -> Call:
    """Start the installed plugin in the host namespace (PID recorded by the topology)."""
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **net.env(command, cid)}
    proc = net.topo.spawn(net.host.name, [str(net.cni_bin / "bridge")], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(conf).encode())  # all at once: no child waits on another's stdin
    proc.stdin.close()
    return Call(cid, proc)


def masq_pod_ips(net: BridgeNet) -> set[str]:
    """Pod addresses mentioned anywhere in the host's ruleset (the subnet itself excluded)."""
    rules = net.host.run("nft", "list", "ruleset").stdout
    return set(re.findall(r"\b10\.99\.0\.\d+\b", rules)) - {"10.99.0.0"}


def host_veths(net: BridgeNet) -> list[str]:
    return sorted(link for link in net.host_links() if link.startswith("veth"))


def test_20_concurrent_adds_get_distinct_ips_and_concurrent_dels_clean_up(net: BridgeNet) -> None:
    conf = net.conf(isGateway=True, ipMasq=True)
    cids = [f"conc{i}" for i in range(N)]
    for cid in cids:
        net.pod(cid)
    start = time.monotonic()
    results = [call.finish() for call in [spawn(net, "ADD", cid, conf) for cid in cids]]
    add_wall = time.monotonic() - start
    assert [code for code, _ in results] == [0] * N, [out for code, out in results if code]
    ips = [pod_ip(out) for _, out in results if out]
    assert len(set(ips)) == N
    assert net.allocated_ips() == sorted(ips) and len(net.bridge_ports()) == N
    assert masq_pod_ips(net) == set(ips)
    start = time.monotonic()
    dels = [call.finish() for call in [spawn(net, "DEL", cid, conf) for cid in cids]]
    del_wall = time.monotonic() - start
    assert [code for code, _ in dels] == [0] * N, dels
    assert net.allocated_ips() == [] and net.bridge_ports() == [] and net.records() == []
    assert masq_pod_ips(net) == set() and host_veths(net) == []
    print(f"20 concurrent ADDs: {add_wall:.2f}s wall, DELs: {del_wall:.2f}s wall")


def wait_for_record(net: BridgeNet, cid: str, timeout: float = 20.0) -> None:
    path = net.state_dir / net.name / f"{cid}:eth0.json"
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.002)


def test_killed_adds_then_gc_leak_nothing(net: BridgeNet) -> None:
    conf = net.conf(isGateway=True, ipMasq=True, macspoofchk=True)
    cids = [f"kill{i}" for i in range(N)]
    for cid in cids:
        net.pod(cid)
    calls = [spawn(net, "ADD", cid, conf) for cid in cids]
    victims = calls[::3]
    for call in victims:  # kill once the ADD is under way (its write-ahead record exists)
        wait_for_record(net, call.cid)
        if call.proc.poll() is None:
            call.proc.send_signal(signal.SIGKILL)
    outcomes = {call.cid: call.finish() for call in calls}
    valid = {cid: out for cid, (code, out) in outcomes.items() if code == 0 and out}
    killed = [call.cid for call in victims if call.proc.returncode == -signal.SIGKILL]
    assert killed, "no ADD was killed mid-way"
    print(f"killed mid-way: {len(killed)}, records left: {len(net.records())}, valid: {len(valid)}")
    assert len(valid) >= N - len(victims)
    gc_conf = {**conf, "cni.dev/valid-attachments": [{"containerID": c, "ifname": "eth0"} for c in valid]}
    with netns.enter(net.host.name):
        cnirun.call("bridge", "GC", gc_conf, cni_path=[str(net.cni_bin)])
    valid_ips = {pod_ip(out) for out in valid.values()}
    valid_veths = sorted(out["interfaces"][1]["name"] for out in valid.values())
    assert set(net.allocated_ips()) == valid_ips
    assert net.bridge_ports() == valid_veths and host_veths(net) == valid_veths
    assert net.records() == sorted(f"{cid}:eth0.json" for cid in valid)
    assert masq_pod_ips(net) == valid_ips
    for cid in cids:  # the runtime's DEL of every attachment, killed or not, still succeeds
        net.delete(cid, conf)
    assert net.allocated_ips() == [] and host_veths(net) == [] and masq_pod_ips(net) == set()
    with Netlink.open(net.host.name) as nl:
        assert nl.get_link("cni0") is not None  # the bridge is never deleted
