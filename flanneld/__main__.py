"""`podnet-flanneld`: one per host; leases this host a pod subnet and programs routes to all others.

    podnet-flanneld --etcd-endpoints http://10.250.0.1:2379 [--etcd-prefix /coreos.com/network]
        [--iface eth0] [--public-ip IP] [--subnet-file /run/flannel/subnet.env] [--ip-masq]
        [--kube-subnet-mgr --kubeconfig-file F --net-config-path /etc/kube-flannel/net-conf.json]
        [--healthz-ip 0.0.0.0 --healthz-port 0] [--resync-period 10s]

Flags are upstream's; as upstream, each may also come from a FLANNELD_<FLAG> environment variable
(FLANNELD_IP_MASQ=true).  SIGTERM/SIGINT stop it; the dataplane and the lease stay in place, so a
restart keeps the subnet and does not disturb pod traffic.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from flanneld import subnetenv
from flanneld.backend.base import Backend
from flanneld.daemon import Daemon, Options, resolve_iface
from podnet import log
from podnet.flags import duration
from podnet.log import get_logger
from podnet.metrics import Metrics, MetricsServer
from podnet.netlink import Netlink
from podnet.reconcile import stop_event_on_signals
from podnet.xtables.iptables import Iptables

LOG = get_logger("flanneld")
T = TypeVar("T")


def _env(flag: str, default: str | None = None) -> str | None:
    return os.environ.get("FLANNELD_" + flag.upper().replace("-", "_"), default)


def _env_bool(flag: str) -> bool:
    return (_env(flag) or "").lower() in ("1", "true", "yes")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="podnet-flanneld", description=(__doc__ or "").splitlines()[0])
    p.add_argument("--etcd-endpoints", default=_env("etcd-endpoints", "http://127.0.0.1:2379"),
                   help="comma-separated etcd endpoints")
    p.add_argument("--etcd-prefix", default=_env("etcd-prefix", "/coreos.com/network"))
    p.add_argument("--iface", default=_env("iface"), help="interface (name or IP) for inter-host traffic")
    p.add_argument("--public-ip", default=_env("public-ip"), help="IP other hosts reach us on")
    p.add_argument("--subnet-file", default=_env("subnet-file", subnetenv.DEFAULT_PATH))
    p.add_argument("--ip-masq", action="store_true", default=_env_bool("ip-masq"),
                   help="masquerade traffic leaving the flannel network")
    p.add_argument("--iptables-forward-rules", default=_env("iptables-forward-rules", "true"),
                   choices=["true", "false"], help="add FLANNEL-FWD accept rules (default true)")
    p.add_argument("--kube-subnet-mgr", action="store_true", default=_env_bool("kube-subnet-mgr"),
                   help="take the subnet from the Node's spec.podCIDR instead of etcd")
    p.add_argument("--kubeconfig-file", default=_env("kubeconfig-file"))
    p.add_argument("--net-config-path", default=_env("net-config-path", "/etc/kube-flannel/net-conf.json"),
                   help="net-conf.json for --kube-subnet-mgr")
    p.add_argument("--node-name", default=os.environ.get("NODE_NAME"),
                   help="this host's Node (kube mode; default $NODE_NAME, else the hostname)")
    p.add_argument("--healthz-ip", default=_env("healthz-ip", "0.0.0.0"))
    p.add_argument("--healthz-port", type=int, default=int(_env("healthz-port", "0") or 0),
                   help="serve /healthz, /readyz and /metrics here (0 = off, as upstream)")
    p.add_argument("--subnet-lease-renew-margin", type=int,
                   default=int(_env("subnet-lease-renew-margin", "60") or 60),
                   help="renew the lease this many minutes before it expires")
    p.add_argument("--resync-period", type=duration, default=duration(_env("resync-period", "10s") or "10s"),
                   help="full dataplane reconcile period (re-adds missing, removes stale entries)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def retry(what: str, fn: Callable[[], T], stop: threading.Event, cap: float = 5.0) -> T | None:
    """`fn()` until it succeeds (exponential backoff to `cap`), or None once `stop` is set:
    flanneld may start before etcd or the API server is reachable."""
    delay = 0.1
    while not stop.is_set():
        try:
            return fn()
        except Exception as exc:
            LOG.warning("%s failed: %s; retrying in %.1fs", what, exc, delay)
            stop.wait(delay)
            delay = min(delay * 2, cap)
    return None


def subnet_manager(args: argparse.Namespace) -> Any:
    if args.kube_subnet_mgr:
        from flanneld.config import NetworkConfig
        from flanneld.subnet.kube import KubeSubnetManager
        from podnet.api.client import Client
        from podnet.api.kubeconfig import load_kubeconfig

        client = Client.from_config(load_kubeconfig(args.kubeconfig_file), user_agent="podnet-flanneld")
        config = NetworkConfig.parse(Path(args.net_config_path).read_bytes())
        return KubeSubnetManager(client, args.node_name or socket.gethostname(), config)
    from flanneld.subnet.etcd import EtcdSubnetManager
    from podnet.store.etcd import EtcdStore

    store = EtcdStore([e.strip() for e in args.etcd_endpoints.split(",") if e.strip()])
    return EtcdSubnetManager(store, args.etcd_prefix)


def make_backend(config: Any) -> Backend:
    backend: dict[str, Any] = dict(config.backend)
    kind = str(backend.get("Type", "")).lower()
    if kind == "vxlan":
        from flanneld.backend.vxlan import VxlanBackend
        return VxlanBackend(backend)
    if kind == "host-gw":
        from flanneld.backend.hostgw import HostGwBackend
        return HostGwBackend(backend)
    if kind == "udp":
        from flanneld.backend.udp import UdpBackend
        return UdpBackend(backend, ipaddress.IPv4Network(config.network))
    raise ValueError(f"backend type {backend.get('Type')!r} is not supported (vxlan, host-gw, udp)")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    log.setup("DEBUG" if args.verbose else "INFO")
    stop = stop_event_on_signals()
    sm = subnet_manager(args)
    config = retry("reading the network config", sm.network_config, stop)
    if config is None:
        return 0
    backend = make_backend(config)
    with Netlink.open() as nl:
        iface = resolve_iface(nl, args.iface)
        opts = Options(public_ip=args.public_ip or iface.ip, iface=iface, subnet_file=args.subnet_file,
                       ip_masq=args.ip_masq, forward=args.iptables_forward_rules == "true",
                       renew_margin=args.subnet_lease_renew_margin * 60.0,
                       resync_period=args.resync_period, watch_kernel=True)
        metrics = Metrics()
        daemon = Daemon(sm, backend, nl, Iptables(4), opts, metrics=metrics)
        daemon.config = config
        server = None
        if args.healthz_port:
            server = MetricsServer(args.healthz_ip, args.healthz_port, metrics, daemon.ready.is_set).start()
        LOG.info("flanneld: %s backend on %s (%s, MTU %d), public IP %s", backend.type_name, iface.name,
                 iface.ip, iface.mtu, opts.public_ip)
        try:
            daemon.run(stop)
        finally:
            if server is not None:
                server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
