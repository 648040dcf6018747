"""The bridge plugin's `ipMasq`: masquerade pod traffic leaving its subnet, in nftables.

Reference behaviour (plugins/pkg/ip/ipmasq_linux.go, cni.md section 2 bridge): for each container
address, traffic from it to its own subnet and to multicast is left alone, anything else is
masqueraded.  The reference writes one iptables chain per pod and tears it down with addresses
read from the (possibly gone) netns, which leaks rules on DEL with an empty CNI_NETNS
(plugins#810).  Here the per-pod state is two elements per address in table `inet podnet_ipmasq`,
tagged with "<network>:<container id>:<ifname>":

    pods4/pods6    { <pod ip> }                     masquerade traffic from these sources
    local4/local6  { <pod ip> . <pod subnet> }      except towards the pod's own subnet

so teardown and GC find everything from the nft state alone, each ADD/DEL is one nft transaction,
and the rules never change with the number of pods.
"""

from __future__ import annotations

import ipaddress

from cni import skel
from podnet.errors import PodnetError
from podnet.xtables import nft

FAMILY = "inet"
TABLE = "podnet_ipmasq"
CHAIN = "postrouting"
RULES = (
    # Return (= no NAT from this chain) for the pod's own subnet first: pipapo interval sets
    # match "source . destination-prefix" in one lookup however many pods there are.
    "ip saddr . ip daddr @local4 return",
    "ip6 saddr . ip6 daddr @local6 return",
    "ip saddr @pods4 ip daddr != 224.0.0.0/4 masquerade",
    "ip6 saddr @pods6 ip6 daddr != ff00::/8 masquerade",
)
SKELETON = (
    f"add set {FAMILY} {TABLE} pods4 {{ type ipv4_addr; }}",
    f"add set {FAMILY} {TABLE} pods6 {{ type ipv6_addr; }}",
    f"add set {FAMILY} {TABLE} local4 {{ type ipv4_addr . ipv4_addr; flags interval; }}",
    f"add set {FAMILY} {TABLE} local6 {{ type ipv6_addr . ipv6_addr; flags interval; }}",
    f"add chain {FAMILY} {TABLE} {CHAIN} {{ type nat hook postrouting priority srcnat; policy accept; }}",
    f"flush chain {FAMILY} {TABLE} {CHAIN}",
    *(f"add rule {FAMILY} {TABLE} {CHAIN} {rule}" for rule in RULES),
)


def table(backend: nft.Backend | None = None) -> nft.OwnedTable:
    return nft.OwnedTable(FAMILY, TABLE, SKELETON, {CHAIN: len(RULES)}, backend or nft.SYSTEM)


def net_text(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    """A subnet as nft lists it: a host route prints as the bare address."""
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return network.with_prefixlen


def elements(network: str, container_id: str, ifname: str, ips: list[str]) -> list[nft.Element]:
    """The elements of one attachment (two per address)."""
    tag = nft.owner_tag(network, container_id, ifname)
    out: list[nft.Element] = []
    for cidr in ips:
        try:
            iface = ipaddress.ip_interface(cidr)
        except ValueError as exc:
            raise skel.CniError(skel.INVALID_CONFIG, f"ipMasq: invalid address {cidr!r}") from exc
        v = iface.version
        out.append(nft.Element(f"pods{v}", str(iface.ip), comment=tag))
        out.append(nft.Element(f"local{v}", f"{iface.ip} . {net_text(iface.network)}", comment=tag))
    return list(dict.fromkeys(out))


def setup(network: str, container_id: str, ifname: str, ips: list[str], *,
          backend: nft.Backend | None = None) -> None:
    """Masquerade traffic from `ips` (container CIDRs) leaving their subnets.

    Fast path: one blind `create element` transaction (one nft exec, ~3.5 ms less than listing
    first).  It succeeds only when the table and its sets exist and none of the keys does; any
    other state (first pod on the host, an address another attachment still holds, a re-ADD)
    fails it atomically and falls back to `ensure` (list, then add what is missing or take it
    over).  The price: an ADD on the fast path does not check the postrouting rules, so a chain
    flushed behind our back is repaired by the next ADD that falls back, and CHECK reports it.
    """
    wanted = elements(network, container_id, ifname, ips)
    if not wanted:
        return
    owned_table = table(backend)
    try:
        if not owned_table.create_new(wanted):
            owned_table.ensure(wanted, nft.owned_by(network, container_id, ifname))
    except PodnetError as exc:
        raise skel.CniError(skel.INTERNAL, f"ipMasq setup failed: {exc}") from exc


def teardown(network: str, container_id: str, ifname: str, ips: list[str], *,
             backend: nft.Backend | None = None) -> None:
    """Remove every element of this attachment, found by its tag: `ips` is not needed (DEL may
    come without netns and without prevResult), so it is accepted only for symmetry."""
    del ips
    try:
        table(backend).remove(nft.owned_by(network, container_id, ifname))
    except PodnetError as exc:
        raise skel.CniError(skel.INTERNAL, f"ipMasq teardown failed: {exc}") from exc


def verify(network: str, container_id: str, ifname: str, ips: list[str], *,
           backend: nft.Backend | None = None) -> None:
    """CHECK: raise CniError unless the masquerade state of this attachment is complete."""
    wanted = elements(network, container_id, ifname, ips)
    if not wanted:
        return
    try:
        problems = table(backend).missing(wanted)
    except PodnetError as exc:
        raise skel.CniError(skel.INTERNAL, f"ipMasq check failed: {exc}") from exc
    if problems:
        raise skel.CniError(skel.INTERNAL, f"ipMasq state missing for {container_id}/{ifname}: "
                            + "; ".join(problems))


def gc(network: str, keep: set[tuple[str, str]], *, backend: nft.Backend | None = None) -> None:
    """Remove the masquerade state of every attachment of `network` not in `keep`."""
    try:
        table(backend).remove(nft.stale_in(network, keep))
    except PodnetError as exc:
        raise skel.CniError(skel.INTERNAL, f"ipMasq gc failed: {exc}") from exc
