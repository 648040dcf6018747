"""The kubelet's network probes: an HTTP GET and a TCP connect against a pod IP.

Upstream semantics (pkg/probe/http, pkg/probe/tcp): an HTTP answer with 200 <= status < 400 is a
success (redirects are not followed: a 3xx counts as success, upstream's outcome for a redirect to
another host); HTTPS does not verify the certificate; the request carries `User-Agent:
kube-probe/<major>.<minor>` and `Accept: */*` unless httpHeaders override them, and a Host header
from httpHeaders names the virtual host.  A TCP probe succeeds when the connection is accepted.
Every failure carries upstream-like text for the container's events.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
from collections.abc import Iterable
from dataclasses import dataclass

USER_AGENT = "kube-probe/1.33"
BODY_LIMIT = 10 * 1024  # upstream reads at most 10 KiB of a probe's answer


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    message: str = ""


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def http_get(host: str, port: int, path: str = "/", *, scheme: str = "HTTP",
             headers: Iterable[tuple[str, str]] = (), timeout: float = 1.0,
             user_agent: str = USER_AGENT) -> ProbeResult:
    """GET <scheme>://host:port<path>; ok for a status in [200, 400)."""
    path = path if path.startswith("/") else "/" + path
    url = f"{scheme.lower()}://{_netloc(host, port)}{path}"
    conn: http.client.HTTPConnection
    if scheme.upper() == "HTTPS":
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # upstream InsecureSkipVerify
        conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    sent = {"User-Agent": user_agent, "Accept": "*/*"}
    for name, value in headers:
        sent[name.title() if name.lower() in ("user-agent", "accept", "host") else name] = value
    try:
        conn.request("GET", path, headers=sent)
        resp = conn.getresponse()
        body = resp.read(BODY_LIMIT)
    except TimeoutError:
        return ProbeResult(False, f'Get "{url}": context deadline exceeded (Client.Timeout exceeded '
                                  "while awaiting headers)")
    except (OSError, http.client.HTTPException) as e:
        return ProbeResult(False, f'Get "{url}": {_describe(e)}')
    finally:
        conn.close()
    if 200 <= resp.status < 400:
        return ProbeResult(True, body.decode(errors="replace"))
    return ProbeResult(False, f"HTTP probe failed with statuscode: {resp.status}")


def tcp_connect(host: str, port: int, *, timeout: float = 1.0) -> ProbeResult:
    """ok when a TCP connection to host:port is accepted within `timeout`."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError:
        return ProbeResult(False, f"dial tcp {_netloc(host, port)}: i/o timeout")
    except OSError as e:
        return ProbeResult(False, f"dial tcp {_netloc(host, port)}: {_describe(e)}")
    with contextlib.suppress(OSError):
        sock.close()
    return ProbeResult(True)


def _describe(e: BaseException) -> str:
    if isinstance(e, ConnectionRefusedError):
        return "connect: connection refused"
    if isinstance(e, OSError) and e.strerror:
        return f"connect: {e.strerror.lower()}"
    return str(e) or type(e).__name__
