"""A real `podnet-apiserver` process for the real-process tier: HTTPS on a free loopback port with a
generated CA, a token file, and a kubeconfig for kubectl.

The process is recorded by PID and only that PID is ever signalled.  `kill()` / `restart()` let
tests crash it (SIGKILL) and bring it back on the same port, certificate directory and etcd.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from podnet.testing.etcd import EtcdProcess, free_port

REPO = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "admin-token-0123456789"
NOBODY_TOKEN = "nobody-token-0123456789"
# upstream --token-auth-file CSV: token,user,uid,"group1,group2"
TOKEN_FILE = (f'{ADMIN_TOKEN},admin,uid-admin,"system:masters"\n'
              f"{NOBODY_TOKEN},nobody,uid-nobody\n")


def _server_command() -> list[str]:
    script = Path(sys.executable).parent / "podnet-apiserver"
    return [str(script)] if script.exists() else [sys.executable, "-m", "controlplane.apiserver"]


class ApiServerProcess:
    """One podnet-apiserver on 127.0.0.1:<free port> against `etcd`, files under `base_dir`."""

    def __init__(self, etcd: EtcdProcess, base_dir: Path, *, extra_args: list[str] | None = None) -> None:
        self.etcd = etcd
        self.base_dir = base_dir
        base_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.cert_dir = base_dir / "certs"
        self.token_file = base_dir / "tokens.csv"
        self.token_file.write_text(TOKEN_FILE)
        self.token = ADMIN_TOKEN
        self.nobody_token = NOBODY_TOKEN
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.pids: list[int] = []

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> str:
        return str(self.cert_dir / "ca.crt")

    @property
    def log_path(self) -> Path:
        return self.base_dir / "apiserver.log"

    def argv(self) -> list[str]:
        return [*_server_command(), f"--etcd-servers={self.etcd.endpoint}", "--bind-address=127.0.0.1",
                f"--secure-port={self.port}", f"--cert-dir={self.cert_dir}",
                f"--token-auth-file={self.token_file}", "--service-cluster-ip-range=10.96.0.0/16",
                *self.extra_args]

    def start(self, timeout: float = 30.0, *, wait: bool = True) -> ApiServerProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.pids.append(self.proc.pid)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"podnet-apiserver exited {self.proc.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                if self.request("GET", "/readyz", auth=False)[0] == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"podnet-apiserver not ready after {timeout}s:\n{self.log_tail()}")

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)

    def request(self, method: str, path: str, body: Any = None, *, auth: bool = True,
                token: str | None = None, headers: dict[str, str] | None = None,
                content_type: str = "application/json", timeout: float = 10.0) -> tuple[int, Any]:
        """One HTTPS request; returns (status, decoded JSON or text)."""
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", content_type)
        if auth or token:
            req.add_header("Authorization", f"Bearer {token or self.token}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, context=self.ssl_context(), timeout=timeout) as resp:
                return resp.status, _decode(resp.read(), resp.headers.get("Content-Type", ""))
        except urllib.error.HTTPError as e:
            return e.code, _decode(e.read(), e.headers.get("Content-Type", ""))

    def kubeconfig(self, path: Path | None = None, token: str | None = None) -> Path:
        """A kubeconfig for this server (https, the generated CA, a bearer token)."""
        path = path or self.base_dir / "kubeconfig"
        cfg = {
            "apiVersion": "v1", "kind": "Config", "current-context": "podnet",
            "clusters": [{"name": "podnet", "cluster": {"server": self.url,
                                                         "certificate-authority": self.ca_file}}],
            "users": [{"name": "podnet", "user": {"token": token or self.token}}],
            "contexts": [{"name": "podnet", "context": {"cluster": "podnet", "user": "podnet",
                                                         "namespace": "default"}}],
        }
        path.write_text(json.dumps(cfg))
        return path

    def kill(self) -> None:
        """SIGKILL the server (a crash); the port and files stay for restart()."""
        self._signal(signal.SIGKILL, 10.0)

    def stop(self, timeout: float = 10.0) -> None:
        self._signal(signal.SIGTERM, timeout)

    def restart(self, timeout: float = 30.0) -> None:
        self.stop()
        self.start(timeout)

    def cleanup(self) -> None:
        self._signal(signal.SIGKILL, 10.0)

    def _signal(self, sig: int, timeout: float) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _decode(raw: bytes, content_type: str) -> Any:
    if content_type.startswith("application/json"):
        return json.loads(raw) if raw else None
    return raw.decode(errors="replace")


def kubectl_binary(minor: int) -> str | None:
    """/usr/lib/google-cloud-sdk/bin/kubectl.1.<minor> when installed."""
    path = f"/usr/lib/google-cloud-sdk/bin/kubectl.1.{minor}"
    return path if os.access(path, os.X_OK) else shutil.which(f"kubectl.1.{minor}")


@contextlib.contextmanager
def etcd_and_apiserver(work: Path) -> Iterator[ApiServerProcess]:
    """A fresh etcd plus a podnet-apiserver on it, both stopped (by PID) on exit."""
    etcd = EtcdProcess(str(work / "etcd"))
    server = ApiServerProcess(etcd, work / "apiserver")
    try:
        etcd.start()
        yield server.start()
    finally:
        server.cleanup()
        etcd.cleanup()


def component_command(script: str, module: str) -> list[str]:
    """The installed console script of a control-plane component, else `python -m <module>`."""
    path = Path(sys.executable).parent / script
    return [str(path)] if path.exists() else [sys.executable, "-m", module]


@contextlib.contextmanager
def component_process(server: ApiServerProcess, log_path: Path, command: list[str]
                      ) -> Iterator[subprocess.Popen[bytes]]:
    """A component process (`command --kubeconfig=...`) on `server`, its output in `log_path`;
    killed by its recorded PID at exit, and the log's tail printed for the test report."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*command, f"--kubeconfig={server.kubeconfig()}"], stdout=log,
                                stderr=subprocess.STDOUT, cwd=REPO,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        print(log_path.read_text(errors="replace")[-4000:])
