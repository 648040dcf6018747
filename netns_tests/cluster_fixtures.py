"""A whole cluster from the harness: etcd and the API server in the fabric namespace, the scheduler
and controller manager in the test's namespace, and N simulated node hosts each running a kubelet
and flanneld (kube mode) with the flannel CNI conflist a node install writes.

Shared by netns_tests/test_cluster_e2e.py and bench/pod_startup.py.  Why the API server lives in
the fabric namespace: `kubectl logs` is proxied by the API server to the node's kubelet at its
InternalIP (10.250.0.x), which only the fabric and the hosts can reach; the test's own namespace is
never given a route or link (house rule).  The test process and kubectl reach the server through a
loopback relay (`reverse_forward`), the hosts through Topology.forward_loopback onto that relay, so
one kubeconfig (https://127.0.0.1:<port>, the certificate's SAN) serves everybody.

Every process is recorded by PID (Topology.spawn, ApiServerProcess, component_process) and only
those PIDs are signalled; every namespace carries the topology's per-run prefix.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netns_tests.apiserver_fixtures import (
    ApiServerProcess,
    component_command,
    component_process,
    kubectl_binary,
)
from netns_tests.flannel_fixtures import FlannelCluster, FlannelHost
from podnet import netns
from podnet.api.client import NODES, PODS, REPLICATIONCONTROLLERS, Client
from podnet.api.kubeconfig import load_kubeconfig
from podnet.testing.etcd import EtcdProcess
from podnet.testing.harness import Topology, _relay
from podnet.testing.wait import wait_until

REPO = Path(__file__).resolve().parent.parent
CLUSTER_CIDR = "10.244.0.0/16"
KUBELET_PORT = 10250
KUBECTL_MINOR = 33
# Short periods so a dead node is noticed in seconds (upstream defaults: 40 s grace, 5 s period,
# 300 s default toleration of not-ready/unreachable).
CONTROLLERS = "replicationcontroller,nodelifecycle,nodeipam,endpoint"
CM_FLAGS = ["--leader-elect=false", f"--controllers={CONTROLLERS}", "--allocate-node-cidrs",
            f"--cluster-cidr={CLUSTER_CIDR}", "--node-cidr-mask-size=24",
            "--node-monitor-grace-period=4s", "--node-monitor-period=500ms",
            "--pod-eviction-timeout=1s", "--resync-period=10s"]


class FabricApiServer(ApiServerProcess):
    """podnet-apiserver inside the fabric namespace (nsenter execs it, so the recorded PID is the
    server's own); listening on every address there, so kubelets' InternalIPs are one hop away."""

    def __init__(self, etcd: EtcdProcess, base_dir: Path, fabric: str) -> None:
        super().__init__(etcd, base_dir)
        self.fabric = fabric

    def argv(self) -> list[str]:
        inner = [a if a != "--bind-address=127.0.0.1" else "--bind-address=0.0.0.0"
                 for a in super().argv()]
        return ["nsenter", f"--net={netns.path_of(self.fabric)}", "--", *inner]


def reverse_forward(topo: Topology, where: str, port: int) -> None:
    """127.0.0.1:`port` of the test's namespace relays to 127.0.0.1:`port` inside `where` (the
    mirror of Topology.forward_loopback).  The listener is closed by topo.cleanup()."""
    listener = socket.create_server(("127.0.0.1", port))
    topo.listeners.append(listener)
    threading.Thread(target=_reverse_accept, args=(listener, where, port), daemon=True).start()


def _reverse_accept(listener: socket.socket, where: str, port: int) -> None:
    while True:
        try:
            inner, _ = listener.accept()
        except OSError:
            return  # closed at cleanup
        try:
            with netns.enter(where):  # setns on this thread only; the socket keeps its netns
                outer = socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            inner.close()
            continue
        outer.settimeout(None)
        for src, dst in ((inner, outer), (outer, inner)):
            threading.Thread(target=_relay, args=(src, dst), daemon=True).start()


def conflist(fh: FlannelHost, state: Path) -> dict[str, Any]:
    """kube-flannel's conflist (flannel delegating to bridge, then portmap), every directory under
    the node's own state dir: the hosts share one filesystem, so IPAM stores must not collide."""
    return {"cniVersion": "1.0.0", "name": "cbr0", "plugins": [
        {"type": "flannel", "subnetFile": str(fh.subnet_file), "dataDir": str(state / "flannel"),
         "ipam": {"dataDir": str(state / "ipam")},
         "delegate": {"hairpinMode": True, "isDefaultGateway": True}},
        {"type": "portmap", "capabilities": {"portMappings": True}}]}


@dataclass
class Node:
    fh: FlannelHost
    state: Path
    kubelet: subprocess.Popen[bytes] | None = None
    host_server: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return self.fh.host.name

    @property
    def kubelet_log(self) -> Path:
        return self.state / "kubelet.log"


@dataclass
class Cluster:
    topo: Topology
    workdir: Path
    cni_bin: Path
    flannel: FlannelCluster = field(init=False)
    server: FabricApiServer | None = None
    client: Client | None = None
    nodes: list[Node] = field(default_factory=list)
    runtime: str = "crun"
    cni_daemon: bool = False  # the per-node CNI daemon (warm imports) instead of in-process plugins

    def __post_init__(self) -> None:
        self.flannel = FlannelCluster(self.topo, self.workdir)

    @property
    def api(self) -> Client:
        assert self.client is not None
        return self.client

    # ------------------------------------------------------------------------ control plane
    def start_control_plane(self) -> FabricApiServer:
        fabric = self.topo.ensure_fabric()
        etcd = self.flannel.start_etcd()  # fabric netns, 10.250.0.1:2379 (+ its loopback)
        self.server = FabricApiServer(etcd, self.workdir / "apiserver", fabric)
        reverse_forward(self.topo, fabric, self.server.port)
        self.server.start()
        self.client = Client.from_config(load_kubeconfig(self.server.kubeconfig()))
        return self.server

    def stop_control_plane(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.server is not None:
            self.server.cleanup()
        if self.flannel.etcd is not None:
            self.flannel.etcd.cleanup()

    # ------------------------------------------------------------------------------- nodes
    def add_node(self) -> Node:
        fh = self.flannel.add_host()
        state = self.workdir / fh.host.name
        (state / "net.d").mkdir(parents=True, exist_ok=True)
        (state / "net.d" / "10-flannel.conflist").write_text(json.dumps(conflist(fh, state)))
        node = Node(fh=fh, state=state)
        self.nodes.append(node)
        assert self.server is not None
        self.topo.forward_loopback(fh.host, self.server.port)
        return node

    def kubelet_command(self, node: Node) -> list[str]:
        assert self.server is not None
        return [*component_command("podnet-kubelet", "controlplane.kubelet"),
                f"--kubeconfig={self.server.kubeconfig()}", f"--hostname-override={node.name}",
                f"--node-ip={node.fh.host.ip}", f"--cni-conf-dir={node.state / 'net.d'}",
                f"--cni-bin-dir={self.cni_bin}", f"--cni-cache-dir={node.state / 'cni-cache'}",
                f"--root-dir={node.state / 'kubelet'}", f"--pod-logs-dir={node.state / 'pods'}",
                f"--container-runtime={self.runtime}", "--node-lease-duration-seconds=4",
                f"--port={KUBELET_PORT}", "--node-status-update-frequency=1s",
                "--sync-frequency=2s"]

    def start_cni_daemon(self, node: Node) -> None:
        """`cni.daemon` in the node's namespace on a socket of its own (the default
        /run/podnet/cni.sock would be shared by every simulated host on this machine)."""
        sock = node.state / "cni.sock"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.topo.spawn_on(node.fh.host, [sys.executable, "-m", "cni.daemon", "--socket", str(sock),
                                          "--quiet"], log_path=str(node.state / "cni-daemon.log"),
                           env=env)
        wait_until(sock.exists, 20, f"CNI daemon socket on {node.name}")

    def start_kubelet(self, node: Node) -> None:
        # The plugins inherit the kubelet's environment: an empty PODNET_CNI_SOCKET makes them
        # serve every request in-process, a path sends them to that node's daemon.
        sock = str(node.state / "cni.sock") if self.cni_daemon else ""
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
               "PODNET_CNI_SOCKET": sock}
        node.kubelet = self.topo.spawn_on(node.fh.host, self.kubelet_command(node),
                                          log_path=str(node.kubelet_log), env=env)

    def kill_kubelet(self, node: Node) -> None:
        if node.kubelet is not None:
            self.topo.kill(node.kubelet)
            node.kubelet = None

    def start_flanneld(self, node: Node) -> None:
        assert self.server is not None
        conf = self.workdir / "net-conf.json"
        conf.write_text(json.dumps({"Network": CLUSTER_CIDR, "Backend": {"Type": "vxlan"}}))
        self.flannel.start_flanneld(node.fh, "--kube-subnet-mgr", "--kubeconfig-file",
                                    str(self.server.kubeconfig()), "--net-config-path", str(conf),
                                    "--node-name", node.name, "--resync-period", "5s", wait=False)

    def node_ready(self, name: str) -> bool:
        node = self.api.get(NODES, name)
        return any(c.get("type") == "Ready" and c.get("status") == "True"
                   for c in (node.get("status") or {}).get("conditions") or [])

    def wait_nodes_ready(self, timeout: float = 40.0) -> None:
        def ready() -> bool:
            for node in self.nodes:
                if node.kubelet is not None and node.kubelet.poll() is not None:
                    raise AssertionError(f"kubelet on {node.name} exited:\n{self.tail(node)}")
            return all(_quiet(lambda n=n: self.node_ready(n.name)) for n in self.nodes)
        wait_until(ready, timeout, "every node Ready", interval=0.2)

    def tail(self, node: Node, chars: int = 3000) -> str:
        try:
            return node.kubelet_log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    # ------------------------------------------------------------------------------ helpers
    def kubectl(self, *args: str, check: bool = True, timeout: float = 30.0
                ) -> subprocess.CompletedProcess[str]:
        binary = kubectl_binary(KUBECTL_MINOR) or "kubectl"
        assert self.server is not None
        return subprocess.run([binary, f"--kubeconfig={self.server.kubeconfig()}", *args],
                              capture_output=True, text=True, check=check, timeout=timeout)

    def drain(self, timeout: float = 20.0) -> None:
        """Delete every pod while the kubelets still run, so they stop the containers and remove
        the sandboxes they created (names only they know); best effort, for the teardown."""
        for node in self.nodes:
            if node.kubelet is None:
                self.start_kubelet(node)
        with contextlib.suppress(Exception):
            for rc in self.api.list(REPLICATIONCONTROLLERS, "default")["items"]:
                self.api.delete(REPLICATIONCONTROLLERS, rc["metadata"]["name"], "default")
            for pod in self.api.list(PODS, "default")["items"]:
                self.api.delete(PODS, pod["metadata"]["name"], "default")
            wait_until(lambda: not self.api.list(PODS, "default")["items"], timeout,
                       "every pod finally deleted", interval=0.2)

    def pods(self, selector: str) -> list[dict[str, Any]]:
        return list(self.api.list(PODS, "default", label_selector=selector)["items"])


def _quiet(predicate: Any) -> bool:
    """A predicate that may hit a transient API error (node not registered yet) counts as False."""
    try:
        return bool(predicate())
    except Exception:  # any failure (node not registered yet) just means "not yet"
        return False


@contextlib.contextmanager
def cluster(workdir: Path, cni_bin: Path, size: int = 3, timeout: float = 60.0, *,
            cni_daemon: bool = False) -> Iterator[Cluster]:
    """A running cluster of `size` Ready nodes; everything stopped (by PID) and removed on exit."""
    topo = Topology()
    c = Cluster(topo, workdir, cni_bin, cni_daemon=cni_daemon)
    try:
        server = c.start_control_plane()
        with contextlib.ExitStack() as stack:
            cm = [*component_command("podnet-controller-manager", "controlplane.controllers"),
                  *CM_FLAGS]
            stack.enter_context(component_process(server, workdir / "cm.log", cm))
            sched = component_command("podnet-scheduler", "controlplane.scheduler")
            stack.enter_context(component_process(server, workdir / "scheduler.log", sched))
            for _ in range(size):
                c.add_node()
            for node in c.nodes:
                if cni_daemon:
                    c.start_cni_daemon(node)
                c.start_kubelet(node)
                c.start_flanneld(node)
            started = time.monotonic()
            c.wait_nodes_ready(timeout)
            print(f"cluster of {size} Ready in {time.monotonic() - started:.1f}s")
            try:
                yield c
            finally:
                c.drain()
                for node in c.nodes:  # shown by pytest when a test failed
                    print(f"--- kubelet {node.name}\n{c.tail(node, 2500)}")
    finally:
        topo.cleanup()  # kubelets and flanneld first: they would otherwise retry the server
        c.stop_control_plane()


# ----------------------------------------------------------------------------- the workload

HTTP_PORT, UDP_PORT = 8080, 8081
# A stdlib stand-in for upstream's agnhost netexec, runnable from the host's filesystem (the
# default container root): GET / answers the name, /healthz is 200 or 503 (/unready, /ready flip
# it: a readiness probe target), /dial?protocol=tcp|udp&hosts=a,b asks THIS endpoint to reach the
# others and answers {ip: reply}; UDP on UDP_PORT answers the name.  Prints one line at start
# (what `kubectl logs` must show).
NETEXEC = f"""
import json, os, socket, socketserver, sys, threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse
NAME = os.environ.get("SERVE_NAME") or socket.gethostname()
state = {{"ready": True}}
def dial(ip, proto):
    try:
        if proto == "udp":
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(0.5)
            for _ in range(6):
                u.sendto(b"name", (ip, {UDP_PORT}))
                try:
                    return u.recvfrom(200)[0].decode()
                except TimeoutError:
                    pass
            return "error: udp timeout"
        c = socket.create_connection((ip, {HTTP_PORT}), timeout=3)
        c.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n"); data = b""
        while chunk := c.recv(4096):
            data += chunk
        return data.split(b"\\r\\n\\r\\n", 1)[1].decode()
    except OSError as e:
        return f"error: {{e}}"
class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        url = urlparse(self.path); q = parse_qs(url.query); code, body = 200, NAME
        if url.path == "/healthz":
            code = 200 if state["ready"] else 503
        elif url.path in ("/ready", "/unready"):
            state["ready"] = url.path == "/ready"
        elif url.path == "/dial":
            hosts = q["hosts"][0].split(","); proto = q.get("protocol", ["tcp"])[0]
            with ThreadPoolExecutor(len(hosts)) as pool:
                body = json.dumps(dict(zip(hosts, pool.map(lambda h: dial(h, proto), hosts))))
        data = body.encode()
        self.send_response(code); self.send_header("Content-Length", str(len(data)))
        self.end_headers(); self.wfile.write(data)
    def log_message(self, *args):
        pass
def udp():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", {UDP_PORT}))
    while True:
        _, peer = u.recvfrom(200); u.sendto(NAME.encode(), peer)
class Server(ThreadingHTTPServer):
    def server_bind(self):  # HTTPServer's own resolves getfqdn(): no DNS in a pod, it would hang
        socketserver.TCPServer.server_bind(self); self.server_name, self.server_port = NAME, {HTTP_PORT}
threading.Thread(target=udp, daemon=True).start()
server = Server(("0.0.0.0", {HTTP_PORT}), Handler)
print(f"serving {{NAME}} on {HTTP_PORT}/tcp and {UDP_PORT}/udp", flush=True)
server.serve_forever()
"""


def netexec_container(name: str = "web") -> dict[str, Any]:
    """The container running NETEXEC with the host's python, readiness probed over HTTP."""
    return {"name": name, "image": "podnet/host", "command": ["/usr/bin/python3", "-c", NETEXEC],
            "ports": [{"containerPort": HTTP_PORT, "protocol": "TCP"},
                      {"containerPort": UDP_PORT, "protocol": "UDP"}],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": HTTP_PORT},
                               "periodSeconds": 1, "failureThreshold": 1}}


def start_host_server(c: Cluster, node: Node) -> None:
    """NETEXEC in the node host's own namespace, so pods can reach the node (and vice versa)."""
    env = {**os.environ, "SERVE_NAME": node.name}
    node.host_server = c.topo.spawn_on(node.fh.host, [sys.executable, "-c", NETEXEC], env=env)


def http_get(c: Cluster, node: Node, url: str, timeout: float = 20.0) -> str:
    """GET `url` from inside `node`'s host namespace (the pods' networks are routed there)."""
    # Retried while refused: a server may still be starting (a container is "started" when its
    # process is, not when it listens).
    script = ("import sys, time, urllib.request\n"
              "for i in range(50):\n"
              "    try:\n"
              "        print(urllib.request.urlopen(sys.argv[1], timeout=15).read().decode()); break\n"
              "    except OSError as e:\n"
              "        if 'refused' not in str(e) or i == 49: raise\n"
              "        time.sleep(0.1)\n")
    proc = node.fh.host.run(sys.executable, "-c", script, url, check=False, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"GET {url} from {node.name}: {proc.stderr[-800:]}")
    return proc.stdout.strip()
