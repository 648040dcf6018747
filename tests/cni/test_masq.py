"""The bridge ipMasq module against the nft fake: what it writes, idempotence, DEL w/o state, GC."""

from __future__ import annotations

import pytest

from cni import masq, skel
from podnet.errors import ExecError
from podnet.xtables.nft_fake import FakeNft

IPS = ["10.1.0.5/24", "fd00::5/64"]
F, T = masq.FAMILY, masq.TABLE



@pytest.fixture
def fake() -> FakeNft:
    return FakeNft()


def test_setup_writes_two_elements_per_address_in_one_transaction(fake: FakeNft) -> None:
    masq.setup("net1", "c1", "eth0", IPS, backend=fake)
    assert len(fake.scripts) == 1
    tag = "net1:c1:eth0"
    assert fake.elements(F, T, "pods4") == {"10.1.0.5": (None, tag)}
    assert fake.elements(F, T, "local4") == {"10.1.0.5 . 10.1.0.0/24": (None, tag)}
    assert fake.elements(F, T, "pods6") == {"fd00::5": (None, tag)}
    assert fake.elements(F, T, "local6") == {"fd00::5 . fd00::/64": (None, tag)}
    assert fake.rules(F, T, "postrouting") == list(masq.RULES)
    assert "224.0.0.0/4" in masq.RULES[2] and "ff00::/8" in masq.RULES[3]


def test_host_address_subnet_is_written_as_a_bare_address(fake: FakeNft) -> None:
    masq.setup("net1", "c1", "eth0", ["10.2.0.9/32"], backend=fake)
    assert fake.elements(F, T, "local4") == {"10.2.0.9 . 10.2.0.9": (None, "net1:c1:eth0")}


def test_setup_is_idempotent(fake: FakeNft) -> None:
    masq.setup("net1", "c1", "eth0", IPS, backend=fake)
    state = {name: fake.elements(F, T, name) for name in ("pods4", "pods6", "local4", "local6")}
    masq.setup("net1", "c1", "eth0", IPS, backend=fake)
    assert {name: fake.elements(F, T, name) for name in state} == state
    assert fake.rules(F, T, "postrouting") == list(masq.RULES)
    masq.verify("net1", "c1", "eth0", IPS, backend=fake)


def test_setup_without_addresses_does_nothing(fake: FakeNft) -> None:
    masq.setup("net1", "c1", "eth0", [], backend=fake)
    masq.verify("net1", "c1", "eth0", [], backend=fake)
    assert fake.scripts == []


def test_teardown_needs_no_addresses_and_drops_the_last_table(fake: FakeNft) -> None:
    masq.setup("net1", "c1", "eth0", IPS, backend=fake)
    masq.setup("net1", "c2", "eth0", ["10.1.0.6/24"], backend=fake)
    masq.teardown("net1", "c1", "eth0", [], backend=fake)  # DEL without prevResult / netns
    assert fake.elements(F, T, "pods4") == {"10.1.0.6": (None, "net1:c2:eth0")}
    assert fake.elements(F, T, "pods6") == {}
    masq.teardown("net1", "c2", "eth0", ["10.1.0.6/24"], backend=fake)
    assert not fake.has_table(F, T)


def test_teardown_without_state_succeeds_repeatedly(fake: FakeNft) -> None:
    masq.teardown("net1", "c1", "eth0", IPS, backend=fake)
    masq.setup("net1", "c1", "eth0", IPS, backend=fake)
    masq.teardown("net1", "c1", "eth0", IPS, backend=fake)
    masq.teardown("net1", "c1", "eth0", IPS, backend=fake)
    assert not fake.has_table(F, T)


def test_an_address_reused_by_a_new_pod_survives_the_old_pods_del(fake: FakeNft) -> None:
    masq.setup("net1", "old", "eth0", ["10.1.0.5/24"], backend=fake)
    masq.setup("net1", "new", "eth0", ["10.1.0.5/24"], backend=fake)  # old DEL never came
    masq.teardown("net1", "old", "eth0", ["10.1.0.5/24"], backend=fake)
    masq.verify("net1", "new", "eth0", ["10.1.0.5/24"], backend=fake)


def test_verify_reports_what_is_missing(fake: FakeNft) -> None:
    with pytest.raises(skel.CniError) as exc:
        masq.verify("net1", "c1", "eth0", IPS, backend=fake)
    assert exc.value.code == skel.INTERNAL and "does not exist" in exc.value.msg
    masq.setup("net1", "c1", "eth0", IPS, backend=fake)
    fake.apply(f"delete element {F} {T} pods6 {{ fd00::5 }}\n")
    with pytest.raises(skel.CniError, match="pods6 element 'fd00::5'"):
        masq.verify("net1", "c1", "eth0", IPS, backend=fake)
    masq.setup("net1", "c1", "eth0", IPS, backend=fake)
    fake.apply(f"flush chain {F} {T} postrouting\n")
    with pytest.raises(skel.CniError, match="postrouting has 0 rules"):
        masq.verify("net1", "c1", "eth0", IPS, backend=fake)
    with pytest.raises(skel.CniError, match="c9"):
        masq.verify("net1", "c9", "eth0", ["10.1.0.5/24"], backend=fake)  # owned by c1


def test_gc_keeps_valid_attachments_and_other_networks(fake: FakeNft) -> None:
    masq.setup("net1", "keep", "eth0", ["10.1.0.5/24"], backend=fake)
    masq.setup("net1", "gone", "eth0", ["10.1.0.6/24"], backend=fake)
    masq.setup("net1", "keep", "eth1", ["10.1.0.7/24"], backend=fake)
    masq.setup("net2", "other", "eth0", ["10.9.0.5/24"], backend=fake)
    masq.gc("net1", {("keep", "eth0")}, backend=fake)
    assert set(fake.elements(F, T, "pods4")) == {"10.1.0.5", "10.9.0.5"}
    masq.gc("net2", set(), backend=fake)
    masq.gc("net1", set(), backend=fake)
    assert not fake.has_table(F, T)
    masq.gc("net1", set(), backend=fake)  # nothing there


def test_invalid_address_is_a_config_error(fake: FakeNft) -> None:
    with pytest.raises(skel.CniError) as exc:
        masq.setup("net1", "c1", "eth0", ["10.1.0.300/24"], backend=fake)
    assert exc.value.code == skel.INVALID_CONFIG


def test_nft_failures_become_cni_errors(fake: FakeNft) -> None:
    for call in (lambda: masq.setup("n", "other", "eth0", ["10.9.0.1/24"], backend=fake),
                 lambda: masq.teardown("n", "c", "eth0", IPS, backend=fake),
                 lambda: masq.gc("n", set(), backend=fake)):
        masq.setup("n", "c", "eth0", IPS, backend=fake)
        fake.fail_next = ExecError(["nft"], 1, "Error: Operation not permitted")
        with pytest.raises(skel.CniError, match="not permitted"):
            call()
    fake.fail_next = None
    fake.list_table = lambda family, name: (_ for _ in ()).throw(ExecError(["nft"], 1, "boom"))  # type: ignore[method-assign]
    with pytest.raises(skel.CniError, match="check failed"):
        masq.verify("n", "c", "eth0", IPS, backend=fake)
