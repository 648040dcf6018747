"""The flannel CNI plugin against the real kernel, inside simulated hosts (never the root netns).

A hand-written subnet.env stands in for flanneld.  The installed `flannel` executable is exec'd
as a runtime would (cnirun) and delegates to OUR bridge (in-process, with our host-local) or to the
REFERENCE bridge and host-local of Debian's containernetworking-plugins (exec'd).  Debian ships no
reference flannel binary, so the reference side of the interop is the delegate, and the cache file
format (the delegate config JSON, `<dataDir>/<containerID>`) is the reference plugin's.
"""

from __future__ import annotations

import json
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from netns_tests.test_bridge import ping, pod_ip
from netns_tests.test_cni_daemon import Node
from podnet import execs, netns
from podnet.netlink import Netlink
from podnet.testing import cnirun
from podnet.testing.harness import Host, Topology
from podnet.testing.wait import wait_until

NETWORK = "10.244.0.0/16"
SUBNET = "10.244.1.0/24"
GATEWAY = "10.244.1.1"
MTU = 1450
NO_DAEMON = {"PODNET_CNI_SOCKET": ""}  # the executable serves every request itself


def write_subnet_env(tmp: Path, ipmasq: bool = True) -> Path:
    path = tmp / "subnet.env"
    path.write_text(f"FLANNEL_NETWORK={NETWORK}\nFLANNEL_SUBNET={GATEWAY}/24\nFLANNEL_MTU={MTU}\n"
                    f"FLANNEL_IPMASQ={'true' if ipmasq else 'false'}\n")
    return path


def flannel_conf(tmp: Path, version: str, delegate: dict[str, Any]) -> dict[str, Any]:
    """The kube-flannel conflist entry, with every directory under the test's tmp."""
    return {"cniVersion": version, "name": "cbr0", "type": "flannel",
            "subnetFile": str(tmp / "subnet.env"), "dataDir": str(tmp / "flannel"),
            "ipam": {"dataDir": str(tmp / "ipam")},
            "delegate": {"hairpinMode": True, "isDefaultGateway": True, **delegate}}


def ipam_files(tmp: Path) -> list[str]:
    d = tmp / "ipam" / "cbr0"
    return sorted(p.name for p in d.iterdir() if p.name[0].isdigit()) if d.exists() else []


def cached(tmp: Path) -> list[str]:
    d = tmp / "flannel"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def assert_pod_wired(host: Host, pod: str, result: dict[str, Any]) -> None:
    """What the generated delegate config promises, seen in the kernel."""
    assert pod_ip(result).startswith("10.244.1.") and pod_ip(result) != GATEWAY
    routes = execs.run(["ip", "route", "show"], netns=pod).stdout
    assert f"{NETWORK} via {GATEWAY} dev eth0" in routes  # ipam route to the flannel network
    assert f"default via {GATEWAY} dev eth0" in routes  # delegate override isDefaultGateway
    with Netlink.open(pod) as nl:
        assert nl.require_link("eth0").mtu == MTU
    with Netlink.open(host.name) as nl:
        assert f"{GATEWAY}/24" in nl.list_addrs("cni0")
    veth = next(i["name"] for i in result["interfaces"] if i["name"].startswith("veth"))
    assert "hairpin on" in host.run("bridge", "-d", "link", "show", "dev", veth).stdout
    assert ping(pod, GATEWAY)


def test_flannel_delegates_to_our_bridge_add_check_gc_del(topo: Topology, cni_bin: Path,
                                                          tmp_path: Path) -> None:
    host = topo.add_host()
    write_subnet_env(tmp_path)
    conf = flannel_conf(tmp_path, "1.1.0", {"stateDir": str(tmp_path / "state")})
    runtime = cnirun.Runtime({"cniVersion": "1.1.0", "name": "cbr0", "plugins": [conf]},
                             [str(cni_bin)])
    atts = {cid: cnirun.Attachment(container_id=cid, netns=topo.add_pod_netns(cid))
            for cid in ("fl1", "fl2")}
    with netns.enter(host.name):
        results = {cid: runtime.add(att) for cid, att in atts.items()}
        for att in atts.values():
            runtime.check(att)
        # STATUS goes through bridge to host-local: ready, the /24 has free addresses.
        cnirun.call("flannel", "STATUS", {**conf, "cniVersion": "1.1.0"}, cni_path=[str(cni_bin)])
    for cid, result in results.items():
        assert_pod_wired(host, atts[cid].netns, result)
    assert ping(atts["fl1"].netns, pod_ip(results["fl2"]))
    assert cached(tmp_path) == ["fl1", "fl2"]
    delegate = json.loads((tmp_path / "flannel" / "fl1").read_text())
    assert delegate["ipMasq"] is False and delegate["ipam"]["ranges"] == [[{"subnet": SUBNET}]]
    # GC keeps fl1 only: fl2's veth, address and cache go, fl1 keeps working.
    with netns.enter(host.name):
        runtime.gc([atts["fl1"]])
    assert ipam_files(tmp_path) == [pod_ip(results["fl1"])]
    assert cached(tmp_path) == ["fl1"]
    assert ping(atts["fl1"].netns, GATEWAY)
    with netns.enter(host.name):
        runtime.delete(atts["fl1"])
        runtime.delete(atts["fl1"])  # idempotent: no cache file, nothing to undo
        runtime.delete(atts["fl2"])
    assert ipam_files(tmp_path) == [] and cached(tmp_path) == []
    with Netlink.open(host.name) as nl:
        bridge = nl.require_link("cni0")
        assert [link.name for link in nl.list_links() if link.master == bridge.index] == []


def reference_dir(tmp: Path, cni_bin: Path, reference_cni: Path) -> Path:
    """A CNI_PATH with our flannel next to the reference bridge and host-local."""
    d = tmp / "bin"
    d.mkdir()
    (d / "flannel").symlink_to(cni_bin / "flannel")
    for name in ("bridge", "host-local"):
        (d / name).symlink_to(reference_cni / name)
    return d


def test_flannel_delegates_to_the_reference_bridge(topo: Topology, cni_bin: Path,
                                                   reference_cni: Path, tmp_path: Path) -> None:
    host = topo.add_host()
    write_subnet_env(tmp_path, ipmasq=True)
    conf = flannel_conf(tmp_path, "0.3.1", {})  # kube-flannel's conflist version
    path = [str(reference_dir(tmp_path, cni_bin, reference_cni))]
    pods = {cid: topo.add_pod_netns(cid) for cid in ("rf1", "rf2")}
    with netns.enter(host.name):
        results = {cid: cnirun.call("flannel", "ADD", conf, cni_path=path, container_id=cid,
                                    netns=pod, extra_env=NO_DAEMON) for cid, pod in pods.items()}
    for cid, result in results.items():
        assert result is not None and result["cniVersion"] == "0.3.1"
        assert_pod_wired(host, pods[cid], result)
    ips = {cid: pod_ip(r) for cid, r in results.items() if r is not None}
    assert ipam_files(tmp_path) == sorted(ips.values())  # the reference host-local's files
    assert ping(pods["rf1"], ips["rf2"])
    with netns.enter(host.name):
        for cid, pod in pods.items():
            for _ in range(2):  # the second DEL finds no cache file and succeeds
                cnirun.call("flannel", "DEL", conf, cni_path=path, container_id=cid, netns=pod,
                            extra_env=NO_DAEMON)
    assert ipam_files(tmp_path) == [] and cached(tmp_path) == []


def test_add_before_flanneld_wrote_subnet_env_is_try_again(topo: Topology, cni_bin: Path,
                                                           tmp_path: Path) -> None:
    host = topo.add_host()
    conf = flannel_conf(tmp_path, "1.0.0", {"stateDir": str(tmp_path / "state")})
    pod = topo.add_pod_netns("early")
    with netns.enter(host.name):
        code, out, _ = cnirun.exec_plugin("flannel", "ADD", conf, cni_path=[str(cni_bin)],
                                          container_id="early", netns=pod, extra_env=NO_DAEMON)
        assert code == 1 and out is not None and out["code"] == 11, out
        # The runtime's DEL after the failed ADD succeeds: nothing was cached or created.
        cnirun.call("flannel", "DEL", conf, cni_path=[str(cni_bin)], container_id="early",
                    netns=pod, extra_env=NO_DAEMON)
    assert cached(tmp_path) == [] and ipam_files(tmp_path) == []


def test_flanneld_without_ip_masq_makes_the_bridge_masquerade(topo: Topology, cni_bin: Path,
                                                              tmp_path: Path) -> None:
    """FLANNEL_IPMASQ=false: flanneld does not masquerade, so the delegate bridge must."""
    host = topo.add_host()
    write_subnet_env(tmp_path, ipmasq=False)
    conf = flannel_conf(tmp_path, "1.0.0", {"stateDir": str(tmp_path / "state")})
    pod = topo.add_pod_netns("mq1")
    kw: dict[str, Any] = {"cni_path": [str(cni_bin)], "container_id": "mq1", "netns": pod,
                          "extra_env": NO_DAEMON}
    with netns.enter(host.name):
        result = cnirun.call("flannel", "ADD", conf, **kw)
    assert result is not None
    masq = ["nft", "list", "set", "inet", "podnet_ipmasq", "pods4"]
    assert pod_ip(result) in execs.run(masq, netns=host.name).stdout
    with netns.enter(host.name):
        cnirun.call("flannel", "DEL", conf, **kw)
    # The last pod's DEL may take the whole table away: either way, no element is left.
    assert pod_ip(result) not in execs.run(masq, netns=host.name, check=False).stdout


@pytest.fixture
def daemon_node(topo: Topology, cni_bin: Path) -> Iterator[Node]:
    """A simulated host for the per-node CNI daemon (stopped by recorded PID at the end)."""
    work = Path(tempfile.mkdtemp(prefix="fldn", dir="/tmp"))  # short: unix socket path limit
    node = Node(topo, topo.add_host(), cni_bin, work)
    try:
        yield node
    finally:
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGTERM)
            node.proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


def test_flannel_through_the_cni_daemon(daemon_node: Node) -> None:
    """The per-node daemon serves flannel like any plugin: it delegates to bridge in-process."""
    node = daemon_node
    node.start_daemon()
    write_subnet_env(node.work)
    conf = flannel_conf(node.work, "1.0.0", {"stateDir": str(node.work / "state")})
    pod = node.topo.add_pod_netns("dm1")
    kw: dict[str, Any] = {"cni_path": [str(node.cni_bin)], "container_id": "dm1", "netns": pod,
                          "extra_env": {"PODNET_CNI_SOCKET": node.sock}}
    with netns.enter(node.host.name):
        result = cnirun.call("flannel", "ADD", conf, **kw)
    assert result is not None
    assert_pod_wired(node.host, pod, result)
    with netns.enter(node.host.name):
        cnirun.call("flannel", "DEL", conf, **kw)
    assert ipam_files(node.work) == [] and cached(node.work) == []
    # The daemon logs a request after replying to it: the DEL line may trail the reply.
    wait_until(lambda: "flannel DEL container=dm1" in node.log, timeout=5, what="the DEL log line")
    assert "flannel ADD container=dm1" in node.log
