"""masq.setup's fast path (one blind `create element` transaction) and its fallbacks."""

from __future__ import annotations

import pytest

from cni import masq, skel
from podnet.errors import ExecError
from podnet.xtables.nft_fake import FakeNft

F, T = masq.FAMILY, masq.TABLE


def test_second_pod_is_one_transaction_without_a_listing() -> None:
    fake = FakeNft()
    masq.setup("net1", "c1", "eth0", ["10.1.0.5/24"], backend=fake)  # creates the table: listed
    listings, scripts = fake.listings, len(fake.scripts)
    masq.setup("net1", "c2", "eth0", ["10.1.0.6/24", "fd00::6/64"], backend=fake)
    assert fake.listings == listings and len(fake.scripts) == scripts + 1
    assert fake.scripts[-1].startswith("create element")
    masq.verify("net1", "c2", "eth0", ["10.1.0.6/24", "fd00::6/64"], backend=fake)


def test_a_held_key_falls_back_to_the_takeover() -> None:
    fake = FakeNft()
    masq.setup("net1", "old", "eth0", ["10.1.0.5/24"], backend=fake)
    masq.setup("net1", "new", "eth0", ["10.1.0.5/24"], backend=fake)
    assert fake.elements(F, T, "pods4") == {"10.1.0.5": (None, "net1:new:eth0")}


def test_a_repeated_add_is_idempotent() -> None:
    fake = FakeNft()
    for _ in range(2):
        masq.setup("net1", "c1", "eth0", ["10.1.0.5/24"], backend=fake)
    assert fake.elements(F, T, "pods4") == {"10.1.0.5": (None, "net1:c1:eth0")}
    assert fake.rules(F, T, "postrouting") == list(masq.RULES)


def test_other_failures_are_not_swallowed() -> None:
    fake = FakeNft()
    masq.setup("net1", "c1", "eth0", ["10.1.0.5/24"], backend=fake)
    fake.fail_next = ExecError(["nft"], 1, "Error: Could not process rule: Operation not permitted")
    with pytest.raises(skel.CniError, match="not permitted"):
        masq.setup("net1", "c2", "eth0", ["10.1.0.6/24"], backend=fake)
