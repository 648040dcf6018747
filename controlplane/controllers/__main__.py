"""`podnet-controller-manager`: runs the cluster's controllers against an API server.

    podnet-controller-manager --kubeconfig /etc/podnet/controller-manager.kubeconfig \
        [--controllers '*,-nodeipam'] [--node-monitor-grace-period 40s] [--pod-eviction-timeout 5m] \
        [--allocate-node-cidrs --cluster-cidr 10.244.0.0/16 --node-cidr-mask-size 24]

Each controller runs its own loop on a thread; they share one informer per resource.  SIGTERM/SIGINT
stop it cleanly (the key being synced finishes, the informers stop, the lease is released).  With
`--leader-elect` (the default) replicas may run: only the holder of kube-system/kube-controller-manager
acts (podnet.api.leaderelection).
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from collections.abc import Sequence

from controlplane.controllers import catalog
from controlplane.controllers.context import ControllerContext, Runnable
from podnet.api import leaderelection
from podnet.api.client import Client
from podnet.api.kubeconfig import load_kubeconfig
from podnet.flags import duration
from podnet.reconcile import stop_event_on_signals

log = logging.getLogger("podnet.controllers")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="podnet-controller-manager", description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True, help="kubeconfig of the API server to use")
    parser.add_argument("--controllers", default="*",
                        help="comma-separated controllers: '*' all, 'foo' enables, '-foo' disables "
                             f"(known: {', '.join(catalog.CONTROLLERS)})")
    parser.add_argument("--resync-period", type=duration, default=30.0,
                        help="period of full passes over every object (a safety net)")
    parser.add_argument("--node-monitor-grace-period", type=duration, default=40.0,
                        help="a node whose heartbeat is older than this becomes Ready=Unknown")
    parser.add_argument("--node-monitor-period", type=duration, default=5.0,
                        help="how often node health is checked")
    parser.add_argument("--pod-eviction-timeout", type=duration, default=300.0,
                        help="how long pods stay on an unreachable/not-ready node before eviction")
    parser.add_argument("--allocate-node-cidrs", action="store_true",
                        help="assign spec.podCIDR to nodes from --cluster-cidr (node IPAM)")
    parser.add_argument("--cluster-cidr", default="", help="CIDR range of pods in the cluster")
    parser.add_argument("--node-cidr-mask-size", type=int, default=None,
                        help="prefix length of each node's pod CIDR (default 24 for IPv4, 64 for IPv6)")
    parser.add_argument("--max-endpoints-per-slice", type=int, default=100, choices=range(1, 1001),
                        metavar="1..1000", help="most endpoints per EndpointSlice (upstream default 100)")
    parser.add_argument("-v", "--verbose", action="store_true")
    leaderelection.add_leader_election_flags(parser, "kube-controller-manager")
    args = parser.parse_args(argv)
    try:
        args.controllers = catalog.select(args.controllers)
        args.leader_election = leaderelection.config_from_args(args)
    except ValueError as e:
        parser.error(str(e))
    if not args.controllers:
        parser.error("no controllers selected")
    return args


def _run_all(controllers: Sequence[Runnable], stop: threading.Event) -> None:
    """Every controller on its own thread until `stop`; a controller that crashes stops them all
    (a half-running manager would look healthy while not doing its job)."""
    def guarded(controller: Runnable) -> None:
        try:
            controller.run(stop)
        except Exception:
            log.exception("controller %s crashed; stopping", controller.name)
            stop.set()

    threads = [threading.Thread(target=guarded, args=(c,), name=f"controller-{c.name}", daemon=True)
               for c in controllers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    kubeconfig = load_kubeconfig(args.kubeconfig)
    client = Client.from_config(kubeconfig, user_agent="podnet-controller-manager")
    lease_client = leaderelection.election_client(kubeconfig, args.leader_election, client.user_agent)
    stop = stop_event_on_signals()
    ctx = ControllerContext(client, args)
    controllers = [catalog.build(name, ctx) for name in args.controllers]

    def lead(leading: threading.Event) -> None:
        # informers start only once we lead: a standby neither caches nor acts
        ctx.informers.start_all()
        try:
            if ctx.informers.wait_for_sync(leading):
                log.info("caches synced; running controllers %s", ",".join(args.controllers))
                _run_all(controllers, leading)
        finally:
            ctx.informers.stop_all()

    try:
        code = leaderelection.run_with_leader_election(lease_client, args.leader_election, lead, stop)
    finally:
        ctx.recorder.stop()  # flush queued Events (bounded wait) before the connection goes
        client.close()
        lease_client.close()
    log.info("stopped (%s)", ", ".join(f"{c.name}: {getattr(c, 'syncs', 0)} syncs" for c in controllers))
    return code


if __name__ == "__main__":
    sys.exit(main())
