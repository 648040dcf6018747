"""Command-line flags of `podnet-apiserver` (upstream kube-apiserver names and defaults)."""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Config:
    """Everything the API server process needs, parsed from its flags."""

    etcd_servers: tuple[str, ...]
    etcd_prefix: str
    etcd_timeout: float
    bind_address: str
    advertise_address: str
    secure_port: int
    insecure_port: int
    cert_dir: str
    tls_cert_file: str
    tls_private_key_file: str
    token_auth_file: str
    service_cluster_ip_range: str
    service_node_port_range: str
    log_level: str
    min_request_timeout: int = 1800
    max_requests_inflight: int = 400
    max_mutating_requests_inflight: int = 200


def build_parser() -> argparse.ArgumentParser:
    """The flag parser; `--help` documents every flag."""
    p = argparse.ArgumentParser(
        prog="podnet-apiserver",
        description="An etcd-backed, Kubernetes-compatible API server (HTTPS with bearer tokens).",
    )
    p.add_argument("--etcd-servers", default="http://127.0.0.1:2379",
                   help="comma-separated etcd client URLs (default %(default)s)")
    p.add_argument("--etcd-prefix", default="/registry",
                   help="key prefix of every object stored in etcd (default %(default)s)")
    p.add_argument("--etcd-timeout", type=float, default=2.0,
                   help="seconds a store call may take before the request fails with 504 "
                        "(default %(default)s)")
    p.add_argument("--bind-address", default="0.0.0.0",
                   help="address the secure port listens on (default %(default)s)")
    p.add_argument("--advertise-address", default="",
                   help="address published in the default/kubernetes Endpoints (default: --bind-address, "
                        "or 127.0.0.1 when that is 0.0.0.0)")
    p.add_argument("--secure-port", type=int, default=6443,
                   help="HTTPS port; 0 disables HTTPS (default %(default)s)")
    p.add_argument("--insecure-port", type=int, default=0,
                   help="plain-HTTP port on 127.0.0.1 only, no authentication (everyone is "
                        "system:masters); 0 = off (default)")
    p.add_argument("--cert-dir", default="/var/run/podnet/apiserver-certs",
                   help="directory where a self-signed CA and serving certificate are generated when "
                        "--tls-cert-file/--tls-private-key-file are not given (default %(default)s)")
    p.add_argument("--tls-cert-file", default="",
                   help="serving certificate (PEM, may include the chain)")
    p.add_argument("--tls-private-key-file", default="",
                   help="private key of --tls-cert-file (PEM)")
    p.add_argument("--token-auth-file", default="",
                   help='static bearer tokens, CSV lines `token,user,uid,"group1,group2"`; without it '
                        "every HTTPS request is unauthorized")
    p.add_argument("--service-cluster-ip-range", default="10.96.0.0/12",
                   help="CIDR ClusterIPs are allocated from (default %(default)s)")
    p.add_argument("--service-node-port-range", default="30000-32767",
                   help="port range NodePorts are allocated from (default %(default)s)")
    p.add_argument("--min-request-timeout", type=int, default=1800,
                   help="seconds a watch without timeoutSeconds lasts at least; each one gets a random "
                        "duration in [N, 2N) so clients do not reconnect in lockstep (default %(default)s)")
    p.add_argument("--max-requests-inflight", type=int, default=400,
                   help="concurrent non-mutating requests (watches excluded) before 429 TooManyRequests; "
                        "0 = unlimited (default %(default)s)")
    p.add_argument("--max-mutating-requests-inflight", type=int, default=200,
                   help="concurrent mutating requests before 429 TooManyRequests; 0 = unlimited "
                        "(default %(default)s)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="log verbosity (default %(default)s)")
    return p


def parse_args(argv: Sequence[str] | None = None) -> Config:
    """Parse and validate the flags (argparse exits with status 2 on a bad one)."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    _validate(parser, ns)
    return Config(
        etcd_servers=tuple(s.strip() for s in ns.etcd_servers.split(",") if s.strip()),
        etcd_prefix="/" + ns.etcd_prefix.strip("/"),
        etcd_timeout=ns.etcd_timeout,
        bind_address=ns.bind_address,
        advertise_address=ns.advertise_address or _advertised(ns.bind_address),
        secure_port=ns.secure_port,
        insecure_port=ns.insecure_port,
        cert_dir=ns.cert_dir,
        tls_cert_file=ns.tls_cert_file,
        tls_private_key_file=ns.tls_private_key_file,
        token_auth_file=ns.token_auth_file,
        service_cluster_ip_range=ns.service_cluster_ip_range,
        service_node_port_range=ns.service_node_port_range,
        log_level=ns.log_level,
        min_request_timeout=ns.min_request_timeout,
        max_requests_inflight=ns.max_requests_inflight,
        max_mutating_requests_inflight=ns.max_mutating_requests_inflight,
    )


def _advertised(bind: str) -> str:
    return "127.0.0.1" if bind in ("0.0.0.0", "::", "") else bind


def _validate(parser: argparse.ArgumentParser, ns: argparse.Namespace) -> None:
    if bool(ns.tls_cert_file) != bool(ns.tls_private_key_file):
        parser.error("--tls-cert-file and --tls-private-key-file go together")
    if ns.secure_port == 0 and ns.insecure_port == 0:
        parser.error("one of --secure-port and --insecure-port must be non-zero")
    for flag, port in (("--secure-port", ns.secure_port), ("--insecure-port", ns.insecure_port)):
        if not 0 <= port <= 65535:
            parser.error(f"{flag} must be 0-65535")
    try:
        ipaddress.ip_network(ns.service_cluster_ip_range, strict=True)
    except ValueError as e:
        parser.error(f"--service-cluster-ip-range: {e}")
    parse_port_range(parser, ns.service_node_port_range)
    if ns.advertise_address:
        try:
            ipaddress.ip_address(ns.advertise_address)
        except ValueError:
            parser.error("--advertise-address must be an IP address")
    if ns.min_request_timeout <= 0:
        parser.error("--min-request-timeout must be positive")
    if ns.max_requests_inflight < 0 or ns.max_mutating_requests_inflight < 0:
        parser.error("--max-*-requests-inflight must not be negative")
    if not ns.etcd_servers.strip():
        parser.error("--etcd-servers is required")


def parse_port_range(parser: argparse.ArgumentParser, text: str) -> tuple[int, int]:
    """`30000-32767` (or a single port) as (first, last); a parser error otherwise."""
    first, _, last = text.partition("-")
    try:
        lo, hi = int(first), int(last or first)
    except ValueError:
        parser.error(f"--service-node-port-range: bad range {text!r}")
    if not 1 <= lo <= hi <= 65535:
        parser.error(f"--service-node-port-range: bad range {text!r}")
    return lo, hi
