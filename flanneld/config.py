"""net-conf.json: the cluster network flanneld carves per-host subnets from.

The defaults and checks are upstream's (flannel pkg/subnet/config.go ParseConfig): SubnetLen
defaults to /24 when Network is /22 or larger, else Network+2 (so at least four subnets exist; the
first is never handed out); a Network longer than /28 is too small; an explicit SubnetLen must be
<= 30 and leave room for four subnets; SubnetMin defaults to the SECOND subnet (the first would
put a host address on the network address) and SubnetMax to the last one; both must lie inside
Network and on a SubnetLen boundary.

One deliberate difference: upstream silently picks the "udp" backend when `Backend` (or its
`Type`) is absent, while its docs say vxlan is the default. We refuse such a config instead of
guessing (the reference notes: always write Type explicitly).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any

__all__ = ["ConfigError", "NetworkConfig"]


class ConfigError(ValueError):
    """The network config is malformed or violates upstream's constraints."""


@dataclass(frozen=True)
class NetworkConfig:
    network: IPv4Network
    subnet_len: int
    subnet_min: IPv4Address
    subnet_max: IPv4Address
    backend: dict[str, Any] = field(default_factory=dict)
    enable_nftables: bool = False

    @property
    def backend_type(self) -> str:
        return str(self.backend["Type"])

    @property
    def subnet_size(self) -> int:
        return 1 << (32 - self.subnet_len)

    @classmethod
    def parse(cls, raw: bytes | str) -> NetworkConfig:
        try:
            doc = json.loads(raw)
        except ValueError as err:
            raise ConfigError(f"net-conf is not valid JSON: {err}") from None
        if not isinstance(doc, dict):
            raise ConfigError("net-conf must be a JSON object")
        _reject_unsupported(doc)
        network = _network(doc.get("Network"))
        subnet_len = _subnet_len(network, doc.get("SubnetLen", 0))
        size = 1 << (32 - subnet_len)
        subnet_min = _bound(doc, "SubnetMin", network, subnet_len, network.network_address + size)
        subnet_max = _bound(doc, "SubnetMax", network, subnet_len, network.broadcast_address + 1 - size)
        if subnet_min > subnet_max:
            raise ConfigError(f"SubnetMin {subnet_min} is above SubnetMax {subnet_max}")
        return cls(network, subnet_len, subnet_min, subnet_max, _backend(doc.get("Backend")),
                   bool(doc.get("EnableNFTables", False)))

    def is_compatible(self, subnet: IPv4Network) -> bool:
        """upstream isSubnetConfigCompat: a lease is reusable only inside Min..Max at SubnetLen."""
        return (subnet.prefixlen == self.subnet_len
                and self.subnet_min <= subnet.network_address <= self.subnet_max)


def _reject_unsupported(doc: dict[str, Any]) -> None:
    if doc.get("EnableIPv6"):
        raise ConfigError("EnableIPv6 is not supported (IPv4 only)")
    if doc.get("EnableIPv4", True) is False:
        raise ConfigError("EnableIPv4=false is not supported (IPv4 only)")


def _network(value: Any) -> IPv4Network:
    if not value:
        raise ConfigError("Network is required (e.g. \"10.244.0.0/16\")")
    try:
        # Like Go's net.ParseCIDR, host bits are dropped: "10.244.1.0/16" is 10.244.0.0/16.
        network = ipaddress.ip_network(str(value), strict=False)
    except ValueError as err:
        raise ConfigError(f"Network: {err}") from None
    if not isinstance(network, IPv4Network):
        raise ConfigError(f"Network {value} is not an IPv4 CIDR")
    return network


def _subnet_len(network: IPv4Network, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"SubnetLen must be a non-negative integer, not {value!r}")
    if value:
        if value > 30:
            raise ConfigError("SubnetLen must be less than /31")
        if value < network.prefixlen + 2:
            raise ConfigError("Network must be able to accommodate at least four subnets")
        return value
    if network.prefixlen > 28:
        raise ConfigError("Network is too small. Minimum useful network prefix is /28")
    return 24 if network.prefixlen <= 22 else network.prefixlen + 2


def _bound(doc: dict[str, Any], name: str, network: IPv4Network, subnet_len: int,
           default: IPv4Address) -> IPv4Address:
    value = doc.get(name)
    if not value:
        return default
    try:
        addr = IPv4Address(str(value))
    except ValueError as err:
        raise ConfigError(f"{name}: {err}") from None
    if addr not in network:
        raise ConfigError(f"{name} is not in the range of the Network")
    if int(addr) % (1 << (32 - subnet_len)):
        raise ConfigError(f"{name} is not on a SubnetLen boundary: {addr}")
    return addr


def _backend(value: Any) -> dict[str, Any]:
    if value is None:
        raise ConfigError('Backend is required, e.g. {"Type": "vxlan"} (upstream would silently use udp)')
    if not isinstance(value, dict):
        raise ConfigError("Backend must be a JSON object")
    kind = value.get("Type")
    if not isinstance(kind, str) or not kind:
        raise ConfigError('Backend.Type is required, e.g. "vxlan", "host-gw" or "udp"')
    return dict(value)
