"""`podnet-scheduler`: binds pending pods to nodes.

    podnet-scheduler --kubeconfig /etc/podnet/scheduler.kubeconfig [--scheduler-name default-scheduler]

Pods whose spec.schedulerName is another name are left alone.  SIGTERM/SIGINT stop it cleanly
(the pod being scheduled finishes its cycle, the informers stop, the lease is released).  With
`--leader-elect` (the default) replicas may run: only the holder of kube-system/kube-scheduler acts.
"""

from __future__ import annotations

import argparse
import logging
import random
import socket
import sys
import threading
from collections.abc import Sequence

from controlplane.scheduler.daemon import DEFAULT_SCHEDULER_NAME, Scheduler
from podnet.api import leaderelection
from podnet.api.client import NODES, PODS, Client
from podnet.api.events import EventRecorder
from podnet.api.informer import Handlers, Informer, wait_for_all
from podnet.api.kubeconfig import load_kubeconfig
from podnet.reconcile import stop_event_on_signals

log = logging.getLogger("podnet.scheduler")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="podnet-scheduler", description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True, help="kubeconfig of the API server to use")
    parser.add_argument("--scheduler-name", default=DEFAULT_SCHEDULER_NAME,
                        help="schedule only pods whose spec.schedulerName is this")
    parser.add_argument("--retry-period", type=float, default=10.0,
                        help="seconds between retries of unschedulable pods with no cluster change")
    parser.add_argument("-v", "--verbose", action="store_true")
    leaderelection.add_leader_election_flags(parser, "kube-scheduler")
    args = parser.parse_args(argv)
    try:
        args.leader_election = leaderelection.config_from_args(args)
    except ValueError as e:
        parser.error(str(e))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    kubeconfig = load_kubeconfig(args.kubeconfig)
    client = Client.from_config(kubeconfig, user_agent="podnet-scheduler")
    lease_client = leaderelection.election_client(kubeconfig, args.leader_election, client.user_agent)
    stop = stop_event_on_signals()
    nodes = Informer(client, NODES, name="informer-nodes")
    pods = Informer(client, PODS, name="informer-pods")
    # Events come "From: default-scheduler" as upstream's (no source.host; the instance names it).
    recorder = EventRecorder(client, args.scheduler_name,
                             instance=f"{args.scheduler_name}-{socket.gethostname()}")
    scheduler = Scheduler(client, nodes, pods, scheduler_name=args.scheduler_name,
                          rng=random.Random(), retry_period=args.retry_period, recorder=recorder)
    nodes.handlers = Handlers(on_change=scheduler.node_changed)
    pods.handlers = Handlers(on_change=scheduler.pod_changed)

    def lead(leading: threading.Event) -> None:
        # informers start only once we lead: a standby neither caches nor binds
        informers = [nodes.start(), pods.start()]
        try:
            if wait_for_all(informers, leading):
                log.info("caches synced; scheduling pods for %s", args.scheduler_name)
                scheduler.run(leading)
        finally:
            for informer in informers:
                informer.stop()

    try:
        code = leaderelection.run_with_leader_election(lease_client, args.leader_election, lead, stop)
    finally:
        recorder.stop()
        client.close()
        lease_client.close()
    log.info("stopped after %d bindings", scheduler.bound)
    return code


if __name__ == "__main__":
    sys.exit(main())
