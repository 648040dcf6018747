"""The bridge plugin's pure parts: config validation, the addressing plan, results, nft scripts,
and the refusals that happen before the kernel is touched (no root needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cni import attachments, bridge, skel, types


def request(config: dict[str, Any], command: str = "ADD", **env: str) -> skel.Request:
    base = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/none",
            "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent"}
    base.update(env)
    return skel.parse_request(bridge.PLUGIN, base, json.dumps(config).encode())


def config(**extra: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {"cniVersion": "1.1.0", "name": "net1", "type": "bridge",
                            "ipam": {"type": "host-local", "subnet": "10.1.0.0/24"}}
    conf.update(extra)
    return conf


def parse(**extra: Any) -> bridge.BridgeConf:
    return bridge.parse_conf(request(config(**extra)))


# ---------------------------------------------------------------------------- config
def test_defaults() -> None:
    conf = parse()
    assert conf.bridge == "cni0" and conf.ipam_type == "host-local" and conf.network == "net1"
    assert not (conf.is_gateway or conf.ip_masq or conf.hairpin or conf.mac_spoof_chk)
    assert conf.mtu == 0 and conf.vlan == 0 and conf.mac == ""
    assert conf.state_dir == attachments.DEFAULT_STATE_DIR


def test_default_gateway_implies_gateway() -> None:
    conf = parse(isDefaultGateway=True)
    assert conf.is_gateway and conf.is_default_gateway


@pytest.mark.parametrize(("extra", "fragment"), [
    ({"hairpinMode": True, "promiscMode": True}, "hairpin mode and promiscuous mode"),
    ({"vlan": 4095}, "vlan 4095 is out of range"),
    ({"vlan": "7"}, "vlan must be an integer"),
    ({"mtu": 20}, "mtu 20 is out of range"),
    ({"mtu": True}, "mtu must be an integer"),
    ({"ipMasq": "yes"}, "ipMasq must be true or false"),
    ({"bridge": "a-name-far-too-long"}, "invalid bridge name"),
    ({"bridge": "br/0"}, "invalid bridge name"),
    ({"stateDir": "relative/dir"}, "stateDir must be an absolute path"),
    ({"dns": ["8.8.8.8"]}, "dns must be an object"),
    ({"ipam": {}}, "no ipam.type"),
    ({"runtimeConfig": {"mac": "not-a-mac"}}, "invalid MAC address"),
])
def test_invalid_config_is_code_7(extra: dict[str, Any], fragment: str) -> None:
    with pytest.raises(skel.CniError) as err:
        parse(**extra)
    assert err.value.code == skel.INVALID_CONFIG
    assert fragment in err.value.msg


def test_invalid_config_through_dispatch_is_error_json(tmp_path: Path) -> None:
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": str(tmp_path / "ns"),
           "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent"}
    code, out = skel.dispatch(bridge.PLUGIN, env, json.dumps(config(mtu=5)).encode())
    assert code == 1
    assert json.loads(out) == {"cniVersion": "1.1.0", "code": 7,
                               "msg": "bridge: mtu 5 is out of range 68..65535"}


def test_requested_mac_sources_in_order() -> None:
    assert parse(runtimeConfig={"mac": "0A:58:0A:01:00:05"}).mac == "0a:58:0a:01:00:05"
    assert parse(args={"cni": {"mac": "02:00:00:00:00:01"}}).mac == "02:00:00:00:00:01"
    req = request(config(), CNI_ARGS="MAC=02:00:00:00:00:02")
    assert bridge.parse_conf(req).mac == "02:00:00:00:00:02"


# ------------------------------------------------------------------------------ plan
def ipam(*ips: dict[str, Any], routes: list[dict[str, Any]] | None = None) -> types.Result:
    out: types.Result = {"cniVersion": "1.1.0", "ips": list(ips)}
    if routes is not None:
        out["routes"] = routes
    return out


def test_plan_uses_the_ipam_gateway_and_puts_it_on_the_bridge() -> None:
    plan = bridge.plan_ips(ipam({"address": "10.1.0.5/24", "gateway": "10.1.0.254"}),
                           parse(isGateway=True))
    assert plan.ips == [{"interface": 2, "address": "10.1.0.5/24", "gateway": "10.1.0.254"}]
    assert plan.bridge_addrs == ["10.1.0.254/24"]
    assert plan.routes == []


def test_plan_computes_the_first_address_as_gateway_when_ipam_gives_none() -> None:
    plan = bridge.plan_ips(ipam({"address": "10.1.0.5/24"}), parse(isGateway=True))
    assert plan.ips[0]["gateway"] == "10.1.0.1"
    assert plan.bridge_addrs == ["10.1.0.1/24"]


def test_plan_without_gateway_mode_leaves_the_bridge_unaddressed() -> None:
    plan = bridge.plan_ips(ipam({"address": "10.1.0.5/24", "gateway": "10.1.0.1"}), parse())
    assert plan.bridge_addrs == [] and plan.ips[0]["gateway"] == "10.1.0.1"
    assert "gateway" not in bridge.plan_ips(ipam({"address": "10.1.0.5/24"}), parse()).ips[0]


def test_default_gateway_adds_one_default_route_per_family() -> None:
    plan = bridge.plan_ips(ipam({"address": "10.1.0.5/24"}, {"address": "fd00::5/64"}),
                           parse(isDefaultGateway=True))
    assert plan.routes == [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}, {"dst": "::/0", "gw": "fd00::1"}]
    assert plan.bridge_addrs == ["10.1.0.1/24", "fd00::1/64"]


def test_default_gateway_keeps_an_ipam_default_route() -> None:
    routes = [{"dst": "0.0.0.0/0", "gw": "10.1.0.9"}, {"dst": "10.2.0.0/16"}]
    plan = bridge.plan_ips(ipam({"address": "10.1.0.5/24"}, routes=routes), parse(isDefaultGateway=True))
    assert plan.routes == routes


def test_plan_refuses_an_ipam_result_without_ips() -> None:
    with pytest.raises(skel.CniError, match="missing IP config"):
        bridge.plan_ips(ipam(), parse())


def test_route_without_gw_goes_via_the_family_gateway() -> None:
    ips = [{"address": "10.1.0.5/24", "gateway": "10.1.0.1"}, {"address": "fd00::5/64", "gateway": "fd00::1"}]
    assert bridge.route_gateway({"dst": "10.2.0.0/16"}, ips) == "10.1.0.1"
    assert bridge.route_gateway({"dst": "fd01::/48"}, ips) == "fd00::1"
    assert bridge.route_gateway({"dst": "10.2.0.0/16", "gw": "10.1.0.7"}, ips) == "10.1.0.7"
    assert bridge.route_gateway({"dst": "10.2.0.0/16"}, ips[1:]) is None


# ---------------------------------------------------------------------------- result
def test_result_lists_bridge_host_veth_and_container_and_renders_for_0_4_0() -> None:
    from podnet.netlink import Link

    def link(name: str, mac: str) -> Link:
        return Link(index=1, name=name, kind="veth", mac=mac, mtu=1500, up=True, master=0, peer_index=0)

    req = request(config(isGateway=True), CNI_NETNS="/run/netns/p1")
    conf = bridge.parse_conf(req)
    ipam_result = ipam({"address": "10.1.0.5/24"})
    ipam_result["dns"] = {"nameservers": ["10.0.0.10"]}
    plan = bridge.plan_ips(ipam_result, conf)
    links = (link("cni0", "aa:00:00:00:00:01"), link("veth0123", "aa:00:00:00:00:02"),
             link("eth0", "aa:00:00:00:00:03"))
    result = bridge.build_result(conf, req, links, plan, ipam_result)
    assert result["interfaces"] == [
        {"name": "cni0", "mac": "aa:00:00:00:00:01"},
        {"name": "veth0123", "mac": "aa:00:00:00:00:02"},
        {"name": "eth0", "mac": "aa:00:00:00:00:03", "sandbox": "/run/netns/p1"}]
    assert result["dns"] == {"nameservers": ["10.0.0.10"]}
    old = types.to_version(result, "0.4.0")
    assert old["ips"] == [{"version": "4", "interface": 2, "address": "10.1.0.5/24", "gateway": "10.1.0.1"}]
    assert bridge.container_ips(result) == ["10.1.0.5/24"]


def test_container_ips_skip_host_side_addresses() -> None:
    result = {"interfaces": [{"name": "cni0"}, {"name": "veth"}, {"name": "eth0", "sandbox": "/x"}],
              "ips": [{"address": "10.1.0.1/24", "interface": 0}, {"address": "10.1.0.5/24", "interface": 2},
                      {"address": "fd00::5/64"}]}
    assert bridge.container_ips(result) == ["10.1.0.5/24", "fd00::5/64"]
    assert bridge.container_ips(None) == []


# -------------------------------------------------------------------------- macspoof
def test_macspoof_scripts_are_one_transaction_each_and_idempotent_by_construction() -> None:
    chain = bridge.macspoof_chain("c1", "eth0")
    assert chain.startswith("ms-") and chain == bridge.macspoof_chain("c1", "eth0")
    assert chain != bridge.macspoof_chain("c1", "eth1")
    add = bridge.macspoof_add_script("net1", "c1", "eth0", "vethabc", "0a:58:0a:01:00:05")
    assert "ether saddr != 0a:58:0a:01:00:05 counter drop" in add
    assert f'add element bridge {bridge.MACSPOOF_TABLE} ports {{ "vethabc" : jump {chain} }}' in add
    # The shared dispatch rule is flushed before it is re-added: it stays a single rule.
    lines = add.splitlines()
    assert lines.index(f"flush chain bridge {bridge.MACSPOOF_TABLE} prerouting") < lines.index(
        f"add rule bridge {bridge.MACSPOOF_TABLE} prerouting iifname vmap @ports")
    delete = bridge.macspoof_delete_script("c1", "eth0", "vethabc").splitlines()
    # Deleting what may not exist fails in nft: each object is added before it is deleted.
    assert delete.index(f'add element bridge {bridge.MACSPOOF_TABLE} ports {{ "vethabc" : jump {chain} }}') \
        < delete.index(f'delete element bridge {bridge.MACSPOOF_TABLE} ports {{ "vethabc" }}') \
        < delete.index(f"delete chain bridge {bridge.MACSPOOF_TABLE} {chain}")


# ------------------------------------------------- refusals before the kernel is touched
def test_duplicate_add_of_a_recorded_attachment_is_code_100(tmp_path: Path) -> None:
    store = attachments.Store.for_network(str(tmp_path), "net1")
    store.put(attachments.Attachment(container_id="c1", ifname="eth0"))
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": str(tmp_path / "ns"),
           "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent"}
    code, out = skel.dispatch(bridge.PLUGIN, env, json.dumps(config(stateDir=str(tmp_path))).encode())
    assert code == 1 and json.loads(out)["code"] == skel.ALREADY_ATTACHED


def test_add_into_a_missing_netns_is_code_3_and_leaves_no_record(tmp_path: Path) -> None:
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": str(tmp_path / "gone"),
           "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent"}
    code, out = skel.dispatch(bridge.PLUGIN, env, json.dumps(config(stateDir=str(tmp_path))).encode())
    assert code == 1 and json.loads(out)["code"] == skel.UNKNOWN_CONTAINER
    assert attachments.Store.for_network(str(tmp_path), "net1").records() == []


def test_gc_request_for_a_record_is_a_del_without_netns() -> None:
    gc_conf = config(**{"cni.dev/valid-attachments": [], "cni.dev/attachments": []})
    req = skel.parse_request(bridge.PLUGIN, {"CNI_COMMAND": "GC", "CNI_PATH": "/p"},
                             json.dumps(gc_conf).encode())
    record = attachments.Attachment(container_id="c9", ifname="net1")
    del_req = bridge._request_for(req, record)
    assert (del_req.command, del_req.container_id, del_req.ifname, del_req.netns) == ("DEL", "c9", "net1", "")
    assert del_req.env["CNI_CONTAINERID"] == "c9" and del_req.env["CNI_NETNS"] == ""
    assert not any(k.startswith("cni.dev/") for k in del_req.config)
