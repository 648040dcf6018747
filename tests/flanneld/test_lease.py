"""Lease keys and values in upstream's etcd layout."""

from __future__ import annotations

import json
from ipaddress import IPv4Network

import pytest

from flanneld.lease import Lease, LeaseAttrs, decode_attrs, encode_attrs, parse_subnet_key, subnet_key


def test_key_round_trip() -> None:
    sn = IPv4Network("10.5.52.0/24")
    key = subnet_key("/coreos.com/network", sn)
    assert key == "/coreos.com/network/subnets/10.5.52.0-24"
    assert subnet_key("/coreos.com/network/", sn) == key
    assert parse_subnet_key(key) == sn


@pytest.mark.parametrize(("key", "want"), [
    ("/p/subnets/10.5.52.0-24&fc00::-64", "10.5.52.0/24"),  # dual-stack key: the IPv4 half
    ("/p/subnets/10.5.52.1-24", None),  # host bits set
    ("/p/subnets/10.5.52.0-33", None),
    ("/p/config", None),
    ("/p/subnets/garbage", None),
])
def test_parse_subnet_key(key: str, want: str | None) -> None:
    got = parse_subnet_key(key)
    assert (str(got) if got else None) == want


def test_value_is_upstream_json() -> None:
    raw = encode_attrs(LeaseAttrs("192.168.64.3", "vxlan", {"VNI": 1, "VtepMAC": "c6:d2:32:6f:8f:44"}))
    assert json.loads(raw) == {"PublicIP": "192.168.64.3", "PublicIPv6": None, "BackendType": "vxlan",
                               "BackendData": {"VNI": 1, "VtepMAC": "c6:d2:32:6f:8f:44"}}
    want = LeaseAttrs("192.168.64.3", "vxlan", {"VNI": 1, "VtepMAC": "c6:d2:32:6f:8f:44"})
    assert decode_attrs(raw) == want


def test_empty_backend_fields_are_omitted() -> None:
    # host-gw has no BackendData; upstream's udp lease may carry only PublicIP (Go omitempty).
    assert json.loads(encode_attrs(LeaseAttrs("10.0.0.1", "host-gw"))) == {
        "PublicIP": "10.0.0.1", "PublicIPv6": None, "BackendType": "host-gw"}
    assert decode_attrs(b'{"PublicIP":"10.0.0.1"}') == LeaseAttrs("10.0.0.1", "", {})
    assert decode_attrs(b'{"PublicIP":"10.0.0.1","BackendData":null}').backend_data == {}


@pytest.mark.parametrize("raw", [b"[]", b'{"PublicIP":"nope"}', b"{}", b"not json"])
def test_decode_rejects(raw: bytes) -> None:
    with pytest.raises(ValueError):
        decode_attrs(raw)


def test_lease_attrs() -> None:
    lease = Lease(IPv4Network("10.1.2.0/24"), "10.0.0.1", "vxlan", {"VNI": 1}, 5.0)
    assert lease.attrs == LeaseAttrs("10.0.0.1", "vxlan", {"VNI": 1})
