"""Deterministic, prefixed, length-bounded names for everything podnet creates.

Linux interface names are limited to 15 bytes (IFNAMSIZ 16 with the NUL); iptables chain names
to 28.  Hashing the owner keys keeps names stable across restarts, so a crashed ADD can be
cleaned up by recomputing the name instead of searching by pattern.
"""

from __future__ import annotations

import base64
import hashlib

IFNAMSIZ = 15
CHAIN_MAX = 28


def _digest(*parts: str) -> bytes:
    return hashlib.sha256("\x00".join(parts).encode()).digest()


def hashed_hex(*parts: str, length: int) -> str:
    return _digest(*parts).hex()[:length]


def host_veth_name(container_id: str, ifname: str, prefix: str = "veth") -> str:
    """Host-side veth name for (container, ifname): prefix + hex hash, at most 15 bytes."""
    return prefix + hashed_hex(container_id, ifname, length=IFNAMSIZ - len(prefix))


def chain_name(prefix: str, *parts: str) -> str:
    """An iptables/nft chain name: prefix + base32 hash, at most 28 bytes."""
    room = CHAIN_MAX - len(prefix)
    return prefix + base64.b32encode(_digest(*parts)).decode()[:room]


def valid_ifname(name: str) -> bool:
    """The kernel's (and CNI skel's) interface name rule."""
    if not name or len(name.encode()) > IFNAMSIZ or name in (".", ".."):
        return False
    return not any(c in name for c in "/: \t\n\r\v\f")
