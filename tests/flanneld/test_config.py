"""net-conf.json parsing: upstream's defaults and validation (flannel pkg/subnet/config.go)."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from flanneld.config import ConfigError, NetworkConfig

VX = {"Type": "vxlan"}


def parse(**doc: Any) -> NetworkConfig:
    doc.setdefault("Backend", VX)
    return NetworkConfig.parse(json.dumps(doc).encode())


@pytest.mark.parametrize(("network", "subnet_len", "lo", "hi"), [
    ("10.244.0.0/16", 24, "10.244.1.0", "10.244.255.0"),  # the first subnet is skipped
    ("10.0.0.0/8", 24, "10.0.1.0", "10.255.255.0"),
    ("10.1.0.0/22", 24, "10.1.1.0", "10.1.3.0"),
    ("10.1.0.0/23", 25, "10.1.0.128", "10.1.1.128"),  # smaller than /22: Network+2
    ("10.1.0.0/28", 30, "10.1.0.4", "10.1.0.12"),
    ("10.244.7.0/16", 24, "10.244.1.0", "10.244.255.0"),  # host bits dropped, as net.ParseCIDR
])
def test_defaults(network: str, subnet_len: int, lo: str, hi: str) -> None:
    cfg = parse(Network=network)
    assert (cfg.subnet_len, str(cfg.subnet_min), str(cfg.subnet_max)) == (subnet_len, lo, hi)
    assert cfg.backend_type == "vxlan" and cfg.network == IPv4Network(network, strict=False)


def test_explicit_values_kept() -> None:
    cfg = parse(Network="10.5.0.0/16", SubnetLen=26, SubnetMin="10.5.10.0", SubnetMax="10.5.20.192",
                Backend={"Type": "host-gw", "DirectRouting": True})
    assert cfg.subnet_len == 26 and cfg.subnet_size == 64
    assert (cfg.subnet_min, cfg.subnet_max) == (IPv4Address("10.5.10.0"), IPv4Address("10.5.20.192"))
    assert cfg.backend == {"Type": "host-gw", "DirectRouting": True}


@pytest.mark.parametrize(("doc", "message"), [
    ({"Network": "10.1.0.0/29"}, "too small"),
    ({"Network": "10.1.0.0/16", "SubnetLen": 31}, "less than /31"),
    ({"Network": "10.1.0.0/16", "SubnetLen": 17}, "at least four subnets"),
    ({"Network": "10.1.0.0/16", "SubnetMin": "10.2.0.0"}, "SubnetMin is not in the range"),
    ({"Network": "10.1.0.0/16", "SubnetMax": "10.2.0.0"}, "SubnetMax is not in the range"),
    ({"Network": "10.1.0.0/16", "SubnetMin": "10.1.0.5"}, "SubnetMin is not on a SubnetLen boundary"),
    ({"Network": "10.1.0.0/16", "SubnetMax": "10.1.3.128"}, "SubnetMax is not on a SubnetLen boundary"),
    ({"Network": "10.1.0.0/16", "SubnetMin": "10.1.9.0", "SubnetMax": "10.1.8.0"}, "above SubnetMax"),
    ({}, "Network is required"),
    ({"Network": "fc00::/64"}, "not an IPv4"),
    ({"Network": "10.1.0.0/16", "SubnetLen": "24"}, "SubnetLen must be"),
    ({"Network": "10.1.0.0/16", "EnableIPv6": True}, "EnableIPv6"),
    ({"Network": "10.1.0.0/16", "Backend": None}, "Backend is required"),
    ({"Network": "10.1.0.0/16", "Backend": {"VNI": 1}}, "Backend.Type is required"),
    ({"Network": "10.1.0.0/16", "Backend": "vxlan"}, "Backend must be"),
])
def test_rejects(doc: dict[str, Any], message: str) -> None:
    if "Backend" in doc and doc["Backend"] is None:
        del doc["Backend"]
        raw = json.dumps(doc).encode()
    else:
        raw = json.dumps({"Backend": VX, **doc}).encode()
    with pytest.raises(ConfigError, match=message):
        NetworkConfig.parse(raw)


@pytest.mark.parametrize("raw", [b"{", b"[]"])
def test_rejects_non_objects(raw: bytes) -> None:
    with pytest.raises(ConfigError):
        NetworkConfig.parse(raw)


@pytest.mark.parametrize(("subnet", "ok"), [
    ("10.244.1.0/24", True), ("10.244.255.0/24", True),
    ("10.244.0.0/24", False),  # below SubnetMin (the skipped first subnet)
    ("10.244.3.0/25", False),  # wrong length
    ("10.245.1.0/24", False),  # outside Network
])
def test_is_compatible(subnet: str, ok: bool) -> None:
    assert parse(Network="10.244.0.0/16").is_compatible(IPv4Network(subnet)) is ok
