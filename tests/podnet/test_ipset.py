"""ipset: member normalizing, `ipset save` parsing, the restore diff, and FakeIpset."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from podnet import execs
from podnet.errors import ExecError
from podnet.xtables.fake import FakeIpset
from podnet.xtables.ipset import IpSet, Ipset, IpsetError, contains, diff, normalize_member, parse_save

# `ipset save` output as ipset 7.17 prints it (measured in a netns).
SAVED = """create KUBE-A hash:ip,port family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0xaa1d6820
add KUBE-A 1.2.3.4,tcp:80
add KUBE-A 1.2.3.4,udp:53
create KUBE-N hash:net family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0xd8f009ac
add KUBE-N 10.1.2.3
add KUBE-N 10.0.0.0/8
create KUBE-OLD hash:ip family inet6 hashsize 1024 maxelem 65536 bucketsize 12 initval 0xb1d4ce7a
add KUBE-OLD fd00::1
create other hash:ip family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x1
add other 9.9.9.9
"""


@pytest.mark.parametrize(("set_type", "given", "saved"), [
    ("hash:ip", "010.1.1.1", "010.1.1.1"),  # not an address to Python: left for ipset to judge
    ("hash:ip", "FD00:0::1", "fd00::1"),
    ("hash:net", "10.1.2.3/32", "10.1.2.3"),
    ("hash:net", "10.1.2.3/8", "10.0.0.0/8"),
    ("hash:net", "fd00:0::1/64", "fd00::/64"),
    ("hash:ip,port", "1.2.3.4,80", "1.2.3.4,tcp:80"),
    ("hash:ip,port", "1.2.3.4,udp:53", "1.2.3.4,udp:53"),
    ("hash:net,port", "10.0.0.0/8,tcp:80", "10.0.0.0/8,tcp:80"),
    ("hash:ip,port,ip", "1.2.3.4,80,5.6.7.8", "1.2.3.4,tcp:80,5.6.7.8"),
    ("hash:ip", "1.2.3.4,5", "1.2.3.4,5"),  # wrong shape: untouched
])
def test_normalize_member(set_type: str, given: str, saved: str) -> None:
    assert normalize_member(set_type, given) == saved


def test_parse_save() -> None:
    sets = parse_save(SAVED)
    assert sets["KUBE-A"].members == {"1.2.3.4,tcp:80", "1.2.3.4,udp:53"}
    assert sets["KUBE-N"].type == "hash:net" and sets["KUBE-OLD"].family == "inet6"
    assert set(sets) == {"KUBE-A", "KUBE-N", "KUBE-OLD", "other"}


def test_contains_handles_nets_and_ports() -> None:
    nets = IpSet("KUBE-N", "hash:net", members={"10.0.0.0/8", "192.168.1.1"})
    assert contains(nets, "10.9.9.9") and contains(nets, "192.168.1.1")
    assert not contains(nets, "192.168.1.2")
    ports = IpSet("KUBE-P", "hash:ip,port", members={"1.2.3.4,tcp:80"})
    assert contains(ports, "1.2.3.4,80") and not contains(ports, "1.2.3.4,udp:80")


# ------------------------------------------------------------------------------------ diff
def desired() -> list[IpSet]:
    return [
        IpSet("KUBE-A", "hash:ip,port", members={"1.2.3.4,80", "5.6.7.8,tcp:443"}),
        IpSet("KUBE-N", "hash:net", members={"10.0.0.0/8", "10.1.2.3/32"}),
        IpSet("KUBE-NEW", "hash:ip", "inet6", members={"fd00::2"}, options=("maxelem", "1024")),
    ]


def test_diff_adds_deletes_creates_and_destroys_stale() -> None:
    payload = diff(desired(), parse_save(SAVED), "KUBE-")
    assert payload.splitlines() == [
        "del KUBE-A 1.2.3.4,udp:53 -exist",
        "add KUBE-A 5.6.7.8,tcp:443 -exist",
        "create KUBE-NEW hash:ip family inet6 maxelem 1024 -exist",
        "add KUBE-NEW fd00::2 -exist",
        "destroy KUBE-OLD",
    ]
    assert "other" not in payload


def test_diff_can_leave_stale_sets_for_after_the_iptables_apply() -> None:
    payload = diff(desired(), parse_save(SAVED), "KUBE-", destroy_stale=False)
    assert "destroy" not in payload


def test_type_change_recreates_the_set() -> None:
    want = [IpSet("KUBE-N", "hash:ip", members={"10.1.2.3"})]
    payload = diff(want, parse_save(SAVED), "KUBE-", destroy_stale=False)
    assert payload.splitlines() == [
        "destroy KUBE-N", "create KUBE-N hash:ip family inet -exist", "add KUBE-N 10.1.2.3 -exist"]


def test_big_change_is_swapped_in_through_an_owned_temporary_set() -> None:
    want = [IpSet("KUBE-N", "hash:net", members={f"10.9.{i}.0/24" for i in range(5)})]
    payload = diff(want, parse_save(SAVED), "KUBE-", destroy_stale=False, swap_threshold=3)
    lines = payload.splitlines()
    assert lines[:2] == ["create KUBE-N-tmp hash:net family inet -exist", "flush KUBE-N-tmp"]
    assert lines[-2:] == ["swap KUBE-N-tmp KUBE-N", "destroy KUBE-N-tmp"]
    assert len(lines) == 2 + 5 + 2


@pytest.mark.parametrize("bad", [IpSet("other2"), IpSet("KUBE-" + "x" * 27)])
def test_foreign_or_long_names_are_refused(bad: IpSet) -> None:
    with pytest.raises(IpsetError):
        diff([bad], {}, "KUBE-")


# ------------------------------------------------------------------------------ FakeIpset
def test_apply_converges_and_second_apply_is_a_noop() -> None:
    fake = FakeIpset()
    fake.restore(SAVED.replace(" bucketsize 12", ""))
    fake.apply(desired(), "KUBE-")
    assert fake.converged(desired(), "KUBE-")
    calls = len(fake.restores)
    assert fake.apply(desired(), "KUBE-") == ""
    assert len(fake.restores) == calls
    assert fake.sets["other"].members == {"9.9.9.9"}
    assert fake.contains("KUBE-N", "10.200.0.1")


def test_swap_apply_converges() -> None:
    fake = FakeIpset()
    fake.apply([IpSet("KUBE-S", members={"1.1.1.1"})], "KUBE-")
    big = [IpSet("KUBE-S", members={f"2.2.2.{i}" for i in range(10)})]
    fake.apply(big, "KUBE-", swap_threshold=4)
    assert fake.converged(big, "KUBE-") and set(fake.sets) == {"KUBE-S"}


def test_fake_restore_stops_at_first_error_keeping_earlier_lines() -> None:
    fake = FakeIpset()
    with pytest.raises(ExecError, match="line 3"):
        fake.restore("create KUBE-T hash:ip family inet\nadd KUBE-T 9.9.9.9\nadd KUBE-T bad\n"
                     "add KUBE-T 8.8.8.8\n")
    assert fake.sets["KUBE-T"].members == {"9.9.9.9"}


@pytest.mark.parametrize(("payload", "message"), [
    ("create KUBE-T hash:ip family inet\n", "already exists"),
    ("create KUBE-T hash:net family inet -exist\n", "already exists"),
    ("add KUBE-T 1.1.1.1\n", "already added"),
    ("del KUBE-T 7.7.7.7\n", "not added"),
    ("add KUBE-T fd00::1\n", "not an inet"),
    ("add KUBE-X 1.1.1.1\n", "does not exist"),
    ("destroy KUBE-X\n", "does not exist"),
    ("swap KUBE-T KUBE-U\n", "cannot be swapped"),
    ("frobnicate KUBE-T\n", "Syntax error"),
])
def test_fake_rejects_what_ipset_rejects(payload: str, message: str) -> None:
    fake = FakeIpset()
    fake.restore("create KUBE-T hash:ip family inet\nadd KUBE-T 1.1.1.1\n"
                 "create KUBE-U hash:net family inet\n")
    with pytest.raises(ExecError, match=message):
        fake.restore(payload)


def test_fake_exist_flag_makes_lines_idempotent() -> None:
    fake = FakeIpset()
    for _ in range(2):
        fake.restore("create KUBE-T hash:ip family inet -exist\nadd KUBE-T 1.1.1.1 -exist\n"
                     "del KUBE-T 2.2.2.2 -exist\n")
    assert fake.sets["KUBE-T"].members == {"1.1.1.1"}
    assert parse_save(fake.save())["KUBE-T"].members == {"1.1.1.1"}


# ------------------------------------------------------------------------------ real runner
def test_real_runner_command_lines(monkeypatch) -> None:
    calls: list[tuple[list[str], dict[str, Any]]] = []

    def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append((list(argv), kwargs))
        return subprocess.CompletedProcess(argv, 0, SAVED if argv[1] == "save" else "", "")

    monkeypatch.setattr(execs, "run", run)
    payload = Ipset(netns="t-x").apply(desired(), "KUBE-")
    assert [argv for argv, _ in calls] == [["ipset", "save"], ["ipset", "restore"]]
    assert calls[1][1]["input"] == payload and calls[1][1]["netns"] == "t-x"
