"""EtcdProcess: a throwaway /usr/bin/etcd on free loopback ports with its own data directory.

Used by the real-process test tier and the benchmarks. The process is recorded by PID and only that
PID is ever signalled; `restart()` reuses the same ports and data dir (what a crashed etcd that
comes back looks like to its clients).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

ETCD = "/usr/bin/etcd"


def free_port() -> int:
    """A port the kernel considers free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EtcdProcess:
    def __init__(self, data_dir: str | None = None, *, binary: str = ETCD) -> None:
        self._own_dir = data_dir is None
        self.base_dir = Path(data_dir or tempfile.mkdtemp(prefix="podnet-etcd-"))
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.binary = binary
        self.client_port = free_port()
        self.peer_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.pids: list[int] = []  # every PID this object started

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "etcd.log"

    def argv(self) -> list[str]:
        peer = f"http://127.0.0.1:{self.peer_port}"
        return [
            self.binary, "--name", "podnet-test", "--data-dir", str(self.base_dir / "data"),
            "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"podnet-test={peer}", "--log-level", "warn",
        ]

    def start(self, timeout: float = 20.0) -> EtcdProcess:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"etcd already running (pid {self.proc.pid})")
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        try:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        self.pids.append(self.proc.pid)
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited early; log:\n{self._log_tail()}")
            if self.is_healthy():
                return
            time.sleep(0.05)
        raise TimeoutError(f"etcd not healthy after {timeout}s; log:\n{self._log_tail()}")

    def is_healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint + "/health", timeout=1) as resp:
                return b'"true"' in resp.read()
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        self._signal_and_wait(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL (a crash: no chance to flush anything not already fsynced)."""
        self._signal_and_wait(signal.SIGKILL, 10.0)

    def restart(self, timeout: float = 20.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
        self.start(timeout)

    def cleanup(self) -> None:
        """Stop the process (if running) and remove the data dir if this object created it."""
        with contextlib.suppress(Exception):
            self.kill()
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def _signal_and_wait(self, sig: int, timeout: float) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"

    def __enter__(self) -> EtcdProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
