"""`podnet agnhost ...`: the test workloads of upstream's agnhost image, stdlib only, so a pod
process (a plain interpreter on the host's root filesystem) can serve and probe the network.

serve-hostname: every HTTP request (and, with --udp, every datagram) gets the host name.
netexec: HTTP /hostname, /echo?msg=, /clientip ("<ip>:<port>" as the server saw it, so NAT is
visible), /healthz, /dial?request=&protocol=&host=&port=&tries= (this pod asks another endpoint);
UDP "hostname", "echo <text>", "clientip".
connect: exit 0 when a TCP connection (or a UDP round trip) to HOST:PORT succeeds, else print
TIMEOUT / REFUSED / OTHER: <error> (upstream's words) and exit 1.
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


def hostname() -> str:
    return socket.gethostname()


# --------------------------------------------------------------------------------- replies
def http_reply(path: str, client: tuple[str, int]) -> tuple[int, str]:
    """netexec's answer to a GET of `path` (pure: table-tested)."""
    url = urlsplit(path)
    if url.path == "/hostname":
        return 200, hostname()
    if url.path == "/echo":
        return 200, parse_qs(url.query).get("msg", [""])[0]
    if url.path == "/clientip":
        return 200, f"{client[0]}:{client[1]}"
    if url.path == "/dial":
        return dial(parse_qs(url.query))
    if url.path in ("/healthz", "/"):
        return 200, "ok" if url.path == "/healthz" else "NOW: netexec"
    return 404, f"unknown path {url.path}\n"


def udp_reply(data: bytes, client: tuple[str, int]) -> bytes:
    """netexec's UDP answer: "hostname", "echo <text>", "clientip" (upstream's commands)."""
    text = data.decode(errors="replace").strip()
    if text == "hostname":
        return hostname().encode()
    if text.startswith("echo "):
        return text[5:].encode()
    if text == "clientip":
        return f"{client[0]}:{client[1]}".encode()
    return b"unknown command\n"


def dial(query: dict[str, list[str]]) -> tuple[int, str]:
    """upstream netexec /dial?request=&protocol=http|udp&host=&port=&tries=: this pod asks another
    endpoint `tries` times and reports {"responses": [...], "errors": [...]} (the e2e tests'
    connectivity check from inside a pod)."""
    def arg(name: str, default: str = "") -> str:
        return query.get(name, [default])[0]

    host, port, request, protocol = arg("host"), arg("port"), arg("request"), arg("protocol", "http")
    if not host or not port.isdigit() or not request or protocol not in ("http", "udp"):
        return 400, "dial needs host, port, request and protocol http|udp\n"
    tries_text = arg("tries", "1")
    tries = min(max(int(tries_text), 1), 100) if tries_text.isdigit() else 1
    responses, errors = [], []
    for _ in range(tries):
        try:
            responses.append(_dial_once(protocol, host, int(port), request))
        except OSError as e:
            errors.append(f"{protocol} {host}:{port}: {e}")
    return 200, json.dumps({"responses": responses, "errors": errors})


def _dial_once(protocol: str, host: str, port: int, request: str, timeout: float = 5.0) -> str:
    if protocol == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(request.encode(), (host, port))
            return s.recv(65536).decode(errors="replace")
    path = request if request.startswith("/") else f"/{request}"
    with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=timeout) as resp:
        return str(resp.read().decode(errors="replace"))


# --------------------------------------------------------------------------------- servers
class _NetexecHandler(BaseHTTPRequestHandler):
    server_version = "podnet-agnhost"

    def do_GET(self) -> None:
        status, body = http_reply(self.path, self.client_address[:2])
        raw = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: one line per probe would drown the container log


class _HostnameHandler(_NetexecHandler):
    def do_GET(self) -> None:
        raw = hostname().encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


class _UdpHandler(socketserver.BaseRequestHandler):
    hostname_only = False

    def handle(self) -> None:
        data, sock = self.request
        reply = hostname().encode() if self.hostname_only else udp_reply(data, self.client_address)
        sock.sendto(reply, self.client_address)


class _HostnameUdpHandler(_UdpHandler):
    hostname_only = True


class _UdpServer(socketserver.ThreadingUDPServer):
    allow_reuse_address = True
    daemon_threads = True


def start_netexec(http_port: int, udp_port: int, host: str = "") -> tuple[ThreadingHTTPServer, _UdpServer]:
    """Both servers running on daemon threads (port 0: any free port; see server_address)."""
    http = ThreadingHTTPServer((host, http_port), _NetexecHandler)
    udp = _UdpServer((host, udp_port), _UdpHandler)
    for srv in (http, udp):
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    return http, udp


def start_serve_hostname(port: int, *, udp: bool = False, host: str = ""
                         ) -> list[socketserver.BaseServer]:
    servers: list[socketserver.BaseServer] = [ThreadingHTTPServer((host, port), _HostnameHandler)]
    if udp:
        servers.append(_UdpServer((host, port), _HostnameUdpHandler))
    for srv in servers:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    return servers


def netexec(http_port: int, udp_port: int) -> None:
    start_netexec(http_port, udp_port)
    threading.Event().wait()


def serve_hostname(port: int, *, udp: bool = False) -> None:
    start_serve_hostname(port, udp=udp)
    threading.Event().wait()


# --------------------------------------------------------------------------------- client
def connect(target: str, protocol: str = "tcp", timeout: float = 5.0) -> str | None:
    """None on success, else upstream's failure word (TIMEOUT, REFUSED, OTHER: ...)."""
    host, _, port_text = target.rpartition(":")
    if not host or not port_text.isdigit():
        return f"OTHER: expected HOST:PORT, got {target!r}"
    addr = (host.strip("[]"), int(port_text))
    try:
        if protocol == "udp":
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(timeout)
                s.connect(addr)
                s.send(b"hostname")
                s.recv(65536)  # a refused port shows up here as ECONNREFUSED (ICMP unreachable)
        else:
            socket.create_connection(addr, timeout=timeout).close()
    except TimeoutError:
        return "TIMEOUT"
    except ConnectionRefusedError:
        return "REFUSED"
    except OSError as e:
        return f"OTHER: {e}"
    return None
