"""apply() through FakeIptables: idempotence, stale removal, foreign rules, and the fake's
own iptables-restore semantics (it must reject what the real tool rejects)."""

from __future__ import annotations

import pytest

from podnet.errors import ExecError, PodnetError
from podnet.xtables.fake import FakeIpset, FakeIptables
from podnet.xtables.iptables import NotConverged
from podnet.xtables.ruleset import Ruleset

FOREIGN = """*nat
:DOCKER - [0:0]
-A PREROUTING -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 -j MASQUERADE
-A DOCKER -j RETURN
COMMIT
*filter
-A FORWARD -j ACCEPT
COMMIT
"""


def services(*names: str, masq: bool = True) -> Ruleset:
    rs = Ruleset()
    nat = rs.table("nat")
    nat.chain("PREROUTING").insert('-m comment --comment "kubernetes service portals" -j KUBE-SERVICES')
    nat.chain("OUTPUT").insert("-j KUBE-SERVICES")
    top = nat.chain("KUBE-SERVICES")
    for i, name in enumerate(names):
        svc = nat.chain(f"KUBE-SVC-{name}")
        top.append(f"-d 10.96.0.{i + 10} -p tcp --dport 80 -j {svc.name}")
        svc.append(f"-p tcp -j DNAT --to-destination 10.244.1.{i + 2}:8080")
    if masq:
        nat.chain("POSTROUTING").append("-j KUBE-POSTROUTING")
        nat.chain("KUBE-POSTROUTING").append("-m mark --mark 0x4000/0x4000 -j MASQUERADE")
    rs.table("filter")
    return rs


@pytest.fixture
def ipt() -> FakeIptables:
    fake = FakeIptables()
    fake.restore(FOREIGN)
    return fake


def test_first_apply_creates_second_is_a_noop(ipt: FakeIptables) -> None:
    payload = ipt.apply(services("A", "B"), "KUBE-")
    assert ":KUBE-SVC-A - [0:0]" in payload
    calls = len(ipt.restores)
    assert ipt.apply(services("A", "B"), "KUBE-") == ""
    assert len(ipt.restores) == calls  # nothing was run at all
    assert ipt.converged(services("A", "B"), "KUBE-")


def test_change_rewrites_only_changed_chains(ipt: FakeIptables) -> None:
    ipt.apply(services("A", "B"), "KUBE-")
    desired = services("A", "B")
    desired.table("nat").chains["KUBE-SVC-B"].rules[0] = (
        "-A KUBE-SVC-B -p tcp -j DNAT --to-destination 10.244.9.9:8080")
    payload = ipt.apply(desired, "KUBE-")
    assert payload.splitlines() == [
        "*nat", ":KUBE-SVC-B - [0:0]",
        "-A KUBE-SVC-B -p tcp -j DNAT --to-destination 10.244.9.9:8080", "COMMIT"]


def test_stale_chains_and_jumps_are_removed(ipt: FakeIptables) -> None:
    ipt.apply(services("A", "B"), "KUBE-")
    ipt.apply(services("A", masq=False), "KUBE-")
    saved = ipt.save("nat")
    assert "KUBE-SVC-B" not in saved
    assert "KUBE-POSTROUTING" not in saved
    assert ":KUBE-SVC-A - [0:0]" in saved


def test_foreign_rules_and_chains_are_untouched(ipt: FakeIptables) -> None:
    before_filter = ipt.save("filter")
    ipt.apply(services("A", "B"), "KUBE-")
    empty = Ruleset()
    empty.table("nat")
    empty.table("filter")
    ipt.apply(empty, "KUBE-")  # remove everything we own
    assert "KUBE-" not in ipt.save("nat")
    for line in FOREIGN.splitlines():
        if line.startswith("-A") and "FORWARD" not in line:
            assert line in ipt.save("nat")
    assert ipt.save("filter") == before_filter


def test_jump_inserted_at_top_survives_foreign_reordering(ipt: FakeIptables) -> None:
    ipt.apply(services("A"), "KUBE-")
    nat = ipt.save("nat").splitlines()
    prerouting = [line for line in nat if line.startswith("-A PREROUTING")]
    assert prerouting[0].endswith("-j KUBE-SERVICES")  # -I put it above DOCKER's
    ipt.restore("*nat\n-I PREROUTING -j DOCKER\nCOMMIT\n")  # someone jumps in front of us
    assert ipt.apply(services("A"), "KUBE-") == ""  # present is enough; no churn


def test_external_flush_is_repaired(ipt: FakeIptables) -> None:
    ipt.apply(services("A"), "KUBE-")
    ipt.restore("*nat\n:KUBE-SVC-A - [0:0]\n-D OUTPUT -j KUBE-SERVICES\nCOMMIT\n")
    payload = ipt.apply(services("A"), "KUBE-")
    assert "-I OUTPUT -j KUBE-SERVICES" in payload and ":KUBE-SVC-A - [0:0]" in payload
    assert ipt.converged(services("A"), "KUBE-")


def test_other_owner_is_invisible() -> None:
    ipt = FakeIptables()
    cali = Ruleset()
    cali.table("filter").chain("cali-FORWARD").append("-j ACCEPT")
    cali.table("filter").chain("FORWARD").insert("-j cali-FORWARD")
    ipt.apply(cali, "cali-")
    kube = Ruleset()
    kube.table("filter").chain("KUBE-FORWARD").append("-j ACCEPT")
    kube.table("filter").chain("FORWARD").insert("-j KUBE-FORWARD")
    ipt.apply(kube, "KUBE-")
    assert ipt.converged(cali, "cali-") and ipt.converged(kube, "KUBE-")


def test_ip_version_mismatch_is_refused() -> None:
    with pytest.raises(PodnetError):
        FakeIptables(ip_version=6).apply(Ruleset(ip_version=4), "KUBE-")


def test_converged_check_raises_when_the_second_diff_is_not_empty() -> None:
    class Clobbered(FakeIptables):
        """Someone rewrites our chain right after every restore (a fight between agents)."""

        def restore(self, payload: str, noflush: bool = True) -> None:
            super().restore(payload, noflush)
            super().restore("*nat\n-A KUBE-SVC-A -j RETURN\nCOMMIT\n")

    ipt = Clobbered()
    with pytest.raises(NotConverged) as err:
        ipt.apply(services("A"), "KUBE-")
    assert ":KUBE-SVC-A - [0:0]" in err.value.leftover


# ------------------------------------------------------------------ fake restore semantics
@pytest.mark.parametrize(("payload", "message"), [
    ("*nat\n-A NOPE -j ACCEPT\nCOMMIT\n", "No chain"),
    ("*nat\n-A PREROUTING -j KUBE-NONE\nCOMMIT\n", "does not exist"),
    ("*nat\n-D PREROUTING -j DOCKER -s 1.2.3.4\nCOMMIT\n", "Bad rule"),
    ("*nat\n-X DOCKER\nCOMMIT\n", "busy"),
    ("*nat\n-X PREROUTING\nCOMMIT\n", "builtin"),
    ("*nat\n-N DOCKER\nCOMMIT\n", "already exists"),
    ("*nat\n:KUBE-A - [0:0]\n", "COMMIT expected"),
    ("-A PREROUTING -j ACCEPT\n", "outside a table"),
    ("*bogus\nCOMMIT\n", "bad table"),
    ("*nat\n:INPUT - [0:0]\nCOMMIT\n", "bad policy"),
    ("*nat\n-A PREROUTING -m set --match-set nope src -j ACCEPT\nCOMMIT\n", "Set nope"),
    ("*nat\n-Z PREROUTING\nCOMMIT\n", "unsupported"),
    ('*nat\n-A PREROUTING -m comment --comment "open -j ACCEPT\nCOMMIT\n', "unterminated"),
])
def test_fake_rejects_what_iptables_restore_rejects(ipt: FakeIptables, payload: str, message: str) -> None:
    before = ipt.save("nat")
    with pytest.raises((ExecError, PodnetError), match=message):
        ipt.restore(payload)
    assert ipt.save("nat") == before  # nothing of a failed payload is applied


def test_fake_error_rolls_back_whole_payload(ipt: FakeIptables) -> None:
    before = ipt.save("nat")
    with pytest.raises(ExecError, match="line 4"):
        ipt.restore("*nat\n:KUBE-NEW - [0:0]\n-A KUBE-NEW -j RETURN\n-A KUBE-NEW -j KUBE-GONE\nCOMMIT\n")
    assert ipt.save("nat") == before


def test_fake_save_is_canonical_and_supports_insert_delete_by_number(ipt: FakeIptables) -> None:
    ipt.restore("*filter\n:KUBE-F - [0:0]\n-A KUBE-F -p tcp --dport 22 -s 10.0.0.1 -j ACCEPT\n"
                "-I KUBE-F 1 -j LOG\n-A KUBE-F -j MARK --set-mark 1\n-D KUBE-F 3\nCOMMIT\n")
    rules = [line for line in ipt.save("filter").splitlines() if line.startswith("-A KUBE-F")]
    assert rules == ["-A KUBE-F -j LOG", "-A KUBE-F -s 10.0.0.1/32 -p tcp -m tcp --dport 22 -j ACCEPT"]
    ipt.restore("*filter\n-D KUBE-F -s 10.0.0.1 -p tcp --dport 22 -j ACCEPT\nCOMMIT\n")
    assert ipt.save("filter").count("-A KUBE-F") == 1


def test_fake_full_restore_without_noflush_resets_the_table(ipt: FakeIptables) -> None:
    ipt.restore("*nat\n:KUBE-A - [0:0]\nCOMMIT\n", noflush=False)
    saved = ipt.save("nat")
    assert "DOCKER" not in saved and ":KUBE-A - [0:0]" in saved
    assert not [line for line in saved.splitlines() if line.startswith("-A")]


def test_fake_builtin_declaration_sets_policy_without_flushing(ipt: FakeIptables) -> None:
    ipt.restore("*filter\n:FORWARD DROP [0:0]\nCOMMIT\n")
    saved = ipt.save("filter")
    assert ":FORWARD DROP [0:0]" in saved and "-A FORWARD -j ACCEPT" in saved


def test_fake_unknown_table_save_fails_like_iptables_save() -> None:
    with pytest.raises(ExecError, match="does not exist"):
        FakeIptables().save("bogus")
    assert FakeIptables().save("nat") == ""


def test_set_referenced_by_a_rule_cannot_be_destroyed() -> None:
    sets = FakeIpset()
    ipt = FakeIptables(ipset=sets)
    sets.restore("create KUBE-S hash:ip family inet\n")
    ipt.restore("*filter\n-A INPUT -m set --match-set KUBE-S src -j ACCEPT\nCOMMIT\n")
    with pytest.raises(ExecError, match="in use"):
        sets.restore("destroy KUBE-S\n")
    ipt.restore("*filter\n-D INPUT -m set --match-set KUBE-S src -j ACCEPT\nCOMMIT\n")
    sets.restore("destroy KUBE-S\n")
    assert "KUBE-S" not in sets.sets
