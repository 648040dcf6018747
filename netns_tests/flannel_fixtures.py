"""Simulated flannel clusters: etcd in the fabric namespace, hosts with pod bridges, and the
hand-configured dataplanes (plain routes, kernel vxlan) that flanneld's backends are compared with.

Shared by the netns tests and bench/flannel_dataplane.py.  Everything lives in namespaces owned by
a `Topology` (cleanup registered before creation); daemons are spawned in host namespaces and
killed by their recorded PID.  The hand-configured vxlan uses the exact kernel objects upstream
flannel programs (device `flannel.<VNI>`, remote subnet IP as /32 address, permanent neighbour +
FDB entry + onlink route per peer, ../shared/reference/flannel_calico.md A4), set up with iproute2
rather than through podnet so it stays an independent baseline.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from podnet.testing.etcd import EtcdProcess
from podnet.testing.harness import FABRIC_NET, Host, Pod, Topology
from podnet.testing.wait import wait_until

REPO = Path(__file__).resolve().parent.parent
ETCD_IP = f"{FABRIC_NET}.1"  # the fabric bridge: every simulated host reaches it on eth0
PREFIX = "/coreos.com/network"
VXLAN_OVERHEAD = 50  # outer IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14 (upstream MTU - 50)
UNDERLAY_MTU = 1500


def pod_subnet(index: int) -> ipaddress.IPv4Network:
    """The /24 a hand-configured host `index` (1-based) uses, inside 10.244.0.0/16 like flannel."""
    return ipaddress.IPv4Network(f"10.244.{index}.0/24")


def gateway_of(subnet: ipaddress.IPv4Network) -> str:
    return str(subnet.network_address + 1)


def vtep_mac(index: int) -> str:
    """A stable locally administered MAC per host (flannel persists a random one in its lease)."""
    return f"0e:00:00:00:00:{index:02x}"


# ------------------------------------------------------------------ hand-configured baselines


def configure_routed(hosts: list[Host], subnets: list[ipaddress.IPv4Network]) -> None:
    """Baseline (a): plain routes, each remote pod subnet via that host's eth0 address (what
    host-gw programs; no encapsulation)."""
    for host, own in zip(hosts, subnets, strict=True):
        for peer, subnet in zip(hosts, subnets, strict=True):
            if subnet != own:
                host.run("ip", "route", "replace", str(subnet), "via", peer.ip, "dev", "eth0")


def configure_vxlan(hosts: list[Host], subnets: list[ipaddress.IPv4Network], *, vni: int = 1,
                    port: int = 8472) -> None:
    """Baseline (b): a kernel vxlan set up by hand with upstream flannel's layout."""
    dev = f"flannel.{vni}"
    for index, (host, own) in enumerate(zip(hosts, subnets, strict=True), start=1):
        host.run("ip", "link", "add", dev, "address", vtep_mac(index), "mtu",
                 str(UNDERLAY_MTU - VXLAN_OVERHEAD), "type", "vxlan", "id", str(vni), "local",
                 host.ip, "dev", "eth0", "dstport", str(port), "nolearning")
        host.run("ip", "addr", "add", f"{own.network_address}/32", "dev", dev)
        host.run("ip", "link", "set", dev, "up")
    for host, own in zip(hosts, subnets, strict=True):
        for peer_index, (peer, subnet) in enumerate(zip(hosts, subnets, strict=True), start=1):
            if subnet == own:
                continue
            mac, via = vtep_mac(peer_index), str(subnet.network_address)
            # ARP, then FDB, then the route last (otherwise the kernel would ARP for `via`).
            host.run("ip", "neigh", "replace", via, "lladdr", mac, "dev", dev, "nud", "permanent")
            host.run("bridge", "fdb", "replace", mac, "dev", dev, "dst", peer.ip, "self",
                     "permanent")
            host.run("ip", "route", "replace", str(subnet), "via", via, "dev", dev, "onlink")


# -------------------------------------------------------------------------- flannel clusters


@dataclass
class FlannelHost:
    host: Host
    subnet_file: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    pods: list[Pod] = field(default_factory=list)

    def subnet_env(self) -> dict[str, str]:
        """subnet.env as a dict ({} until flanneld wrote it)."""
        try:
            text = self.subnet_file.read_text()
        except FileNotFoundError:
            return {}
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    def subnet(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet_env()["FLANNEL_SUBNET"], strict=False)

    def routes(self) -> str:
        return self.host.run("ip", "-4", "route", "show").stdout


@dataclass
class FlannelCluster:
    """Hosts on one fabric, etcd in the fabric namespace at 10.250.0.1:2379."""

    topo: Topology
    workdir: Path
    etcd: EtcdProcess | None = None
    hosts: list[FlannelHost] = field(default_factory=list)

    def start_etcd(self) -> EtcdProcess:
        fabric = self.topo.ensure_fabric()
        self.etcd = EtcdProcess(str(self.workdir / "etcd"), netns=fabric, host=ETCD_IP)
        return self.etcd.start()

    def write_config(self, backend: dict[str, object], network: str = "10.244.0.0/16",
                     **extra: object) -> None:
        assert self.etcd is not None
        self.etcd.kv().put(f"{PREFIX}/config",
                           json.dumps({"Network": network, "Backend": backend, **extra}))

    def add_host(self) -> FlannelHost:
        host = self.topo.add_host()
        d = self.workdir / host.name
        d.mkdir(parents=True, exist_ok=True)
        fh = FlannelHost(host=host, subnet_file=d / "subnet.env", log=d / "flanneld.log")
        self.hosts.append(fh)
        return fh

    def command(self, fh: FlannelHost, *extra: str) -> list[str]:
        """etcd mode when this cluster runs etcd; otherwise `extra` carries --kube-subnet-mgr."""
        etcd = ["--etcd-endpoints", self.etcd.endpoint, "--etcd-prefix", PREFIX] if self.etcd else []
        return [sys.executable, "-m", "flanneld", *etcd, "--iface", "eth0", "--subnet-file",
                str(fh.subnet_file), *extra]

    def start_flanneld(self, fh: FlannelHost, *extra: str, wait: bool = True) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        fh.proc = self.topo.spawn_on(fh.host, self.command(fh, *extra), log_path=str(fh.log),
                                     env=env)
        if wait:
            self.wait_ready(fh)

    def wait_ready(self, fh: FlannelHost, timeout: float = 20.0) -> None:
        def ready() -> bool:
            if fh.proc is not None and fh.proc.poll() is not None:
                raise AssertionError(f"flanneld exited {fh.proc.returncode}:\n{self.log_tail(fh)}")
            return "FLANNEL_SUBNET" in fh.subnet_env()
        wait_until(ready, timeout, f"subnet.env on {fh.host.name}")

    def kill_flanneld(self, fh: FlannelHost) -> None:
        if fh.proc is not None:
            self.topo.kill(fh.proc)
            fh.proc = None

    def add_pod(self, fh: FlannelHost, number: int = 0) -> Pod:
        """A pod on the host's cni0 with an address from its FLANNEL_SUBNET and FLANNEL_MTU (what
        the flannel CNI plugin's bridge delegate sets up)."""
        env, subnet = fh.subnet_env(), fh.subnet()
        pod = self.topo.add_pod(fh.host, f"{fh.host.name[-2:]}p{number}",
                                str(subnet.network_address + 10 + number), gateway_of(subnet),
                                prefixlen=subnet.prefixlen, mtu=int(env["FLANNEL_MTU"]))
        pod.run("ip", "link", "set", "eth0", "mtu", env["FLANNEL_MTU"])
        fh.pods.append(pod)
        return pod

    def log_tail(self, fh: FlannelHost) -> str:
        try:
            return fh.log.read_text(errors="replace")[-3000:]
        except OSError:
            return "(no log)"


def ping_loss(output: str) -> float:
    """Packet loss percentage from ping's summary line."""
    match = re.search(r"([\d.]+)% packet loss", output)
    return float(match.group(1)) if match else 100.0


# ------------------------------------------------------------------------- traffic helpers

ECHO_PORT = 7000
# Answers every TCP connection / UDP datagram on ECHO_PORT with "<peer ip> <bytes received>", so
# a test sees both that the payload arrived whole and which source address it came from (NAT).
ECHO_SERVER = f"""
import socket, threading
def tcp():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", {ECHO_PORT})); s.listen(16)
    while True:
        c, peer = s.accept()
        want = int(c.recv(16).split(b":")[0]); got = 0
        while got < want:
            chunk = c.recv(65536)
            if not chunk: break
            got += len(chunk)
        c.sendall(f"{{peer[0]}} {{got}}".encode()); c.close()
def udp():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", {ECHO_PORT}))
    while True:
        data, peer = u.recvfrom(65536)
        u.sendto(f"{{peer[0]}} {{len(data)}}".encode(), peer)
threading.Thread(target=udp, daemon=True).start()
tcp()
"""

TCP_CLIENT = """
import socket, sys
ip, size = sys.argv[1], int(sys.argv[2])
c = socket.create_connection((ip, {port}), timeout=5)
c.sendall(f"{{size}}:".ljust(16).encode()); c.sendall(b"x" * size)
print(c.recv(100).decode())
"""

# DF set (IP_PMTUDISC_DO): an MTU-sized datagram that does not fit fails instead of fragmenting.
UDP_CLIENT = """
import socket, sys
ip, size = sys.argv[1], int(sys.argv[2])
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(2)
u.setsockopt(socket.IPPROTO_IP, 10, 2)
for _ in range(5):
    u.sendto(b"y" * size, (ip, {port}))
    try:
        print(u.recvfrom(100)[0].decode()); break
    except TimeoutError:
        pass
"""


def start_echo(topo: Topology, where: str) -> subprocess.Popen[bytes]:
    """The echo server in namespace `where` (a pod or host netns name); PID recorded."""
    return topo.spawn(where, [sys.executable, "-c", ECHO_SERVER], stdin=subprocess.DEVNULL,
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def echo(client: Pod | Host, ip: str, size: int, proto: str) -> tuple[str, int]:
    """(source address the server saw, bytes it received) for one TCP stream / UDP datagram."""
    script = (TCP_CLIENT if proto == "tcp" else UDP_CLIENT).format(port=ECHO_PORT)
    out = ""
    for _ in range(40):  # the server may still be starting
        proc = client.run(sys.executable, "-c", script, ip, str(size), check=False, timeout=15)
        out = proc.stdout.strip()
        if proc.returncode == 0 and out:
            peer, got = out.split()
            return peer, int(got)
        time.sleep(0.05)
    raise AssertionError(f"{proto} echo {ip} size {size}: {out or proc.stderr[-500:]}")


def link_mac(where: Host, dev: str) -> str:
    """A device's MAC inside a host (not /sys/class/net: sysfs shows the mounter's namespace)."""
    return str(json.loads(where.run("ip", "-j", "link", "show", dev).stdout)[0]["address"])
