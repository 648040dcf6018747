"""The iptables and ipset runners against the real tools, inside a private network namespace.

Everything runs in `topo.new_netns(...)` through the runners' netns= (nsenter), so the root
namespace's firewall is never read or written.  Each payload is also replayed into the fakes,
which must end in the same state as the kernel (that is what makes the unit tier trustworthy).
"""

from __future__ import annotations

import pytest

from podnet.errors import ExecError
from podnet.testing.harness import Topology
from podnet.xtables.fake import FakeIpset, FakeIptables
from podnet.xtables.ipset import IpSet, Ipset
from podnet.xtables.ipset import parse_save as parse_ipset
from podnet.xtables.iptables import Iptables
from podnet.xtables.ruleset import Ruleset, Table, normalize_rule, parse_save

ADDR = {4: {"net": "172.17.0.0/16", "host": "172.17.0.2", "vip": "10.96.0.", "ep": "10.244.1."},
        6: {"net": "fd00:17::/64", "host": "fd00:17::2", "vip": "fd00:96::", "ep": "fd00:244::"}}


def foreign(version: int) -> str:
    """Rules of "someone else" (docker-like) that our applies must never touch."""
    a = ADDR[version]
    return (f"*nat\n:DOCKER - [0:0]\n-A PREROUTING -j DOCKER\n"
            f"-A POSTROUTING -s {a['net']} -j MASQUERADE\n-A DOCKER -d {a['host']} -j RETURN\nCOMMIT\n"
            '*filter\n:OTHER - [0:0]\n-A FORWARD -m comment --comment "someone else" -j OTHER\n'
            "-A OTHER -j ACCEPT\nCOMMIT\n")


def services(*names: str, version: int = 4) -> Ruleset:
    a = ADDR[version]
    rs = Ruleset(ip_version=version)
    nat = rs.table("nat")
    nat.chain("PREROUTING").insert('-m comment --comment "kubernetes service portals" -j KUBE-SERVICES')
    nat.chain("OUTPUT").insert("-j KUBE-SERVICES")
    nat.chain("POSTROUTING").append("-j KUBE-POSTROUTING")
    nat.chain("KUBE-MARK-MASQ").append("-j MARK --set-mark 0x4000/0x4000")
    nat.chain("KUBE-POSTROUTING").append("-m mark --mark 0x4000/0x4000 -j MASQUERADE --random-fully")
    top = nat.chain("KUBE-SERVICES")
    for i, name in enumerate(names, 10):
        svc = nat.chain(f"KUBE-SVC-{name}")
        top.append(f'-d {a["vip"]}{i} -p tcp -m comment --comment "default/{name.lower()}:http" '
                   f"--dport 80 -j {svc.name}")
        svc.append(f"-m statistic --mode random --probability 0.3333333333 -j KUBE-SEP-{name}")
        svc.append(f"-j KUBE-SEP-{name}")
        sep = nat.chain(f"KUBE-SEP-{name}")
        sep.append(f"-s {a['ep']}{i} -j KUBE-MARK-MASQ")
        dest = f"{a['ep']}{i}:8080" if version == 4 else f"[{a['ep']}{i}]:8080"
        sep.append(f"-p tcp -j DNAT --to-destination {dest}")
    flt = rs.table("filter")
    flt.chain("FORWARD").insert("-j KUBE-FORWARD")
    flt.chain("KUBE-FORWARD").append("-m conntrack --ctstate INVALID -j DROP")
    flt.chain("KUBE-FORWARD").append("-m mark --mark 0x4000/0x4000 -j ACCEPT")
    return rs


def empty(version: int) -> Ruleset:
    rs = Ruleset(ip_version=version)
    rs.table("nat")
    rs.table("filter")
    return rs


def state(saved: str, version: int) -> dict[str, Table]:
    return parse_save(saved, version).tables


@pytest.fixture
def ns(topo: Topology) -> str:
    return topo.new_netns("x")


@pytest.mark.parametrize("version", [4, 6])
def test_iptables_apply_reapply_change_remove(ns: str, version: int) -> None:
    ipt = Iptables(ip_version=version, netns=ns, check_converged=True)
    fake = FakeIptables(ip_version=version)
    ipt.restore(foreign(version))
    fake.restore(foreign(version))
    before = {t: state(ipt.save(t), version) for t in ("nat", "filter")}

    steps = [services("A", "B", version=version), services("A", "C", version=version), empty(version)]
    payloads = []
    for desired in steps:
        payloads.append(ipt.apply(desired, "KUBE-"))
        assert ipt.apply(desired, "KUBE-") == ""  # re-apply is a no-op (nothing is run)
        fake.restore(payloads[-1])
        for table in ("nat", "filter"):
            assert state(fake.save(table), version) == state(ipt.save(table), version)

    changed = payloads[1]
    assert ":KUBE-SVC-C - [0:0]" in changed and "-X KUBE-SVC-B" in changed
    assert ":KUBE-SVC-A" not in changed and "-A KUBE-SVC-A" not in changed  # left alone
    for table in ("nat", "filter"):
        saved = ipt.save(table)
        assert "KUBE-" not in saved
        assert state(saved, version) == before[table]  # the foreign rules are untouched


def test_external_damage_is_repaired(ns: str) -> None:
    ipt = Iptables(netns=ns, check_converged=True)
    ipt.apply(services("A"), "KUBE-")
    ipt.restore("*nat\n-F KUBE-SVC-A\n-D OUTPUT -j KUBE-SERVICES\nCOMMIT\n")  # a firewall reload
    repair = ipt.apply(services("A"), "KUBE-")
    assert repair.splitlines() == [
        "*nat", ":KUBE-SVC-A - [0:0]",
        "-A KUBE-SVC-A -m statistic --mode random --probability 0.33333333349 -j KUBE-SEP-A",
        "-A KUBE-SVC-A -j KUBE-SEP-A", "-I OUTPUT -j KUBE-SERVICES", "COMMIT"]


def test_stale_chain_still_used_by_a_foreign_chain_is_flushed_not_deleted(ns: str) -> None:
    ipt = Iptables(netns=ns, check_converged=True)
    ipt.apply(services("A"), "KUBE-")
    ipt.restore("*filter\n:OTHER - [0:0]\n-A OTHER -j KUBE-FORWARD\nCOMMIT\n")
    ipt.apply(empty(4), "KUBE-")  # would abort with EBUSY if it tried -X KUBE-FORWARD
    saved = ipt.save("filter")
    assert ":KUBE-FORWARD - [0:0]" in saved and "-A KUBE-FORWARD" not in saved
    assert "-A OTHER -j KUBE-FORWARD" in saved


def test_normalize_rule_matches_the_installed_iptables_save(ns: str) -> None:
    Ipset(netns=ns).apply([IpSet("KUBE-T", "hash:ip,port")], "KUBE-")
    rules = [
        "-p tcp -s 10.0.0.1 --dport 80 -j ACCEPT",
        '-m comment --comment "default/svc:http" -p tcp --dport 80 -j ACCEPT',
        "-i eth0 -d 10.0.0.0/8 -o eth1 -s 1.1.1.1 -j DROP",
        "! -s 10.0.0.0/8 -j RETURN",
        "-m statistic --mode random --probability 0.3333333333 -j RETURN",
        "-j MARK --set-mark 0x4000", "-j MARK --or-mark 0x4000", "-j MARK --and-mark 0xff",
        "-j MARK --xor-mark 0xff", "-m mark --mark 1 -j ACCEPT", "-j REJECT",
        "-p tcp --syn -j ACCEPT", "-p 6 -j ACCEPT", "--source 10.1.2.3/24 -j ACCEPT",
        '-m comment --comment "it\'s \\"q\\"" -j ACCEPT', "-p udp --sport 53 -j ACCEPT",
        "-p icmp --icmp-type 8 -j ACCEPT", "-m set ! --match-set KUBE-T dst,dst -j ACCEPT",
        '-j LOG --log-prefix "x: "', "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-p tcp -m multiport --dports 80,443 -j ACCEPT", "-m addrtype --dst-type LOCAL -j RETURN",
        "-m comment --comment x -p tcp -s 1.1.1.1 --dport 80 -j ACCEPT", "-p sctp --dport 5 -j ACCEPT",
    ]
    ipt = Iptables(netns=ns)
    payload = "*filter\n:KUBE-N - [0:0]\n" + "".join(f"-A KUBE-N {r}\n" for r in rules) + "COMMIT\n"
    ipt.restore(payload)
    saved = parse_save(ipt.save("filter")).tables["filter"].chains["KUBE-N"].rules
    assert saved == [normalize_rule(f"-A KUBE-N {r}") for r in rules]


def test_restore_error_leaves_the_kernel_unchanged(ns: str) -> None:
    ipt = Iptables(netns=ns)
    ipt.apply(services("A"), "KUBE-")
    before = ipt.save("nat")
    with pytest.raises(ExecError):
        ipt.restore("*nat\n:KUBE-SVC-A - [0:0]\n-A KUBE-SVC-A -j KUBE-MISSING\nCOMMIT\n")
    assert state(ipt.save("nat"), 4) == state(before, 4)


# ------------------------------------------------------------------------------------ ipset
def sets(*members: str, net_type: str = "hash:net") -> list[IpSet]:
    return [
        IpSet("KUBE-ALLOW", "hash:ip,port", members={"10.0.0.1,80", "10.0.0.2,udp:53"}),
        IpSet("KUBE-NETS", net_type, members=set(members)),
        IpSet("KUBE-V6", "hash:ip", "inet6", members={"FD00:0::1"}, options=("maxelem", "1024")),
    ]


def test_ipset_apply_reapply_change_remove(ns: str) -> None:
    real = Ipset(netns=ns)
    fake = FakeIpset()
    foreign_set = "create other hash:ip family inet\nadd other 9.9.9.9\n"
    real.restore(foreign_set)
    fake.restore(foreign_set)
    steps = [
        (sets("10.1.0.0/16", "192.168.1.1/32"), {}),
        (sets("10.1.0.0/16", "10.2.0.0/16"), {}),
        (sets(*(f"10.3.{i}.0/24" for i in range(20))), {"swap_threshold": 5}),
        (sets("10.9.9.9", net_type="hash:ip"), {}),  # type change: destroy + create
        ([], {}),
    ]
    for desired, opts in steps:
        payload = real.apply(desired, "KUBE-", **opts)
        assert real.apply(desired, "KUBE-") == ""
        fake.restore(payload)
        kernel = parse_ipset(real.save())
        assert {n: (s.kind(), s.members) for n, s in kernel.items()} == {
            n: (s.kind(), s.members) for n, s in fake.list_sets().items()}
    assert set(parse_ipset(real.save())) == {"other"}
    assert parse_ipset(real.save())["other"].members == {"9.9.9.9"}


def test_ipset_in_use_and_the_two_phase_order(ns: str) -> None:
    ipt = Iptables(netns=ns, check_converged=True)
    ips = Ipset(netns=ns)
    rules = Ruleset()
    rules.table("filter").chain("INPUT").insert("-j KUBE-FW")
    rules.table("filter").chain("KUBE-FW").append("-m set --match-set KUBE-NETS src -j ACCEPT")
    ips.apply(sets("10.1.0.0/16"), "KUBE-", destroy_stale=False)  # sets before the rules
    ipt.apply(rules, "KUBE-")
    with pytest.raises(ExecError, match="in use"):
        ips.apply([], "KUBE-")
    # ipset restore is not atomic: the lines before the failing destroy were applied.
    assert "KUBE-ALLOW" not in parse_ipset(ips.save())
    ipt.apply(Ruleset(tables={"filter": Table("filter")}), "KUBE-")  # rules first ...
    ips.apply([], "KUBE-")  # ... then the sets can go
    assert not [n for n in parse_ipset(ips.save()) if n.startswith("KUBE-")]
