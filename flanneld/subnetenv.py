"""/run/flannel/subnet.env (FL pkg/subnet/subnet.go WriteSubnetFile): what the flannel CNI
plugin reads.  Written atomically (temp file in the same directory, fsync, rename) so a plugin
never reads half a file, and only once the dataplane is ready."""

from __future__ import annotations

import ipaddress
import os
import tempfile
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PATH = "/run/flannel/subnet.env"


@dataclass(frozen=True)
class SubnetEnv:
    network: ipaddress.IPv4Network
    subnet: ipaddress.IPv4Network  # the lease
    mtu: int
    ipmasq: bool

    def render(self) -> str:
        # FLANNEL_SUBNET is the first usable address with the lease's prefix (10.244.1.1/24):
        # the CNI plugin's bridge takes it as the gateway.
        first = self.subnet.network_address + 1
        return (f"FLANNEL_NETWORK={self.network}\n"
                f"FLANNEL_SUBNET={first}/{self.subnet.prefixlen}\n"
                f"FLANNEL_MTU={self.mtu}\n"
                f"FLANNEL_IPMASQ={'true' if self.ipmasq else 'false'}\n")


def write(path: str | os.PathLike[str], env: SubnetEnv) -> bool:
    """Write `env` atomically; False (and no write) when the file already says exactly that."""
    target = Path(path)
    text = env.render()
    try:
        if target.read_text() == text:
            return False
    except OSError:
        pass
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise
    return True


def read(path: str | os.PathLike[str]) -> dict[str, str]:
    """The KEY=VALUE pairs of a subnet.env ({} when there is none)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return {}
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            out[key] = value.strip()
    return out


def previous_subnet(path: str | os.PathLike[str]) -> ipaddress.IPv4Network | None:
    """The lease recorded by a previous run (FLANNEL_SUBNET's network), for re-acquiring the
    same subnet after a restart (upstream ReadCIDRFromSubnetFile); None when absent or garbled."""
    value = read(path).get("FLANNEL_SUBNET")
    if not value:
        return None
    try:
        iface = ipaddress.IPv4Interface(value)
    except ValueError:
        return None
    return iface.network
