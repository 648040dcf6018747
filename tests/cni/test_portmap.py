"""The portmap plugin through skel.dispatch, against the nft fake and a fake host."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest

from cni import portmap, skel
from podnet.errors import ExecError, PodnetError
from podnet.xtables import nft
from podnet.xtables.nft_fake import FakeNft

F, T = portmap.FAMILY, portmap.TABLE

PREV = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "cni0", "mac": "aa:bb:cc:dd:ee:01"},
                   {"name": "veth1", "mac": "aa:bb:cc:dd:ee:02"},
                   {"name": "eth0", "mac": "aa:bb:cc:dd:ee:03", "sandbox": "/run/netns/p"}],
    "ips": [{"address": "10.88.0.1/24", "interface": 0},  # host side: never a target
            {"address": "10.88.0.5/24", "gateway": "10.88.0.1", "interface": 2},
            {"address": "10.88.0.9/24", "interface": 2},  # second v4: ignored
            {"address": "fd88::5/64", "interface": 2}],
}
MAPPINGS = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 5353, "containerPort": 53, "protocol": "udp"}]


class FakeHost:
    def __init__(self) -> None:
        self.localnet: list[str] = []
        self.flushed: list[tuple[int, int]] = []
        self.fail_localnet = False
        self.fail_flush = False

    def route_dev(self, ip: str) -> str | None:
        return "cni0" if ip.startswith("10.88.") else None

    def enable_route_localnet(self, dev: str) -> None:
        if self.fail_localnet:
            raise PodnetError("sysctl: permission denied")
        self.localnet.append(dev)

    def flush_udp(self, version: int, port: int) -> None:
        if self.fail_flush:
            raise ExecError(["conntrack"], 1, "conntrack v1.4.7: Operation failed")
        self.flushed.append((version, port))


@pytest.fixture
def fake() -> FakeNft:
    return FakeNft()


@pytest.fixture
def host() -> FakeHost:
    return FakeHost()


@pytest.fixture
def plugin(fake: FakeNft, host: FakeHost) -> skel.Plugin:
    return portmap.Portmap(fake, host).plugin()


def call(plugin: skel.Plugin, command: str, cid: str = "c1", netns: str = "/run/netns/p",
         prev: dict[str, Any] | None = PREV, mappings: list[dict[str, Any]] | None = MAPPINGS,
         version: str = "1.0.0", **options: Any) -> tuple[int, dict[str, Any] | None]:
    conf: dict[str, Any] = {"cniVersion": version, "name": "pmnet", "type": "portmap",
                            "capabilities": {"portMappings": True}, **options}
    if prev is not None:
        conf["prevResult"] = prev
    if mappings is not None:
        conf["runtimeConfig"] = {"portMappings": mappings}
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": netns,
           "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}
    code, out = skel.dispatch(plugin, env, json.dumps(conf).encode())
    return code, json.loads(out) if out.strip() else None


def test_add_writes_dnat_and_masq_elements_and_passes_prev_result_through(
        plugin: skel.Plugin, fake: FakeNft, host: FakeHost) -> None:
    code, out = call(plugin, "ADD")
    assert code == 0
    assert out == {k: v for k, v in PREV.items()}  # prevResult, unchanged
    tag = "pmnet:c1:eth0"
    assert fake.elements(F, T, "dnat4") == {"tcp . 8080": ("10.88.0.5 . 80", tag),
                                            "udp . 5353": ("10.88.0.5 . 53", tag)}
    assert fake.elements(F, T, "dnat6") == {"tcp . 8080": ("fd88::5 . 80", tag),
                                            "udp . 5353": ("fd88::5 . 53", tag)}
    assert set(fake.elements(F, T, "masq4")) == {
        "10.88.0.0/24 . 10.88.0.5 . tcp . 80", "127.0.0.1 . 10.88.0.5 . tcp . 80",
        "10.88.0.0/24 . 10.88.0.5 . udp . 53", "127.0.0.1 . 10.88.0.5 . udp . 53"}
    assert set(fake.elements(F, T, "masq6")) == {"fd88::/64 . fd88::5 . tcp . 80",
                                                 "fd88::/64 . fd88::5 . udp . 53"}
    for chain, rules in portmap.RULES.items():
        assert fake.rules(F, T, chain) == list(rules)
    assert len(fake.scripts) == 1  # ONE transaction
    assert host.localnet == ["cni0"]
    assert host.flushed == [(4, 5353), (6, 5353)]


def test_add_answers_in_the_requested_version(plugin: skel.Plugin) -> None:
    code, out = call(plugin, "ADD", version="0.3.1")
    assert code == 0 and out is not None
    assert out["cniVersion"] == "0.3.1"
    assert out["ips"][1] == {"version": "4", "address": "10.88.0.5/24", "gateway": "10.88.0.1",
                             "interface": 2}


def test_add_is_idempotent(plugin: skel.Plugin, fake: FakeNft) -> None:
    call(plugin, "ADD")
    before = {s: fake.elements(F, T, s) for s in ("dnat4", "dnat6", "masq4", "masq6")}
    assert call(plugin, "ADD")[0] == 0
    assert {s: fake.elements(F, T, s) for s in before} == before
    assert fake.rules(F, T, "postrouting") == list(portmap.RULES["postrouting"])


def test_add_without_prev_result_is_code_7(plugin: skel.Plugin, fake: FakeNft) -> None:
    code, out = call(plugin, "ADD", prev=None)
    assert code == 1 and out is not None and out["code"] == skel.INVALID_CONFIG
    assert "chained" in out["msg"]
    assert fake.scripts == []


def test_add_without_mappings_touches_nothing(plugin: skel.Plugin, fake: FakeNft, host: FakeHost) -> None:
    empty: list[dict[str, Any]] = []
    for mappings in (None, empty):
        code, out = call(plugin, "ADD", mappings=mappings)
        assert code == 0 and out is not None and out["ips"] == PREV["ips"]
    assert fake.scripts == [] and host.localnet == []


def test_add_needs_a_container_address(plugin: skel.Plugin) -> None:
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "cni0"}],
            "ips": [{"address": "10.88.0.1/24", "interface": 0}]}
    code, out = call(plugin, "ADD", prev=prev)
    assert code == 1 and out is not None and out["code"] == skel.INVALID_CONFIG


@pytest.mark.parametrize(("options", "mappings", "needle"), [
    ({"backend": "iptables"}, MAPPINGS, "only the 'nftables' backend"),
    ({"externalSetMarkChain": "KUBE-MARK-MASQ"}, MAPPINGS, "externalSetMarkChain"),
    ({"conditionsV4": ["-s", "1.2.3.4"]}, MAPPINGS, "conditionsV4"),
    ({"markMasqBit": 40}, MAPPINGS, "markMasqBit"),
    ({"snat": "yes"}, MAPPINGS, "snat must be a boolean"),
    ({}, [{"hostPort": 0, "containerPort": 80}], "hostPort"),
    ({}, [{"hostPort": 80, "containerPort": "80"}], "containerPort"),
    ({}, [{"hostPort": 80, "containerPort": 80, "protocol": "icmp"}], "protocol"),
    ({}, [{"hostPort": 80, "containerPort": 80, "hostIP": "not-an-ip"}], "hostIP"),
    ({}, ["8080:80"], "objects"),
    ({}, [{"hostPort": 80, "containerPort": 80}, {"hostPort": 80, "containerPort": 81}], "conflicting"),
])
def test_invalid_config_is_code_7(plugin: skel.Plugin, fake: FakeNft, options: dict[str, Any],
                                  mappings: list[Any], needle: str) -> None:
    code, out = call(plugin, "ADD", mappings=mappings, **options)
    assert code == 1 and out is not None and out["code"] == skel.INVALID_CONFIG
    assert needle in out["msg"]
    assert fake.scripts == []


def test_nftables_backend_and_mark_bit_are_accepted(plugin: skel.Plugin) -> None:
    assert call(plugin, "ADD", backend="nftables", markMasqBit=13)[0] == 0


def test_port_mappings_must_be_a_list(plugin: skel.Plugin) -> None:
    code, out = call(plugin, "ADD", mappings={"hostPort": 1})  # type: ignore[arg-type]
    assert code == 1 and out is not None and out["code"] == skel.INVALID_CONFIG


def test_del_needs_no_netns_prev_result_or_runtime_config(plugin: skel.Plugin, fake: FakeNft) -> None:
    call(plugin, "ADD")
    call(plugin, "ADD", cid="c2", prev={**PREV, "ips": [{"address": "10.88.0.6/24", "interface": 2}]},
         mappings=[{"hostPort": 9090, "containerPort": 90}])
    code, _ = call(plugin, "DEL", netns="", prev=None, mappings=None)
    assert code == 0
    assert fake.elements(F, T, "dnat4") == {"tcp . 9090": ("10.88.0.6 . 90", "pmnet:c2:eth0")}
    assert fake.elements(F, T, "dnat6") == {}
    assert call(plugin, "DEL", cid="c2", netns="", prev=None, mappings=None)[0] == 0
    assert not fake.has_table(F, T)
    assert call(plugin, "DEL", cid="c2", netns="", prev=None, mappings=None)[0] == 0  # repeated


def test_del_succeeds_even_for_a_config_add_would_refuse(plugin: skel.Plugin) -> None:
    assert call(plugin, "DEL", backend="iptables", mappings=[{"hostPort": 0}])[0] == 0


def test_hostip_restricts_the_mapping_to_its_family_and_address(plugin: skel.Plugin, fake: FakeNft) -> None:
    mappings = [{"hostPort": 80, "containerPort": 8080, "hostIP": "10.250.0.11"},
                {"hostPort": 81, "containerPort": 8081, "hostIP": "0.0.0.0"},
                {"hostPort": 82, "containerPort": 8082, "hostIP": "::"},
                {"hostPort": 83, "containerPort": 8083, "hostIP": "fd00::0:1", "protocol": "SCTP"}]
    assert call(plugin, "ADD", mappings=mappings)[0] == 0
    tag = "pmnet:c1:eth0"
    assert fake.elements(F, T, "hostip_dnat4") == {"10.250.0.11 . tcp . 80": ("10.88.0.5 . 8080", tag)}
    assert fake.elements(F, T, "dnat4") == {"tcp . 81": ("10.88.0.5 . 8081", tag)}
    assert fake.elements(F, T, "dnat6") == {"tcp . 82": ("fd88::5 . 8082", tag)}
    assert fake.elements(F, T, "hostip_dnat6") == {"fd00::1 . sctp . 83": ("fd88::5 . 8083", tag)}


def test_snat_false_and_masq_all(plugin: skel.Plugin, fake: FakeNft, host: FakeHost) -> None:
    call(plugin, "ADD", snat=False)
    assert fake.elements(F, T, "masq4") == {} and fake.elements(F, T, "masq6") == {}
    assert host.localnet == []
    call(plugin, "ADD", cid="c2", masqAll=True)
    assert set(fake.elements(F, T, "masq4")) == {"0.0.0.0/0 . 10.88.0.5 . tcp . 80",
                                                 "0.0.0.0/0 . 10.88.0.5 . udp . 53"}
    assert set(fake.elements(F, T, "masq6")) == {"::/0 . fd88::5 . tcp . 80", "::/0 . fd88::5 . udp . 53"}


def test_a_new_pod_takes_over_a_host_port_of_a_pod_whose_del_never_came(
        plugin: skel.Plugin, fake: FakeNft) -> None:
    call(plugin, "ADD", cid="old")
    prev_new = {**PREV, "ips": [{"address": "10.88.0.7/24", "interface": 2}]}
    assert call(plugin, "ADD", cid="new", prev=prev_new)[0] == 0
    assert fake.elements(F, T, "dnat4")["tcp . 8080"] == ("10.88.0.7 . 80", "pmnet:new:eth0")
    assert call(plugin, "DEL", cid="old", prev=None, mappings=None)[0] == 0
    assert call(plugin, "CHECK", cid="new", prev=prev_new)[0] == 0


def test_check_verifies_the_mappings(plugin: skel.Plugin, fake: FakeNft) -> None:
    code, out = call(plugin, "CHECK")
    assert code == 1 and out is not None and out["code"] == skel.INTERNAL
    call(plugin, "ADD")
    assert call(plugin, "CHECK") == (0, None)
    assert call(plugin, "CHECK", mappings=[]) == (0, None)
    fake.apply(f"delete element {F} {T} dnat6 {{ udp . 5353 }}\n")
    code, out = call(plugin, "CHECK")
    assert code == 1 and out is not None and "dnat6 element 'udp . 5353'" in out["msg"]
    call(plugin, "ADD")
    fake.apply(f"flush chain {F} {T} output\n")
    code, out = call(plugin, "CHECK")
    assert code == 1 and out is not None and "chain output has 0 rules" in out["msg"]


def test_check_without_prev_result_is_code_7(plugin: skel.Plugin) -> None:
    code, out = call(plugin, "CHECK", prev=None)
    assert code == 1 and out is not None and out["code"] == skel.INVALID_CONFIG


def test_gc_removes_attachments_not_in_the_valid_list(plugin: skel.Plugin, fake: FakeNft) -> None:
    for cid, ip, port in (("keep", "10.88.0.5", 80), ("gone", "10.88.0.6", 81)):
        prev = {**PREV, "ips": [{"address": f"{ip}/24", "interface": 2}]}
        call(plugin, "ADD", cid=cid, prev=prev, mappings=[{"hostPort": port, "containerPort": 80}])
    conf = {"cniVersion": "1.1.0", "name": "pmnet", "type": "portmap",
            "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}
    code, _ = skel.dispatch(plugin, {"CNI_COMMAND": "GC", "CNI_PATH": "/x"}, json.dumps(conf).encode())
    assert code == 0
    assert set(fake.elements(F, T, "dnat4")) == {"tcp . 80"}
    conf["cni.dev/valid-attachments"] = []
    skel.dispatch(plugin, {"CNI_COMMAND": "GC", "CNI_PATH": "/x"}, json.dumps(conf).encode())
    assert not fake.has_table(F, T)


def test_failed_add_rolls_back(plugin: skel.Plugin, fake: FakeNft, host: FakeHost) -> None:
    host.fail_localnet = True
    code, out = call(plugin, "ADD")
    assert code == 1 and out is not None and out["code"] == skel.INTERNAL
    assert "permission denied" in out["msg"]
    assert not fake.has_table(F, T)


def test_conntrack_failure_does_not_fail_add(plugin: skel.Plugin, host: FakeHost) -> None:
    host.fail_flush = True
    assert call(plugin, "ADD")[0] == 0


def test_nft_failures_are_reported(plugin: skel.Plugin, fake: FakeNft) -> None:
    for command in ("ADD", "DEL", "CHECK"):
        call(plugin, "ADD")
        fake.fail_next = ExecError(["nft"], 1, "Error: Operation not permitted")
        if command == "CHECK":
            fake.list_table = lambda f, n: (_ for _ in ()).throw(fake.fail_next)  # type: ignore
        code, out = call(plugin, command, cid="c2" if command == "ADD" else "c1")
        assert code == 1 and out is not None and out["code"] == skel.INTERNAL, command
    conf = {"cniVersion": "1.1.0", "name": "pmnet", "type": "portmap"}
    code, _ = skel.dispatch(plugin, {"CNI_COMMAND": "GC", "CNI_PATH": "/x"}, json.dumps(conf).encode())
    assert code == 1


def test_container_ips_without_interface_indexes() -> None:
    prev = {"ips": [{"address": "fd00::2/64"}, {"address": "10.0.0.2/16"}, {"address": "10.0.0.3/16"}]}
    assert portmap.container_ips(prev) == [ipaddress.ip_interface("10.0.0.2/16"),
                                          ipaddress.ip_interface("fd00::2/64")]


def test_elements_are_tagged_for_the_attachment() -> None:
    conf = portmap.parse_conf({}, {"portMappings": [{"hostPort": 1, "containerPort": 2}]})
    els = portmap.elements(nft.owner_tag("n", "c", "eth0"), conf, [ipaddress.ip_interface("10.0.0.2/32")])
    assert els == [nft.Element("dnat4", "tcp . 1", "10.0.0.2 . 2", "n:c:eth0"),
                   nft.Element("masq4", "10.0.0.2 . 10.0.0.2 . tcp . 2", None, "n:c:eth0"),
                   nft.Element("masq4", "127.0.0.1 . 10.0.0.2 . tcp . 2", None, "n:c:eth0")]


def test_the_registered_plugin_is_portmap() -> None:
    from cni import plugins
    assert plugins.load("portmap") is portmap.PLUGIN
