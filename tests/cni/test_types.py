"""Result conversion between every supported cniVersion (libcni pkg/types/{020,040,100} rules)."""

from __future__ import annotations

import pytest

from cni import types
from tests.cni.test_skel import RESULT


def test_1x_keeps_everything() -> None:
    for v in ("1.0.0", "1.1.0"):
        out = types.to_version(RESULT, v)
        assert out["cniVersion"] == v
        assert out["interfaces"][1]["mtu"] == 1400
        assert out["routes"][0]["mtu"] == 1400
        assert "version" not in out["ips"][0]


@pytest.mark.parametrize("v", ["0.3.0", "0.3.1", "0.4.0"])
def test_04x_adds_ip_version_and_drops_new_fields(v: str) -> None:
    out = types.to_version(RESULT, v)
    assert [ip["version"] for ip in out["ips"]] == ["4", "6"]
    assert out["ips"][0]["interface"] == 1
    assert "mtu" not in out["interfaces"][1]
    assert out["routes"][0] == {"dst": "0.0.0.0/0", "gw": "10.1.0.1"}


@pytest.mark.parametrize("v", ["0.1.0", "0.2.0"])
def test_legacy_keeps_first_ip_per_family(v: str) -> None:
    out = types.to_version(RESULT, v)
    assert out == {
        "cniVersion": v,
        "ip4": {"ip": "10.1.0.5/24", "gateway": "10.1.0.1",
                "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}]},
        "ip6": {"ip": "fd00::5/64", "gateway": "fd00::1", "routes": [{"dst": "::/0"}]},
        "dns": {"nameservers": ["10.96.0.10"]},
    }


def test_legacy_host_local_shape() -> None:
    # What the reference host-local prints for a 0.2.0 config (cni.md 1.6).
    r = {"cniVersion": "1.1.0", "ips": [{"address": "10.77.0.2/24", "gateway": "10.77.0.1"}]}
    assert types.to_version(r, "0.2.0") == {"cniVersion": "0.2.0",
                                            "ip4": {"ip": "10.77.0.2/24", "gateway": "10.77.0.1"}}


@pytest.mark.parametrize("v", ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_round_trip_through_rich_versions(v: str) -> None:
    back = types.normalize(types.to_version(RESULT, v))
    assert [ip["address"] for ip in back["ips"]] == ["10.1.0.5/24", "fd00::5/64"]
    assert back["dns"] == RESULT["dns"]
    assert back["cniVersion"] == types.CURRENT


def test_round_trip_through_legacy() -> None:
    back = types.normalize(types.to_version(RESULT, "0.2.0"))
    assert back["ips"] == [{"address": "10.1.0.5/24", "gateway": "10.1.0.1"},
                           {"address": "fd00::5/64", "gateway": "fd00::1"}]
    assert {r["dst"] for r in back["routes"]} == {"0.0.0.0/0", "::/0"}


def test_empty_dns_is_omitted() -> None:
    out = types.to_version({"cniVersion": "1.1.0", "ips": [], "dns": {}}, "1.0.0")
    assert "dns" not in out


def test_vtuple_rejects_garbage() -> None:
    for bad in ("", "1.x", "1.2.3.4", "v1"):
        with pytest.raises(ValueError):
            types.vtuple(bad)
    assert types.vtuple("1.1") == (1, 1, 0)
