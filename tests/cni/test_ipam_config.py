"""host-local config parsing: defaults, legacy forms, capabilities and every rejection (code 7)."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

import pytest

from cni import skel
from cni.ipam import config


def conf(ipam: dict, **top) -> dict:
    return {"cniVersion": "1.1.0", "name": "net", "ipam": {"type": "host-local", **ipam}, **top}


def load(ipam: dict, cni_args: dict | None = None, **top) -> config.IpamConfig:
    return config.load(conf(ipam, **top), cni_args or {})


def invalid(ipam: dict, match: str, cni_args: dict | None = None, **top) -> None:
    with pytest.raises(skel.CniError, match=match) as err:
        load(ipam, cni_args, **top)
    assert err.value.code == skel.INVALID_CONFIG


def test_defaults_of_a_v4_range():
    c = load({"ranges": [[{"subnet": "10.1.0.0/24"}]]})
    (r,), = c.range_sets
    assert (r.subnet, r.start, r.end, r.gateway) == (
        ip_network("10.1.0.0/24"), ip_address("10.1.0.1"), ip_address("10.1.0.254"), ip_address("10.1.0.1"))
    assert c.data_dir == "/var/lib/cni/networks" and c.name == "net"
    assert c.requested == () and c.routes == () and c.resolv_conf == ""


def test_defaults_of_a_v6_range_keep_the_last_address():
    (r,), = load({"ranges": [[{"subnet": "fd00::/120"}]]}).range_sets
    assert (r.start, r.end, r.gateway) == (
        ip_address("fd00::1"), ip_address("fd00::ff"), ip_address("fd00::1"))


def test_explicit_range_and_gateway():
    (r,), = load({"ranges": [[{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.10",
                                "rangeEnd": "10.1.0.20", "gateway": "10.1.0.254"}]]}).range_sets
    assert (str(r.start), str(r.end), str(r.gateway)) == ("10.1.0.10", "10.1.0.20", "10.1.0.254")
    assert r.excluded() == {ip_address("10.1.0.254"), ip_address("10.1.0.0"), ip_address("10.1.0.255")}


def test_empty_strings_mean_unset_like_go_omitempty():
    (r,), = load({"ranges": [[{"subnet": "10.1.0.0/24", "gateway": "", "rangeStart": ""}]]}).range_sets
    assert str(r.gateway) == "10.1.0.1" and str(r.start) == "10.1.0.1"


def test_subnet_with_host_bits_is_masked():
    (r,), = load({"ranges": [[{"subnet": "10.1.0.5/24"}]]}).range_sets
    assert r.subnet == ip_network("10.1.0.0/24")


def test_legacy_top_level_range_is_prepended():
    c = load({"subnet": "10.9.0.0/16", "rangeStart": "10.9.0.5", "ranges": [[{"subnet": "fd00::/64"}]]})
    assert [str(s[0].subnet) for s in c.range_sets] == ["10.9.0.0/16", "fd00::/64"]
    assert str(c.range_sets[0][0].start) == "10.9.0.5"


def test_ip_ranges_capability_replaces_the_configured_ranges():
    c = load({"ranges": [[{"subnet": "10.1.0.0/24"}]], "subnet": "10.2.0.0/24"},
             runtimeConfig={"ipRanges": [[{"subnet": "10.3.0.0/24"}]]})
    assert [str(s[0].subnet) for s in c.range_sets] == ["10.3.0.0/24"]


def test_several_ranges_in_one_set():
    c = load({"ranges": [[{"subnet": "10.1.0.0/24"}, {"subnet": "10.2.0.0/24"}]]})
    assert len(c.range_sets) == 1 and len(c.range_sets[0]) == 2


def test_routes_data_dir_and_resolv_conf(tmp_path):
    routes = [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.1.0.1"}]
    c = load({"ranges": [[{"subnet": "10.1.0.0/24"}]], "routes": routes, "dataDir": str(tmp_path),
              "resolvConf": "/etc/x"})
    assert list(c.routes) == routes and c.data_dir == str(tmp_path) and c.resolv_conf == "/etc/x"


def test_requested_ips_from_every_channel_in_order_without_duplicates():
    c = load({"ranges": [[{"subnet": "10.1.0.0/24"}]]}, {"IP": "10.1.0.7,fd00::7"},
             args={"cni": {"ips": ["10.1.0.8", "10.1.0.7"]}},
             runtimeConfig={"ips": ["10.1.0.9/24"]})
    assert [str(ip) for ip in c.requested] == ["10.1.0.7", "fd00::7", "10.1.0.8", "10.1.0.9"]


@pytest.mark.parametrize(("ipam", "match"), [
    ({}, "no IP ranges"),
    ({"ranges": []}, "no IP ranges"),
    ({"ranges": [[]]}, "range set 0 is empty"),
    ({"ranges": {"subnet": "10.1.0.0/24"}}, "ranges must be a list"),
    ({"ranges": [{"subnet": "10.1.0.0/24"}]}, "range set 0 must be a list"),
    ({"ranges": [["10.1.0.0/24"]]}, "must be an object"),
    ({"ranges": [[{}]]}, "subnet must be a CIDR"),
    ({"ranges": [[{"subnet": "10.1.0.0"}]]}, "subnet must be a CIDR"),
    ({"ranges": [[{"subnet": "10.1.0.0/33"}]]}, "subnet '10.1.0.0/33'"),
    ({"ranges": [[{"subnet": "10.1.0.0/31"}]]}, "too small"),
    ({"ranges": [[{"subnet": "10.1.0.0/32"}]]}, "too small"),
    ({"ranges": [[{"subnet": "fd00::/127"}]]}, "too small"),
    ({"ranges": [[{"subnet": "fd00::/128"}]]}, "too small"),
    ({"ranges": [[{"subnet": "10.1.0.0/24", "gateway": "10.2.0.1"}]]}, "gateway 10.2.0.1 not in network"),
    ({"ranges": [[{"subnet": "10.1.0.0/24", "gateway": "fd00::1"}]]}, "not in network"),
    ({"ranges": [[{"subnet": "10.1.0.0/24", "gateway": "x"}]]}, "cannot understand IP"),
    ({"ranges": [[{"subnet": "10.1.0.0/24", "gateway": 5}]]}, "must be an IP address string"),
    ({"ranges": [[{"subnet": "10.1.0.0/24", "rangeStart": "10.1.1.1"}]]}, "rangeStart 10.1.1.1 not in"),
    ({"ranges": [[{"subnet": "10.1.0.0/24", "rangeEnd": "10.1.1.1"}]]}, "rangeEnd 10.1.1.1 not in"),
    ({"ranges": [[{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.9", "rangeEnd": "10.1.0.8"}]]},
     "is after rangeEnd"),
    ({"ranges": [[{"subnet": "10.1.0.0/24"}, {"subnet": "fd00::/64"}]]}, "mixes address families"),
    ({"ranges": [[{"subnet": "10.1.0.0/24"}, {"subnet": "10.1.0.0/25"}]]}, "range set 0: ranges .* overlap"),
    ({"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "10.1.0.128/25"}]]},
     "range sets 0 and 1: ranges .* overlap"),
    ({"ranges": [[{"subnet": "10.1.0.0/24"}]], "routes": {"dst": "0.0.0.0/0"}}, "routes must be a list"),
    ({"ranges": [[{"subnet": "10.1.0.0/24"}]], "routes": [{"gw": "10.1.0.1"}]}, r"routes\[0\].dst"),
    ({"ranges": [[{"subnet": "10.1.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0", "gw": "z"}]},
     r"routes\[0\].gw"),
    ({"ranges": [[{"subnet": "10.1.0.0/24"}]], "routes": ["0.0.0.0/0"]}, "must be an object"),
    ({"ranges": [[{"subnet": "10.1.0.0/24"}]], "dataDir": 7}, "dataDir must be a string"),
    ({"ranges": [[{"subnet": "10.1.0.0/24"}]], "resolvConf": ["x"]}, "resolvConf must be a path"),
])
def test_invalid_configs(ipam, match):
    invalid(ipam, match)


def test_adjacent_ranges_do_not_overlap():
    c = load({"ranges": [[{"subnet": "10.1.0.0/25"}, {"subnet": "10.1.0.128/25"}]]})
    assert len(c.range_sets[0]) == 2


def test_missing_ipam_section():
    with pytest.raises(skel.CniError, match="missing 'ipam'") as err:
        config.load({"cniVersion": "1.0.0", "name": "n"}, {})
    assert err.value.code == skel.INVALID_CONFIG
    with pytest.raises(skel.CniError):
        config.load_location({"name": "n", "ipam": "host-local"})


def test_invalid_ip_ranges_capability():
    invalid({"ranges": [[{"subnet": "10.1.0.0/24"}]]}, "ipRanges must be a list",
            runtimeConfig={"ipRanges": {"subnet": "10.3.0.0/24"}})


@pytest.mark.parametrize(("cni_args", "top", "match"), [
    ({"IP": "10.1.0.300"}, {}, "cannot understand IP"),
    ({}, {"args": {"cni": {"ips": "10.1.0.7"}}}, "args.cni.ips must be a list"),
    ({}, {"args": {"cni": {"ips": [7]}}}, "must be an IP address string"),
    ({}, {"runtimeConfig": {"ips": ["nope"]}}, "cannot understand IP"),
])
def test_invalid_requested_ips(cni_args, top, match):
    invalid({"ranges": [[{"subnet": "10.1.0.0/24"}]]}, match, cni_args, **top)


def test_two_sets_of_one_family_need_cni_0_3_0():
    ipam = {"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "10.2.0.0/24"}]]}
    invalid(ipam, "does not support more than 1 address per family", cniVersion="0.2.0")
    assert len(load(ipam, cniVersion="0.3.0").range_sets) == 2
    v4v6 = {"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00::/64"}]]}
    assert len(load(v4v6, cniVersion="0.2.0").range_sets) == 2


def test_load_location_only_needs_the_ipam_section():
    assert config.load_location(conf({"ranges": "garbage"})) == ("net", "/var/lib/cni/networks")
    assert config.load_location(conf({"dataDir": "/run/x"})) == ("net", "/run/x")


def test_read_resolv_conf(tmp_path):
    path = tmp_path / "resolv.conf"
    path.write_text("# comment\n; other\nnameserver 10.0.0.10\nnameserver fd00::10\n"
                    "domain example.org\nsearch a.example b.example\noptions ndots:5 edns0\nbogus\n\n")
    assert config.read_resolv_conf(str(path)) == {
        "nameservers": ["10.0.0.10", "fd00::10"], "domain": "example.org",
        "search": ["a.example", "b.example"], "options": ["ndots:5", "edns0"]}
    empty = tmp_path / "empty"
    empty.write_text("")
    assert config.read_resolv_conf(str(empty)) == {}
    with pytest.raises(skel.CniError, match="cannot read resolvConf") as err:
        config.read_resolv_conf(str(tmp_path / "missing"))
    assert err.value.code == skel.INVALID_CONFIG
