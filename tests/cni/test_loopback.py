"""The loopback plugin's pure parts (the kernel side is in netns_tests/test_loopback.py)."""

from __future__ import annotations

import json

import pytest

from cni import loopback, skel, types


def test_result_matches_the_reference_shape() -> None:
    result = loopback.loopback_result("/run/netns/p", ["127.0.0.1/8"], ["::1/128"])
    assert types.to_version(result, "1.0.0") == {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": "/run/netns/p"}],
        "ips": [{"interface": 0, "address": "127.0.0.1/8"}, {"interface": 0, "address": "::1/128"}],
    }


def test_ipv6_disabled_reports_only_ipv4() -> None:
    result = loopback.loopback_result("/run/netns/p", ["127.0.0.1/8"], [])
    assert result["ips"] == [{"interface": 0, "address": "127.0.0.1/8"}]
    assert types.to_version(result, "0.2.0") == {"cniVersion": "0.2.0", "ip4": {"ip": "127.0.0.1/8"}}


def test_a_routable_address_on_lo_is_refused() -> None:
    loopback.require_loopback_only(["127.0.0.1/8", "::1/128"])
    with pytest.raises(skel.CniError, match=r"non-loopback address 10\.0\.0\.1/8"):
        loopback.require_loopback_only(["127.0.0.1/8", "10.0.0.1/8"])


def test_del_without_netns_succeeds_without_touching_anything() -> None:
    env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c1", "CNI_NETNS": "", "CNI_IFNAME": "eth0",
           "CNI_PATH": "/nonexistent"}
    conf = {"cniVersion": "1.1.0", "name": "lo", "type": "loopback"}
    assert skel.dispatch(loopback.PLUGIN, env, json.dumps(conf).encode()) == (0, b"")
