"""podnet.agnhost: netexec / serve-hostname answers, and connect's verdicts (loopback only)."""

from __future__ import annotations

import json
import socket
import urllib.request

import pytest
from click.testing import CliRunner

from podnet import agnhost, cli

HOST = socket.gethostname()


@pytest.mark.parametrize(("path", "want"), [
    ("/hostname", (200, HOST)), ("/echo?msg=hello%20there", (200, "hello there")), ("/echo", (200, "")),
    ("/clientip", (200, "10.244.1.5:40000")), ("/healthz", (200, "ok")),
    ("/nope", (404, "unknown path /nope\n")),
])
def test_http_reply(path: str, want: tuple[int, str]) -> None:
    assert agnhost.http_reply(path, ("10.244.1.5", 40000)) == want


@pytest.mark.parametrize(("data", "want"), [
    (b"hostname", HOST.encode()), (b"hostname\n", HOST.encode()), (b"echo a b", b"a b"),
    (b"clientip", b"10.0.0.1:5"), (b"what", b"unknown command\n"),
])
def test_udp_reply(data: bytes, want: bytes) -> None:
    assert agnhost.udp_reply(data, ("10.0.0.1", 5)) == want


def get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
        return resp.read().decode()


def udp(port: int, msg: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(msg, ("127.0.0.1", port))
        return s.recv(65536)


def test_netexec_serves_http_and_udp() -> None:
    http, udp_srv = agnhost.start_netexec(0, 0, host="127.0.0.1")
    try:
        hp, up = http.server_address[1], udp_srv.server_address[1]
        assert get(hp, "/hostname") == HOST
        assert get(hp, "/echo?msg=x") == "x"
        ip, port = get(hp, "/clientip").split(":")
        assert ip == "127.0.0.1" and int(port) > 0
        assert udp(up, b"echo ping") == b"ping"
        assert udp(up, b"hostname") == HOST.encode()
    finally:
        http.shutdown()
        udp_srv.shutdown()


def test_serve_hostname_answers_any_path_and_udp() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    servers = agnhost.start_serve_hostname(port, udp=True, host="127.0.0.1")
    try:
        assert get(port, "/anything") == HOST
        assert udp(port, b"x") == HOST.encode()
    finally:
        for srv in servers:
            srv.shutdown()


def test_connect_verdicts() -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    assert agnhost.connect(f"127.0.0.1:{port}") is None
    srv.close()
    assert agnhost.connect(f"127.0.0.1:{port}") == "REFUSED"
    assert agnhost.connect(f"127.0.0.1:{port}", "udp", timeout=2) == "REFUSED"
    assert agnhost.connect("no-port") is not None and agnhost.connect("no-port").startswith("OTHER")


def test_connect_udp_round_trip() -> None:
    http, udp_srv = agnhost.start_netexec(0, 0, host="127.0.0.1")
    try:
        assert agnhost.connect(f"127.0.0.1:{udp_srv.server_address[1]}", "udp") is None
    finally:
        http.shutdown()
        udp_srv.shutdown()


def test_connect_timeout() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))  # bound, never answers
        assert agnhost.connect(f"127.0.0.1:{s.getsockname()[1]}", "udp", timeout=0.2) == "TIMEOUT"


def test_cli_connect_exit_codes() -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    runner = CliRunner()
    assert runner.invoke(cli.main, ["agnhost", "connect", f"127.0.0.1:{port}"]).exit_code == 0
    srv.close()
    res = runner.invoke(cli.main, ["agnhost", "connect", f"127.0.0.1:{port}", "--timeout", "1"])
    assert res.exit_code == 1 and "REFUSED" in res.output


def test_dial_asks_another_endpoint_over_http_and_udp() -> None:
    http, udp_srv = agnhost.start_netexec(0, 0, host="127.0.0.1")
    try:
        hp, up = http.server_address[1], udp_srv.server_address[1]
        got = json.loads(get(hp, f"/dial?request=hostname&protocol=http&host=127.0.0.1&port={hp}&tries=2"))
        assert got == {"responses": [HOST, HOST], "errors": []}
        got = json.loads(get(hp, f"/dial?request=echo%20hi&protocol=udp&host=127.0.0.1&port={up}&tries=1"))
        assert got == {"responses": ["hi"], "errors": []}
    finally:
        http.shutdown()
        udp_srv.shutdown()


def test_dial_reports_errors_and_bad_requests() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    status, body = agnhost.http_reply(f"/dial?request=hostname&protocol=http&host=127.0.0.1&port={dead}",
                                      ("127.0.0.1", 1))
    got = json.loads(body)
    assert status == 200 and got["responses"] == [] and len(got["errors"]) == 1
    assert agnhost.http_reply("/dial?request=x&protocol=sctp&host=h&port=1", ("127.0.0.1", 1))[0] == 400
    assert agnhost.http_reply("/dial?protocol=http&host=h&port=1", ("127.0.0.1", 1))[0] == 400
