"""A small threaded HTTP/1.1 server for daemons' own endpoints (the kubelet's read-only server).

Components describe routes as path prefixes mapped to handlers that return a `Reply`; the socket
work stays here in the foundation.  A reply's body is either bytes (sent with Content-Length) or an
iterator of chunks (sent with chunked transfer encoding, flushed chunk by chunk) for streams such as
`kubectl logs -f`.  An empty chunk is a heartbeat: nothing is sent, but the server checks whether the
client has gone away and, if so, closes the iterator so a follower stops polling its file.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Reply:
    """What a handler answers: status, body (bytes, or an iterator of chunks to stream), headers."""

    status: int
    body: bytes | Iterable[bytes] = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Request:
    """The parts of a GET a handler needs: the unquoted path and the last value of each query key."""

    path: str
    query: Mapping[str, str]


Handler = Callable[[Request], Reply]


def parse_request(target: str) -> Request:
    """`/a/b%20c?x=1&x=2` -> Request("/a/b c", {"x": "2"}) (the last value wins, as Go's Get does
    not, but no client of ours repeats a key)."""
    split = urllib.parse.urlsplit(target)
    query = dict(urllib.parse.parse_qsl(split.query, keep_blank_values=True))
    return Request(urllib.parse.unquote(split.path), query)


def client_gone(sock: socket.socket) -> bool:
    """True when the peer closed its end: readable with nothing to read (or an error)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class HttpServer:
    """GET-only routes by longest matching path prefix; 404 for anything else."""

    def __init__(self, host: str, port: int, routes: Mapping[str, Handler], *,
                 name: str = "http") -> None:
        owner = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                owner._serve(self)

            def log_message(self, format: str, *args: object) -> None:
                """Requests are not logged: log followers poll, and the daemon's log is not an
                access log."""

        self.routes = dict(routes)
        self.name = name
        self._stopping = threading.Event()
        self._streams = 0
        self._streams_lock = threading.Lock()
        self._server = ThreadingHTTPServer((host, port), _Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def active_streams(self) -> int:
        """Streamed replies in progress (a follower whose client left must not linger)."""
        with self._streams_lock:
            return self._streams

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def _route(self, path: str) -> Handler | None:
        matches = [p for p in self.routes if path == p or path.startswith(p.rstrip("/") + "/")]
        return self.routes[max(matches, key=len)] if matches else None

    def _serve(self, req: BaseHTTPRequestHandler) -> None:
        request = parse_request(req.path)
        handler = self._route(request.path)
        reply = handler(request) if handler else Reply(404, b"404 page not found\n")
        req.send_response(reply.status)
        req.send_header("Content-Type", reply.content_type)
        for key, value in reply.headers.items():
            req.send_header(key, value)
        if isinstance(reply.body, bytes):
            req.send_header("Content-Length", str(len(reply.body)))
            req.end_headers()
            with contextlib.suppress(OSError):
                req.wfile.write(reply.body)
            return
        req.send_header("Transfer-Encoding", "chunked")
        req.send_header("Connection", "close")  # a stream ends the connection: no reuse after it
        req.end_headers()
        req.close_connection = True
        self._stream(req, iter(reply.body))

    def _stream(self, req: BaseHTTPRequestHandler, chunks: Iterator[bytes]) -> None:
        with self._streams_lock:
            self._streams += 1
        try:
            for chunk in chunks:
                if self._stopping.is_set():
                    return
                if not chunk:
                    if client_gone(req.connection):
                        return
                    continue
                req.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                req.wfile.flush()
            req.wfile.write(b"0\r\n\r\n")
            req.wfile.flush()
        except OSError:  # the client went away mid-write
            return
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()  # lets a generator release its file
            with self._streams_lock:
                self._streams -= 1

    def start(self) -> HttpServer:
        # a short poll interval: stop() (which waits for the accept loop to notice) stays quick
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, and make running streams end at their next chunk or heartbeat."""
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
