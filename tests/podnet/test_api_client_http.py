"""HttpTransport against an in-thread stdlib HTTP/1.1 server on loopback (no process): keep-alive
reuse, the one safe resend on a connection the server dropped, chunked watch streams, closing a
watch from another thread, and concurrent use."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest

from podnet.api.client import CONFIGMAPS, ApiError, Client, HttpTransport


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    log: ClassVar[list[tuple[str, str, int]]] = []  # (method, path, client port)
    drop_after_response: ClassVar[bool] = False
    stream_release = threading.Event()

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _reply(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        if Handler.drop_after_response:  # close without announcing it: the client pools a dead socket
            self.close_connection = True

    def do_GET(self) -> None:
        Handler.log.append(("GET", self.path, self.client_address[1]))
        if "watch=true" in self.path:
            return self._watch()
        if self.path.endswith("/missing"):
            return self._reply(404, {"kind": "Status", "code": 404, "reason": "NotFound", "message": "gone"})
        self._reply(200, {"metadata": {"name": self.path.rsplit("/", 1)[-1]}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length))
        Handler.log.append(("POST", self.path, self.client_address[1]))
        self._reply(201, body)

    def _watch(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(3):
            line = json.dumps({"type": "ADDED", "object": {"metadata": {"name": f"o{i}",
                                                                        "resourceVersion": str(i)}}})
            data = (line + "\n").encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
        if "timeoutSeconds=1" in self.path:
            self.wfile.write(b"0\r\n\r\n")  # the server ends the stream
        else:
            Handler.stream_release.wait(10)  # a quiet watch
        self.close_connection = True


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    Handler.log = []
    Handler.drop_after_response = False
    Handler.stream_release = threading.Event()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield srv
    Handler.stream_release.set()
    srv.shutdown()
    srv.server_close()


def _client(srv: ThreadingHTTPServer, **kw: Any) -> Client:
    return Client(HttpTransport(f"http://127.0.0.1:{srv.server_address[1]}", **kw))


def test_keep_alive_reuses_one_connection(server: ThreadingHTTPServer) -> None:
    c = _client(server)
    for i in range(5):
        assert c.get(CONFIGMAPS, f"c{i}", "ns")["metadata"]["name"] == f"c{i}"
    with pytest.raises(ApiError):
        c.get(CONFIGMAPS, "missing", "ns")  # an error answer keeps the connection too
    c.get(CONFIGMAPS, "again", "ns")
    assert len({port for _, _, port in Handler.log}) == 1
    c.close()


def test_idle_connections_past_idle_timeout_are_not_reused(server: ThreadingHTTPServer) -> None:
    c = _client(server, idle_timeout=0.0)
    c.get(CONFIGMAPS, "a", "ns")
    c.get(CONFIGMAPS, "b", "ns")
    assert len({port for _, _, port in Handler.log}) == 2
    c.close()


def test_dropped_pooled_connection_is_resent_once_even_for_a_write(server: ThreadingHTTPServer) -> None:
    Handler.drop_after_response = True
    c = _client(server)
    c.get(CONFIGMAPS, "a", "ns")
    time.sleep(0.1)  # the server has closed it by now; the client still pools it
    created = c.create(CONFIGMAPS, {"metadata": {"name": "x"}}, "ns")
    assert created == {"metadata": {"name": "x"}}
    posts = [entry for entry in Handler.log if entry[0] == "POST"]
    assert len(posts) == 1  # the server saw the write exactly once, on a second connection
    assert len({port for _, _, port in Handler.log}) == 2
    c.close()


def test_chunked_watch_stream_ends_with_the_server(server: ThreadingHTTPServer) -> None:
    c = _client(server)
    with c.watch(CONFIGMAPS, "ns", timeout_seconds=1) as stream:
        names = [e.object["metadata"]["name"] for e in stream]
    assert names == ["o0", "o1", "o2"] and stream.last_resource_version == "2"
    assert c.get(CONFIGMAPS, "after", "ns")  # the pool is unaffected by the watch connection
    c.close()


def test_watch_closed_from_another_thread(server: ThreadingHTTPServer) -> None:
    c = _client(server)
    stream = c.watch(CONFIGMAPS, "ns", timeout_seconds=60)
    seen: list[str] = []
    done = threading.Event()

    def drain() -> None:
        for e in stream:
            seen.append(e.type)
        done.set()

    threading.Thread(target=drain, daemon=True).start()
    deadline = time.monotonic() + 5
    while len(seen) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    stream.close()
    assert done.wait(5) and seen == ["ADDED"] * 3
    c.close()


def test_concurrent_requests_share_the_pool(server: ThreadingHTTPServer) -> None:
    transport = HttpTransport(f"http://127.0.0.1:{server.server_address[1]}", pool_size=3)
    c = Client(transport)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(10):
                assert c.get(CONFIGMAPS, f"t{n}-{i}", "ns")["metadata"]["name"] == f"t{n}-{i}"
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == [] and len(Handler.log) == 80
    assert len(transport._idle) <= 3
    c.close()
    assert transport._idle == []


def test_bad_server_url() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        HttpTransport("ftp://x")
