"""`podnet-controller-manager`: runs the workload controllers against an API server.

    podnet-controller-manager --kubeconfig /etc/podnet/controller-manager.kubeconfig \
        [--controllers replicationcontroller]

SIGTERM/SIGINT stop it cleanly (the key being synced finishes, the informers stop).  No leader
election yet: run one.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from controlplane.controllers.replication import ReplicationManager
from podnet.api.client import PODS, REPLICATIONCONTROLLERS, Client
from podnet.api.informer import Handlers, Informer, wait_for_all
from podnet.api.kubeconfig import load_kubeconfig
from podnet.reconcile import stop_event_on_signals

log = logging.getLogger("podnet.controllers")

CONTROLLERS = ("replicationcontroller",)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="podnet-controller-manager", description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True, help="kubeconfig of the API server to use")
    parser.add_argument("--controllers", default=",".join(CONTROLLERS),
                        help=f"comma-separated controllers to run (known: {', '.join(CONTROLLERS)})")
    parser.add_argument("--resync-period", type=float, default=30.0,
                        help="seconds between full passes over every object (a safety net)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    args.controllers = [c.strip() for c in args.controllers.split(",") if c.strip()]
    unknown = sorted(set(args.controllers) - set(CONTROLLERS))
    if unknown or not args.controllers:
        parser.error(f"unknown controllers {unknown}; known: {', '.join(CONTROLLERS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    client = Client.from_config(load_kubeconfig(args.kubeconfig), user_agent="podnet-controller-manager")
    stop = stop_event_on_signals()
    rcs = Informer(client, REPLICATIONCONTROLLERS, name="informer-replicationcontrollers")
    pods = Informer(client, PODS, name="informer-pods")
    manager = ReplicationManager(client, rcs, pods, resync_period=args.resync_period)
    rcs.handlers = Handlers(on_change=manager.rc_changed)
    pods.handlers = Handlers(on_add=manager.pod_added, on_update=manager.pod_updated,
                             on_delete=manager.pod_deleted)
    informers = [pods.start(), rcs.start()]
    try:
        if wait_for_all(informers, stop):
            log.info("caches synced; running controllers %s", ",".join(args.controllers))
            manager.run(stop)
    finally:
        for informer in informers:
            informer.stop()
        client.close()
    log.info("stopped after %d syncs", manager.syncs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
