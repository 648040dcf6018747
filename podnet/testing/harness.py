"""Simulated hosts for tests: a fabric namespace holding a bridge, hosts hanging off it, pods.

Safety rules (DEVELOPERS.md): every name carries a per-run prefix; cleanup is registered before
anything is created; only namespaces this object created are deleted, and only processes it
started are killed (by their recorded PID).  Nothing is created in the root namespace: the
fabric-side veth ends are created inside the fabric namespace itself.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import uuid
from dataclasses import dataclass, field

from podnet import execs, netns

FABRIC_NET = "10.250.0"  # inside the fabric netns only; the fabric bridge is .1


def run_prefix() -> str:
    """Short unique prefix (netns names are free-form, but link names derived from it must fit 15)."""
    return f"t{os.getpid() % 100000}{uuid.uuid4().hex[:4]}"


@dataclass
class Host:
    name: str  # netns name
    ip: str  # address on eth0, without prefix
    path: str

    def run(self, *argv: str, check: bool = True, input: str | None = None,
            timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return execs.run(list(argv), netns=self.name, check=check, input=input, timeout=timeout)


@dataclass
class Pod:
    """A pod namespace on a simulated host: eth0 holds `ip`, default route via the host side."""

    name: str  # netns name
    path: str
    ip: str
    host: Host

    def run(self, *argv: str, check: bool = True, input: str | None = None,
            timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return execs.run(list(argv), netns=self.name, check=check, input=input, timeout=timeout)


@dataclass
class Topology:
    prefix: str = field(default_factory=run_prefix)
    namespaces: list[str] = field(default_factory=list)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    listeners: list[socket.socket] = field(default_factory=list)
    fabric: str | None = None
    hosts: list[Host] = field(default_factory=list)

    # ------------------------------------------------------------------ build
    def new_netns(self, suffix: str) -> str:
        """Create a namespace `<prefix>-<suffix>`; recorded before creation so cleanup sees it."""
        name = f"{self.prefix}-{suffix}"
        self.namespaces.append(name)
        netns.create(name)
        return name

    def ensure_fabric(self) -> str:
        if self.fabric is None:
            self.fabric = self.new_netns("fab")
            execs.run(["ip", "-n", self.fabric, "link", "add", "br0", "type", "bridge"])
            execs.run(["ip", "-n", self.fabric, "addr", "add", f"{FABRIC_NET}.1/24", "dev", "br0"])
            execs.run(["ip", "-n", self.fabric, "link", "set", "br0", "up"])
        return self.fabric

    def add_host(self) -> Host:
        """A simulated host: its own netns with eth0 on the fabric bridge and a default route."""
        fabric = self.ensure_fabric()
        idx = len(self.hosts) + 1
        name = self.new_netns(f"h{idx}")
        ip = f"{FABRIC_NET}.{10 + idx}"
        execs.run(["ip", "-n", fabric, "link", "add", f"h{idx}", "type", "veth",
                   "peer", "name", "eth0", "netns", name])
        execs.run(["ip", "-n", fabric, "link", "set", f"h{idx}", "master", "br0", "up"])
        execs.run(["ip", "-n", name, "addr", "add", f"{ip}/24", "dev", "eth0"])
        execs.run(["ip", "-n", name, "link", "set", "eth0", "up"])
        execs.run(["ip", "-n", name, "route", "add", "default", "via", f"{FABRIC_NET}.1"])
        host = Host(name=name, ip=ip, path=netns.path_of(name))
        self.hosts.append(host)
        return host

    def add_pod_netns(self, suffix: str) -> str:
        """An empty namespace for a pod (only `lo`, up); returns its path."""
        return netns.path_of(self.new_netns(suffix))

    def add_pod(self, host: Host, suffix: str, ip: str, gateway: str, *, prefixlen: int = 24,
                bridge: str = "cni0", mtu: int | None = None) -> Pod:
        """A pod wired as the bridge CNI plugin would: veth from the pod's eth0 to `bridge` in the
        host namespace (created with `gateway/prefixlen` if absent), default route via `gateway`.

        The host-side name is derived from `suffix` (max 12 chars), so it is unique per host.
        """
        name = self.new_netns(suffix)
        self.ensure_bridge(host, bridge, gateway, prefixlen)
        peer = f"v{suffix[-12:]}"
        mtu_args = ["mtu", str(mtu)] if mtu else []
        execs.run(["ip", "-n", host.name, "link", "add", peer, *mtu_args, "type", "veth",
                   "peer", "name", "eth0", "netns", name])
        execs.run(["ip", "-n", host.name, "link", "set", peer, "master", bridge, "up"])
        execs.run(["ip", "-n", name, "addr", "add", f"{ip}/{prefixlen}", "dev", "eth0"])
        execs.run(["ip", "-n", name, "link", "set", "eth0", "up"])
        execs.run(["ip", "-n", name, "route", "add", "default", "via", gateway])
        return Pod(name=name, path=netns.path_of(name), ip=ip, host=host)

    def ensure_bridge(self, host: Host, bridge: str, gateway: str, prefixlen: int) -> None:
        """The pod bridge in `host` (idempotent), with forwarding on as a node needs it."""
        if host.run("ip", "link", "show", bridge, check=False).returncode != 0:
            host.run("ip", "link", "add", bridge, "type", "bridge")
            host.run("ip", "addr", "add", f"{gateway}/{prefixlen}", "dev", bridge)
            host.run("ip", "link", "set", bridge, "up")
        host.run("sysctl", "-qw", "net.ipv4.ip_forward=1")

    def spawn_on(self, host: Host, argv: list[str], *, log_path: str | None = None,
                 env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """A daemon inside `host`'s namespace, output appended to `log_path`; PID recorded."""
        if log_path is None:
            return self.spawn(host.name, argv, stdin=subprocess.DEVNULL, env=env)
        with open(log_path, "ab") as log:
            return self.spawn(host.name, argv, stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, env=env)

    def kill(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        """Signal one process this topology started (by its recorded PID) and reap it."""
        if proc not in self.procs:
            raise ValueError(f"pid {proc.pid} was not started by this topology")
        if proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(timeout=10)

    def signal(self, proc: subprocess.Popen[bytes], sig: int) -> None:
        """Send a non-fatal signal (SIGSTOP/SIGCONT/SIGTERM) to one of our processes; no wait."""
        if proc not in self.procs:
            raise ValueError(f"pid {proc.pid} was not started by this topology")
        if proc.poll() is None:
            proc.send_signal(sig)

    def spawn(self, where: str | None, argv: list[str], **kwargs: object) -> subprocess.Popen[bytes]:
        """Start a process inside namespace `where`; its PID is recorded for cleanup."""
        full = ["nsenter", f"--net={netns.path_of(where)}", "--", *argv] if where else argv
        proc = subprocess.Popen(full, **kwargs)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def forward_loopback(self, host: Host, port: int) -> None:
        """Make 127.0.0.1:`port` inside `host` reach 127.0.0.1:`port` of the test's own namespace.

        For a server only the test namespace has (the API server): a host-netns daemon connects
        to the very URL its kubeconfig names, and TLS stays end to end (the certificate's
        127.0.0.1 SAN matches).  The listening socket is created inside `host` (setns on this
        thread), the outgoing ones in the test's namespace; plain byte relaying, no parsing.
        """
        with netns.enter(host.name):
            listener = socket.create_server(("127.0.0.1", port))
        self.listeners.append(listener)
        threading.Thread(target=self._accept_loop, args=(listener, port), daemon=True).start()

    def _accept_loop(self, listener: socket.socket, port: int) -> None:
        while True:
            try:
                inner, _ = listener.accept()
            except OSError:
                return  # closed at cleanup
            try:
                outer = socket.create_connection(("127.0.0.1", port), timeout=5)
            except OSError:
                inner.close()
                continue
            outer.settimeout(None)
            for src, dst in ((inner, outer), (outer, inner)):
                threading.Thread(target=_relay, args=(src, dst), daemon=True).start()

    # ---------------------------------------------------------------- cleanup
    def cleanup(self) -> None:
        for listener in self.listeners:
            listener.close()
        self.listeners.clear()
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=5)
        for name in reversed(self.namespaces):
            netns.delete(name)
        self.namespaces.clear()


def _relay(src: socket.socket, dst: socket.socket) -> None:
    """Copy src -> dst until EOF/error, then half-close dst (the other direction may continue)."""
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)
