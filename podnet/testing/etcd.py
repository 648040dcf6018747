"""EtcdProcess: a throwaway /usr/bin/etcd on free loopback ports with its own data directory.

Used by the real-process test tier and the benchmarks. The process is recorded by PID and only that
PID is ever signalled; `restart()` reuses the same ports and data dir (what a crashed etcd that
comes back looks like to its clients).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from podnet import netns as netns_mod

ETCD = "/usr/bin/etcd"


def free_port() -> int:
    """A port the kernel considers free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EtcdProcess:
    """`netns`/`host`: run inside that namespace (e.g. a test fabric) listening on `host` as well as
    on its loopback, so simulated hosts reach it; the namespace is fresh, so the well-known ports
    are used there, and health checks / `kv()` open their sockets inside it."""

    def __init__(self, data_dir: str | None = None, *, binary: str = ETCD,
                 netns: str | None = None, host: str = "127.0.0.1") -> None:
        self._own_dir = data_dir is None
        self.base_dir = Path(data_dir or tempfile.mkdtemp(prefix="podnet-etcd-"))
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.binary = binary
        self.netns = netns
        self.host = host
        self.client_port = 2379 if netns else free_port()
        self.peer_port = 2380 if netns else free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.pids: list[int] = []  # every PID this object started

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    def kv(self) -> EtcdHttp:
        """A stdlib client on etcd's JSON gateway, usable from the test process in any netns."""
        return EtcdHttp(self.endpoint, self.netns)

    @property
    def log_path(self) -> Path:
        return self.base_dir / "etcd.log"

    def argv(self) -> list[str]:
        peer = f"http://127.0.0.1:{self.peer_port}"
        listen = self.endpoint
        if self.host != "127.0.0.1":
            listen += f",http://127.0.0.1:{self.client_port}"
        # nsenter without --fork execs etcd itself, so the recorded PID is etcd's.
        prefix = ["nsenter", f"--net={netns_mod.path_of(self.netns)}", "--"] if self.netns else []
        return [
            *prefix, self.binary, "--name", "podnet-test", "--data-dir", str(self.base_dir / "data"),
            "--listen-client-urls", listen, "--advertise-client-urls", self.endpoint,
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
            with netns_mod.enter(self.netns), \
                    urllib.request.urlopen(self.endpoint + "/health", timeout=1) as resp:
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


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode()


class EtcdHttp:
    """etcd's v3 JSON gateway (/v3/kv/..., /v3/lease/...) over urllib.

    Tests use it to write config, delete or inspect keys and compact, without a gRPC client: the
    socket is opened in the calling thread inside `netns` (setns is per thread), which gRPC's own
    threads would not honour.
    """

    def __init__(self, endpoint: str, netns: str | None = None) -> None:
        self.endpoint = endpoint
        self.netns = netns

    def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(self.endpoint + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with netns_mod.enter(self.netns), urllib.request.urlopen(req, timeout=5) as resp:
            result: dict[str, Any] = json.loads(resp.read())
        return result

    def put(self, key: str, value: str, *, lease: int = 0) -> int:
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        return int(self.call("/v3/kv/put", body)["header"]["revision"])

    def get(self, key: str) -> str | None:
        kvs = self.call("/v3/kv/range", {"key": _b64(key)}).get("kvs", [])
        return _unb64(kvs[0].get("value", "")) if kvs else None

    def get_prefix(self, prefix: str) -> dict[str, str]:
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        kvs = self.call("/v3/kv/range", {"key": _b64(prefix), "range_end": _b64(end)}).get("kvs", [])
        return {_unb64(kv["key"]): _unb64(kv.get("value", "")) for kv in kvs}

    def lease_of(self, key: str) -> int:
        kvs = self.call("/v3/kv/range", {"key": _b64(key)}).get("kvs", [])
        return int(kvs[0].get("lease", 0)) if kvs else 0

    def delete(self, key: str) -> int:
        """Number of keys deleted."""
        return int(self.call("/v3/kv/deleterange", {"key": _b64(key)}).get("deleted", 0))

    def revision(self) -> int:
        return int(self.call("/v3/kv/range", {"key": _b64("\0")})["header"]["revision"])

    def compact(self, revision: int | None = None) -> int:
        """Compact up to `revision` (default: the current one); returns it."""
        rev = revision if revision is not None else self.revision()
        self.call("/v3/kv/compaction", {"revision": str(rev), "physical": True})
        return rev

    def grant(self, ttl: int) -> int:
        return int(self.call("/v3/lease/grant", {"TTL": str(ttl)})["ID"])

    def revoke(self, lease_id: int) -> None:
        self.call("/v3/lease/revoke", {"ID": str(lease_id)})
