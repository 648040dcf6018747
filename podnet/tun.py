"""TUN devices through /dev/net/tun (stdlib only: os, fcntl, struct).

A TUN device is a layer-3 interface whose other end is a file descriptor: packets the kernel
routes to it are read from the fd, packets written to the fd enter the kernel as if received on
it.  flanneld's udp backend is built on one (`flannel0`): it reads each packet, looks up the
lease of the destination subnet and sends the packet to that host in a UDP datagram.

The device is not persistent: it exists while its fd is open, so a crashed daemon leaves nothing
behind.  It is created in the network namespace of the calling thread (TUNSETIFF uses the
namespace current at the ioctl), or of `netns` when given.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

from podnet import netns as netns_mod
from podnet.errors import AlreadyExists, NetlinkFailure

TUN_PATH = "/dev/net/tun"
TUNSETIFF = 0x400454CA  # _IOW('T', 202, int)
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000  # packets are bare IP: no 4-byte flags/protocol prefix
IFNAMSIZ = 16
_IFREQ = struct.Struct(f"={IFNAMSIZ}sH22x")  # struct ifreq: name, ifr_flags, rest of the union
MAX_PACKET = 65535


class TunDevice:
    """An open TUN device: `read()` one packet, `write()` one packet, `close()` removes it."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd, self.name = fd, name

    def fileno(self) -> int:
        return self.fd

    def read(self, size: int = MAX_PACKET) -> bytes:
        """One whole packet (a read never returns part of one, nor two)."""
        return os.read(self.fd, size)

    def write(self, packet: bytes) -> int:
        """Inject one whole IP packet into the kernel, as received on the device."""
        return os.write(self.fd, packet)

    def set_blocking(self, blocking: bool) -> None:
        os.set_blocking(self.fd, blocking)

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __enter__(self) -> TunDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TunDevice(name={self.name!r}, fd={self.fd})"


def open_tun(name: str, *, netns: str | None = None) -> TunDevice:
    """Create TUN device `name` (IFF_TUN | IFF_NO_PI; "tun%d" lets the kernel pick a number).

    The device starts down and without addresses: configure it through podnet.netlink.
    AlreadyExists when another open fd holds a device of that name.
    """
    if len(name.encode()) >= IFNAMSIZ:
        raise ValueError(f"interface name {name!r} is longer than {IFNAMSIZ - 1} bytes")
    with netns_mod.enter(netns):
        fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
        try:
            answer = fcntl.ioctl(fd, TUNSETIFF, _IFREQ.pack(name.encode(), IFF_TUN | IFF_NO_PI))
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EBUSY, errno.EEXIST):
                raise AlreadyExists(f"tun {name}: {exc.strerror}") from exc
            raise NetlinkFailure(f"create tun {name}", exc.errno or 0, exc.strerror or "") from exc
    actual = _IFREQ.unpack(answer)[0].split(b"\0", 1)[0].decode()
    return TunDevice(fd, actual)
