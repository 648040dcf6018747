"""`podnet-kubelet`: the node agent — registers the node, heartbeats, runs the pods bound to it.

    podnet-kubelet --kubeconfig /etc/podnet/kubelet.kubeconfig [--hostname-override node1] \
        [--node-ip 10.0.0.11] [--cni-conf-dir /etc/cni/net.d] [--cni-bin-dir /opt/cni/bin] \
        [--root-dir /var/lib/kubelet] [--container-runtime process|crun]

Flags are upstream's names and defaults; --container-runtime, --pod-logs-dir and --cni-cache-dir
are podnet's (there is no CRI endpoint: the runtime is in-process).  SIGTERM/SIGINT stop the loop
and leave every pod running, as upstream's kubelet does: a restarted kubelet adopts them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from controlplane.kubelet.kubelet import Kubelet, Periods
from controlplane.kubelet.logserver import ContainerLogs, routes
from controlplane.kubelet.node import NodeAgent, NodeConfig, detect_node_ip
from controlplane.kubelet.podworker import PodSyncer
from controlplane.kubelet.probes import ProbeManager, RuntimeProber
from controlplane.kubelet.sandbox import Sandboxes
from podnet.api.client import Client
from podnet.api.kubeconfig import load_kubeconfig
from podnet.cniruntime import CniRuntime
from podnet.flags import duration
from podnet.httpserve import HttpServer
from podnet.reconcile import stop_event_on_signals
from podnet.runtime.base import ContainerRuntime

log = logging.getLogger("podnet.kubelet")

RUNTIMES = {"process": ("podnet.runtime.process", "ProcessRuntime"),
            "crun": ("podnet.runtime.crun", "CrunRuntime")}


def _labels(text: str) -> dict[str, str]:
    out = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"--node-labels wants key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="podnet-kubelet", description=__doc__.splitlines()[0])
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--hostname-override", default="", help="node name (default: the host name)")
    p.add_argument("--node-ip", default="", help="InternalIP to report (default: the default route's source)")
    p.add_argument("--cni-conf-dir", default="/etc/cni/net.d")
    p.add_argument("--cni-bin-dir", default="/opt/cni/bin", help="':'-separated plugin directories")
    p.add_argument("--cni-cache-dir", default="/var/lib/cni", help="libcni result cache (podnet)")
    p.add_argument("--root-dir", default="/var/lib/kubelet")
    p.add_argument("--pod-logs-dir", default="/var/log/pods", help="container logs (podnet)")
    p.add_argument("--max-pods", type=int, default=110)
    p.add_argument("--node-labels", type=_labels, default={})
    p.add_argument("--register-node", type=lambda s: s.lower() != "false", default=True)
    p.add_argument("--node-status-update-frequency", type=duration, default=10.0)
    p.add_argument("--node-lease-duration-seconds", type=int, default=40)
    p.add_argument("--container-runtime", choices=sorted(RUNTIMES), default="process")
    p.add_argument("--port", type=int, default=10250, help="the kubelet server (container logs)")
    p.add_argument("--address", default="0.0.0.0", help="the kubelet server's bind address")
    p.add_argument("--sync-frequency", type=duration, default=60.0)
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def make_runtime(name: str, root_dir: str) -> ContainerRuntime:
    module, cls = RUNTIMES[name]
    factory: Any = getattr(importlib.import_module(module), cls)
    runtime: ContainerRuntime = factory(os.path.join(root_dir, "containers"))
    return runtime


def build(args: argparse.Namespace, client: Client) -> Kubelet:
    name = args.hostname_override or socket.gethostname()
    node_ip = args.node_ip or detect_node_ip()
    runtime = make_runtime(args.container_runtime, args.root_dir)
    cfg = NodeConfig(name=name, node_ip=node_ip, port=args.port, max_pods=args.max_pods,
                     labels=args.node_labels, lease_duration=args.node_lease_duration_seconds,
                     runtime_name=args.container_runtime, register=args.register_node)
    cni = CniRuntime(args.cni_bin_dir.split(":"), cache_dir=args.cni_cache_dir)
    sandboxes = Sandboxes(args.root_dir, cni, args.cni_conf_dir)
    syncer = PodSyncer(client, {}, runtime, sandboxes, host_ip=node_ip, logs_root=args.pod_logs_dir,
                       runtime_name=args.container_runtime)
    periods = Periods(status=args.node_status_update_frequency,
                      lease=max(0.2, args.node_lease_duration_seconds / 4),
                      resync=args.sync_frequency)
    return Kubelet(client, NodeAgent(client, cfg), syncer, runtime, args.cni_conf_dir, periods)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    client = Client.from_config(load_kubeconfig(args.kubeconfig), user_agent="podnet-kubelet")
    stop = stop_event_on_signals(signal.SIGTERM, signal.SIGINT)
    kubelet = build(args, client)
    probes = ProbeManager(RuntimeProber(kubelet.runtime.exec), on_change=kubelet.poke)
    kubelet.syncer.probes = probes
    probes.start()
    logs = ContainerLogs(Path(args.pod_logs_dir), pod_uid=kubelet.pod_uid, running=kubelet.container_running)
    server = HttpServer(args.address, args.port, routes(logs), name="kubelet-server").start()
    log.info("kubelet for node %s (ip %s, runtime %s) starting; serving on %s:%d", kubelet.node.cfg.name,
             kubelet.node.cfg.node_ip, args.container_runtime, args.address, server.port)
    try:
        kubelet.run(stop)
    finally:
        server.stop()
        probes.stop()
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
