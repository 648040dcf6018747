"""The nft seam: JSON element parsing, owner tags, OwnedTable semantics (on the fake), System."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from podnet import execs
from podnet.errors import ExecError
from podnet.xtables import nft
from podnet.xtables.nft_fake import FakeNft

# Shape captured from `nft -j list table` (nft 1.0.6, kernel 6.x).
REAL_LISTING: dict[str, Any] = {"nftables": [
    {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
    {"table": {"family": "inet", "name": "t", "handle": 1}},
    {"set": {"family": "inet", "name": "pods4", "table": "t", "type": "ipv4_addr", "handle": 4,
             "elem": [{"elem": {"val": "10.1.0.5", "comment": "n:c:eth0"}}, "10.1.0.7"]}},
    {"set": {"family": "inet", "name": "local4", "table": "t", "type": ["ipv4_addr", "ipv4_addr"],
             "handle": 5, "flags": ["interval"],
             "elem": [{"elem": {"val": {"concat": ["10.1.0.5", {"prefix": {"addr": "10.1.0.0", "len": 24}}]},
                                "comment": "n:c:eth0"}}]}},
    {"map": {"family": "inet", "name": "dnat4", "table": "t", "type": ["inet_proto", "inet_service"],
             "handle": 6, "map": "ipv4_addr . inet_service",
             "elem": [[{"elem": {"val": {"concat": ["tcp", 8080]}, "comment": "n:c:eth0"}},
                       {"concat": ["10.1.0.5", 80]}]]}},
    {"set": {"family": "inet", "name": "empty", "table": "t", "type": "ipv4_addr", "handle": 7}},
    {"chain": {"family": "inet", "table": "t", "name": "post", "handle": 1, "type": "nat",
               "hook": "postrouting", "prio": 100, "policy": "accept"}},
    {"chain": {"family": "inet", "table": "t", "name": "idle", "handle": 2}},
    {"rule": {"family": "inet", "table": "t", "chain": "post", "handle": 9, "expr": []}},
    {"rule": {"family": "inet", "table": "t", "chain": "post", "handle": 10, "expr": []}},
]}


@pytest.fixture(autouse=True)
def _no_real_nft(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests run in the root netns: any real nft call here would change the host."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a unit test reached a real program")

    monkeypatch.setattr(execs, "run", refuse)


def test_value_text_round_trips_nft_json() -> None:
    assert nft.value_text("10.1.0.5") == "10.1.0.5"
    assert nft.value_text(80) == "80"
    assert nft.value_text({"prefix": {"addr": "fd00::", "len": 64}}) == "fd00::/64"
    assert nft.value_text({"range": ["10.0.0.1", "10.0.0.9"]}) == "10.0.0.1-10.0.0.9"
    assert nft.value_text({"concat": ["tcp", 8080]}) == "tcp . 8080"
    assert nft.value_text({"elem": {"val": "10.0.0.1", "comment": "x"}}) == "10.0.0.1"
    for bad in (True, None, {"set": 1}, [1]):
        with pytest.raises(ValueError):
            nft.value_text(bad)


def test_elements_of_a_real_listing() -> None:
    assert nft.elements_of(REAL_LISTING) == [
        nft.Element("pods4", "10.1.0.5", None, "n:c:eth0"),
        nft.Element("pods4", "10.1.0.7", None, ""),
        nft.Element("local4", "10.1.0.5 . 10.1.0.0/24", None, "n:c:eth0"),
        nft.Element("dnat4", "tcp . 8080", "10.1.0.5 . 80", "n:c:eth0"),
    ]
    assert nft.elements_of(None) == []


def test_rule_counts() -> None:
    assert nft.rule_counts(REAL_LISTING) == {"post": 2, "idle": 0}


def test_element_lines() -> None:
    el = nft.Element("dnat4", "tcp . 8080", "10.1.0.5 . 80", "n:c:eth0")
    assert el.add_line("inet", "t") == \
        'add element inet t dnat4 { tcp . 8080 comment "n:c:eth0" : 10.1.0.5 . 80 }'
    assert el.delete_line("inet", "t") == "delete element inet t dnat4 { tcp . 8080 }"
    assert el.add_line("inet", "t", with_comment=False) == \
        "add element inet t dnat4 { tcp . 8080 : 10.1.0.5 . 80 }"


def test_owner_tag_plain_encoded_and_hashed() -> None:
    assert nft.owner_tag("net1", "abc123", "eth0") == "net1:abc123:eth0"
    assert nft.owner_tag("n", "c", 'e"t h:0,') == "n:c:e%22t%20h%3A0%2C"
    long = nft.owner_tag("x" * 200, "f" * 64, "y" * 15)
    assert len(long) <= nft.COMMENT_MAX
    assert long.startswith("%h") and long.split(":")[1] == "f" * 64
    assert long == nft.owner_tag("x" * 200, "f" * 64, "y" * 15)  # deterministic
    worst = nft.owner_tag("é" * 200, "c" * 500, "é" * 7)
    assert len(worst) <= nft.COMMENT_MAX and '"' not in worst


def test_gc_predicate_matches_network_and_keep_list() -> None:
    stale = nft.stale_in("net1", [("keep", "eth0")])

    def el(comment: str) -> nft.Element:
        return nft.Element("s", "10.0.0.1", None, comment)

    assert stale(el(nft.owner_tag("net1", "gone", "eth0")))
    assert stale(el(nft.owner_tag("net1", "keep", "eth1")))
    assert not stale(el(nft.owner_tag("net1", "keep", "eth0")))
    assert not stale(el(nft.owner_tag("net2", "gone", "eth0")))
    assert not stale(el("someone else's comment"))
    assert not stale(el(""))
    long_net = "n" * 100
    assert nft.stale_in(long_net, [])(el(nft.owner_tag(long_net, "c", "eth0")))


SKELETON = ("add set inet t s { type ipv4_addr; }",
            "add map inet t m { type inet_service : ipv4_addr; }",
            "add chain inet t post { type nat hook postrouting priority srcnat; policy accept; }",
            "flush chain inet t post",
            "add rule inet t post ip saddr @s masquerade")


def owned_table(fake: FakeNft) -> nft.OwnedTable:
    return nft.OwnedTable("inet", "t", SKELETON, {"post": 1}, fake)


def els(tag: str, *ips: str) -> list[nft.Element]:
    return [nft.Element("s", ip, None, tag) for ip in ips]


def is_tag(tag: str) -> Any:
    return lambda e: e.comment == tag


def test_ensure_lists_once_applies_once_and_is_idempotent() -> None:
    fake = FakeNft()
    table = owned_table(fake)
    table.ensure(els("a", "10.0.0.1", "10.0.0.2"), is_tag("a"))
    assert (len(fake.scripts), fake.listings, fake.locks) == (1, 1, 1)
    table.ensure(els("a", "10.0.0.1", "10.0.0.2"), is_tag("a"))
    assert (len(fake.scripts), fake.listings) == (1, 2)  # nothing to do: no transaction
    assert fake.elements("inet", "t", "s") == {"10.0.0.1": (None, "a"), "10.0.0.2": (None, "a")}
    assert fake.rules("inet", "t", "post") == ["ip saddr @s masquerade"]


def test_ensure_on_an_intact_table_only_adds() -> None:
    """Deletions cost an RCU grace period (~16 ms): a plain ADD must not contain any."""
    fake = FakeNft()
    table = owned_table(fake)
    table.ensure(els("a", "10.0.0.1"), is_tag("a"))
    table.ensure(els("b", "10.0.0.2"), is_tag("b"))
    assert fake.scripts[-1] == 'add element inet t s { 10.0.0.2 comment "b" }\n'


def test_ensure_repairs_a_broken_skeleton() -> None:
    fake = FakeNft()
    table = owned_table(fake)
    table.ensure(els("a", "10.0.0.1"), is_tag("a"))
    fake.apply("flush chain inet t post\n")
    table.ensure(els("a", "10.0.0.1"), is_tag("a"))
    assert fake.rules("inet", "t", "post") == ["ip saddr @s masquerade"]
    assert table.missing(els("a", "10.0.0.1")) == []


def test_ensure_takes_over_an_element_of_another_owner() -> None:
    fake = FakeNft()
    table = owned_table(fake)
    table.ensure(els("old", "10.0.0.1"), is_tag("old"))
    table.ensure(els("new", "10.0.0.1"), is_tag("new"))
    assert fake.elements("inet", "t", "s") == {"10.0.0.1": (None, "new")}
    assert table.remove(is_tag("old")) == []
    assert fake.elements("inet", "t", "s") == {"10.0.0.1": (None, "new")}


def test_ensure_resolves_a_map_clash_and_drops_own_stale_elements() -> None:
    fake = FakeNft()
    table = owned_table(fake)
    table.ensure([nft.Element("m", "80", "10.0.0.1", "old"), nft.Element("m", "81", "10.0.0.1", "old")],
                 is_tag("old"))
    table.ensure([nft.Element("m", "9", "10.0.0.7", "new")], is_tag("new"))
    # "new" re-ADDs with a port "old" holds, plus its own stale element "9" must go.
    table.ensure([nft.Element("m", "80", "10.0.0.2", "new")], is_tag("new"))
    assert fake.elements("inet", "t", "m") == {"80": ("10.0.0.2", "new"), "81": ("10.0.0.1", "old")}


def test_ensure_reraises_failures() -> None:
    fake = FakeNft()
    fake.fail_next = ExecError(["nft"], 1, "Error: Operation not permitted")
    with pytest.raises(ExecError, match="not permitted"):
        owned_table(fake).ensure(els("a", "10.0.0.1"), lambda e: False)


def test_remove_drops_the_table_with_its_last_element() -> None:
    fake = FakeNft()
    table = owned_table(fake)
    table.ensure(els("a", "10.0.0.1"), is_tag("a"))
    table.ensure(els("b", "10.0.0.2"), is_tag("b"))
    assert table.remove(is_tag("a")) == els("a", "10.0.0.1")
    assert fake.has_table("inet", "t")
    assert table.remove(is_tag("b")) == els("b", "10.0.0.2")
    assert not fake.has_table("inet", "t")
    applied = len(fake.scripts)
    assert table.remove(lambda e: True) == []
    assert len(fake.scripts) == applied  # nothing there: no transaction at all


def test_remove_of_nothing_keeps_a_table_with_elements() -> None:
    fake = FakeNft()
    table = owned_table(fake)
    table.ensure(els("a", "10.0.0.1"), is_tag("a"))
    applied = len(fake.scripts)
    assert table.remove(is_tag("zzz")) == []
    assert len(fake.scripts) == applied and fake.has_table("inet", "t")


def test_missing_reports_elements_and_rules() -> None:
    fake = FakeNft()
    table = owned_table(fake)
    want = els("a", "10.0.0.1")
    assert table.missing(want) == ["table inet t does not exist"]
    table.ensure(want, is_tag("a"))
    assert table.missing(want) == []
    fake.apply("flush chain inet t post\n")
    assert table.missing(want + els("a", "10.0.0.3")) == [
        "s element '10.0.0.3' (owner a)", "chain post has 0 rules, want 1"]


def test_forget_lines() -> None:
    assert nft.forget_lines("table", "inet", "t") == ["add table inet t", "delete table inet t"]
    assert nft.forget_lines("chain", "inet", "t", "c") == ["add chain inet t c", "delete chain inet t c"]
    with pytest.raises(ValueError):
        nft.forget_lines("set", "inet", "t", "s")


def test_system_runs_nft_in_its_netns_and_maps_enoent(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    calls: list[tuple[list[str], str | None, Any]] = []

    def fake_run(argv: list[str], *, input: Any = None, netns: str | None = None, **_: Any
                 ) -> subprocess.CompletedProcess[str]:
        calls.append((list(argv), netns, input))
        if argv[-1] == "absent":
            raise ExecError(list(argv), 1, "Error: No such file or directory\nlist table inet absent")
        if argv[-1] == "denied":
            raise ExecError(list(argv), 1, "Error: Operation not permitted")
        return subprocess.CompletedProcess(argv, 0, '{"nftables": [{"table": {"name": "t"}}]}', "")

    monkeypatch.setattr(execs, "run", fake_run)
    system = nft.System(netns="h1", lock_dir=str(tmp_path / "locks"))
    system.apply("add table inet t\n")
    assert calls[-1] == (["nft", "-f", "-"], "h1", "add table inet t\n")
    assert system.list_table("inet", "t") == {"nftables": [{"table": {"name": "t"}}]}
    assert system.list_table("inet", "absent") is None
    with pytest.raises(ExecError):
        system.list_table("inet", "denied")
    with system.lock("inet", "t"), system.lock("inet", "other"):
        pass
    assert (tmp_path / "locks" / "nft-inet-t.lock").exists()
