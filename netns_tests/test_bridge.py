"""The bridge plugin against the real kernel, run inside simulated hosts (never the root netns).

Most tests run the plugin in-process (`skel.dispatch` inside `podnet.netns.enter(host)`), which is
what the per-node daemon does; `test_real_executable_add_check_del` runs the installed executable
through cnirun in the host namespace.  IPAM is our host-local with a per-test dataDir.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cni import bridge, skel
from podnet import execs, netns
from podnet.netlink import Netlink
from podnet.testing import cnirun
from podnet.testing.harness import Host, Topology

SUBNET = "10.99.0.0/24"
GATEWAY = "10.99.0.1"


@dataclass
class BridgeNet:
    """One simulated host running the bridge plugin for network `name`."""

    topo: Topology
    host: Host
    cni_bin: Path
    tmp: Path
    name: str = "podnet-test"
    subnet: str = SUBNET
    pods: dict[str, str] = field(default_factory=dict)
    add_results: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ipam_dir(self) -> Path:
        return self.tmp / "ipam"

    @property
    def state_dir(self) -> Path:
        return self.tmp / "state"

    def conf(self, version: str = "1.1.0", **extra: Any) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "cniVersion": version, "name": self.name, "type": "bridge", "stateDir": str(self.state_dir),
            "ipam": {"type": "host-local", "subnet": self.subnet, "dataDir": str(self.ipam_dir)},
        }
        conf.update(extra)
        return conf

    def pod(self, cid: str) -> str:
        if cid not in self.pods:
            self.pods[cid] = self.topo.add_pod_netns(cid)
        return self.pods[cid]

    def env(self, command: str, cid: str, ifname: str = "eth0", netns_path: str | None = None
            ) -> dict[str, str]:
        return {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_IFNAME": ifname,
                "CNI_NETNS": self.pods.get(cid, "") if netns_path is None else netns_path,
                "CNI_PATH": str(self.cni_bin)}

    def run(self, command: str, cid: str, conf: dict[str, Any], *, ifname: str = "eth0",
            netns_path: str | None = None, prev: dict[str, Any] | None = None
            ) -> tuple[int, dict[str, Any] | None]:
        """One in-process plugin call in the host namespace: (exit code, parsed stdout)."""
        if prev is not None:
            conf = {**conf, "prevResult": prev}
        env = self.env(command, cid, ifname, netns_path)
        with netns.enter(self.host.name):
            code, out = skel.dispatch(bridge.PLUGIN, env, json.dumps(conf).encode())
        return code, (json.loads(out) if out.strip() else None)

    def add(self, cid: str, conf: dict[str, Any] | None = None, ifname: str = "eth0") -> dict[str, Any]:
        self.pod(cid)
        code, out = self.run("ADD", cid, conf or self.conf(), ifname=ifname)
        assert code == 0, out
        assert out is not None
        self.add_results[cid] = out
        return out

    def delete(self, cid: str, conf: dict[str, Any] | None = None, **kwargs: Any) -> None:
        code, out = self.run("DEL", cid, conf or self.conf(), **kwargs)
        assert code == 0, out

    def host_links(self) -> list[str]:
        with Netlink.open(self.host.name) as nl:
            return [link.name for link in nl.list_links()]

    def bridge_ports(self, bridge_name: str = "cni0") -> list[str]:
        with Netlink.open(self.host.name) as nl:
            br = nl.get_link(bridge_name)
            if br is None:
                return []
            return sorted(link.name for link in nl.list_links() if link.master == br.index)

    def allocated_ips(self) -> list[str]:
        d = self.ipam_dir / self.name
        if not d.exists():
            return []
        return sorted(p.name for p in d.iterdir() if p.name[0].isdigit() or ":" in p.name)

    def records(self) -> list[str]:
        d = self.state_dir / self.name
        return sorted(os.listdir(d)) if d.exists() else []


@pytest.fixture
def net(topo: Topology, cni_bin: Path, tmp_path: Path) -> BridgeNet:
    return BridgeNet(topo=topo, host=topo.add_host(), cni_bin=cni_bin, tmp=tmp_path)


def ping(netns_path: str, address: str) -> bool:
    return execs.run(["ping", "-c1", "-W1", address], netns=netns_path, check=False).returncode == 0


def pod_ip(result: dict[str, Any]) -> str:
    return str(result["ips"][0]["address"].split("/")[0])


def assert_clean(net: BridgeNet) -> None:
    """Nothing of any attachment left: no IPAM reservation, no bridge port, no record."""
    assert net.allocated_ips() == []
    assert net.bridge_ports() == []
    assert net.records() == []


# ------------------------------------------------------------------------------- tests
def test_two_pods_ping_each_other_and_the_host(net: BridgeNet) -> None:
    conf = net.conf(isGateway=True)
    r1, r2 = net.add("pod1", conf), net.add("pod2", conf)
    assert [i["name"] for i in r1["interfaces"]][0::2] == ["cni0", "eth0"]
    assert r1["interfaces"][2]["sandbox"] == net.pods["pod1"]
    assert r1["interfaces"][1]["name"].startswith("veth") and "sandbox" not in r1["interfaces"][1]
    assert r1["ips"][0]["interface"] == 2 and r1["ips"][0]["gateway"] == GATEWAY
    assert pod_ip(r1) != pod_ip(r2)
    assert ping(net.pods["pod1"], pod_ip(r2))
    assert ping(net.pods["pod2"], pod_ip(r1))
    assert ping(net.pods["pod1"], GATEWAY)
    assert ping(net.host.name, pod_ip(r2))
    assert len(net.bridge_ports()) == 2
    net.delete("pod1", conf)
    net.delete("pod2", conf)
    assert_clean(net)


def test_default_gateway_routes_out_through_the_host(net: BridgeNet) -> None:
    other = net.topo.add_host()
    # The other host routes the pod subnet back via our host (no masquerade in this test).
    other.run("ip", "route", "add", SUBNET, "via", net.host.ip)
    r = net.add("pod1", net.conf(isDefaultGateway=True))
    assert {"dst": "0.0.0.0/0", "gw": GATEWAY} in r["routes"]
    routes = execs.run(["ip", "route", "show", "default"], netns=net.pods["pod1"]).stdout
    assert f"default via {GATEWAY} dev eth0" in routes
    assert ping(net.pods["pod1"], other.ip)
    net.delete("pod1", net.conf(isDefaultGateway=True))


def test_hairpin_promisc_and_mtu(net: BridgeNet) -> None:
    r = net.add("pod1", net.conf(hairpinMode=True, mtu=1400))
    veth = r["interfaces"][1]["name"]
    detail = net.host.run("bridge", "-d", "link", "show", "dev", veth).stdout
    assert "hairpin on" in detail
    with Netlink.open(net.pods["pod1"]) as nl:
        assert nl.require_link("eth0").mtu == 1400
    with Netlink.open(net.host.name) as nl:
        assert nl.require_link(veth).mtu == 1400
        assert nl.require_link("cni0").mtu == 1400
        assert not nl.require_link("cni0").promisc
    r2 = net.add("pod2", net.conf(promiscMode=True, bridge="cni1"))
    with Netlink.open(net.host.name) as nl:
        assert nl.require_link("cni1").promisc
        assert nl.bridge_port_info(r2["interfaces"][1]["name"])["mode"] == 0


def test_dad_off_and_arp_notify_on_in_the_pod(net: BridgeNet) -> None:
    net.add("pod1")
    out = execs.run(["sh", "-c", "cat /proc/sys/net/ipv6/conf/eth0/accept_dad "
                     "/proc/sys/net/ipv4/conf/eth0/arp_notify"], netns=net.pods["pod1"]).stdout.split()
    assert out == ["0", "1"]


def vlan_supported(topo: Topology) -> bool:
    ns = topo.new_netns("vlanprobe")
    proc = execs.run(["ip", "link", "add", "vp0", "type", "bridge", "vlan_filtering", "1"],
                     netns=ns, check=False)
    return proc.returncode == 0


def test_vlan_sets_pvid_or_fails_cleanly(net: BridgeNet) -> None:
    conf = net.conf(vlan=100)
    net.pod("pod1")
    code, out = net.run("ADD", "pod1", conf)
    if not vlan_supported(net.topo):
        # This kernel has no CONFIG_BRIDGE_VLAN_FILTERING: a config error, and nothing left over.
        assert code == 1 and out is not None and out["code"] == skel.INVALID_CONFIG, out
        assert "VLAN filtering" in out["msg"]
        assert_clean(net)
        return
    assert code == 0, out
    veth = out["interfaces"][1]["name"]
    vlans = net.host.run("bridge", "vlan", "show", "dev", veth).stdout
    assert "100 PVID Egress Untagged" in vlans


def test_macspoofchk_drops_a_spoofed_source_mac(net: BridgeNet) -> None:
    conf = net.conf(isGateway=True, macspoofchk=True)
    net.add("pod1", conf)
    pod = net.pods["pod1"]
    assert ping(pod, GATEWAY)
    assert net.run("CHECK", "pod1", conf, prev=net.add_results["pod1"])[0] == 0
    execs.run(["ip", "neigh", "flush", "all"], netns=pod)
    execs.run(["ip", "link", "set", "eth0", "address", "02:00:00:00:00:99"], netns=pod)
    assert not ping(pod, GATEWAY)
    listing = net.host.run("nft", "list", "table", "bridge", bridge.MACSPOOF_TABLE).stdout
    dropped = re.search(r"counter packets (\d+) bytes \d+ drop", listing)
    assert dropped and int(dropped.group(1)) > 0, listing
    code, out = net.run("CHECK", "pod1", conf, prev=net.add_results["pod1"])
    assert code == 1 and out is not None and "MAC" in out["msg"], out  # the pod's MAC changed
    net.delete("pod1", conf)
    listing = net.host.run("nft", "list", "table", "bridge", bridge.MACSPOOF_TABLE).stdout
    assert "ms-" not in listing and "elements" not in listing


def test_del_is_idempotent_without_netns_and_after_the_netns_is_gone(net: BridgeNet) -> None:
    conf = net.conf(isGateway=True)
    net.add("pod1", conf)
    net.add("pod2", conf)
    for _ in range(3):  # repeated DEL
        net.delete("pod1", conf)
    # DEL with an empty CNI_NETNS while the netns still exists: the host veth takes the pair.
    net.delete("pod2", conf, netns_path="")
    with Netlink.open(net.pods["pod2"]) as nl:
        assert nl.get_link("eth0") is None
    net.add("pod3", conf)
    netns.delete(os.path.basename(net.pods["pod3"]))  # the pod's namespace goes first
    net.delete("pod3", conf)
    net.delete("pod3", conf, netns_path="")
    assert_clean(net)


def test_check_passes_after_add_and_fails_once_the_interface_is_gone(net: BridgeNet) -> None:
    conf = net.conf(isDefaultGateway=True, hairpinMode=True)
    result = net.add("pod1", conf)
    code, out = net.run("CHECK", "pod1", conf, prev=result)
    assert code == 0, out
    execs.run(["ip", "link", "del", "eth0"], netns=net.pods["pod1"])
    code, out = net.run("CHECK", "pod1", conf, prev=result)
    assert code == 1 and out is not None and "eth0" in out["msg"], out
    code, out = net.run("CHECK", "pod1", conf)
    assert code == 1 and out is not None and out["code"] == skel.INVALID_CONFIG  # no prevResult


def test_duplicate_add_is_refused_with_code_100(net: BridgeNet) -> None:
    conf = net.conf(isGateway=True, macspoofchk=True)
    net.add("pod1", conf)
    code, out = net.run("ADD", "pod1", conf)
    assert code == 1 and out is not None and out["code"] == skel.ALREADY_ATTACHED
    # The interface already in the netns (another network's attachment) is also a duplicate.
    other = {**conf, "name": "other-net"}
    code, out = net.run("ADD", "pod1", other)
    assert code == 1 and out is not None and out["code"] == skel.ALREADY_ATTACHED
    assert len(net.allocated_ips()) == 1
    # The runtime's DEL after the refused ADD must not take the first network's veth (same
    # container and ifname, hence the same host veth name) nor its MAC filter.
    net.delete("pod1", other)
    assert ping(net.pods["pod1"], GATEWAY)
    assert len(net.bridge_ports()) == 1
    code, out = net.run("CHECK", "pod1", conf, prev=net.add_results["pod1"])
    assert code == 0, out


def test_failed_add_rolls_everything_back(net: BridgeNet) -> None:
    # Another address on the bridge and no forceAddress: ADD fails after IPAM and the veth.
    net.host.run("ip", "link", "add", "cni0", "type", "bridge")
    net.host.run("ip", "addr", "add", "10.98.0.1/24", "dev", "cni0")
    net.pod("pod1")
    code, out = net.run("ADD", "pod1", net.conf(isGateway=True))
    assert code == 1 and out is not None and "already has an IP address" in out["msg"], out
    assert_clean(net)
    assert [link for link in net.host_links() if link.startswith("veth")] == []
    with Netlink.open(net.pods["pod1"]) as nl:
        assert nl.get_link("eth0") is None
    # forceAddress replaces the foreign address.
    net.add("pod1", net.conf(isGateway=True, forceAddress=True))
    addrs = net.host.run("ip", "-4", "-o", "addr", "show", "dev", "cni0").stdout
    assert f"{GATEWAY}/24" in addrs and "10.98.0.1" not in addrs


def test_gc_releases_attachments_not_in_the_valid_list(net: BridgeNet) -> None:
    conf = net.conf(isGateway=True)
    r1 = net.add("pod1", conf)
    net.add("pod2", conf)
    gc_conf = {**conf, "cni.dev/valid-attachments": [{"containerID": "pod1", "ifname": "eth0"}]}
    code, out = net.run("GC", "", gc_conf, ifname="", netns_path="")
    assert code == 0, out
    assert net.bridge_ports() == [r1["interfaces"][1]["name"]]
    assert net.allocated_ips() == [pod_ip(r1)]
    assert net.records() == ["pod1:eth0.json"]


def test_status_is_forwarded_to_ipam(net: BridgeNet) -> None:
    assert net.run("STATUS", "", net.conf(), ifname="", netns_path="") == (0, None)
    full = net.conf()
    full["ipam"] = {**full["ipam"], "subnet": "10.99.0.0/30"}  # one usable address
    net.add("pod1", full)
    code, out = net.run("STATUS", "", full, ifname="", netns_path="")
    assert code == 1 and out is not None and out["code"] in (skel.NOT_AVAILABLE, skel.NOT_AVAILABLE_DEGRADED)


def test_real_executable_add_check_del(net: BridgeNet) -> None:
    conf = net.conf(version="0.4.0", isGateway=True)
    pod = net.pod("exe1")
    kw: dict[str, Any] = {"cni_path": [str(net.cni_bin)], "container_id": "exe1", "netns": pod}
    with netns.enter(net.host.name):
        result = cnirun.call("bridge", "ADD", conf, **kw)
        assert result is not None and result["cniVersion"] == "0.4.0"
        assert result["ips"][0]["version"] == "4" and result["ips"][0]["interface"] == 2
        cnirun.call("bridge", "CHECK", {**conf, "prevResult": result}, **kw)
        assert ping(pod, GATEWAY)
        for _ in range(2):
            cnirun.call("bridge", "DEL", {**conf, "prevResult": result}, **kw)
    assert_clean(net)


# ----------------------------------------------------------------------------- ipMasq
def ruleset(net: BridgeNet) -> str:
    return net.host.run("nft", "list", "ruleset").stdout


def test_ip_masq_snat_is_seen_on_the_wire(net: BridgeNet) -> None:
    other = net.topo.add_host()  # no route back to the pod subnet: replies need the SNAT
    conf = net.conf(isDefaultGateway=True, ipMasq=True)
    r = net.add("pod1", conf)
    assert pod_ip(r) in ruleset(net)
    sniff = net.topo.spawn(other.name, ["tcpdump", "-n", "-l", "-c1", "-i", "eth0",
                                        "icmp[icmptype] == icmp-echo"],
                           stdout=-1, stderr=-1, text=True)
    assert sniff.stderr is not None
    sniff.stderr.readline()  # "listening on eth0 ...": capture is armed
    assert ping(net.pods["pod1"], other.ip)
    out, _ = sniff.communicate(timeout=10)
    assert f"IP {net.host.ip} > {other.ip}: ICMP echo request" in out, out
    # Traffic to the pod's own subnet keeps its source.
    assert ping(net.pods["pod1"], GATEWAY)
    code, check = net.run("CHECK", "pod1", conf, prev=r)
    assert code == 0, check
    net.delete("pod1", conf)
    assert pod_ip(r) not in ruleset(net)


def test_ip_masq_state_is_gone_after_every_kind_of_del(net: BridgeNet) -> None:
    conf = net.conf(isGateway=True, ipMasq=True)
    ips = {cid: pod_ip(net.add(cid, conf)) for cid in ("plain", "nonetns", "gonens")}
    assert all(ip in ruleset(net) for ip in ips.values())
    net.delete("plain", conf)
    net.delete("nonetns", conf, netns_path="")  # nerdctl/ctr send no CNI_NETNS (plugins#810)
    netns.delete(os.path.basename(net.pods["gonens"]))
    net.delete("gonens", conf)  # netns deleted first, and no prevResult either
    rules = ruleset(net)
    assert [ip for ip in ips.values() if ip in rules] == []
    net.delete("gonens", conf)
    assert_clean(net)
