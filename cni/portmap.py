"""The portmap plugin (chained): forward host ports to the pod, like the reference plugin.

Reference semantics (plugins/meta/portmap, cni.md section 2): `runtimeConfig.portMappings`
[{hostPort, containerPort, protocol, hostIP}] are DNATed for packets addressed to a local address
of the host, arriving from elsewhere (prerouting) or sent by the host itself (output, including
127.0.0.1, which needs route_localnet=1 on the interface routing to the pod); with `snat` (default
true) traffic from localhost and hairpin traffic (from the pod's own subnet) is masqueraded so the
replies come back through the host, `masqAll` masquerades every forwarded connection; `hostIP`
restricts a mapping to one local address ("0.0.0.0" / "::": any address of that family).  The first
IPv4 and the first IPv6 sandbox address of prevResult are the targets; UDP conntrack entries of the
host ports are flushed so a stale flow cannot bypass the new DNAT.

Only the nftables backend is implemented (`backend: "iptables"` is rejected with code 7).  All
state is in table `inet podnet_portmap`, as map/set elements tagged with
"<network>:<container id>:<ifname>":

    dnat4/6          { proto . hostPort : podIP . containerPort }
    hostip_dnat4/6   { hostIP . proto . hostPort : podIP . containerPort }
    masq4/6          { source-prefix . podIP . proto . containerPort }   (after DNAT, in postrouting)

ADD and DEL are one `nft -j list` plus one nft transaction each, whatever the number of pods (the
reference runs iptables 25/15 times), and an ADD whose elements are all new is one blind `create
element` transaction without the listing; ADD only adds elements, which avoids the ~16 ms RCU grace
period any nft deletion costs. The route to the pod (snat's route_localnet) is one raw rtnetlink
request, not an `ip route get` exec. DEL needs neither the netns, nor prevResult, nor runtimeConfig:
it deletes the elements by their tag (the reference DEL is a no-op without runtimeConfig, and its
chain names hash the network name, plugins#752). A host port still mapped to a pod whose DEL never
came is taken over by the new ADD instead of shadowing it (plugins#683). No packet marks are used,
so `markMasqBit` is accepted and ignored, and nothing collides with kube-proxy's mark bits.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from cni import masq, skel, types
from podnet import execs, sysctl
from podnet.errors import ExecError, PodnetError
from podnet.xtables import nft

FAMILY = "inet"
TABLE = "podnet_portmap"
PROTOCOLS = ("tcp", "udp", "sctp")
Address = ipaddress.IPv4Interface | ipaddress.IPv6Interface

_T = f"{FAMILY} {TABLE}"
# `th dport` reads the transport header's destination port, the same offset for tcp/udp/sctp; the
# l4proto in every map key keeps other protocols out.  A failed map lookup ends the rule (no
# match), so the hostIP-specific maps are tried first, then the any-address maps.
RULES = {
    "hostports": (
        "dnat ip to ip daddr . meta l4proto . th dport map @hostip_dnat4",
        "dnat ip6 to ip6 daddr . meta l4proto . th dport map @hostip_dnat6",
        "meta nfproto ipv4 dnat ip to meta l4proto . th dport map @dnat4",
        "meta nfproto ipv6 dnat ip6 to meta l4proto . th dport map @dnat6",
    ),
    # "dst-type LOCAL" of the reference: any address of this host, 127.0.0.1 included.
    "prerouting": ("fib daddr type local jump hostports",),
    "output": ("fib daddr type local jump hostports",),
    # Masquerade only connections we (or someone) DNATed, selected by original source prefix and
    # the DNAT target: no mark bits needed.
    "postrouting": (
        "ct status dnat ip saddr . ip daddr . meta l4proto . th dport @masq4 masquerade",
        "ct status dnat ip6 saddr . ip6 daddr . meta l4proto . th dport @masq6 masquerade",
    ),
}
SKELETON = (
    f"add map {_T} dnat4 {{ type inet_proto . inet_service : ipv4_addr . inet_service; }}",
    f"add map {_T} dnat6 {{ type inet_proto . inet_service : ipv6_addr . inet_service; }}",
    f"add map {_T} hostip_dnat4 {{ type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }}",
    f"add map {_T} hostip_dnat6 {{ type ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service; }}",
    f"add set {_T} masq4 {{ type ipv4_addr . ipv4_addr . inet_proto . inet_service; flags interval; }}",
    f"add set {_T} masq6 {{ type ipv6_addr . ipv6_addr . inet_proto . inet_service; flags interval; }}",
    f"add chain {_T} hostports",
    f"add chain {_T} prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}",
    f"add chain {_T} output {{ type nat hook output priority -100; policy accept; }}",
    f"add chain {_T} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}",
    *(line for chain, rules in RULES.items()
      for line in (f"flush chain {_T} {chain}", *(f"add rule {_T} {chain} {r}" for r in rules))),
)
RULE_COUNTS = {chain: len(rules) for chain, rules in RULES.items()}
# iptables-only knobs of the reference: refusing them beats silently ignoring a filter.
_IPTABLES_ONLY = ("externalSetMarkChain", "conditionsV4", "conditionsV6")


@dataclass(frozen=True)
class PortMapping:
    host_port: int
    container_port: int
    protocol: str
    host_ip: str  # "" = every local address of both families


@dataclass(frozen=True)
class Conf:
    snat: bool
    masq_all: bool
    mappings: tuple[PortMapping, ...]


# ------------------------------------------------------------------------------ config
def _invalid(msg: str) -> skel.CniError:
    return skel.CniError(skel.INVALID_CONFIG, f"portmap: {msg}")


def _flag(config: dict[str, Any], key: str, default: bool) -> bool:
    value = config.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _invalid(f"{key} must be a boolean, got {value!r}")
    return value


def _port(raw: dict[str, Any], key: str) -> int:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise _invalid(f"portMappings: {key} must be an integer 1-65535, got {value!r}")
    return value


def parse_mapping(raw: Any) -> PortMapping:
    if not isinstance(raw, dict):
        raise _invalid(f"portMappings entries must be objects, got {raw!r}")
    protocol = str(raw.get("protocol") or "tcp").lower()
    if protocol not in PROTOCOLS:
        raise _invalid(f"portMappings: protocol {raw.get('protocol')!r} is not one of {PROTOCOLS}")
    host_ip = str(raw.get("hostIP") or "")
    if host_ip:
        try:
            host_ip = str(ipaddress.ip_address(host_ip))
        except ValueError as exc:
            raise _invalid(f"portMappings: invalid hostIP {host_ip!r}") from exc
    return PortMapping(_port(raw, "hostPort"), _port(raw, "containerPort"), protocol, host_ip)


def check_backend(config: dict[str, Any]) -> None:
    backend = config.get("backend")
    if backend not in (None, "", "nftables"):
        raise _invalid(f"backend {backend!r} is not supported: podnet's portmap implements only "
                       f"the 'nftables' backend")
    for key in _IPTABLES_ONLY:
        if config.get(key):
            raise _invalid(f"{key} is an iptables-backend option; it is not supported with nftables")
    bit = config.get("markMasqBit")
    if bit is not None and (isinstance(bit, bool) or not isinstance(bit, int) or not 0 <= bit <= 31):
        raise _invalid(f"markMasqBit must be an integer 0-31, got {bit!r}")


def parse_conf(config: dict[str, Any], runtime_config: dict[str, Any]) -> Conf:
    """Options and runtimeConfig.portMappings, validated (code 7 on anything wrong)."""
    check_backend(config)
    raw = runtime_config.get("portMappings") or []
    if not isinstance(raw, list):
        raise _invalid(f"runtimeConfig.portMappings must be a list, got {raw!r}")
    mappings = tuple(dict.fromkeys(parse_mapping(m) for m in raw))
    return Conf(_flag(config, "snat", True), _flag(config, "masqAll", False), mappings)


def container_ips(prev: types.Result) -> list[Address]:
    """The first IPv4 and first IPv6 address of the sandbox (ips without an interface index are
    taken as the container's, as the reference does)."""
    interfaces = prev.get("interfaces") or []
    found: dict[int, Address] = {}
    for ip in prev.get("ips") or []:
        idx = ip.get("interface")
        if idx is not None and not (0 <= idx < len(interfaces) and interfaces[idx].get("sandbox")):
            continue
        iface = ipaddress.ip_interface(ip["address"])
        found.setdefault(iface.version, iface)
    return [found[v] for v in (4, 6) if v in found]


# ------------------------------------------------------------------------------ elements
def _dnat(tag: str, m: PortMapping, ip: Address) -> nft.Element | None:
    target = f"{ip.ip} . {m.container_port}"
    if m.host_ip:
        host = ipaddress.ip_address(m.host_ip)
        if host.version != ip.version:
            return None  # a v4 hostIP never maps to the v6 address, and vice versa
        if not host.is_unspecified:
            return nft.Element(f"hostip_dnat{ip.version}", f"{host} . {m.protocol} . {m.host_port}",
                               target, tag)
    return nft.Element(f"dnat{ip.version}", f"{m.protocol} . {m.host_port}", target, tag)


def _masq(tag: str, conf: Conf, m: PortMapping, ip: Address) -> list[nft.Element]:
    if not conf.snat:
        return []
    if conf.masq_all:
        sources = ["0.0.0.0/0" if ip.version == 4 else "::/0"]
    else:
        # Hairpin: a pod of this subnet (the pod itself included) reaching a host port would get
        # the reply straight from the target pod, with the wrong source.  Localhost: 127.0.0.1
        # cannot leave the host (IPv6 has no route_localnet, so ::1 is never DNATed out).
        sources = [masq.net_text(ip.network), *(["127.0.0.1"] if ip.version == 4 else [])]
    tail = f"{ip.ip} . {m.protocol} . {m.container_port}"
    return [nft.Element(f"masq{ip.version}", f"{src} . {tail}", comment=tag) for src in sources]


def elements(tag: str, conf: Conf, ips: Iterable[Address]) -> list[nft.Element]:
    """Every element of one attachment; code 7 when two mappings claim the same host port."""
    out: dict[tuple[str, str], nft.Element] = {}
    for ip in ips:
        for m in conf.mappings:
            dnat = _dnat(tag, m, ip)
            if dnat is None:
                continue
            for el in (dnat, *_masq(tag, conf, m, ip)):
                seen = out.setdefault((el.set, el.key), el)
                if seen != el:
                    raise _invalid(f"conflicting portMappings for {el.key!r}: {seen.value} and {el.value}")
    return list(out.values())


def table(backend: nft.Backend) -> nft.OwnedTable:
    return nft.OwnedTable(FAMILY, TABLE, SKELETON, RULE_COUNTS, backend)


# ------------------------------------------------------------------------------ host side
class Host(Protocol):
    """The host-side effects besides nft (a fake in unit tests)."""

    def route_dev(self, ip: str) -> str | None: ...

    def enable_route_localnet(self, dev: str) -> None: ...

    def flush_udp(self, version: int, port: int) -> None: ...


class SystemHost:
    """The calling thread's network namespace (the host's, when a runtime execs the plugin)."""

    def route_dev(self, ip: str) -> str | None:
        # Two raw rtnetlink requests (~0.1 ms) where `ip -j route get` cost an exec (~2-3 ms).
        from podnet.netlink import Netlink

        with Netlink.open() as nl:
            route = nl.get_route(ip)
            link = nl.get_link_by_index(route.oif) if route and route.oif else None
        return link.name if link else None

    def enable_route_localnet(self, dev: str) -> None:
        sysctl.write(sysctl.iface_key("ipv4", dev, "route_localnet"), 1)

    def flush_udp(self, version: int, port: int) -> None:
        argv = ["conntrack", "-D", "-f", f"ipv{version}", "-p", "udp", "--dport", str(port)]
        proc = execs.run(argv, check=False)
        # conntrack exits 1 with "0 flow entries have been deleted" when there was nothing.
        if proc.returncode != 0 and "0 flow entries" not in proc.stderr:
            raise ExecError(argv, proc.returncode, proc.stderr)


# ------------------------------------------------------------------------------ verbs
@dataclass
class Portmap:
    backend: nft.Backend
    host: Host

    def add(self, req: skel.Request) -> types.Result:
        prev = req.prev_result
        if prev is None:
            raise _invalid("must be called as a chained plugin: ADD needs a prevResult")
        conf = parse_conf(req.config, req.runtime_config)
        ips = container_ips(prev) if conf.mappings else []
        if conf.mappings and not ips:
            raise _invalid("prevResult has no container IP address to forward ports to")
        wanted = elements(nft.owner_tag(req.name, req.container_id, req.ifname), conf, ips)
        if not wanted:
            return prev
        owned = nft.owned_by(req.name, req.container_id, req.ifname)
        try:
            # Fast path: one blind transaction, no listing (nft.OwnedTable.create_new); a held
            # host port, a re-ADD or a missing table fall back to list + ensure (takeover).
            owned_table = table(self.backend)
            if not owned_table.create_new(wanted):
                owned_table.ensure(wanted, owned)
            self._prepare_host(conf, ips)
        except PodnetError as exc:
            self._roll_back(req)
            raise skel.CniError(skel.INTERNAL, f"portmap: {exc}") from exc
        return prev

    def _prepare_host(self, conf: Conf, ips: list[Address]) -> None:
        if conf.snat:
            for ip in ips:
                dev = self.host.route_dev(str(ip.ip)) if ip.version == 4 else None
                if dev and dev != "lo":
                    self.host.enable_route_localnet(dev)
        udp_ports = sorted({m.host_port for m in conf.mappings if m.protocol == "udp"})
        for ip in ips:
            for port in udp_ports:
                try:
                    self.host.flush_udp(ip.version, port)
                except PodnetError as exc:  # a stale flow is a nuisance, not a failed ADD
                    skel.debug(f"portmap: conntrack flush of udp port {port} failed: {exc}")

    def _roll_back(self, req: skel.Request) -> None:
        try:
            table(self.backend).remove(nft.owned_by(req.name, req.container_id, req.ifname))
        except PodnetError as exc:
            skel.debug(f"portmap: rollback failed: {exc}")

    def delete(self, req: skel.Request) -> None:
        """Remove everything of this attachment, from the nft state alone (no config checks: a DEL
        must succeed even for a config that ADD would have refused)."""
        try:
            table(self.backend).remove(nft.owned_by(req.name, req.container_id, req.ifname))
        except PodnetError as exc:
            raise skel.CniError(skel.INTERNAL, f"portmap: {exc}") from exc

    def check(self, req: skel.Request) -> None:
        conf = parse_conf(req.config, req.runtime_config)
        if not conf.mappings:
            return
        prev = req.prev_result
        if prev is None:
            raise _invalid("CHECK needs a prevResult to know the container addresses")
        wanted = elements(nft.owner_tag(req.name, req.container_id, req.ifname), conf,
                          container_ips(prev))
        if not wanted:
            return
        try:
            problems = table(self.backend).missing(wanted)
        except PodnetError as exc:
            raise skel.CniError(skel.INTERNAL, f"portmap: {exc}") from exc
        if problems:
            raise skel.CniError(skel.INTERNAL, "portmap: missing state: " + "; ".join(problems))

    def gc(self, req: skel.Request) -> None:
        try:
            table(self.backend).remove(nft.stale_in(req.name, req.valid_attachments))
        except PodnetError as exc:
            raise skel.CniError(skel.INTERNAL, f"portmap: gc: {exc}") from exc

    def plugin(self) -> skel.Plugin:
        return skel.Plugin(name="portmap", add=self.add, delete=self.delete, check=self.check,
                           gc=self.gc)


PLUGIN = Portmap(nft.SYSTEM, SystemHost()).plugin()
