from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from podnet import names


@given(st.text(min_size=1, max_size=80), st.text(min_size=1, max_size=15))
def test_host_veth_name_is_valid_deterministic_and_prefixed(cid: str, ifname: str) -> None:
    name = names.host_veth_name(cid, ifname)
    assert names.valid_ifname(name)
    assert name.startswith("veth") and len(name) == 15
    assert name == names.host_veth_name(cid, ifname)


def test_host_veth_name_differs_per_ifname() -> None:
    assert names.host_veth_name("c1", "eth0") != names.host_veth_name("c1", "net1")


@given(st.text(max_size=60))
def test_chain_name_fits_iptables_limit(key: str) -> None:
    name = names.chain_name("CNI-DN-", key)
    assert name.startswith("CNI-DN-") and len(name) <= names.CHAIN_MAX


def test_valid_ifname_rules() -> None:
    assert names.valid_ifname("eth0")
    for bad in ("", ".", "..", "a/b", "a:b", "a b", "x" * 16):
        assert not names.valid_ifname(bad)
