"""The per-node CNI daemon against the real kernel: started INSIDE a simulated host netns, the
installed executables forward to it, and the results equal the in-process path's.

Plugins are exec'd through cnirun from a thread that entered the host netns (the exec inherits
it), so nothing touches the root namespace.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cni import entry
from podnet import execs, netns
from podnet.netlink import Netlink
from podnet.testing import cnirun
from podnet.testing.harness import Host, Topology

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Node:
    topo: Topology
    host: Host
    cni_bin: Path
    work: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def sock(self) -> str:
        return str(self.work / "cni.sock")

    @property
    def log(self) -> str:
        path = self.work / "daemon.log"
        return path.read_text() if path.exists() else ""

    def start_daemon(self) -> None:
        with open(self.work / "daemon.log", "ab") as log:
            self.proc = self.topo.spawn(self.host.name, [sys.executable, "-m", "cni.daemon", "--socket",
                                                         self.sock], stdout=log, stderr=log, cwd=REPO)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.sock):
            assert self.proc.poll() is None, self.log
            assert time.monotonic() < deadline, "daemon did not come up"
            time.sleep(0.02)

    def conflist(self, tag: str) -> dict[str, Any]:
        return {"cniVersion": "1.0.0", "name": "dmn", "plugins": [{
            "type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": True,
            "stateDir": str(self.work / f"state-{tag}"),
            "ipam": {"type": "host-local", "dataDir": str(self.work / f"ipam-{tag}"),
                     "ranges": [[{"subnet": "10.77.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]},
        }]}

    def runtime(self, tag: str, use_daemon: bool) -> cnirun.Runtime:
        return SocketRuntime(self.conflist(tag), [str(self.cni_bin)],
                             socket_path=self.sock if use_daemon else "")


@dataclass
class SocketRuntime(cnirun.Runtime):
    socket_path: str = ""

    def _kw(self, att: cnirun.Attachment) -> dict[str, Any]:
        return {**super()._kw(att), "extra_env": {entry.SOCKET_ENV: self.socket_path}}


@pytest.fixture
def node(topo: Topology, cni_bin: Path) -> Iterator[Node]:
    work = Path(tempfile.mkdtemp(prefix="cnidn", dir="/tmp"))  # short: unix socket path limit
    n = Node(topo, topo.add_host(), cni_bin, work)
    try:
        yield n
    finally:
        if n.proc is not None and n.proc.poll() is None:
            n.proc.send_signal(signal.SIGTERM)
            n.proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


def in_host(node: Node, fn: Any, *args: Any) -> Any:
    with netns.enter(node.host.path):
        return fn(*args)


def normalized(result: dict[str, Any]) -> str:
    """A result with what legitimately differs between two pods masked: addresses, MACs, names
    derived from the container ID, sandbox paths."""
    text = json.dumps(result, sort_keys=True)
    text = re.sub(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", "MAC", text)
    text = re.sub(r"10\.77\.0\.\d+", "IP", text)
    text = re.sub(r'"veth[0-9a-z]+"', '"VETH"', text)
    return re.sub(r'"/run/netns/[^"]+"', '"NETNS"', text)


def pod_links(path: str) -> list[str]:
    with Netlink.open(path) as nl:
        return sorted(link.name for link in nl.list_links())


def host_veths(node: Node) -> list[str]:
    with Netlink.open(node.host.path) as nl:
        return sorted(link.name for link in nl.list_links() if link.kind == "veth" and link.name != "eth0")


def test_bridge_through_the_daemon_equals_in_process(node: Node) -> None:
    node.start_daemon()
    results, atts = {}, {}
    for tag, use_daemon in (("daemon", True), ("local", False)):
        rt = node.runtime(tag, use_daemon)
        att = cnirun.Attachment(container_id=f"pod-{tag}", netns=node.topo.add_pod_netns(tag))
        results[tag], atts[tag] = in_host(node, rt.add, att), att
        assert pod_links(att.netns) == ["eth0", "lo"]
        in_host(node, rt.check, att)
        # The pod reaches its gateway: the wiring is real, not just a result.
        gw = results[tag]["ips"][0]["gateway"]
        assert execs.run(["ping", "-c1", "-W2", gw], netns=att.netns, check=False).returncode == 0
        in_host(node, rt.delete, att)
        in_host(node, rt.delete, att)  # DEL is idempotent on both paths
        assert pod_links(att.netns) == ["lo"]
    assert normalized(results["daemon"]) == normalized(results["local"])
    assert results["daemon"]["ips"][0]["address"] == results["local"]["ips"][0]["address"]
    assert host_veths(node) == []
    log = node.log
    assert "bridge ADD container=pod-daemon" in log and "bridge DEL container=pod-daemon" in log
    assert "pod-local" not in log  # the daemon-less run really ran in-process


def test_same_error_json_from_daemon_and_in_process(node: Node) -> None:
    node.start_daemon()
    pod = node.topo.add_pod_netns("err")
    for conf, code in (({"cniVersion": "1.0.0", "name": "dmn", "type": "bridge"}, 7),  # no ipam
                       ({"cniVersion": "9.9.9", "name": "dmn", "type": "bridge"}, 1)):
        outs = []
        for sock in (node.sock, ""):
            got, out, _ = in_host(node, lambda c=conf, s=sock: cnirun.exec_plugin(
                "bridge", "ADD", c, cni_path=[str(node.cni_bin)], container_id="c-err", netns=pod,
                extra_env={entry.SOCKET_ENV: s}))
            outs.append((got, out))
        assert outs[0] == outs[1]
        assert outs[0][0] == 1 and outs[0][1] is not None and outs[0][1]["code"] == code


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_daemon_gone_between_add_and_del_falls_back(node: Node, how: str) -> None:
    node.start_daemon()
    rt = node.runtime("gone", use_daemon=True)
    att = cnirun.Attachment(container_id=f"pod-{how}", netns=node.topo.add_pod_netns(how))
    in_host(node, rt.add, att)
    assert node.proc is not None
    node.proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGKILL)
    node.proc.wait(timeout=30)
    # SIGTERM removes the socket; SIGKILL leaves a stale one (connect refused).
    assert os.path.exists(node.sock) == (how == "sigkill")
    in_host(node, rt.delete, att)
    assert pod_links(att.netns) == ["lo"]
    assert host_veths(node) == []
    assert not list((node.work / "ipam-gone" / "dmn").glob("10.*"))
    # The masquerade rules went too: nothing of this pod is left in the host's nat ruleset.
    ruleset = execs.run(["nft", "list", "ruleset"], netns=node.host.name).stdout
    assert att.container_id not in ruleset


def test_a_caller_in_another_host_netns_is_never_served_by_this_daemon(node: Node) -> None:
    node.start_daemon()
    other = node.topo.add_host()  # a second simulated host pointed at the first host's daemon
    rt = node.runtime("other", use_daemon=True)
    att = cnirun.Attachment(container_id="pod-other", netns=node.topo.add_pod_netns("other"))
    with netns.enter(other.path):
        rt.add(att)
    with Netlink.open(other.path) as nl:
        assert nl.get_link("cni0") is not None  # set up where the caller lives...
    with Netlink.open(node.host.path) as nl:
        assert nl.get_link("cni0") is None  # ...not in the daemon's host
    assert "refused bridge ADD" in node.log
    with netns.enter(other.path):
        rt.delete(att)
    assert pod_links(att.netns) == ["lo"]
