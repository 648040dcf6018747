"""--ip-masq and forward rules (FL pkg/trafficmngr/iptables), written as one iptables-restore batch.

nat FLANNEL-POSTRTG (jumped to from POSTROUTING, only with --ip-masq):
  traffic kube-proxy already marked for masquerade, and pod-to-pod traffic in any direction, is
  RETURNed untouched; pods talking to the outside, and the host talking to remote pods, are
  masqueraded.  filter FLANNEL-FWD (jumped to from FORWARD): accept the flannel Network both ways,
  so a FORWARD policy of DROP (Docker >= 1.13) does not cut pod traffic.

Rules are diffed against iptables-save by the podnet.xtables seam: only FLANNEL-* chains and the
jumps to them are ever touched; without --ip-masq the nat chain is removed.
"""

from __future__ import annotations

import ipaddress

from podnet.xtables.iptables import IptablesBase
from podnet.xtables.ruleset import Ruleset

OWNER = "FLANNEL-"
POSTRTG = "FLANNEL-POSTRTG"
FWD = "FLANNEL-FWD"
KUBE_PROXY_MASQ_MARK = "0x4000/0x4000"
MULTICAST = "224.0.0.0/4"


def ruleset(network: ipaddress.IPv4Network, subnet: ipaddress.IPv4Network, *, ip_masq: bool,
            forward: bool = True, random_fully: bool = True) -> Ruleset:
    """Pure: the FLANNEL-* rules for `network` (the cluster) and `subnet` (this host's pods).
    Both tables are always listed, so turning a feature off removes its chain and jump."""
    rs = Ruleset(ip_version=4)
    nat, filt = rs.table("nat"), rs.table("filter")
    if ip_masq:
        nat.chain("POSTROUTING").append(f'-m comment --comment "flanneld masq" -j {POSTRTG}')
        masq = "-j MASQUERADE" + (" --random-fully" if random_fully else "")
        chain = nat.chain(POSTRTG)
        for spec in (
            f"-m mark --mark {KUBE_PROXY_MASQ_MARK} -j RETURN",  # kube-proxy masquerades these
            f"-s {subnet} -d {network} -j RETURN",  # our pods to other pods: never NAT
            f"-s {network} -d {subnet} -j RETURN",  # other pods to ours
            f"! -s {network} -d {subnet} -j RETURN",  # anything else to our pods keeps its source
            f"-s {network} ! -d {MULTICAST} {masq}",  # pods leaving the pod network
            f"! -s {network} -d {network} {masq}",  # the host to remote pods
        ):
            chain.append(spec)
    if forward:
        filt.chain("FORWARD").append(f'-m comment --comment "flanneld forward" -j {FWD}')
        fwd = filt.chain(FWD)
        fwd.append(f"-s {network} -j ACCEPT")
        fwd.append(f"-d {network} -j ACCEPT")
    return rs


def apply(ipt: IptablesBase, network: ipaddress.IPv4Network, subnet: ipaddress.IPv4Network, *,
          ip_masq: bool, forward: bool = True) -> str:
    """Converge the FLANNEL-* rules; the restore payload written ("" when nothing changed)."""
    return ipt.apply(ruleset(network, subnet, ip_masq=ip_masq, forward=forward), OWNER)
