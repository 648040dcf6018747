"""The bridge plugin: a veth pair per attachment, the host end on a Linux bridge.

Reference semantics (containernetworking/plugins plugins/main/bridge, cni.md section 2) with the
knobs bridge, isGateway, isDefaultGateway, forceAddress, ipMasq, mtu, hairpinMode, promiscMode,
vlan, macspoofchk and enabledad, IPAM by delegation, and these differences:

* The host veth name is deterministic (podnet.names.host_veth_name), and every ADD writes a
  record (cni.attachments) before it acquires anything.  DEL, CHECK and GC work from that record
  or `prevResult`, never from the netns: DEL succeeds with an empty CNI_NETNS, a deleted netns, no
  `prevResult` and when repeated, and leaks no ipMasq rule (the reference does, plugins#810).
* A failed ADD undoes what it did, newest first (IPAM DEL, veth, masquerade, MAC filter).
* A duplicate ADD is refused with code 100 (ALREADY_ATTACHED).
* Bridge creation and the gateway address run under a per-bridge flock (plugins#366 races).
* The host veth is waited on with netlink events, not the reference's 0/50/500/1000 ms polls.
* `vlan` needs kernel bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING; with isGateway also
  CONFIG_VLAN_8021Q for the `<bridge>.<vid>` gateway link); without it ADD fails with code 7.
* `macspoofchk` is an nft bridge-family filter (table `podnet_cni_macspoof`): frames entering the
  bridge from the pod's host veth with a source MAC other than the pod's are dropped.
* Extra config key `stateDir` (default /var/lib/cni/podnet) holds the attachment records.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

from cni import attachments, delegate, skel, types
from podnet import names, netns, sysctl
from podnet.errors import AlreadyExists, NetlinkFailure, NotFound, PodnetError
from podnet.netlink import AF_INET, AF_INET6, Link, Netlink, netns_fd

DEFAULT_BRIDGE = "cni0"
LOCK_DIR = "/run/podnet/locks"
HOST_IFACE_INDEX = 1  # result.interfaces = [bridge, host veth, container iface]
CONTAINER_IFACE_INDEX = 2
EOPNOTSUPP = 95
MACSPOOF_TABLE = "podnet_cni_macspoof"
_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class BridgeConf:
    network: str
    ipam_type: str
    bridge: str = DEFAULT_BRIDGE
    is_gateway: bool = False
    is_default_gateway: bool = False
    force_address: bool = False
    ip_masq: bool = False
    mtu: int = 0
    hairpin: bool = False
    promisc: bool = False
    vlan: int = 0
    mac_spoof_chk: bool = False
    enable_dad: bool = False
    state_dir: str = attachments.DEFAULT_STATE_DIR
    mac: str = ""  # requested container MAC (runtimeConfig.mac, args.cni.mac, CNI_ARGS MAC)
    dns: dict[str, Any] = dataclasses.field(default_factory=dict)


def _invalid(msg: str) -> skel.CniError:
    return skel.CniError(skel.INVALID_CONFIG, f"bridge: {msg}")


def _flag(config: dict[str, Any], key: str) -> bool:
    value = config.get(key, False)
    if not isinstance(value, bool):
        raise _invalid(f"{key} must be true or false, not {value!r}")
    return value


def _number(config: dict[str, Any], key: str, low: int, high: int) -> int:
    value = config.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(f"{key} must be an integer, not {value!r}")
    if value and not low <= value <= high:
        raise _invalid(f"{key} {value} is out of range {low}..{high}")
    return value


def _requested_mac(req: skel.Request) -> str:
    """The runtime's MAC request: capability `mac`, then `args.cni.mac`, then CNI_ARGS MAC."""
    args = req.config.get("args")
    cni_args = args.get("cni") if isinstance(args, dict) else None
    for value in (req.runtime_config.get("mac"),
                  cni_args.get("mac") if isinstance(cni_args, dict) else None,
                  req.args.get("MAC")):
        if value:
            if not isinstance(value, str) or not _MAC_RE.match(value):
                raise _invalid(f"invalid MAC address {value!r}")
            return value.lower()
    return ""


def parse_conf(req: skel.Request) -> BridgeConf:
    """The plugin's config keys, validated (code 7 for anything malformed)."""
    c = req.config
    bridge = c.get("bridge", DEFAULT_BRIDGE) or DEFAULT_BRIDGE
    if not isinstance(bridge, str) or not names.valid_ifname(bridge):
        raise _invalid(f"invalid bridge name {bridge!r}")
    hairpin, promisc = _flag(c, "hairpinMode"), _flag(c, "promiscMode")
    if hairpin and promisc:
        raise _invalid("cannot set hairpin mode and promiscuous mode at the same time")
    vlan = _number(c, "vlan", 0, 4094)
    state_dir = c.get("stateDir") or attachments.DEFAULT_STATE_DIR
    if not isinstance(state_dir, str) or not state_dir.startswith("/"):
        raise _invalid(f"stateDir must be an absolute path, not {state_dir!r}")
    dns = c.get("dns") or {}
    if not isinstance(dns, dict):
        raise _invalid("dns must be an object")
    is_default_gw = _flag(c, "isDefaultGateway")
    return BridgeConf(
        network=req.name, ipam_type=delegate.ipam_type(req), bridge=bridge,
        is_gateway=_flag(c, "isGateway") or is_default_gw,  # a default gateway is a gateway
        is_default_gateway=is_default_gw, force_address=_flag(c, "forceAddress"),
        ip_masq=_flag(c, "ipMasq"), mtu=_number(c, "mtu", 68, 65535), hairpin=hairpin,
        promisc=promisc, vlan=vlan, mac_spoof_chk=_flag(c, "macspoofchk"),
        enable_dad=_flag(c, "enabledad"), state_dir=state_dir, mac=_requested_mac(req), dns=dns,
    )


# ------------------------------------------------------------------------ addressing plan
@dataclass(frozen=True)
class IpPlan:
    """What the container and the bridge get, computed from the IPAM result (pure)."""

    ips: list[dict[str, Any]]  # result ips[]: address, gateway, interface=2
    routes: list[dict[str, Any]]  # result routes[]: dst, gw
    bridge_addrs: list[str]  # gateway CIDRs for the bridge (isGateway)


def _gateway_of(address: str) -> str:
    """The reference's calcGatewayIP: the first address of the subnet."""
    net = ipaddress.ip_interface(address).network
    return str(net.network_address + 1)


def _default_dst(version: int) -> str:
    return "0.0.0.0/0" if version == 4 else "::/0"


def plan_ips(ipam: types.Result, conf: BridgeConf) -> IpPlan:
    """Gateways (IPAM's, else .1 when isGateway), bridge gateway addresses, and a default route
    per family when isDefaultGateway and IPAM gave none (reference calcGateways)."""
    if not ipam.get("ips"):
        raise skel.CniError(skel.INTERNAL, "bridge: IPAM plugin returned missing IP config")
    ips: list[dict[str, Any]] = []
    bridge_addrs: list[str] = []
    gateways: dict[int, str] = {}
    for entry in ipam["ips"]:
        iface = ipaddress.ip_interface(entry["address"])
        gw = entry.get("gateway") or (_gateway_of(entry["address"]) if conf.is_gateway else None)
        ip: dict[str, Any] = {"interface": CONTAINER_IFACE_INDEX, "address": str(iface)}
        if gw:
            ip["gateway"] = gw
            gateways.setdefault(iface.version, gw)
            if conf.is_gateway:
                cidr = f"{gw}/{iface.network.prefixlen}"
                if cidr not in bridge_addrs:
                    bridge_addrs.append(cidr)
        ips.append(ip)
    routes = [dict(r) for r in ipam.get("routes") or []]
    if conf.is_default_gateway:
        for version, gw in gateways.items():
            dst = _default_dst(version)
            if not any(r.get("dst") == dst and r.get("gw") for r in routes):
                routes.append({"dst": dst, "gw": gw})
    return IpPlan(ips=ips, routes=routes, bridge_addrs=bridge_addrs)


def route_gateway(route: dict[str, Any], ips: list[dict[str, Any]]) -> str | None:
    """A route without `gw` goes via the gateway of its family (reference ConfigureIface)."""
    if route.get("gw"):
        return str(route["gw"])
    version = ipaddress.ip_network(route["dst"], strict=False).version
    for ip in ips:
        if ip.get("gateway") and ipaddress.ip_address(ip["gateway"]).version == version:
            return str(ip["gateway"])
    return None


def build_result(conf: BridgeConf, req: skel.Request, links: tuple[Link, Link, Link], plan: IpPlan,
                 ipam: types.Result) -> types.Result:
    bridge, host, container = links
    result: types.Result = {
        "cniVersion": types.CURRENT,
        "interfaces": [{"name": bridge.name, "mac": bridge.mac},
                       {"name": host.name, "mac": host.mac},
                       {"name": container.name, "mac": container.mac, "sandbox": req.netns}],
        "ips": plan.ips,
    }
    if plan.routes:
        result["routes"] = plan.routes
    dns = conf.dns or ipam.get("dns")
    if dns:
        result["dns"] = dns
    return result


def container_ips(result: types.Result | None) -> list[str]:
    """The container CIDRs of a result (those on the sandbox interface, or unattributed)."""
    if not result:
        return []
    ifaces = result.get("interfaces") or []
    sandboxed = {i for i, iface in enumerate(ifaces) if iface.get("sandbox")}
    return [ip["address"] for ip in result.get("ips") or []
            if ip.get("interface") is None or ip.get("interface") in sandboxed]


# ------------------------------------------------------------------------------ MAC filter
def macspoof_chain(container_id: str, ifname: str) -> str:
    return "ms-" + names.hashed_hex(container_id, ifname, length=20)


def _macspoof_base() -> str:
    t = MACSPOOF_TABLE
    return (f"add table bridge {t}\n"
            f"add chain bridge {t} prerouting {{ type filter hook prerouting priority -300; "
            f"policy accept; }}\n"
            f"add map bridge {t} ports {{ type ifname : verdict; }}\n")


def macspoof_add_script(network: str, container_id: str, ifname: str, host_veth: str, mac: str) -> str:
    """One nft transaction: the shared dispatch (iifname -> per-port chain; flushed and re-added
    so it stays one rule) plus this port's chain dropping any other source MAC."""
    t, chain = MACSPOOF_TABLE, macspoof_chain(container_id, ifname)
    return (_macspoof_base()
            + f"flush chain bridge {t} prerouting\n"
            f"add rule bridge {t} prerouting iifname vmap @ports\n"
            f"add chain bridge {t} {chain}\n"
            f"flush chain bridge {t} {chain}\n"
            f"add rule bridge {t} {chain} ether saddr != {mac} counter drop "
            f"comment \"podnet macspoofchk net={network} id={container_id}\"\n"
            f"add element bridge {t} ports {{ \"{host_veth}\" : jump {chain} }}\n")


def macspoof_delete_script(container_id: str, ifname: str, host_veth: str) -> str:
    """Idempotent teardown: nft has no 'delete if exists' (1.0.6 lacks `destroy`), so the
    objects are added first in the same transaction, then deleted."""
    t, chain = MACSPOOF_TABLE, macspoof_chain(container_id, ifname)
    return (_macspoof_base()
            + f"add chain bridge {t} {chain}\n"
            f"add element bridge {t} ports {{ \"{host_veth}\" : jump {chain} }}\n"
            f"delete element bridge {t} ports {{ \"{host_veth}\" }}\n"
            f"flush chain bridge {t} {chain}\n"
            f"delete chain bridge {t} {chain}\n")


def _nft(script: str) -> None:
    from podnet.xtables import nft

    nft.run_script(script)


def _macspoof_present(host_veth: str) -> bool:
    from podnet.xtables import nft

    try:
        data = nft.list_json("map", "bridge", MACSPOOF_TABLE, "ports")
    except PodnetError:
        return False
    for item in data.get("nftables", []):
        for elem in (item.get("map") or {}).get("elem", []):
            if isinstance(elem, list) and elem and elem[0] == host_veth:
                return True
    return False


# ------------------------------------------------------------------------- kernel helpers
@contextmanager
def bridge_lock(bridge: str) -> Iterator[None]:
    """Serialise bridge creation and gateway addressing across concurrent ADDs (plugins#366)."""
    with attachments.locked(f"{LOCK_DIR}/bridge-{bridge}.lock"):
        yield


def _set_sysctl(key: str, value: int) -> None:
    """Best effort for IPv6 knobs: /proc/sys/net/ipv6 is absent when IPv6 is disabled."""
    with suppress(NotFound):
        sysctl.write(key, value)


def _vlan_unsupported(exc: NetlinkFailure) -> skel.CniError:
    return _invalid(f"vlan needs kernel bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING): {exc}")


def ensure_bridge(host: Netlink, conf: BridgeConf) -> Link:
    """The bridge, created if missing, up, with our settings (call under bridge_lock)."""
    try:
        br = host.ensure_bridge(conf.bridge, mtu=conf.mtu or None, vlan_filtering=conf.vlan > 0)
        if conf.vlan:
            host.set_vlan_filtering(conf.bridge)  # an existing bridge may lack it
    except AlreadyExists as exc:
        raise skel.CniError(skel.INVALID_CONFIG, f"bridge: {exc}") from exc
    except NetlinkFailure as exc:
        if exc.errno == EOPNOTSUPP and conf.vlan:
            raise _vlan_unsupported(exc) from exc
        raise
    if conf.promisc and not br.promisc:
        host.set_promisc(conf.bridge)
    # We own the routes of the bridge: router advertisements must not add any.
    _set_sysctl(sysctl.iface_key("ipv6", conf.bridge, "accept_ra"), 0)
    # Pin the bridge MAC (an explicitly set address is kept): otherwise the bridge takes the
    # lowest port MAC, which changes as pods come and go and leaves stale gateway ARP entries in
    # every pod (the reference pins it in ensureAddr, for gateways only).
    host.set_link(conf.bridge, address=br.mac)
    if not br.up:
        host.set_up(conf.bridge)
    return br


def ensure_bridge_addr(host: Netlink, iface: str, cidr: str, force: bool) -> None:
    """The gateway address on the bridge (reference ensureAddr): another IPv4 address, or an
    overlapping IPv6 one, is a conflict unless forceAddress replaces it."""
    want = ipaddress.ip_interface(cidr)
    family = AF_INET if want.version == 4 else AF_INET6
    for have_s in host.list_addrs(iface, family=family):
        have = ipaddress.ip_interface(have_s)
        if have == want:
            return
        if have.ip.is_link_local:
            continue
        if want.version == 4 or have.ip in want.network or want.ip in have.network:
            if not force:
                raise skel.CniError(skel.INTERNAL, f"bridge: {iface!r} already has an IP address "
                                    f"different from {cidr}")
            host.delete_addr(iface, have_s)
    host.ensure_addr(iface, cidr)


def ensure_vlan_gateway(host: Netlink, conf: BridgeConf) -> str:
    """With vlan + isGateway the gateway lives on `<bridge>.<vid>`, a VLAN link on the bridge
    whose VLAN is also in the bridge's own table (reference ensureVlanInterface)."""
    name = f"{conf.bridge}.{conf.vlan}"
    if not names.valid_ifname(name):
        raise _invalid(f"gateway link name {name!r} is too long; use a shorter bridge name")
    try:
        host.add_port_vlan(conf.bridge, conf.vlan, pvid=False, untagged=False, self_=True)
        host.ensure_vlan_link(name, conf.bridge, conf.vlan)
    except NetlinkFailure as exc:
        if exc.errno == EOPNOTSUPP:
            raise _vlan_unsupported(exc) from exc
        raise
    host.set_up(name)
    return name


# ---------------------------------------------------------------------------------- ADD
@dataclass
class _Add:
    """One ADD in progress: the request, both namespaces' netlink sockets, the record, undos."""

    req: skel.Request
    conf: BridgeConf
    store: attachments.Store
    record: attachments.Attachment
    undo: attachments.Undo
    host: Netlink
    pod: Netlink


def _store(conf: BridgeConf) -> attachments.Store:
    return attachments.Store.for_network(conf.state_dir, conf.network)


def _new_record(req: skel.Request, conf: BridgeConf) -> attachments.Attachment:
    return attachments.Attachment(
        container_id=req.container_id, ifname=req.ifname, netns=req.netns,
        host_iface=names.host_veth_name(req.container_id, req.ifname),
        extra={"bridge": conf.bridge, "ipMasq": conf.ip_masq, "macspoofchk": conf.mac_spoof_chk})


def _as_cni_error(exc: Exception) -> skel.CniError:
    """Failures of the seams become code 999, rollback failures going into `details`."""
    notes = "; ".join(getattr(exc, "__notes__", []))
    if isinstance(exc, skel.CniError):
        if notes and not exc.details:
            exc.details = notes
        return exc
    return skel.CniError(skel.INTERNAL, f"bridge: {exc}", notes or type(exc).__name__)


def cmd_add(req: skel.Request) -> types.Result:
    conf = parse_conf(req)
    store = _store(conf)
    if store.exists(req.container_id, req.ifname):
        raise skel.CniError(skel.ALREADY_ATTACHED, f"bridge: container {req.container_id} already "
                            f"has an attachment {req.ifname} on network {req.name}")
    if not netns.exists(req.netns):
        raise skel.CniError(skel.UNKNOWN_CONTAINER, f"bridge: network namespace {req.netns} does not exist")
    record = _new_record(req, conf)
    try:
        with Netlink.open() as host, Netlink.open(req.netns) as pod, attachments.Undo() as undo:
            # Write-ahead: the record exists before anything it names does.
            store.put(record)
            undo.push("drop the attachment record",
                      lambda: store.remove(req.container_id, req.ifname), needs_clean=True)
            return _add(_Add(req, conf, store, record, undo, host, pod))
    except (skel.CniError, PodnetError, OSError) as exc:
        raise _as_cni_error(exc) from exc


def _add(a: _Add) -> types.Result:
    with bridge_lock(a.conf.bridge):
        bridge_link = ensure_bridge(a.host, a.conf)
    container = _create_veth(a)
    _attach_host_veth(a, bridge_link)
    ipam = _ipam_add(a)
    plan = plan_ips(ipam, a.conf)
    _configure_container(a, plan)
    host_veth = a.host.wait_oper_up(a.record.host_iface)
    if a.conf.is_gateway:
        _ensure_gateway(a, plan)
    if a.conf.ip_masq:
        _masq_setup(a)
    if a.conf.mac_spoof_chk:
        _macspoof_setup(a, container.mac)
    links = (bridge_link, host_veth, container)  # the bridge MAC is pinned: still current
    result = build_result(a.conf, a.req, links, plan, ipam)
    a.record.result, a.record.complete = result, True
    a.store.put(a.record)
    return result


def _create_veth(a: _Add) -> Link:
    """The pair is created inside the pod's namespace with the peer moved to ours, so the
    container side never exists, even briefly, under a name that could clash on the host."""
    ifname, host_veth = a.req.ifname, a.record.host_iface
    if a.pod.get_link(ifname) is not None:
        # Checked before touching the host veth: the same (container, ifname) attached through
        # another network has the same host veth name, which must not be deleted below.
        raise skel.CniError(skel.ALREADY_ATTACHED, f"bridge: container already has interface {ifname}")
    # Our deterministic name, no record behind it and no container side: a leftover of an ADD
    # whose record was lost (e.g. a wiped state dir).  It is ours by name: replace it.
    a.host.delete_link(host_veth)
    try:
        with netns_fd() as host_fd:
            container = a.pod.add_veth_pair(ifname, host_veth, peer_netns_fd=host_fd,
                                            mtu=a.conf.mtu or None, mac=a.conf.mac or None)
    except AlreadyExists as exc:
        raise skel.CniError(skel.ALREADY_ATTACHED, f"bridge: container already has interface "
                            f"{ifname}") from exc
    a.undo.push(f"delete veth {host_veth}", lambda: a.host.delete_link(host_veth))
    return container


def _attach_host_veth(a: _Add, bridge_link: Link) -> None:
    """Enslave and bring up in one message; the port flags need it enslaved.  The pod has no
    address yet, so nothing crosses the port before hairpin/VLAN are set."""
    name = a.record.host_iface
    a.host.set_link(name, master=bridge_link.index, state="up")
    if a.conf.hairpin:
        a.host.set_hairpin(name)
    if a.conf.vlan:
        try:
            a.host.add_port_vlan(name, a.conf.vlan, pvid=True, untagged=True)
        except NetlinkFailure as exc:
            if exc.errno == EOPNOTSUPP:
                raise _vlan_unsupported(exc) from exc
            raise


def _ipam_add(a: _Add) -> types.Result:
    # Pushed first: spec section 3, a plugin whose ADD fails after delegating IPAM calls IPAM DEL.
    a.undo.push("IPAM DEL", lambda: delegate.delegate(a.conf.ipam_type, "DEL", a.req))
    result = delegate.delegate(a.conf.ipam_type, "ADD", a.req)
    assert result is not None
    a.record.ips = [ip["address"] for ip in result.get("ips") or []]
    if a.conf.ip_masq:  # only masquerade teardown needs the addresses before ADD completes
        a.store.put(a.record)
    return result


def _configure_container(a: _Add, plan: IpPlan) -> None:
    ifname = a.req.ifname
    with netns.enter(a.req.netns):
        if not a.conf.enable_dad:
            # DAD would hold the address tentative for ~1-2 s (kubernetes#54651); the address
            # comes from IPAM, so nothing else on the bridge can hold it.
            _set_sysctl(sysctl.iface_key("ipv6", ifname, "accept_dad"), 0)
        # Announce the MAC with gratuitous ARP when it changes (a reused IP, a new veth).
        _set_sysctl(sysctl.iface_key("ipv4", ifname, "arp_notify"), 1)
    for ip in plan.ips:
        a.pod.ensure_addr(ifname, ip["address"])
    # Up before the routes: IPv4 adds the subnet route only for an up device.
    a.pod.set_up(ifname)
    for route in plan.routes:
        gw = route_gateway(route, plan.ips)
        try:
            a.pod.add_route(route["dst"], gateway=gw, dev=ifname)
        except AlreadyExists as exc:
            # Replacing it would steal another attachment's route (e.g. eth0's default).
            raise skel.CniError(skel.INTERNAL, f"bridge: route {route['dst']} already exists in "
                                f"the container") from exc


def _ensure_gateway(a: _Add, plan: IpPlan) -> None:
    with bridge_lock(a.conf.bridge):
        iface = ensure_vlan_gateway(a.host, a.conf) if a.conf.vlan else a.conf.bridge
        for cidr in plan.bridge_addrs:
            ensure_bridge_addr(a.host, iface, cidr, a.conf.force_address)
    versions = {ipaddress.ip_interface(c).version for c in plan.bridge_addrs}
    if 4 in versions:
        sysctl.write("net.ipv4.ip_forward", 1)
    if 6 in versions:
        _set_sysctl("net/ipv6/conf/all/forwarding", 1)


def _masq_setup(a: _Add) -> None:
    from cni import masq

    req, ips = a.req, list(a.record.ips)
    a.undo.push("masquerade teardown",
                lambda: masq.teardown(req.name, req.container_id, req.ifname, ips))
    masq.setup(req.name, req.container_id, req.ifname, ips)


def _macspoof_setup(a: _Add, mac: str) -> None:
    req, host_veth = a.req, a.record.host_iface
    a.undo.push("macspoofchk teardown",
                lambda: _nft(macspoof_delete_script(req.container_id, req.ifname, host_veth)))
    _nft(macspoof_add_script(req.name, req.container_id, req.ifname, host_veth, mac))


# ---------------------------------------------------------------------------------- DEL
def cmd_del(req: skel.Request) -> None:
    """Undo everything from the record (or prevResult, or recomputed names); never from the netns.

    Order: container link, host veth, MAC filter, masquerade, IPAM, record.  The record goes last,
    so a DEL that fails half-way is completed by the runtime's retry or by GC.
    """
    conf = parse_conf(req)
    store = _store(conf)
    found = store.get(req.container_id, req.ifname)
    record = found or _new_record(req, conf)
    if not record.ips:
        record.ips = container_ips(req.prev_result)
    # Links and the MAC filter are named by (container, ifname) alone: an attachment of another
    # network with that pair (the runtime DELs after a refused duplicate ADD) has the same names.
    # They are only ours when this network's record or prevResult says so.
    owned = found is not None or _result_names(req.prev_result, record.host_iface)
    try:
        _release(conf, record, links=owned, container_netns=req.netns)
    except (PodnetError, OSError) as exc:
        raise _as_cni_error(exc) from exc
    delegate.delegate(conf.ipam_type, "DEL", req)
    store.remove(req.container_id, req.ifname)


def _result_names(result: types.Result | None, iface: str) -> bool:
    return any(i.get("name") == iface for i in (result or {}).get("interfaces") or [])


def _delete_container_link(netns_path: str, ifname: str) -> None:
    """Our veth in the pod, when the namespace is still there (deleting one end of a veth pair
    deletes both).  `unlink` returns once the kernel has unlisted the pair (the name, addresses
    and bridge port are gone), not after its ~15-20 ms of final teardown (Netlink.unlink)."""
    if not netns_path or not netns.exists(netns_path):
        return
    with suppress(NotFound), Netlink.open(netns_path) as pod:
        link = pod.get_link(ifname)
        if link is not None and link.kind == "veth":
            pod.unlink(link.index)


def _delete_host_veth(host_veth: str) -> None:
    """The host end, when the container end did not take it along (no netns, or a leftover)."""
    with Netlink.open() as host:
        link = host.get_link(host_veth)
        if link is not None:
            host.unlink(link.index)


def _release(conf: BridgeConf, record: attachments.Attachment, *, links: bool,
             container_netns: str = "") -> None:
    """Everything of one attachment except IPAM and the record; each step is idempotent.

    The nft teardowns run in a helper thread while this one deletes the links: both wait on
    the kernel (a veth deletion ~20 ms, an nft deletion ~16 ms: each waits for an RCU grace
    period), so an ipMasq DEL costs the longer of the two instead of their sum.  The thread
    starts in this thread's network namespace (clone copies the creator's namespaces) and is
    joined before IPAM is released.
    """
    host_veth = record.host_iface or names.host_veth_name(record.container_id, record.ifname)
    nft_steps: list[tuple[str, Callable[[], None]]] = []
    if links and (conf.mac_spoof_chk or record.extra.get("macspoofchk")):
        script = macspoof_delete_script(record.container_id, record.ifname, host_veth)
        nft_steps.append(("macspoofchk teardown", lambda: _nft(script)))
    if conf.ip_masq or record.extra.get("ipMasq"):
        from cni import masq

        # Tagged with the network: never another network's entries.
        nft_steps.append(("masquerade teardown", lambda: masq.teardown(
            conf.network, record.container_id, record.ifname, record.ips)))
    join = _in_background(nft_steps) if links and nft_steps else _in_foreground(nft_steps)
    try:
        if links:
            _delete_container_link(container_netns, record.ifname)
            _delete_host_veth(host_veth)
    finally:
        join()


def _in_foreground(steps: list[tuple[str, Callable[[], None]]]) -> Callable[[], None]:
    for _what, step in steps:
        step()
    return lambda: None


def _in_background(steps: list[tuple[str, Callable[[], None]]]) -> Callable[[], None]:
    """Run `steps` in order in a thread; the returned join waits and re-raises its failure."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            for _what, step in steps:
                step()
        except BaseException as exc:  # re-raised by join, in the caller's thread
            failure.append(exc)

    worker = threading.Thread(target=run, name="bridge-del-nft", daemon=True)
    worker.start()

    def join() -> None:
        worker.join()
        if failure:
            raise failure[0]

    return join


# -------------------------------------------------------------------------------- CHECK
def _check_failed(msg: str) -> skel.CniError:
    return skel.CniError(skel.INTERNAL, f"bridge CHECK: {msg}")


def _container_index(prev: types.Result, req: skel.Request) -> int:
    for i, iface in enumerate(prev.get("interfaces") or []):
        if iface.get("name") == req.ifname and iface.get("sandbox"):
            return i
    raise _check_failed(f"prevResult has no interface {req.ifname} with a sandbox")


def cmd_check(req: skel.Request) -> None:
    """prevResult's container interface, addresses and routes; the host veth on the bridge;
    masquerade and MAC filter; then IPAM's own CHECK."""
    conf = parse_conf(req)
    prev = req.prev_result
    if prev is None:
        raise skel.CniError(skel.INVALID_CONFIG, "bridge: CHECK needs prevResult")
    record = _store(conf).get(req.container_id, req.ifname)
    if record is None or not record.complete:
        raise _check_failed(f"no completed attachment {req.container_id}/{req.ifname} on {req.name}")
    index = _container_index(prev, req)
    try:
        container = _check_container(req, prev, index)
        _check_host(conf, record.host_iface, container)
    except NotFound as exc:
        raise _check_failed(str(exc)) from exc
    if conf.ip_masq:
        from cni import masq

        masq.verify(req.name, req.container_id, req.ifname, container_ips(prev))
    if conf.mac_spoof_chk and not _macspoof_present(record.host_iface):
        raise _check_failed(f"no macspoofchk filter for {record.host_iface}")
    delegate.delegate(conf.ipam_type, "CHECK", req)


def _check_container(req: skel.Request, prev: types.Result, index: int) -> Link:
    want = prev["interfaces"][index]
    with Netlink.open(req.netns) as pod:
        link = pod.require_link(req.ifname)
        if link.kind != "veth":
            raise _check_failed(f"{req.ifname} is a {link.kind or 'plain'} link, not a veth")
        if want.get("mac") and want["mac"].lower() != link.mac.lower():
            raise _check_failed(f"{req.ifname} has MAC {link.mac}, prevResult says {want['mac']}")
        have = {ipaddress.ip_interface(a) for a in pod.list_addrs(req.ifname)}
        for ip in prev.get("ips") or []:
            if ip.get("interface", index) == index and ipaddress.ip_interface(ip["address"]) not in have:
                raise _check_failed(f"{req.ifname} lacks address {ip['address']}")
        for route in prev.get("routes") or []:
            _check_route(pod, route)
    return link


def _check_route(pod: Netlink, route: dict[str, Any]) -> None:
    dst = ipaddress.ip_network(route["dst"], strict=False)
    family = AF_INET if dst.version == 4 else AF_INET6
    for have in pod.list_routes(family=family):
        if ipaddress.ip_network(have.dst, strict=False) != dst:
            continue
        if not route.get("gw") or (have.gateway and ipaddress.ip_address(have.gateway)
                                   == ipaddress.ip_address(route["gw"])):
            return
    raise _check_failed(f"route {route['dst']} via {route.get('gw')} is missing in the container")


def _check_host(conf: BridgeConf, host_veth: str, container: Link) -> None:
    with Netlink.open() as host:
        bridge = host.require_link(conf.bridge)
        if bridge.kind != "bridge":
            raise _check_failed(f"{conf.bridge} is not a bridge")
        veth = host.require_link(host_veth)
        if veth.master != bridge.index:
            raise _check_failed(f"{host_veth} is not attached to {conf.bridge}")
        if veth.peer_index != container.index:
            raise _check_failed(f"{host_veth} is not the peer of the container interface")
        if conf.hairpin and host.bridge_port_info(host_veth).get("mode") != 1:
            raise _check_failed(f"hairpin mode is off on {host_veth}")


# ----------------------------------------------------------------------------- GC, STATUS
def _request_for(req: skel.Request, record: attachments.Attachment) -> skel.Request:
    """A DEL request for one recorded attachment (GC's own requests carry no container)."""
    env = dict(req.env, CNI_COMMAND="DEL", CNI_CONTAINERID=record.container_id,
               CNI_IFNAME=record.ifname, CNI_NETNS="")
    config = {k: v for k, v in req.config.items() if not k.startswith("cni.dev/")}
    return skel.Request(command="DEL", container_id=record.container_id, netns="",
                        ifname=record.ifname, args={}, path=req.path, config=config,
                        stdin=req.stdin, env=env)


def cmd_gc(req: skel.Request) -> None:
    """Release every recorded attachment that is not in the runtime's valid list (including the
    write-ahead records of ADDs that were killed), then let masquerade and IPAM collect theirs.
    Best effort: every step runs, the failures are reported together at the end."""
    conf = parse_conf(req)
    store = _store(conf)
    keep = set(req.valid_attachments)
    errors: list[str] = []
    store.remove_stale_temp_files()
    for record in store.records():
        if record.key in keep:
            continue
        try:
            _release(conf, record, links=True)
            delegate.delegate(conf.ipam_type, "DEL", _request_for(req, record))
            store.remove(record.container_id, record.ifname)
        except (skel.CniError, PodnetError, OSError) as exc:
            errors.append(f"{record.container_id}/{record.ifname}: {exc}")
    if conf.ip_masq:
        try:
            from cni import masq

            masq.gc(conf.network, keep)
        except (skel.CniError, PodnetError, OSError) as exc:
            errors.append(f"masquerade GC: {exc}")
    try:
        delegate.delegate(conf.ipam_type, "GC", req)
    except skel.CniError as exc:
        errors.append(f"IPAM GC: {exc.msg}")
    if errors:
        raise skel.CniError(skel.INTERNAL, "bridge: GC incomplete: " + "; ".join(errors))


def cmd_status(req: skel.Request) -> None:
    """Ready when IPAM is (spec: STATUS is forwarded to the delegated IPAM plugin)."""
    conf = parse_conf(req)
    delegate.delegate(conf.ipam_type, "STATUS", req)


PLUGIN = skel.Plugin(name="bridge", add=cmd_add, delete=cmd_del, check=cmd_check, gc=cmd_gc,
                     status=cmd_status)
