"""The fake's packet tracer: behaviour of a kube-proxy-shaped ruleset, not its text."""

from __future__ import annotations

import pytest

from podnet.xtables.fake import FakeIpset, FakeIptables, TraceError
from podnet.xtables.ipset import IpSet
from podnet.xtables.ruleset import Ruleset

MASQ = "0x4000/0x4000"


def kube_like() -> Ruleset:
    """One ClusterIP service with two endpoints, masquerade for off-cluster sources, a
    NodePort-ish LOCAL jump, and a filter chain with an ipset allow-list."""
    rs = Ruleset()
    nat = rs.table("nat")
    nat.chain("PREROUTING").insert("-j KUBE-SERVICES")
    nat.chain("POSTROUTING").insert("-j KUBE-POSTROUTING")
    nat.chain("KUBE-MARK-MASQ").append(f"-j MARK --set-xmark {MASQ}")
    post = nat.chain("KUBE-POSTROUTING")
    post.append(f"-m mark ! --mark {MASQ} -j RETURN")
    post.append("-j MARK --xor-mark 0x4000")
    post.append("-j MASQUERADE --random-fully")
    svcs = nat.chain("KUBE-SERVICES")
    svcs.append('-d 10.96.0.10/32 -p tcp -m comment --comment "default/web:http" --dport 80 -j KUBE-SVC-WEB')
    svcs.append("-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS")
    nat.chain("KUBE-NODEPORTS").append("-p tcp --dport 30080 -j KUBE-SVC-WEB")
    svc = nat.chain("KUBE-SVC-WEB")
    svc.append("! -s 10.244.0.0/16 -d 10.96.0.10/32 -p tcp --dport 80 -j KUBE-MARK-MASQ")
    svc.append("-m statistic --mode random --probability 0.5 -j KUBE-SEP-A")
    svc.append("-j KUBE-SEP-B")
    for name, ip in (("A", "10.244.1.2"), ("B", "10.244.2.3")):
        sep = nat.chain(f"KUBE-SEP-{name}")
        sep.append(f"-s {ip} -j KUBE-MARK-MASQ")
        sep.append(f"-p tcp -j DNAT --to-destination {ip}:8080")
    flt = rs.table("filter")
    flt.chain("INPUT", policy="DROP").insert("-j KUBE-FW")
    fw = flt.chain("KUBE-FW")
    fw.append("-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
    fw.append("-p tcp -m set --match-set KUBE-ALLOW src,dst -j ACCEPT")
    fw.append("-i lo -j ACCEPT")
    fw.append("-p udp -m multiport --dports 53,5000:5010 -j KUBE-UDP")
    fw.append("-s 192.0.2.0/24 -j REJECT")
    flt.chain("KUBE-UDP").append("-s 10.0.0.0/8 -g KUBE-DENY")
    flt.chain("KUBE-UDP").append("-j ACCEPT")
    flt.chain("KUBE-DENY").append("-j LOG")
    return rs


@pytest.fixture
def ipt() -> FakeIptables:
    sets = FakeIpset()
    sets.apply([IpSet("KUBE-ALLOW", "hash:net,port", members={"198.51.100.0/24,tcp:22"})], "KUBE-")
    fake = FakeIptables(ipset=sets, local_ips={"192.168.1.5"})
    fake.apply(kube_like(), "KUBE-")
    return fake


def tcp(src: str, dst: str, dport: int, **extra: object) -> dict[str, object]:
    return {"src": src, "dst": dst, "proto": "tcp", "dport": dport, "sport": 40000, **extra}


def test_cluster_ip_from_a_pod_is_dnatted_without_masquerade(ipt: FakeIptables) -> None:
    v = ipt.trace("nat", "PREROUTING", tcp("10.244.1.9", "10.96.0.10", 80))
    assert (v.target, v.to, v.mark) == ("DNAT", "10.244.1.2:8080", 0)
    assert v.path[0] == "-A PREROUTING -j KUBE-SERVICES"


def test_random_choice_of_endpoint(ipt: FakeIptables) -> None:
    v = ipt.trace("nat", "PREROUTING", tcp("10.244.1.9", "10.96.0.10", 80, random=0.7))
    assert v.to == "10.244.2.3:8080"


def test_off_cluster_source_gets_the_masquerade_mark_then_masqueraded(ipt: FakeIptables) -> None:
    v = ipt.trace("nat", "PREROUTING", tcp("192.168.1.1", "10.96.0.10", 80))
    assert v.target == "DNAT" and v.mark == 0x4000
    post = ipt.trace("nat", "POSTROUTING", tcp("192.168.1.1", "10.244.1.2", 8080, mark=v.mark))
    assert post.target == "MASQUERADE" and post.mark == 0  # the xor cleared the mark
    plain = ipt.trace("nat", "POSTROUTING", tcp("10.244.1.9", "10.244.1.2", 8080))
    assert plain.target == "ACCEPT"  # returned, fell off POSTROUTING: its policy


def test_hairpin_endpoint_is_masqueraded(ipt: FakeIptables) -> None:
    v = ipt.trace("nat", "PREROUTING", tcp("10.244.1.2", "10.96.0.10", 80))
    assert v.to == "10.244.1.2:8080" and v.mark == 0x4000


def test_nodeport_via_addrtype_local(ipt: FakeIptables) -> None:
    v = ipt.trace("nat", "PREROUTING", tcp("203.0.113.1", "192.168.1.5", 30080))
    assert v.target == "DNAT"
    other = ipt.trace("nat", "PREROUTING", tcp("203.0.113.1", "192.168.1.6", 30080))
    assert other.target == "ACCEPT" and other.to is None


def test_user_chain_traced_directly_returns(ipt: FakeIptables) -> None:
    v = ipt.trace("nat", "KUBE-MARK-MASQ", tcp("1.1.1.1", "2.2.2.2", 1))
    assert v.target == "RETURN" and v.mark == 0x4000


def test_filter_policy_ipset_and_conntrack(ipt: FakeIptables) -> None:
    assert ipt.trace("filter", "INPUT", tcp("203.0.113.1", "192.168.1.5", 22)).target == "DROP"
    assert ipt.trace("filter", "INPUT", tcp("198.51.100.7", "192.168.1.5", 22)).target == "ACCEPT"
    est = tcp("203.0.113.1", "192.168.1.5", 22, ctstate="ESTABLISHED")
    assert ipt.trace("filter", "INPUT", est).target == "ACCEPT"
    assert ipt.trace("filter", "INPUT", tcp("203.0.113.1", "1.1.1.1", 9, iif="lo")).target == "ACCEPT"
    assert ipt.trace("filter", "INPUT", tcp("192.0.2.9", "1.1.1.1", 9)).target == "REJECT"


def test_goto_returns_to_the_callers_caller(ipt: FakeIptables) -> None:
    udp = {"src": "10.1.1.1", "dst": "192.168.1.5", "proto": "udp", "dport": 5005}
    v = ipt.trace("filter", "INPUT", udp)
    # KUBE-DENY only logs; the -g means KUBE-UDP's "-j ACCEPT" is skipped -> back in KUBE-FW.
    assert v.target == "DROP"
    assert v.path[-1] == "-A KUBE-DENY -j LOG"
    other = dict(udp, src="172.16.0.1")
    assert ipt.trace("filter", "INPUT", other).target == "ACCEPT"
    assert ipt.trace("filter", "INPUT", dict(udp, dport=6000)).target == "DROP"


def test_unmodelled_matches_and_loops_fail_loudly() -> None:
    ipt = FakeIptables()
    ipt.restore("*filter\n:KUBE-A - [0:0]\n:KUBE-B - [0:0]\n-A KUBE-A -m rpfilter -j DROP\nCOMMIT\n")
    with pytest.raises(TraceError, match="rpfilter"):
        ipt.trace("filter", "KUBE-A", tcp("1.1.1.1", "2.2.2.2", 1))
    ipt.restore("*filter\n-F KUBE-A\n-A KUBE-A -j KUBE-B\n-A KUBE-B -j KUBE-A\nCOMMIT\n")
    with pytest.raises(TraceError, match="loop"):
        ipt.trace("filter", "KUBE-A", tcp("1.1.1.1", "2.2.2.2", 1))
    with pytest.raises(TraceError):
        ipt.trace("filter", "KUBE-NONE", tcp("1.1.1.1", "2.2.2.2", 1))
    with pytest.raises(TraceError):
        ipt.trace("mangle", "PREROUTING", tcp("1.1.1.1", "2.2.2.2", 1))
    assert ipt.save("mangle") == ""  # tracing does not create tables
