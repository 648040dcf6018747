"""podnet.cluster.forward: byte relay between two addresses (here both in the test's namespace)."""

from __future__ import annotations

import argparse
import socket
import threading

import pytest

from podnet.cluster import forward


def echo_server() -> socket.socket:
    srv = socket.create_server(("127.0.0.1", 0))

    def loop() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data.upper())

    threading.Thread(target=loop, daemon=True).start()
    return srv


def test_relays_both_directions_and_half_close() -> None:
    target = echo_server()
    listener = forward.serve(("127.0.0.1", 0), target.getsockname()[:2], None, None)
    try:
        with socket.create_connection(listener.getsockname()[:2], timeout=5) as c:
            payload = b"x" * 200_000
            c.sendall(payload)
            c.shutdown(socket.SHUT_WR)  # EOF reaches the server, its reply still comes back
            got = b""
            while chunk := c.recv(65536):
                got += chunk
        assert got == payload.upper()
    finally:
        listener.close()
        target.close()


def test_unreachable_target_closes_the_client_connection() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[:2]  # bound, never listening: refused
    listener = forward.serve(("127.0.0.1", 0), dead, None, None)
    try:
        with socket.create_connection(listener.getsockname()[:2], timeout=5) as c:
            assert c.recv(10) == b""
    finally:
        listener.close()


@pytest.mark.parametrize(("text", "want"), [("127.0.0.1:6443", ("127.0.0.1", 6443)),
                                            ("[::1]:80", ("::1", 80)), ("etcd:2379", ("etcd", 2379))])
def test_split_hostport(text: str, want: tuple[str, int]) -> None:
    assert forward.split_hostport(text) == want


@pytest.mark.parametrize("text", ["6443", "host:", ":80", "host:http"])
def test_split_hostport_refuses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        forward.split_hostport(text)
