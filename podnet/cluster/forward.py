"""`python -m podnet.cluster.forward`: relay TCP from a port in one namespace to an address in
another, byte for byte (TLS stays end to end).

`podnet up` runs it in the root namespace to make the API server (in the control-plane namespace)
reachable on the root namespace's 127.0.0.1 without changing any root-namespace configuration:
only a listening loopback socket.  setns is per thread, so the listening socket is created inside
--listen-netns and every outgoing connection inside --connect-netns from the relaying thread.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import sys
import threading
from types import FrameType

from podnet import netns


def split_hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def serve(listen: tuple[str, int], connect: tuple[str, int], listen_netns: str | None,
          connect_netns: str | None, ready: threading.Event | None = None) -> socket.socket:
    """Bind the listener and start the accept loop on a daemon thread; returns the listener."""
    with netns.enter(listen_netns):
        listener = socket.create_server(listen, reuse_port=False)
    threading.Thread(target=_accept_loop, args=(listener, connect, connect_netns), daemon=True).start()
    if ready is not None:
        ready.set()
    return listener


def _accept_loop(listener: socket.socket, connect: tuple[str, int], connect_netns: str | None) -> None:
    while True:
        try:
            inner, _ = listener.accept()
        except OSError:
            return  # listener closed
        threading.Thread(target=_bridge, args=(inner, connect, connect_netns), daemon=True).start()


def _bridge(inner: socket.socket, connect: tuple[str, int], connect_netns: str | None) -> None:
    try:
        with netns.enter(connect_netns):
            outer = socket.create_connection(connect, timeout=5)
    except OSError:
        inner.close()
        return
    outer.settimeout(None)
    threading.Thread(target=_relay, args=(outer, inner), daemon=True).start()
    _relay(inner, outer)


def _relay(src: socket.socket, dst: socket.socket) -> None:
    """Copy until EOF, then half-close `dst` so the other direction can finish (HTTP/1.1 keeps
    connections open; a half-close must not cut a response short)."""
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="podnet-forward", description=__doc__)
    p.add_argument("--listen", type=split_hostport, required=True)
    p.add_argument("--listen-netns", default=None)
    p.add_argument("--connect", type=split_hostport, required=True)
    p.add_argument("--connect-netns", default=None)
    args = p.parse_args(argv)
    stop = threading.Event()

    def on_signal(_sig: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    listener = serve(args.listen, args.connect, args.listen_netns, args.connect_netns)
    print(f"forwarding {args.listen} -> {args.connect_netns or '(own netns)'} {args.connect}",
          file=sys.stderr, flush=True)
    stop.wait()
    listener.close()


if __name__ == "__main__":
    main()
