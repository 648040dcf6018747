"""Where the API server is and how to authenticate: a kubeconfig file, or in-cluster style values.

Follows client-go's clientcmd for the subset podnet needs: `current-context` (or an explicit
context) picks a cluster (`server`, `certificate-authority[-data]`, `insecure-skip-tls-verify`) and a
user (`token`, `tokenFile`, `client-certificate`/`client-key`); relative file paths are resolved
against the kubeconfig's directory, as kubectl does. A token file is re-read on every request so a
rotated service-account token is picked up without a restart.
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["KubeConfig", "KubeConfigError", "from_in_cluster", "load_kubeconfig"]

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


class KubeConfigError(ValueError):
    """A kubeconfig that is missing, malformed, or names a context/cluster/user it lacks."""


@dataclass(frozen=True)
class KubeConfig:
    server: str
    ca_data: bytes | None = None  # PEM
    ca_file: str | None = None
    insecure_skip_tls_verify: bool = False
    token: str | None = None
    token_file: str | None = None
    client_cert_file: str | None = None
    client_key_file: str | None = None
    namespace: str = "default"

    def bearer_token(self) -> str | None:
        """The token to send now (a token file wins over nothing, is re-read for rotation)."""
        if self.token:
            return self.token
        if self.token_file:
            return Path(self.token_file).read_text().strip() or None
        return None

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for an https server (None for http)."""
        if not self.server.startswith("https://"):
            return None
        ctx = ssl.create_default_context()
        if self.insecure_skip_tls_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif self.ca_data is not None:
            ctx.load_verify_locations(cadata=self.ca_data.decode())
        elif self.ca_file:
            ctx.load_verify_locations(cafile=self.ca_file)
        if self.client_cert_file:
            ctx.load_cert_chain(self.client_cert_file, self.client_key_file)
        return ctx


def _named(entries: Any, name: str, what: str, key: str) -> dict[str, Any]:
    for entry in entries or []:
        if isinstance(entry, dict) and entry.get("name") == name:
            value = entry.get(key) or {}
            if not isinstance(value, dict):
                raise KubeConfigError(f"{what} {name!r}: {key} is not a mapping")
            return value
    raise KubeConfigError(f"{what} {name!r} not found in kubeconfig")


def _resolve(base: Path, path: str | None) -> str | None:
    if not path:
        return None
    return path if os.path.isabs(path) else str(base / path)


def _pem_data(value: str | None) -> bytes | None:
    return base64.b64decode(value) if value else None


def default_path() -> Path:
    """$KUBECONFIG's first entry, else ~/.kube/config (kubectl's order, without merging)."""
    env = os.environ.get("KUBECONFIG", "")
    first = next((p for p in env.split(os.pathsep) if p), "")
    return Path(first) if first else Path.home() / ".kube" / "config"


def load_kubeconfig(path: str | os.PathLike[str] | None = None, *, context: str | None = None) -> KubeConfig:
    """Read a kubeconfig (YAML or JSON) and resolve one context into a KubeConfig."""
    file = Path(path) if path is not None else default_path()
    try:
        doc = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise KubeConfigError(f"cannot read kubeconfig {file}: {e}") from e
    if not isinstance(doc, dict):
        raise KubeConfigError(f"kubeconfig {file} is not a mapping")
    name = context or doc.get("current-context")
    if not name:
        raise KubeConfigError(f"kubeconfig {file} has no current-context and none was given")
    ctx = _named(doc.get("contexts"), name, "context", "context")
    cluster = _named(doc.get("clusters"), ctx.get("cluster", ""), "cluster", "cluster")
    user = _named(doc.get("users"), ctx["user"], "user", "user") if ctx.get("user") else {}
    if not cluster.get("server"):
        raise KubeConfigError(f"cluster {ctx.get('cluster')!r} has no server")
    base = file.resolve().parent
    return KubeConfig(
        server=str(cluster["server"]).rstrip("/"),
        ca_data=_pem_data(cluster.get("certificate-authority-data")),
        ca_file=_resolve(base, cluster.get("certificate-authority")),
        insecure_skip_tls_verify=bool(cluster.get("insecure-skip-tls-verify", False)),
        token=user.get("token"),
        token_file=_resolve(base, user.get("tokenFile")),
        client_cert_file=_resolve(base, user.get("client-certificate"))
        or _data_file(user.get("client-certificate-data")),
        client_key_file=_resolve(base, user.get("client-key")) or _data_file(user.get("client-key-data")),
        namespace=ctx.get("namespace") or "default",
    )


def _data_file(value: str | None) -> str | None:
    """ssl can only load client certificates from files, so inline data goes to a private temp file."""
    if not value:
        return None
    fd, name = tempfile.mkstemp(prefix="podnet-kubeconfig-", suffix=".pem")
    with os.fdopen(fd, "wb") as f:
        f.write(base64.b64decode(value))
    return name


def from_in_cluster(env: dict[str, str] | None = None, sa_dir: str = SERVICE_ACCOUNT_DIR) -> KubeConfig:
    """In-cluster style: KUBERNETES_SERVICE_HOST/PORT plus the service-account token, CA and namespace
    files (explicit `env` and `sa_dir` so tests and kubelet-less setups can point elsewhere)."""
    env = dict(os.environ) if env is None else env
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise KubeConfigError("not in a cluster: KUBERNETES_SERVICE_HOST/PORT unset")
    if ":" in host:
        host = f"[{host}]"  # IPv6 literal
    sa = Path(sa_dir)
    ns_file = sa / "namespace"
    return KubeConfig(
        server=f"https://{host}:{port}",
        ca_file=str(sa / "ca.crt"),
        token_file=str(sa / "token"),
        namespace=ns_file.read_text().strip() if ns_file.exists() else "default",
    )
