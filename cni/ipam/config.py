"""host-local configuration: the `ipam` section of a network config, validated into range sets.

Semantics follow the reference plugin (containernetworking/plugins host-local
backend/allocator/config.go, range.go, range_set.go) so that the same netconf means the same
pool: `ranges` is a list of range *sets* (one address per set, e.g. one IPv4 set and one IPv6
set), a legacy top-level `subnet/rangeStart/rangeEnd/gateway` is prepended as its own set.
Deliberate differences: `runtimeConfig.ipRanges` *replaces* the configured ranges (the runtime
states the pod's ranges; the reference prepends), rangeStart > rangeEnd is rejected, and a
subnet given with host bits (`10.1.0.5/24`) is masked to its network.

Every problem is a CniError with code 7 (INVALID_CONFIG) and a message naming the field.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cni import skel, types

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_DATA_DIR = "/var/lib/cni/networks"


@dataclass(frozen=True)
class Range:
    """One contiguous pool inside a subnet; `start` and `end` are inclusive."""

    subnet: Network
    start: IP
    end: IP
    gateway: IP

    @property
    def version(self) -> int:
        return self.subnet.version

    def contains(self, ip: IP) -> bool:
        return ip.version == self.version and self.start <= ip <= self.end  # type: ignore[operator]

    def excluded(self) -> frozenset[IP]:
        """Addresses of the range never handed out: the gateway, the network address and the
        IPv4 broadcast (a pod holding one of them breaks the whole subnet)."""
        out: set[IP] = {self.gateway, self.subnet.network_address}
        if self.version == 4:
            out.add(self.subnet.broadcast_address)
        return frozenset(out)

    def allocatable(self, ip: IP) -> bool:
        return self.contains(ip) and ip not in self.excluded()

    def __str__(self) -> str:
        return f"{self.start}-{self.end}"


RangeSet = tuple[Range, ...]


def set_contains(rset: RangeSet, ip: IP) -> bool:
    return any(r.contains(ip) for r in rset)


def range_for(rset: RangeSet, ip: IP) -> Range | None:
    return next((r for r in rset if r.contains(ip)), None)


def describe(rset: RangeSet) -> str:
    return ",".join(str(r) for r in rset)


@dataclass(frozen=True)
class IpamConfig:
    """Everything host-local needs from one request's config and CNI_ARGS."""

    name: str
    data_dir: str
    range_sets: tuple[RangeSet, ...]
    requested: tuple[IP, ...] = ()
    routes: tuple[dict[str, Any], ...] = ()
    resolv_conf: str = ""


def invalid(msg: str) -> skel.CniError:
    return skel.CniError(skel.INVALID_CONFIG, f"host-local: {msg}")


def _ipam_section(config: Mapping[str, Any]) -> dict[str, Any]:
    ipam = config.get("ipam")
    if not isinstance(ipam, dict):
        raise invalid("IPAM config missing 'ipam' key")
    return ipam


def load_location(config: Mapping[str, Any]) -> tuple[str, str]:
    """(network name, data dir): all DEL and GC need.  They deliberately skip range validation so
    that a netconf edited after ADD can still release what ADD took (spec: DEL best effort)."""
    ipam = _ipam_section(config)
    data_dir = ipam.get("dataDir") or DEFAULT_DATA_DIR
    if not isinstance(data_dir, str):
        raise invalid(f"dataDir must be a string, not {data_dir!r}")
    return str(config.get("name", "")), data_dir


def load(config: Mapping[str, Any], cni_args: Mapping[str, str]) -> IpamConfig:
    """Parse and validate the whole IPAM config of a request."""
    ipam = _ipam_section(config)
    name, data_dir = load_location(config)
    sets = _range_sets(config, ipam)
    version = str(config.get("cniVersion") or types.DEFAULT_WHEN_MISSING)
    _check_families(sets, version)
    _check_overlaps(sets)
    resolv_conf = ipam.get("resolvConf") or ""
    if not isinstance(resolv_conf, str):
        raise invalid(f"resolvConf must be a path string, not {resolv_conf!r}")
    return IpamConfig(name=name, data_dir=data_dir, range_sets=sets,
                      requested=requested_ips(config, cni_args), routes=_routes(ipam.get("routes")),
                      resolv_conf=resolv_conf)


def _range_sets(config: Mapping[str, Any], ipam: Mapping[str, Any]) -> tuple[RangeSet, ...]:
    runtime = config.get("runtimeConfig")
    ip_ranges = runtime.get("ipRanges") if isinstance(runtime, dict) else None
    if ip_ranges:
        raw_sets = _list(ip_ranges, "runtimeConfig.ipRanges")
    else:
        raw_sets = list(_list(ipam.get("ranges") or [], "ranges"))
        if ipam.get("subnet"):  # legacy single-range form goes first, as in the reference
            raw_sets.insert(0, [{k: ipam.get(k) for k in ("subnet", "rangeStart", "rangeEnd", "gateway")}])
    if not raw_sets:
        raise invalid("no IP ranges specified")
    return tuple(_range_set(raw, i) for i, raw in enumerate(raw_sets))


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise invalid(f"{what} must be a list, not {value!r}")
    return value


def _range_set(raw: Any, index: int) -> RangeSet:
    where = f"range set {index}"
    ranges = tuple(_range(r, f"{where} range {j}") for j, r in enumerate(_list(raw, where)))
    if not ranges:
        raise invalid(f"{where} is empty")
    if len({r.version for r in ranges}) > 1:
        raise invalid(f"{where} mixes address families")
    return ranges


def _range(raw: Any, where: str) -> Range:
    if not isinstance(raw, dict):
        raise invalid(f"{where} must be an object, not {raw!r}")
    subnet = _network(raw.get("subnet"), f"{where} subnet")
    # Nothing to hand out in a /31 or /32 (/127, /128): reference "too small to allocate from".
    if subnet.prefixlen > subnet.max_prefixlen - 2:
        raise invalid(f"{where}: network {subnet} too small to allocate from")
    first = subnet.network_address + 1
    # The default start is .1 even though that is the default gateway: allocation skips it.
    gateway = _optional_ip(raw, "gateway", where, subnet, default=first)
    start = _optional_ip(raw, "rangeStart", where, subnet, default=first)
    end = _optional_ip(raw, "rangeEnd", where, subnet, default=_last_usable(subnet))
    if start > end:  # type: ignore[operator]
        raise invalid(f"{where}: rangeStart {start} is after rangeEnd {end}")
    return Range(subnet=subnet, start=start, end=end, gateway=gateway)


def _last_usable(subnet: Network) -> IP:
    # IPv4 loses its broadcast address; IPv6 has none (reference range.go lastIP).
    last = subnet.broadcast_address
    return last - 1 if subnet.version == 4 else last


def _network(value: Any, what: str) -> Network:
    if not isinstance(value, str) or "/" not in value:
        raise invalid(f"{what} must be a CIDR string, not {value!r}")
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError as exc:
        raise invalid(f"{what} {value!r}: {exc}") from None


def _optional_ip(raw: Mapping[str, Any], key: str, where: str, subnet: Network, default: IP) -> IP:
    value = raw.get(key)
    if value in (None, ""):  # Go's `omitempty` net.IP: absent and "" both mean unset
        return default
    ip = parse_ip(value, f"{where} {key}")
    if ip.version != subnet.version or ip not in subnet:
        raise invalid(f"{where}: {key} {ip} not in network {subnet}")
    return ip


def parse_ip(value: Any, what: str) -> IP:
    """An address; a CIDR form (`10.1.0.5/24`, what the `ips` capability sends) loses its mask."""
    if not isinstance(value, str):
        raise invalid(f"{what} must be an IP address string, not {value!r}")
    try:
        return ipaddress.ip_address(value.strip().partition("/")[0])
    except ValueError:
        raise invalid(f"{what}: cannot understand IP {value!r}") from None


def _check_families(sets: Sequence[RangeSet], version: str) -> None:
    # CNI 0.1.0/0.2.0 results carry one ip4 and one ip6 block only (reference config.go).
    per_family = [s[0].version for s in sets]
    if max(per_family.count(4), per_family.count(6)) > 1 and not types.at_least(version, "0.3.0"):
        raise invalid(f"CNI version {version} does not support more than 1 address per family")


def _check_overlaps(sets: Sequence[RangeSet]) -> None:
    """No address may belong to two ranges: it would be handed out twice."""
    flat = [(i, r) for i, rset in enumerate(sets) for r in rset]
    for n, (i, a) in enumerate(flat):
        for j, b in flat[n + 1:]:
            if a.version == b.version and a.start <= b.end and b.start <= a.end:  # type: ignore[operator]
                where = f"range set {i}" if i == j else f"range sets {i} and {j}"
                raise invalid(f"{where}: ranges {a} and {b} overlap")


def requested_ips(config: Mapping[str, Any], cni_args: Mapping[str, str]) -> tuple[IP, ...]:
    """Specific IPs asked for via CNI_ARGS `IP=` (comma list), `args.cni.ips` or the `ips`
    capability (runtimeConfig), in that order, without duplicates."""
    raw: list[Any] = [p for p in cni_args.get("IP", "").split(",") if p.strip()]
    args = config.get("args")
    cni = args.get("cni") if isinstance(args, dict) else None
    if isinstance(cni, dict) and cni.get("ips"):
        raw.extend(_list(cni["ips"], "args.cni.ips"))
    runtime = config.get("runtimeConfig")
    if isinstance(runtime, dict) and runtime.get("ips"):
        raw.extend(_list(runtime["ips"], "runtimeConfig.ips"))
    out: list[IP] = []
    for value in raw:
        ip = parse_ip(value, "requested IP")
        if ip not in out:
            out.append(ip)
    return tuple(out)


def _routes(raw: Any) -> tuple[dict[str, Any], ...]:
    if raw is None:
        return ()
    out = []
    for i, route in enumerate(_list(raw, "routes")):
        if not isinstance(route, dict):
            raise invalid(f"routes[{i}] must be an object, not {route!r}")
        _network(route.get("dst"), f"routes[{i}].dst")
        if route.get("gw") not in (None, ""):
            parse_ip(route["gw"], f"routes[{i}].gw")
        out.append(dict(route))
    return tuple(out)


def read_resolv_conf(path: str) -> dict[str, Any]:
    """resolv.conf -> result `dns` (reference host-local dns.go); empty keys are left out."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise invalid(f"cannot read resolvConf {path!r}: {exc.strerror}") from None
    dns: dict[str, Any] = {}
    for line in lines:
        fields = line.split()
        if len(fields) < 2 or fields[0][0] in "#;":
            continue
        key, values = fields[0], fields[1:]
        if key == "nameserver":
            dns.setdefault("nameservers", []).append(values[0])
        elif key == "domain":
            dns["domain"] = values[0]
        elif key in ("search", "options"):
            dns.setdefault(key, []).extend(values)
    return dns
