"""The bridge ipMasq module and the nft seam against real nft, inside a simulated host's netns."""

from __future__ import annotations

import ipaddress
import os
import threading

import pytest

from cni import masq, portmap, skel
from podnet import execs, netns
from podnet.testing.harness import Host, Topology
from podnet.xtables import nft
from podnet.xtables.nft_fake import FakeNft

DUAL = ["10.1.0.5/24", "fd00::5/64"]


def root_has_no_podnet_table() -> bool:
    return "podnet" not in execs.run(["nft", "list", "tables"]).stdout


def ruleset(host: Host) -> str:
    return host.run("nft", "list", "ruleset").stdout


def test_a_child_process_inherits_the_threads_netns(topo: Topology) -> None:
    """The premise of running nft "in the calling thread's netns": setns() on a thread, then
    fork/exec from that thread, puts the child in the thread's namespace (not the process's)."""
    h1 = topo.add_host()
    seen: dict[str, str] = {}

    def probe() -> None:
        with netns.enter(h1.path):
            seen["child"] = execs.run(["readlink", "/proc/self/ns/net"]).stdout.strip()

    t = threading.Thread(target=probe)
    t.start()
    t.join()
    assert seen["child"] == f"net:[{os.stat(h1.path).st_ino}]"
    assert execs.run(["readlink", "/proc/self/ns/net"]).stdout.strip() != seen["child"]


def test_setup_verify_teardown_leave_nothing(topo: Topology) -> None:
    h1 = topo.add_host()
    with netns.enter(h1.path):
        masq.setup("net1", "c1", "eth0", DUAL)
        masq.setup("net1", "c1", "eth0", DUAL)  # idempotent
        masq.setup("net1", "c2", "eth0", ["10.1.0.6/24"])
        masq.verify("net1", "c1", "eth0", DUAL)
        masq.verify("net1", "c2", "eth0", ["10.1.0.6/24"])
    assert root_has_no_podnet_table() and "10.1.0.5" in ruleset(h1)
    with netns.enter(h1.path):
        masq.teardown("net1", "c1", "eth0", [])  # DEL without prevResult or netns
        with pytest.raises(skel.CniError):
            masq.verify("net1", "c1", "eth0", DUAL)
        masq.verify("net1", "c2", "eth0", ["10.1.0.6/24"])
        text = ruleset(h1)
        assert "10.1.0.5" not in text and "fd00::5" not in text and "10.1.0.6" in text
        masq.teardown("net1", "c2", "eth0", ["10.1.0.6/24"])
        masq.teardown("net1", "c2", "eth0", ["10.1.0.6/24"])  # repeated
    assert ruleset(h1).strip() == ""


def test_gc_leaves_only_the_valid_attachments(topo: Topology) -> None:
    h1 = topo.add_host()
    with netns.enter(h1.path):
        masq.setup("net1", "keep", "eth0", ["10.1.0.5/24"])
        masq.setup("net1", "gone", "eth0", ["10.1.0.6/24", "fd00::6/64"])
        masq.setup("net2", "other", "eth0", ["10.2.0.5/24"])
        masq.gc("net1", {("keep", "eth0")})
        masq.verify("net1", "keep", "eth0", ["10.1.0.5/24"])
        masq.verify("net2", "other", "eth0", ["10.2.0.5/24"])
        text = ruleset(h1)
        assert "10.1.0.6" not in text and "fd00::6" not in text
        masq.gc("net1", set())
        masq.gc("net2", set())
        masq.gc("net2", set())
    assert ruleset(h1).strip() == ""


def test_fake_lists_like_real_nft(topo: Topology) -> None:
    """Same operations on the fake and on nft 1.0.6: same elements, same rule counts."""
    h1 = topo.add_host()
    fake = FakeNft()
    conf = portmap.Conf(True, False, (
        portmap.PortMapping(8080, 80, "tcp", ""), portmap.PortMapping(53, 53, "udp", "10.250.0.11"),
        portmap.PortMapping(9090, 90, "sctp", "::"), portmap.PortMapping(99, 9, "tcp", "fd00::1")))
    pod4, pod6 = ipaddress.ip_interface("10.88.0.5/24"), ipaddress.ip_interface("fd88::5/64")
    all_masq = portmap.Conf(True, True, conf.mappings)
    with netns.enter(h1.path):
        for backend in (fake, nft.SYSTEM):
            masq.setup("net1", "c1", "eth0", [*DUAL, "10.2.0.9/32"], backend=backend)
            masq.setup("net1", "c2", "eth0", ["10.1.0.6/24"], backend=backend)
            masq.teardown("net1", "c2", "eth0", [], backend=backend)
            table = portmap.table(backend)
            table.ensure(portmap.elements("pm:c1:eth0", conf, [pod4, pod6]), lambda e: False)
            table.ensure(portmap.elements("pm:c2:eth0", all_masq, [pod4]), lambda e: False)  # clash
        for name in (masq.TABLE, portmap.TABLE):
            real = nft.SYSTEM.list_table("inet", name)
            doubled = fake.list_table("inet", name)
            assert sorted(map(repr, nft.elements_of(real))) == sorted(map(repr, nft.elements_of(doubled)))
            assert nft.rule_counts(real) == nft.rule_counts(doubled)
        for backend in (fake, nft.SYSTEM):
            masq.teardown("net1", "c1", "eth0", [], backend=backend)
            portmap.table(backend).remove(lambda e: True)
        assert not fake.tables
    assert ruleset(h1).strip() == ""
