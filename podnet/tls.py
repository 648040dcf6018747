"""Self-signed CA and serving certificate for podnet's HTTPS servers, made with the openssl CLI.

kubectl only sends bearer tokens over TLS (reference proxy_apiserver.md finding 0.3), so the API
server always serves HTTPS; when no certificate is given it generates one, like kube-apiserver does
into --cert-dir.  Generation is idempotent: existing files whose SANs cover the wanted names are kept,
so restarts keep the same CA and clients keep trusting it.
"""

from __future__ import annotations

import ipaddress
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from podnet import execs

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVING_CERT = "apiserver.crt"
SERVING_KEY = "apiserver.key"


@dataclass(frozen=True)
class ServingCert:
    """Paths of a serving certificate, its key and the CA that signed it."""

    cert_file: str
    key_file: str
    ca_file: str


def ensure_serving_cert(cert_dir: str, hosts: list[str], *, days: int = 3650) -> ServingCert:
    """A CA and a serving cert for `hosts` (IPs and DNS names) in cert_dir, generated when missing."""
    d = Path(cert_dir)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_crt, ca_key = d / CA_CERT, d / CA_KEY
    crt, key = d / SERVING_CERT, d / SERVING_KEY
    if not (ca_crt.exists() and ca_key.exists()):
        _make_ca(ca_crt, ca_key, days)
        crt.unlink(missing_ok=True)
    sans = subject_alt_names(hosts)
    if not (crt.exists() and key.exists() and _covers(crt, sans)):
        _make_serving(crt, key, ca_crt, ca_key, sans, days)
    return ServingCert(str(crt), str(key), str(ca_crt))


def subject_alt_names(hosts: list[str]) -> list[str]:
    """openssl SAN entries (`IP:...`, `DNS:...`) for hosts plus the loopback names, deduplicated."""
    out: list[str] = []
    for h in [*hosts, "127.0.0.1", "localhost"]:
        if not h or h in ("0.0.0.0", "::"):
            continue
        try:
            entry = f"IP:{ipaddress.ip_address(h)}"
        except ValueError:
            entry = f"DNS:{h}"
        if entry not in out:
            out.append(entry)
    return out


def _make_ca(crt: Path, key: Path, days: int) -> None:
    _genkey(key)
    execs.run(["openssl", "req", "-x509", "-new", "-key", str(key), "-sha256", "-days", str(days),
               "-subj", "/CN=podnet-ca", "-addext", "basicConstraints=critical,CA:TRUE",
               "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", str(crt)])


def _make_serving(crt: Path, key: Path, ca_crt: Path, ca_key: Path, sans: list[str], days: int) -> None:
    _genkey(key)
    with tempfile.TemporaryDirectory() as tmp:
        csr, ext = os.path.join(tmp, "req.csr"), os.path.join(tmp, "ext.cnf")
        execs.run(["openssl", "req", "-new", "-key", str(key), "-subj", "/CN=podnet-apiserver",
                   "-out", csr])
        Path(ext).write_text(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
            f"extendedKeyUsage=serverAuth\nsubjectAltName={','.join(sans)}\n"
        )
        execs.run(["openssl", "x509", "-req", "-in", csr, "-CA", str(ca_crt), "-CAkey", str(ca_key),
                   "-CAcreateserial", "-sha256", "-days", str(days), "-extfile", ext,
                   "-out", str(crt)])
    (ca_crt.parent / "ca.srl").unlink(missing_ok=True)


def _genkey(key: Path) -> None:
    # written with 0600 from the start: the key must never be readable by others, even briefly
    tmp = key.with_suffix(".tmp")
    execs.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
               "-out", str(tmp)])
    os.chmod(tmp, 0o600)
    os.replace(tmp, key)


def _covers(crt: Path, sans: list[str]) -> bool:
    """Whether the certificate's subjectAltName lists every wanted entry."""
    proc = execs.run(["openssl", "x509", "-in", str(crt), "-noout", "-ext", "subjectAltName"],
                     check=False)
    if proc.returncode != 0:
        return False
    text = proc.stdout.replace("IP Address:", "IP:")
    have = {part.strip() for part in text.splitlines()[-1].split(",")} if text.strip() else set()
    return all(s in have for s in sans)
