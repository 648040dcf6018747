"""`podnet-scheduler`: binds pending pods to nodes.

    podnet-scheduler --kubeconfig /etc/podnet/scheduler.kubeconfig [--scheduler-name default-scheduler]

Pods whose spec.schedulerName is another name are left alone.  SIGTERM/SIGINT stop it cleanly
(the pod being scheduled finishes its cycle, the informers stop).  No leader election yet: run one.
"""

from __future__ import annotations

import argparse
import logging
import random
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from controlplane.scheduler.daemon import DEFAULT_SCHEDULER_NAME, Scheduler
from podnet.api.client import NODES, PODS, Client
from podnet.api.informer import Handlers, Informer
from podnet.api.kubeconfig import load_kubeconfig

log = logging.getLogger("podnet.scheduler")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="podnet-scheduler", description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True, help="kubeconfig of the API server to use")
    parser.add_argument("--scheduler-name", default=DEFAULT_SCHEDULER_NAME,
                        help="schedule only pods whose spec.schedulerName is this")
    parser.add_argument("--retry-period", type=float, default=10.0,
                        help="seconds between retries of unschedulable pods with no cluster change")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser.parse_args(argv)


def _wait_synced(informers: Sequence[Informer], stop: threading.Event) -> bool:
    """Never schedule from a partial cache: a missing node or pod would overfill the others."""
    for informer in informers:
        while not informer.wait_for_sync(0.5):
            if stop.is_set():
                return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    client = Client.from_config(load_kubeconfig(args.kubeconfig), user_agent="podnet-scheduler")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()  # only a flag: the loop polls it (a handler must not take the queue's lock)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    nodes = Informer(client, NODES, name="informer-nodes")
    pods = Informer(client, PODS, name="informer-pods")
    scheduler = Scheduler(client, nodes, pods, scheduler_name=args.scheduler_name,
                          rng=random.Random(), retry_period=args.retry_period)
    nodes.handlers = Handlers(on_change=scheduler.node_changed)
    pods.handlers = Handlers(on_change=scheduler.pod_changed)
    informers = [nodes.start(), pods.start()]
    try:
        if _wait_synced(informers, stop):
            log.info("caches synced; scheduling pods for %s", args.scheduler_name)
            scheduler.run(stop)
    finally:
        for informer in informers:
            informer.stop()
        client.close()
    log.info("stopped after %d bindings", scheduler.bound)
    return 0


if __name__ == "__main__":
    sys.exit(main())
