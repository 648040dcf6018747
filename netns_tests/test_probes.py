"""Probes from a simulated host's netns to a pod IP behind its cni0 bridge, as the kubelet probes.

A real HTTP server (python -m http.server) runs in a pod namespace; a ProbeManager with the real
RuntimeProber runs in the host namespace (its probe threads are started there, so they inherit it).
Readiness turns true through httpGet on a named port, a tcpSocket liveness probe holds it alive, and
when the server is killed the readiness flips to false and liveness asks for a restart.
"""

from __future__ import annotations

import sys
from typing import Any

from controlplane.kubelet.probes import ProbeManager, ProbeSpec, ProbeTarget, RuntimeProber
from podnet import netns
from podnet.testing.harness import Topology
from podnet.testing.wait import wait_until

POD_IP, GATEWAY, PORT = "10.244.7.2", "10.244.7.1", 8080
# socketserver.TCPServer, not http.server's HTTPServer: that one resolves its own name (getfqdn) before
# listening, which waits for DNS timeouts inside a namespace without a resolver
SERVER = """
import http.server, socketserver, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/healthz" else 404)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\\n")
socketserver.TCPServer((sys.argv[1], int(sys.argv[2])), Handler).serve_forever()
"""


def no_exec(cid: str, argv: list[str], timeout: float) -> tuple[int, str]:
    raise AssertionError("no exec probe in this test")


def pod_object(started_at: str) -> dict[str, Any]:
    probe = {"periodSeconds": 1, "timeoutSeconds": 1, "failureThreshold": 2}
    container = {"name": "web", "ports": [{"name": "http", "containerPort": PORT}],
                 "readinessProbe": {"httpGet": {"port": "http", "path": "/healthz"}, **probe},
                 "livenessProbe": {"tcpSocket": {"port": PORT}, **probe}}
    return {"metadata": {"name": "web", "namespace": "default", "uid": "uid-probe"},
            "spec": {"containers": [container]},
            "status": {"podIP": POD_IP, "containerStatuses": [
                {"name": "web", "containerID": "podnet://c1",
                 "state": {"running": {"startedAt": started_at}}}]}}


def test_http_and_tcp_probes_reach_the_pod_from_the_host_netns(topo: Topology) -> None:
    host = topo.add_host()
    pod = topo.add_pod(host, "probe", POD_IP, GATEWAY)
    server = topo.spawn(pod.name, [sys.executable, "-c", SERVER, POD_IP, str(PORT)])
    prober = RuntimeProber(no_exec)
    target = ProbeTarget(POD_IP, "c1", {"http": PORT})
    tcp = ProbeSpec.from_api("liveness", {"tcpSocket": {"port": "http"}})
    with netns.enter(host.name):
        wait_until(lambda: prober.probe(tcp, target).ok, 10, "the pod's server to listen")
        missing = ProbeSpec.from_api("readiness", {"httpGet": {"port": PORT, "path": "/nope"}})
        assert prober.probe(missing, target).message == "HTTP probe failed with statuscode: 404"
        changes: list[str] = []
        manager = ProbeManager(prober, on_change=changes.append)
        try:
            manager.update(pod_object("2020-01-01T00:00:00Z"))
            assert not manager.ready("uid-probe", "web")
            manager.start()  # its threads start here: in the host netns
            wait_until(lambda: manager.ready("uid-probe", "web"), 10, "readiness over httpGet")
            assert manager.liveness_failure("uid-probe", "web") is None
            topo.kill(server)
            wait_until(lambda: manager.liveness_failure("uid-probe", "web") is not None, 10,
                       "the tcpSocket liveness probe to fail")
            wait_until(lambda: not manager.ready("uid-probe", "web"), 10, "readiness to drop")
            message = manager.liveness_failure("uid-probe", "web") or ""
            assert f"dial tcp {POD_IP}:{PORT}: connect: connection refused" in message
            assert set(changes) == {"default/web"}
        finally:
            manager.stop()
