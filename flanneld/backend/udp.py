"""The udp backend: a TUN device and user-space encapsulation on UDP/8285 (FL pkg/backend/udp).

Upstream's "debugging only" backend, with the proxy in C.  Here two threads move packets: an IP
packet read from flannel0 is looked up by destination in the subnet -> PublicIP table and sent
as the payload of a UDP datagram to PublicIP:8285; a datagram received on :8285 is written back
into flannel0.  The kernel routes the whole flannel Network into flannel0 and our own subnet to
the local bridge (the longer prefix), so only cross-host traffic reaches the proxy.  Unlike the
C proxy the TTL is not decremented here: each host's kernel already counts the hop when it
forwards into and out of flannel0.
"""

from __future__ import annotations

import ipaddress
import os
import select
import socket
import struct
import threading
from collections.abc import Callable, Mapping
from typing import Any

from flanneld.backend.base import (
    LOG,
    Applied,
    Desired,
    Iface,
    LeaseLike,
    NetlinkSeam,
    RouteSpec,
    apply_desired,
    remote_leases,
)

DEFAULT_PORT = 8285
DEVICE = "flannel0"
UDP_OVERHEAD = 28  # outer IPv4 20 + UDP 8 (the inner packet is carried without an L2 header)


class UdpBackend:
    type_name = "udp"

    def __init__(self, config: Mapping[str, Any], network: ipaddress.IPv4Network) -> None:
        self.port = int(config.get("Port") or DEFAULT_PORT)
        self.network = network
        self.proxy: UdpProxy | None = None

    def mtu(self, iface: Iface) -> int:
        return iface.mtu - UDP_OVERHEAD

    def restore(self, backend_data: Mapping[str, Any]) -> None:
        """udp leases carry no BackendData."""

    def prepare(self, nl: NetlinkSeam, own_ip: str, iface: Iface) -> dict[str, Any]:
        """Open flannel0 and start the proxy once; later calls only re-assert MTU and up."""
        if self.proxy is None:
            from podnet.tun import open_tun  # not needed by the other backends

            tun = open_tun(DEVICE)
            self.proxy = UdpProxy(tun.fd, own_ip, self.port)
            self._tun = tun
            self.proxy.start()
        link = nl.get_link(DEVICE)
        if link is not None and link.mtu != self.mtu(iface):
            nl.set_link(DEVICE, mtu=self.mtu(iface))
        if link is None or not link.up:
            nl.set_up(DEVICE)
        return {}

    def desired(self, own: LeaseLike, leases: Mapping[ipaddress.IPv4Network, LeaseLike]) -> Desired:
        return udp_desired(self.network, own, leases)

    def apply(self, nl: NetlinkSeam, desired: Desired) -> Applied:
        if self.proxy is not None:
            self.proxy.set_peers(desired.tunnels, self.port)
            # Not flannel0's own address: the kernel drops a packet arriving with a local source.
            # The Network's first address is no host's (SubnetMin skips the first subnet) and
            # routes back through flannel0, so strict rp_filter accepts it too.
            self.proxy.icmp_source = str(self.network.network_address)
        return apply_desired(nl, desired)

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
            self._tun.close()
            self.proxy = None


def udp_desired(network: ipaddress.IPv4Network, own: LeaseLike,
                leases: Mapping[ipaddress.IPv4Network, LeaseLike]) -> Desired:
    """Pure: the Network routed into flannel0, our subnet address on it, and the proxy's table."""
    tunnels = {str(lease.subnet): lease.public_ip for lease in remote_leases(own, leases, "udp")}
    return Desired(routes=frozenset({RouteSpec(str(network), None, DEVICE)}),
                   addresses={DEVICE: f"{own.subnet.network_address}/32"}, tunnels=tunnels)


class UdpProxy:
    """The packet mover (a thread per direction).  The peer table is swapped whole, so the
    threads read it without a lock."""

    def __init__(self, tun_fd: int, bind_ip: str, port: int) -> None:
        self.tun_fd = tun_fd
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):  # absorb bursts (capped by *mem_max)
            self.sock.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
        self.sock.bind((bind_ip, port))
        self.sock.setblocking(False)
        os.set_blocking(tun_fd, False)
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stopped = False
        # [(prefix mask, {network int: (PublicIP, port)})], longest prefix first.
        self._table: list[tuple[int, dict[int, tuple[str, int]]]] = []
        self._threads = [
            threading.Thread(target=self._pump, args=(tun_fd, self._from_tun), name="udp-proxy-tx",
                             daemon=True),
            threading.Thread(target=self._pump, args=(self.sock.fileno(), self._from_udp),
                             name="udp-proxy-rx", daemon=True),
        ]
        self.sent = self.received = self.dropped = 0
        self.icmp_source = ""  # the source address of our ICMP errors ("" = send none)

    def set_peers(self, tunnels: Mapping[str, str], port: int) -> None:
        by_len: dict[int, dict[int, tuple[str, int]]] = {}
        for cidr, public_ip in tunnels.items():
            net = ipaddress.IPv4Network(cidr)
            by_len.setdefault(net.prefixlen, {})[int(net.network_address)] = (public_ip, port)
        self._table = [((0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF, nets)
                       for plen, nets in sorted(by_len.items(), reverse=True)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stopped = True
        os.write(self._wake_w, b"x")
        for thread in self._threads:
            thread.join(timeout=5)
        self.sock.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _lookup(self, packet: bytes) -> tuple[str, int] | None:
        if len(packet) < 20 or packet[0] >> 4 != 4:
            return None
        dst = int.from_bytes(packet[16:20], "big")
        for mask, nets in self._table:
            peer = nets.get(dst & mask)
            if peer is not None:
                return peer
        return None

    def _pump(self, fd: int, move: Callable[[], bool]) -> None:
        """Move packets while `fd` has them (`move` False = drained), then sleep in select until
        it is readable again or stop() pokes the wake pipe.  One thread per direction: the
        blocking syscalls release the GIL, so both directions progress on two cores."""
        fds = [fd, self._wake_r]
        while not self._stopped:
            try:
                while move():
                    pass
                select.select(fds, [], [])
            except OSError as exc:  # a bad peer address or a vanished TUN must not kill the thread
                LOG.warning("udp proxy: %s", exc)

    def _from_tun(self) -> bool:
        try:
            packet = os.read(self.tun_fd, 65535)
        except BlockingIOError:
            return False
        peer = self._lookup(packet)
        if peer is None:
            self.dropped += 1
            error = net_unreachable(packet, self.icmp_source) if self.icmp_source else None
            if error is not None:  # as upstream's proxy: the sender fails at once, not by timeout
                os.write(self.tun_fd, error)
            return True
        try:
            self.sock.sendto(packet, peer)
            self.sent += 1
        except OSError:  # EAGAIN (send buffer full) or an unreachable peer: UDP may drop
            self.dropped += 1
        return True

    def _from_udp(self) -> bool:
        try:
            packet = self.sock.recv(65535)
        except BlockingIOError:
            return False
        try:
            os.write(self.tun_fd, packet)
            self.received += 1
        except OSError:
            self.dropped += 1
        return True


def _checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def net_unreachable(packet: bytes, source: str) -> bytes | None:
    """ICMP destination unreachable / net unreachable (type 3 code 0) for an IPv4 `packet`, from
    `source`, quoting its header + 8 bytes; None where RFC 1122 3.2.2 forbids an error: for an
    ICMP error, a non-first fragment, or a packet too short to be IPv4."""
    if len(packet) < 20 or packet[0] >> 4 != 4:
        return None
    ihl = (packet[0] & 0x0F) * 4
    if int.from_bytes(packet[6:8], "big") & 0x1FFF:  # fragment offset: not the first fragment
        return None
    if packet[9] == 1 and len(packet) > ihl and packet[ihl] not in (0, 8):  # an ICMP error itself
        return None
    quoted = packet[:ihl + 8]
    icmp = bytearray(b"\x03\x00\x00\x00\x00\x00\x00\x00" + quoted)
    icmp[2:4] = _checksum(bytes(icmp)).to_bytes(2, "big")
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 0, 0, 64, 1, 0,
                                   socket.inet_aton(source), packet[12:16]))
    header[10:12] = _checksum(bytes(header)).to_bytes(2, "big")
    return bytes(header) + bytes(icmp)
