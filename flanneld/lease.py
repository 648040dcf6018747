"""A subnet lease: which host (PublicIP) owns which subnet, and how to reach it (backend data).

The etcd layout is upstream's so a real flannel and ours read each other's keys
(flannel pkg/subnet/subnet.go MakeSubnetKey, pkg/lease/lease.go LeaseAttrs):
key `<prefix>/subnets/10.5.52.0-24`, value
`{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,...}}`.
BackendType/BackendData are omitted when empty (Go `omitempty`; host-gw has no data). A dual-stack
key `10.5.52.0-24&fc00::-64` is read for its IPv4 half.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from typing import Any

__all__ = ["DEFAULT_PREFIX", "Lease", "LeaseAttrs", "decode_attrs", "encode_attrs", "parse_subnet_key",
           "subnet_key"]

DEFAULT_PREFIX = "/coreos.com/network"  # upstream --etcd-prefix default

_KEY_RE = re.compile(r"(\d+\.\d+\.\d+\.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?$")


@dataclass(frozen=True)
class LeaseAttrs:
    public_ip: str
    backend_type: str = ""
    backend_data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Lease:
    subnet: IPv4Network
    public_ip: str
    backend_type: str
    backend_data: dict[str, Any]
    # Wall-clock (time.time) expiry; None = never expires (an etcd reservation, or kube mode).
    expiration: float | None = None

    @property
    def attrs(self) -> LeaseAttrs:
        return LeaseAttrs(self.public_ip, self.backend_type, dict(self.backend_data))


def subnet_key(prefix: str, subnet: IPv4Network) -> str:
    return f"{prefix.rstrip('/')}/subnets/{subnet.network_address}-{subnet.prefixlen}"


def parse_subnet_key(key: str) -> IPv4Network | None:
    """The IPv4 subnet a `.../subnets/<ip>-<len>` key names; None for anything else."""
    match = _KEY_RE.search(key.rsplit("/", 1)[-1])
    if match is None:
        return None
    try:
        return IPv4Network(f"{match.group(1)}/{match.group(2)}")
    except ValueError:  # host bits set or bad length: not a key flannel wrote
        return None


def encode_attrs(attrs: LeaseAttrs) -> bytes:
    doc: dict[str, Any] = {"PublicIP": attrs.public_ip, "PublicIPv6": None}
    if attrs.backend_type:
        doc["BackendType"] = attrs.backend_type
    if attrs.backend_data:
        doc["BackendData"] = attrs.backend_data
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_attrs(raw: bytes) -> LeaseAttrs:
    """LeaseAttrs from a key's value; ValueError when it is not a lease flannel could read."""
    doc = json.loads(raw)
    if not isinstance(doc, dict):
        raise ValueError("lease value is not a JSON object")
    public_ip = str(ipaddress.IPv4Address(str(doc.get("PublicIP") or "")))
    data = doc.get("BackendData")
    return LeaseAttrs(public_ip, str(doc.get("BackendType") or ""), data if isinstance(data, dict) else {})
