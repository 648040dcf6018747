"""The nft fake behaves like nft 1.0.6 where podnet's code depends on it (checked against the real
tool in netns_tests/test_masq.py::test_fake_lists_like_real_nft)."""

from __future__ import annotations

import pytest

from podnet.errors import ExecError
from podnet.xtables.nft_fake import FakeNft, parse_elements

BASE = """add table inet t
add set inet t s { type ipv4_addr; }
add map inet t m { type inet_proto . inet_service : ipv4_addr . inet_service; }
add set inet t c { type ipv6_addr . ipv6_addr; flags interval; }
add chain inet t post { type nat hook postrouting priority srcnat; policy accept; }
add rule inet t post ip saddr @s masquerade
"""


@pytest.fixture
def fake() -> FakeNft:
    f = FakeNft()
    f.apply(BASE)
    return f


def test_parse_elements_keys_comments_and_map_data() -> None:
    body = '{ tcp . 8080 comment "n:c:eth0" : 10.1.0.5 . 80, fd00::5 . fd00::/64, 10.0.0.1 }'
    assert parse_elements(body) == [("tcp . 8080", "n:c:eth0", "10.1.0.5 . 80"),
                                    ("fd00::5 . fd00::/64", "", None), ("10.0.0.1", "", None)]


def test_parse_elements_needs_braces() -> None:
    with pytest.raises(ExecError):
        parse_elements("10.0.0.1")


def test_add_is_idempotent_and_keeps_the_first_comment(fake: FakeNft) -> None:
    fake.apply(BASE)
    fake.apply('add element inet t s { 10.0.0.1 comment "a" }\n')
    fake.apply('add element inet t s { 10.0.0.1 comment "b" }\n')
    assert fake.elements("inet", "t", "s") == {"10.0.0.1": (None, "a")}


def test_map_element_with_other_data_clashes(fake: FakeNft) -> None:
    fake.apply("add element inet t m { tcp . 80 : 10.0.0.1 . 80 }\n")
    fake.apply("add element inet t m { tcp . 80 : 10.0.0.1 . 80 }\n")  # same data: fine
    with pytest.raises(ExecError, match="File exists"):
        fake.apply("add element inet t m { tcp . 80 : 10.0.0.2 . 80 }\n")


def test_delete_of_absent_things_fails_but_add_then_delete_does_not(fake: FakeNft) -> None:
    for line in ("delete element inet t s { 10.0.0.9 }", "delete table inet nope",
                 "delete chain inet t nope", "flush chain inet t nope", "delete set inet t nope"):
        with pytest.raises(ExecError, match="No such file or directory"):
            fake.apply(line + "\n")
    fake.apply("add element inet t s { 10.0.0.9 }\ndelete element inet t s { 10.0.0.9 }\n")
    fake.apply("add table inet gone\ndelete table inet gone\n")
    assert fake.elements("inet", "t", "s") == {}
    assert not fake.has_table("inet", "gone")


def test_transactions_are_all_or_nothing(fake: FakeNft) -> None:
    before = len(fake.scripts)
    with pytest.raises(ExecError):
        fake.apply("add element inet t s { 10.0.0.1 }\ndelete element inet t s { 10.0.0.2 }\n")
    assert fake.elements("inet", "t", "s") == {}
    assert len(fake.scripts) == before


def test_referenced_set_and_chain_cannot_be_deleted(fake: FakeNft) -> None:
    with pytest.raises(ExecError, match="busy"):
        fake.apply("delete set inet t s\n")
    fake.apply("flush chain inet t post\ndelete set inet t s\n")
    fake.apply("add chain inet t sub\nadd rule inet t post jump sub\n")
    with pytest.raises(ExecError, match="busy"):
        fake.apply("delete chain inet t sub\n")


def test_rules_need_their_sets_and_chains(fake: FakeNft) -> None:
    with pytest.raises(ExecError):
        fake.apply("add rule inet t post ip saddr @missing accept\n")
    with pytest.raises(ExecError):
        fake.apply("add rule inet t post jump missing\n")


def test_set_spec_change_is_refused(fake: FakeNft) -> None:
    with pytest.raises(ExecError, match="File exists"):
        fake.apply("add set inet t s { type ipv6_addr; }\n")
    with pytest.raises(ExecError):
        fake.apply("add set inet t bad { type ipv4_addr : ipv4_addr; }\n")


def test_rule_delete_by_handle(fake: FakeNft) -> None:
    listing = fake.list_table("inet", "t")
    assert listing is not None
    handle = next(o["rule"]["handle"] for o in listing["nftables"] if "rule" in o)
    fake.apply(f"delete rule inet t post handle {handle}\n")
    assert fake.rules("inet", "t", "post") == []
    with pytest.raises(ExecError):
        fake.apply(f"delete rule inet t post handle {handle}\n")


def test_unknown_commands_fail_loudly(fake: FakeNft) -> None:
    with pytest.raises(ExecError, match="does not understand"):
        fake.apply("replace rule inet t post handle 1 accept\n")
    with pytest.raises(ExecError, match="syntax"):
        fake.apply("add table\n")


def test_listing_has_the_shape_of_nft_json(fake: FakeNft) -> None:
    fake.apply('add element inet t m { tcp . 80 comment "x" : 10.0.0.1 . 8080 }\n'
               "add element inet t c { fd00::5 . fd00::/64 }\nadd element inet t s { 10.0.0.1 }\n")
    listing = fake.list_table("inet", "t")
    assert listing is not None
    assert fake.list_table("inet", "absent") is None
    maps = [o["map"] for o in listing["nftables"] if "map" in o]
    assert maps[0]["type"] == ["inet_proto", "inet_service"]
    assert maps[0]["map"] == "ipv4_addr . inet_service"
    assert maps[0]["elem"] == [[{"elem": {"val": {"concat": ["tcp", 80]}, "comment": "x"}},
                                {"concat": ["10.0.0.1", 8080]}]]
    sets = {o["set"]["name"]: o["set"] for o in listing["nftables"] if "set" in o}
    assert sets["c"]["flags"] == ["interval"]
    assert sets["c"]["elem"] == [{"concat": ["fd00::5", {"prefix": {"addr": "fd00::", "len": 64}}]}]
    assert sets["s"]["elem"] == ["10.0.0.1"]
    chains = [o["chain"] for o in listing["nftables"] if "chain" in o]
    assert chains == [{"family": "inet", "table": "t", "name": "post", "type": "nat",
                       "hook": "postrouting", "prio": "srcnat", "policy": "accept"}]
