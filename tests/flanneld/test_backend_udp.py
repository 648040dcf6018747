import ipaddress
import socket
import struct

import pytest

from flanneld.backend.base import Iface, RouteSpec
from flanneld.backend.udp import UdpBackend, UdpProxy, _checksum, net_unreachable, udp_desired
from podnet.testing.wait import wait_until
from tests.flanneld.fake_dataplane import lease

NET = ipaddress.IPv4Network("10.244.0.0/16")
OWN = lease("10.244.1.0/24", "127.0.0.1", "udp")


def test_desired_routes_the_network_into_the_tun_and_tables_peers():
    peers = [lease("10.244.2.0/24", "10.250.0.3", "udp"), lease("10.244.3.0/24", "10.250.0.4", "vxlan")]
    d = udp_desired(NET, OWN, {x.subnet: x for x in [OWN, *peers]})
    assert d.routes == {RouteSpec("10.244.0.0/16", None, "flannel0")}
    assert d.addresses == {"flannel0": "10.244.1.0/32"}
    assert d.tunnels == {"10.244.2.0/24": "10.250.0.3"}


def test_mtu_is_underlay_minus_28():
    assert UdpBackend({}, NET).mtu(Iface("eth0", "10.250.0.2", 1500)) == 1472
    assert UdpBackend({"Port": 9999}, NET).port == 9999


def ip_packet(src: str, dst: str, payload: bytes) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, 17, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    return header + payload


@pytest.fixture
def pair():
    """Two proxies on loopback; each 'TUN' is a datagram socketpair (packet boundaries kept)."""
    made = []
    for _ in range(2):
        tun_host, tun_proxy = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        proxy = UdpProxy(tun_proxy.fileno(), "127.0.0.1", 0)
        proxy.start()
        made.append((proxy, tun_host, tun_proxy))
    yield made
    for proxy, tun_host, tun_proxy in made:
        proxy.stop()
        tun_host.close()
        tun_proxy.close()


def test_packets_cross_between_proxies_by_destination_subnet(pair):
    (a, a_tun, _), (b, b_tun, _) = pair
    a.set_peers({"10.244.2.0/24": "127.0.0.1"}, b.sock.getsockname()[1])
    b.set_peers({"10.244.1.0/24": "127.0.0.1"}, a.sock.getsockname()[1])
    out = ip_packet("10.244.1.5", "10.244.2.7", b"hello" * 100)
    a_tun.send(out)
    b_tun.settimeout(5)
    assert b_tun.recv(65535) == out
    back = ip_packet("10.244.2.7", "10.244.1.5", b"pong")
    b_tun.send(back)
    a_tun.settimeout(5)
    assert a_tun.recv(65535) == back
    # The counters move just after the send/write the other side already saw.
    wait_until(lambda: (a.sent, a.received, b.sent, b.received) == (1, 1, 1, 1), timeout=5)


def test_unknown_destination_and_garbage_are_dropped(pair):
    (a, a_tun, _), _ = pair
    a.set_peers({"10.244.2.0/24": "127.0.0.1"}, 9)
    a_tun.send(ip_packet("10.244.1.5", "10.244.77.1", b"x"))
    a_tun.send(b"\x60" + b"\x00" * 39)  # IPv6: not ours
    wait_until(lambda: a.dropped == 2, timeout=5)


def test_longest_prefix_wins():
    proxy = UdpProxy.__new__(UdpProxy)
    UdpProxy.set_peers(proxy, {"10.244.0.0/16": "1.1.1.1", "10.244.2.0/24": "2.2.2.2"}, 8285)
    assert proxy._lookup(ip_packet("10.244.1.5", "10.244.2.9", b"")) == ("2.2.2.2", 8285)
    assert proxy._lookup(ip_packet("10.244.1.5", "10.244.3.9", b"")) == ("1.1.1.1", 8285)


def test_no_lease_answers_icmp_net_unreachable_into_the_tun(pair):
    (a, a_tun, _), _ = pair
    a.icmp_source = "10.244.0.0"
    a.set_peers({}, 9)
    sent = ip_packet("10.244.1.5", "10.244.77.1", b"12345678rest")
    a_tun.send(sent)
    a_tun.settimeout(5)
    error = a_tun.recv(65535)
    assert error[9] == 1 and error[12:16] == socket.inet_aton("10.244.0.0")
    assert error[16:20] == socket.inet_aton("10.244.1.5")
    assert error[20:22] == b"\x03\x00" and error[28:] == sent[:28]
    assert _checksum(error[:20]) == 0 and _checksum(error[20:]) == 0


def test_no_icmp_error_about_an_icmp_error_or_a_fragment():
    icmp_error = ip_packet("10.244.1.5", "10.244.77.1", b"\x03\x01" + b"\x00" * 6)
    icmp_error = icmp_error[:9] + b"\x01" + icmp_error[10:]
    assert net_unreachable(icmp_error, "10.244.1.0") is None
    fragment = bytearray(ip_packet("10.244.1.5", "10.244.77.1", b"x" * 8))
    fragment[6:8] = (185).to_bytes(2, "big")
    assert net_unreachable(bytes(fragment), "10.244.1.0") is None
    ping = ip_packet("10.244.1.5", "10.244.77.1", b"\x08\x00" + b"\x00" * 6)
    ping = ping[:9] + b"\x01" + ping[10:]
    assert net_unreachable(ping, "10.244.1.0") is not None
