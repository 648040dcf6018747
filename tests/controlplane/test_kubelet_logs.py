"""The kubelet's /containerLogs: CRI log parsing, PodLogOptions, attempt choice, follow, and the
podnet.httpserve stream it rides on (a real loopback server, read with http.client)."""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.kubelet.logserver import (
    ContainerLogs,
    LineRenderer,
    LogError,
    LogOptions,
    Record,
    container_log_path,
    parse_options,
    parse_record,
    parse_time,
    read_complete,
    read_tail,
    routes,
    start_server,
    tail_records,
)
from podnet.httpserve import HttpServer, Reply, Request, parse_request
from podnet.testing.wait import wait_until

LINES = ["2026-11-27T10:00:00.100000000Z stdout F one\n",
         "2026-11-27T10:00:01.200000000Z stderr F two\n",
         "2026-11-27T10:00:02.300000000Z stdout P thr\n",
         "2026-11-27T10:00:02.300000001Z stdout F ee\n",
         "garbage that is not a CRI line\n",
         "2026-11-27T10:00:03.400000000Z stdout F four\n"]
NOW = parse_time("2026-11-27T10:00:04Z")


def records() -> list[Record]:
    return [r for r in (parse_record(line.encode()) for line in LINES) if r is not None]


def render(opts: LogOptions, recs: list[Record] | None = None) -> bytes:
    renderer = LineRenderer(opts)
    return b"".join(renderer.render(r) for r in tail_records(recs or records(), opts.tail_lines))


def test_parse_record() -> None:
    rec = parse_record(b"2026-11-27T10:00:00.1Z stderr P a b c\n")
    assert rec == Record("2026-11-27T10:00:00.1Z", "stderr", True, b"a b c")
    assert parse_record(b"2026-11-27T10:00:00Z stdout F\n") == Record("2026-11-27T10:00:00Z", "stdout",
                                                                      False, b"")
    assert parse_record(b"not a log line\n") is None
    assert parse_record(b"ts stdin F x\n") is None


def test_parse_time_keeps_nanosecond_text_to_microseconds() -> None:
    assert parse_time("2026-11-27T10:00:00.123456789Z") == pytest.approx(
        parse_time("2026-11-27T10:00:00Z") + 0.123456, abs=1e-6)
    assert parse_time("2026-11-27T12:00:00+02:00") == parse_time("2026-11-27T10:00:00Z")


@pytest.mark.parametrize(("opts", "want"), [
    (LogOptions(), b"one\ntwo\nthree\nfour\n"),
    (LogOptions(tail_lines=2), b"three\nfour\n"),
    (LogOptions(tail_lines=0), b""),
    (LogOptions(tail_lines=99), b"one\ntwo\nthree\nfour\n"),
    (LogOptions(tail_lines=1, timestamps=True), b"2026-11-27T10:00:03.400000000Z four\n"),
    (LogOptions(limit_bytes=6), b"one\ntw"),
    (LogOptions(since=parse_time("2026-11-27T10:00:02Z")), b"three\nfour\n"),
])
def test_render_options(opts: LogOptions, want: bytes) -> None:
    assert render(opts) == want


def test_timestamps_prefix_a_joined_line_once() -> None:
    assert render(LogOptions(tail_lines=2, timestamps=True)) == (
        b"2026-11-27T10:00:02.300000000Z three\n2026-11-27T10:00:03.400000000Z four\n")


def test_parse_options() -> None:
    opts = parse_options({"follow": "true", "tailLines": "3", "previous": "1", "timestamps": "t",
                          "limitBytes": "10", "sinceSeconds": "4"}, NOW)
    assert opts == LogOptions(True, 3, True, True, 10, NOW - 4)
    assert parse_options({"sinceTime": "2026-11-27T10:00:00Z"}, NOW).since == NOW - 4
    for bad in ({"tailLines": "-1"}, {"tailLines": "x"}, {"limitBytes": "0"}, {"sinceTime": "yesterday"}):
        with pytest.raises(LogError) as e:
            parse_options(bad, NOW)
        assert e.value.status == 400


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for attempt, text in ((0, "2026-11-27T09:00:00Z stdout F before restart\n"), (1, "".join(LINES))):
        path = container_log_path(tmp_path, "ns", "web", "uid-1", "c", attempt)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tmp_path / "ns_web_uid-1" / "c" / "notes.txt").write_text("ignored")
    (tmp_path / "ns_fresh_uid-2" / "c").mkdir(parents=True)
    return tmp_path


def get(logs: ContainerLogs, path: str) -> tuple[int, bytes]:
    reply = logs(parse_request(path))
    body = reply.body if isinstance(reply.body, bytes) else b"".join(reply.body)
    return reply.status, body


def test_handler_picks_the_attempt_and_answers_upstream_messages(root: Path) -> None:
    logs = ContainerLogs(root, clock=lambda: NOW)
    assert get(logs, "/containerLogs/ns/web/c") == (200, b"one\ntwo\nthree\nfour\n")
    assert get(logs, "/containerLogs/ns/web/c?previous=true") == (200, b"before restart\n")
    assert get(logs, "/containerLogs/ns/web/c?tailLines=1") == (200, b"four\n")
    assert get(logs, "/containerLogs/ns/nope/c") == (404, b'pod "nope" does not exist\n')
    assert get(logs, "/containerLogs/ns/fresh/c") == (
        400, b'container "c" in pod "fresh" is waiting to start: ContainerCreating\n')
    assert get(logs, "/containerLogs/ns/fresh/c?previous=1") == (
        400, b'previous terminated container "c" in pod "fresh" not found\n')
    assert get(logs, "/containerLogs/ns/web/c?tailLines=-2")[0] == 400
    assert get(logs, "/containerLogs/ns/web")[0] == 404


def test_pod_uid_lookup_names_the_current_pod(root: Path) -> None:
    logs = ContainerLogs(root, pod_uid=lambda ns, name: "uid-other")  # known, nothing started yet
    assert get(logs, "/containerLogs/ns/web/c") == (
        400, b'container "c" in pod "web" is waiting to start: ContainerCreating\n')
    logs = ContainerLogs(root, pod_uid=lambda ns, name: None)
    assert get(logs, "/containerLogs/ns/web/c")[0] == 404
    logs = ContainerLogs(root, pod_uid=lambda ns, name: "uid-1")
    assert get(logs, "/containerLogs/ns/web/c")[0] == 200


def test_follow_ends_when_the_container_stops(root: Path) -> None:
    running = [True]
    logs = ContainerLogs(root, running=lambda ns, pod, c: running[0], poll=0.0)
    stream = logs(parse_request("/containerLogs/ns/web/c?follow=true&tailLines=1")).body
    assert not isinstance(stream, bytes)
    chunks = iter(stream)
    assert next(chunks) == b"four\n"
    assert next(chunks) == b""  # a heartbeat while idle
    with open(container_log_path(root, "ns", "web", "uid-1", "c", 1), "a") as f:
        f.write("2026-11-27T10:00:05Z stdout F five\n")
    assert [c for c in (next(chunks), next(chunks)) if c] == [b"five\n"]
    with open(container_log_path(root, "ns", "web", "uid-1", "c", 1), "a") as f:
        f.write("2026-11-27T10:00:06Z stdout F last words\n")
    running[0] = False
    assert [c for c in chunks if c] == [b"last words\n"]


@pytest.fixture
def server(root: Path) -> Iterator[HttpServer]:
    srv = HttpServer("127.0.0.1", 0, routes(ContainerLogs(root, poll=0.01)))
    try:
        yield srv.start()
    finally:
        srv.stop()


def fetch(server: HttpServer, path: str) -> tuple[int, bytes, str]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read(), resp.getheader("Content-Type") or ""
    finally:
        conn.close()


def test_server_serves_logs_and_unknown_paths(server: HttpServer) -> None:
    assert fetch(server, "/containerLogs/ns/web/c?tailLines=2") == (
        200, b"three\nfour\n", "text/plain; charset=utf-8")
    assert fetch(server, "/containerLogs/ns/nope/c")[:2] == (404, b'pod "nope" does not exist\n')
    assert fetch(server, "/metrics")[0] == 404


def test_server_streams_a_follow_chunk_by_chunk_and_notices_the_client_leaving(root: Path) -> None:
    closed = threading.Event()

    def endless(_: Request) -> Reply:
        def chunks() -> Iterator[bytes]:
            try:
                yield b"hello\n"
                while True:
                    yield b""
            finally:
                closed.set()
        return Reply(200, chunks())

    srv = HttpServer("127.0.0.1", 0, {"/stream": endless}).start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
        conn.request("GET", "/stream")
        resp = conn.getresponse()
        assert resp.getheader("Transfer-Encoding") == "chunked"
        assert resp.readline() == b"hello\n"
        resp.close()
        conn.close()
        wait_until(closed.is_set, 5, "the stream's generator to be closed")
    finally:
        srv.stop()


def test_parse_request() -> None:
    assert parse_request("/a/b%20c?x=1&y=&x=2") == Request("/a/b c", {"x": "2", "y": ""})


def test_start_server_serves_healthz_and_logs(root: Path) -> None:
    srv = start_server("127.0.0.1", 0, str(root), pod_uid=lambda ns, name: "uid-1")
    try:
        assert fetch(srv, "/healthz")[:2] == (200, b"ok")
        assert fetch(srv, "/containerLogs/ns/web/c?previous=true")[:2] == (200, b"before restart\n")
    finally:
        srv.stop()


def test_read_tail_reads_blocks_from_the_end(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    lines = []
    for i in range(500):
        if i % 7 == 0:  # some lines arrive in partial records that straddle block edges
            lines += [f"2026-11-27T10:00:00Z stdout P part{i}-\n", f"2026-11-27T10:00:00Z stdout F end{i}\n"]
        else:
            lines.append(f"2026-11-27T10:00:00Z stdout F line{i}\n")
    lines.append("2026-11-27T10:00:00Z stdout F unterminated")  # being written: not read yet
    path.write_text("".join(lines))
    everything, end = read_complete(path, 0)
    for n in (0, 1, 2, 3, 7, 8, 50, 499, 500, 900):
        for block in (16, 100, 4096):
            records, offset = read_tail(path, n, block)
            assert records == tail_records(everything, n), (n, block)
            assert offset == end
    last3 = read_tail(path, 3, 16)[0]
    assert render(LogOptions(tail_lines=3), last3) == b"part497-end497\nline498\nline499\n"


def test_read_complete_restarts_a_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "0.log"
    path.write_text("2026-11-27T10:00:00Z stdout F a long first line\n")
    _, offset = read_complete(path, 0)
    path.write_text("2026-11-27T10:00:01Z stdout F b\n")
    records, _ = read_complete(path, offset)
    assert [r.content for r in records] == [b"b"]
