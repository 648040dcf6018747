import ipaddress

import pytest

from flanneld import masq
from podnet.xtables.fake import FakeIptables

NET = ipaddress.IPv4Network("10.244.0.0/16")
OWN = ipaddress.IPv4Network("10.244.1.0/24")


@pytest.fixture
def ipt():
    fake = FakeIptables()
    # Someone else's rules (kube-proxy, docker) must survive every apply.
    fake.restore("*nat\n:KUBE-POSTROUTING - [0:0]\n-A POSTROUTING -j KUBE-POSTROUTING\nCOMMIT\n"
                 "*filter\n-A FORWARD -s 172.17.0.0/16 -j ACCEPT\nCOMMIT\n")
    return fake


def nat(ipt, **pkt):
    return ipt.trace("nat", "POSTROUTING", pkt).target


@pytest.mark.parametrize("src, dst, want", [
    ("10.244.1.5", "8.8.8.8", "MASQUERADE"),  # pod leaving the pod network
    ("10.244.1.5", "10.244.2.7", "ACCEPT"),  # pod to remote pod: never NAT
    ("10.244.2.7", "10.244.1.5", "ACCEPT"),  # remote pod to ours
    ("192.168.1.1", "10.244.1.5", "ACCEPT"),  # outside to our pods keeps its source
    ("10.250.0.2", "10.244.2.7", "MASQUERADE"),  # the host to remote pods
    ("10.244.1.5", "224.0.0.251", "ACCEPT"),  # multicast is not masqueraded
    ("10.250.0.2", "8.8.8.8", "ACCEPT"),  # host traffic outside the pod network: not ours
])
def test_masquerade_only_traffic_leaving_the_pod_network(ipt, src, dst, want):
    masq.apply(ipt, NET, OWN, ip_masq=True)
    assert nat(ipt, src=src, dst=dst, proto="tcp", dport=80) == want


def test_kube_proxy_marked_traffic_is_left_to_kube_proxy(ipt):
    masq.apply(ipt, NET, OWN, ip_masq=True)
    assert nat(ipt, src="10.244.1.5", dst="8.8.8.8", mark=0x4000) == "ACCEPT"


def test_forward_accepts_the_network_both_ways(ipt):
    masq.apply(ipt, NET, OWN, ip_masq=False)
    for pkt in ({"src": "10.244.1.5", "dst": "1.1.1.1"}, {"src": "1.1.1.1", "dst": "10.244.1.5"}):
        assert ipt.trace("filter", "FORWARD", pkt).target == "ACCEPT"


def test_one_batch_then_noop_and_foreign_rules_kept(ipt):
    first = masq.apply(ipt, NET, OWN, ip_masq=True)
    assert first and len(ipt.restores) == 2  # the fixture's, then ours: one restore
    assert masq.apply(ipt, NET, OWN, ip_masq=True) == ""
    saved = ipt.save("nat") + ipt.save("filter")
    assert "-A POSTROUTING -j KUBE-POSTROUTING" in saved and "172.17.0.0/16" in saved
    assert "--random-fully" in saved


def test_turning_masq_off_removes_the_nat_chain_and_jump(ipt):
    masq.apply(ipt, NET, OWN, ip_masq=True)
    masq.apply(ipt, NET, OWN, ip_masq=False)
    saved = ipt.save("nat")
    assert "FLANNEL" not in saved and "KUBE-POSTROUTING" in saved
    assert "FLANNEL-FWD" in ipt.save("filter")


def test_subnet_change_rewrites_the_rules(ipt):
    masq.apply(ipt, NET, OWN, ip_masq=True)
    masq.apply(ipt, NET, ipaddress.IPv4Network("10.244.9.0/24"), ip_masq=True)
    saved = ipt.save("nat")
    assert "10.244.9.0/24" in saved and "10.244.1.0/24" not in saved
