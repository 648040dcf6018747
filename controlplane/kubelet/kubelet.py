"""The kubelet's main loop: node heartbeat, pod informer, PLEG relist, start-up adoption and GC.

Order at start-up (what makes kill -9 + restart safe): register the node, wait for the pod
informer (spec.nodeName=<node>) to sync, then adopt — sandboxes and containers of pods that still
exist are kept as they are (ids are derived from pod uids, so nothing is started twice), those of
pods that are gone are torn down — and run CNI GC with the remaining attachments (releases IPs of
sandboxes a crash left half-made).  Only then are pods synced.

The loop wakes at least every `PLEG_PERIOD` (upstream's PLEG relists the runtime every second):
container state changes are not API events, so a changed container marks its pod dirty.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from controlplane.kubelet.node import NodeAgent
from controlplane.kubelet.podworker import PodSyncer, PodWorkers
from podnet.api.client import PODS
from podnet.api.informer import DirtyKeys, Informer, ListWatcher, object_key
from podnet.cniruntime import CniConfig, CniError
from podnet.runtime.base import ContainerRuntime

log = logging.getLogger("podnet.kubelet")

PLEG_PERIOD = 1.0
RETRY_INITIAL, RETRY_MAX = 0.5, 30.0


@dataclass
class Periods:
    status: float = 10.0  # --node-status-update-frequency
    lease: float = 10.0  # --node-lease-duration-seconds / 4
    resync: float = 60.0  # --sync-frequency


class Kubelet:
    def __init__(self, client: ListWatcher, node: NodeAgent, syncer: PodSyncer, runtime: ContainerRuntime,
                 conf_dir: str, periods: Periods) -> None:
        self.node, self.syncer, self.runtime, self.conf_dir = node, syncer, runtime, conf_dir
        self.periods = periods
        self.dirty = DirtyKeys()
        self.wake = threading.Event()
        self.informer = Informer(client, PODS, field_selector=f"spec.nodeName={node.cfg.name}",
                                 handlers=self.dirty.handlers(self.wake.set), name="kubelet-pods")
        syncer.cache = self.informer
        syncer.requeue = self.requeue
        self.workers = PodWorkers(syncer.sync, self._failed)
        self._retry: dict[str, tuple[float, int]] = {}  # key -> (due, failures)
        self._retry_lock = threading.Lock()
        self._pleg: dict[str, tuple[str, int | None]] = {}

    # ------------------------------------------------------------------ retries
    def requeue(self, key: str, delay: float) -> None:
        with self._retry_lock:
            due, failures = self._retry.get(key, (0.0, 0))
            new_due = time.monotonic() + delay
            self._retry[key] = (min(due, new_due) if due else new_due, failures)
        self.wake.set()

    def _failed(self, key: str, exc: Exception) -> None:
        with self._retry_lock:
            _, failures = self._retry.get(key, (0.0, 0))
            delay = min(RETRY_MAX, RETRY_INITIAL * 2 ** failures)
            self._retry[key] = (time.monotonic() + delay, failures + 1)
        self.wake.set()

    def _due_retries(self) -> list[str]:
        now = time.monotonic()
        with self._retry_lock:
            due = [k for k, (t, _) in self._retry.items() if t <= now]
            for k in due:
                self._retry.pop(k)
        return due

    # ------------------------------------------------------------------ helpers
    def network_ready(self) -> bool:
        try:
            CniConfig.load(self.conf_dir)
            return True
        except CniError:
            return False

    def poke(self, key: str) -> None:
        """Sync `key` soon (a probe result flipped)."""
        self.dirty.mark(key)
        self.wake.set()

    def pod_uid(self, namespace: str, name: str) -> str | None:
        """The uid of the pod of that name bound here (the log server reads that pod's logs)."""
        pod = self.informer.get(f"{namespace}/{name}")
        return str(pod["metadata"]["uid"]) if pod else None

    def container_running(self, namespace: str, name: str, container: str) -> bool:
        """Whether the container still runs (a followed log ends when it stops)."""
        uid = self.pod_uid(namespace, name)
        return any(i.state == "running" and i.labels.get("io.kubernetes.container.name") == container
                   for i in self.syncer.containers_of(uid)) if uid else False

    def known_uids(self) -> set[str]:
        return {str(p["metadata"].get("uid")) for p in self.informer.list()}

    def pleg(self) -> None:
        """Mark pods whose containers changed state since the last relist."""
        by_uid: dict[str, list[tuple[str, str, int | None]]] = {}
        for info in self.runtime.list():
            uid = info.labels.get("io.kubernetes.pod.uid", "")
            by_uid.setdefault(uid, []).append((info.id, info.state, info.exit_code))
        keys = {str(p["metadata"].get("uid")): object_key(p) for p in self.informer.list()}
        for uid, states in by_uid.items():
            digest = (repr(sorted(states)), len(states))
            if self._pleg.get(uid) != digest and uid in keys:
                self.dirty.mark(keys[uid])
            self._pleg[uid] = digest

    def adopt_and_gc(self) -> None:
        """Start-up: drop what belongs to pods that are gone, keep the rest, CNI GC the remainder."""
        orphans = self.syncer.cleanup_orphans(self.known_uids())
        adopted = self.syncer.sandboxes.list()
        log.info("start-up: adopted %d sandbox(es), removed %d orphaned pod(s)", len(adopted), len(orphans))
        try:
            self.syncer.sandboxes.gc(adopted)
        except CniError as e:
            log.warning("start-up CNI GC: %s", e)

    # ------------------------------------------------------------------ the loop
    def run(self, stop: threading.Event) -> None:
        while True:  # the API server may not be up yet (a node booting with the control plane)
            try:
                self.node.register()
                break
            except Exception as e:
                log.warning("registering node %s: %s: %s; retrying", self.node.cfg.name, type(e).__name__, e)
                if stop.wait(1.0):
                    return
        self.node.renew_lease()
        self.node.update_status(self.network_ready())
        self.informer.start()
        while not self.informer.wait_for_sync(0.5):
            if stop.is_set():
                return
        self.adopt_and_gc()
        for key in sorted(self.informer.snapshot()):
            self.dirty.mark(key)
        self._loop(stop)
        self.informer.stop()

    def _loop(self, stop: threading.Event) -> None:
        now = time.monotonic()
        next_lease, next_status = now + self.periods.lease, now + self.periods.status
        next_resync = now + self.periods.resync
        while not stop.is_set():
            now = time.monotonic()
            self._guard("lease", now >= next_lease, self.node.renew_lease)
            next_lease = now + self.periods.lease if now >= next_lease else next_lease
            if now >= next_status:
                self._guard("status", True, lambda: self.node.update_status(self.network_ready()))
                next_status = now + self.periods.status
            if now >= next_resync:
                for key in sorted(self.informer.snapshot()):
                    self.dirty.mark(key)
                self._guard("orphans", True, lambda: self.syncer.cleanup_orphans(self.known_uids()))
                next_resync = now + self.periods.resync
            self._guard("pleg", True, self.pleg)
            for key in self.dirty.take() | set(self._due_retries()):
                self.workers.dispatch(key)
            self.wake.wait(PLEG_PERIOD)
            self.wake.clear()

    @staticmethod
    def _guard(what: str, due: bool, fn: Any) -> None:
        """One periodic duty; a failure (API server down) is logged and retried next period."""
        if not due:
            return
        try:
            fn()
        except Exception as e:
            log.warning("%s failed: %s: %s", what, type(e).__name__, e)
