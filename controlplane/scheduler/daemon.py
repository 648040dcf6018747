"""The scheduler loop: a queue of pending pods, assumed bindings, POST pods/binding.

Informers on nodes and pods feed `Scheduler.node_changed` / `pod_changed` (on the informer
threads: they only record work).  `run` pops one pod per cycle on its own thread and schedules it
with the pure core against the caches, overlaid with the bindings this process made that the pod
watch has not shown yet ("assumed"), so two pods in a row never overfill a node.

The NodeInfos the core filters and scores against are kept by `NodeInfoCache`: the handlers mark
the pod/node keys that changed and each cycle re-reads only those (a cycle is O(nodes), not
O(pods)); every retry period it is rebuilt from the caches as a safety net.

A 409 on the binding (someone else bound it, or it changed) forgets the assumption and requeues the
pod.  An unschedulable pod gets PodScheduled=False/Unschedulable with the core's message and waits
in `unschedulable` until a node or pod changes, or the periodic retry.

Events, as kube-scheduler records them: "Scheduled" (Normal) after each binding, "FailedScheduling"
(Warning, the same "0/N nodes are available: ..." message) when no node fits -- when the message
changes, and at most once a retry period for the same message (the recorder turns repeats into a
count on one Event).
"""

from __future__ import annotations

import collections
import concurrent.futures
import datetime
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from controlplane.scheduler.cache import Cache, NodeInfoCache
from controlplane.scheduler.filters import NodeInfo
from controlplane.scheduler.framework import Unschedulable, schedule_on
from podnet.api.client import PODS, ApiError, Resource

__all__ = ["DEFAULT_SCHEDULER_NAME", "Scheduler", "SchedulingQueue", "is_pending"]

log = logging.getLogger("podnet.scheduler")

DEFAULT_SCHEDULER_NAME = "default-scheduler"
Obj = dict[str, Any]


class Api(Protocol):
    """The part of podnet.api.client.Client the scheduler writes with (unit tests fake this)."""

    def bind(self, pod_name: str, node_name: str, namespace: str | None = None) -> Obj: ...

    def patch(self, res: Resource, name: str, patch: Any, namespace: str | None = None, *,
              patch_type: str = "merge", subresource: str | None = None, field_manager: str | None = None,
              force: bool | None = None) -> Obj: ...


class Recorder(Protocol):
    """The part of podnet.api.events.EventRecorder the scheduler uses."""

    def event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str, *,
              kind: str | None = None, api_version: str | None = None) -> bool: ...


class _NoEvents:
    def event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str, *,
              kind: str | None = None, api_version: str | None = None) -> bool:
        return False


def is_pending(pod: Mapping[str, Any], scheduler_name: str) -> bool:
    """Ours to schedule: not bound, our schedulerName (the API server defaults it), not terminating,
    not finished."""
    spec = pod.get("spec") or {}
    if spec.get("nodeName"):
        return False
    if (spec.get("schedulerName") or DEFAULT_SCHEDULER_NAME) != scheduler_name:
        return False
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


class SchedulingQueue:
    """FIFO of pod keys to try (`active`) plus the keys that did not fit (`unschedulable`), which
    wait for a cluster change (`move_all_to_active`).  A key is in at most one of the two."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active: collections.deque[str] = collections.deque()
        self._queued: set[str] = set()  # keys in _active; forget() removes lazily (pop skips)
        self._unschedulable: set[str] = set()

    def add(self, key: str) -> None:
        with self._cond:
            self._unschedulable.discard(key)
            if key in self._queued:
                return
            self._queued.add(key)
            self._active.append(key)
            self._cond.notify()

    def forget(self, key: str) -> None:
        with self._cond:
            self._queued.discard(key)
            self._unschedulable.discard(key)

    def mark_unschedulable(self, key: str) -> None:
        with self._cond:
            if key not in self._queued:
                self._unschedulable.add(key)

    def move_all_to_active(self) -> int:
        with self._cond:
            keys, self._unschedulable = sorted(self._unschedulable), set()
        for key in keys:
            self.add(key)
        return len(keys)

    def pop(self, timeout: float) -> str | None:
        """The next key, or None after `timeout` seconds with nothing to do."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                while self._active:
                    key = self._active.popleft()
                    if key in self._queued:
                        self._queued.discard(key)
                        return key
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def active(self) -> list[str]:
        with self._cond:
            return [k for k in self._active if k in self._queued]

    def unschedulable(self) -> set[str]:
        with self._cond:
            return set(self._unschedulable)


def _now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _has_condition(pod: Mapping[str, Any], message: str) -> bool:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled":
            return bool(cond.get("status") == "False" and cond.get("reason") == "Unschedulable"
                        and cond.get("message") == message)
    return False


class Scheduler:
    def __init__(self, api: Api, nodes: Cache, pods: Cache, *,
                 scheduler_name: str = DEFAULT_SCHEDULER_NAME, rng: random.Random | None = None,
                 retry_period: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 recorder: Recorder | None = None, bind_workers: int = 3) -> None:
        self.api, self.nodes, self.pods = api, nodes, pods
        self.recorder: Recorder = recorder if recorder is not None else _NoEvents()
        self.scheduler_name = scheduler_name
        self.rng = rng  # None: ties go to the smallest node name (tests); the daemon passes a Random
        self.retry_period = retry_period
        self.clock = clock
        self.queue = SchedulingQueue()
        self._assumed: dict[str, Obj] = {}  # pod key -> the pod with spec.nodeName we bound it to
        self.node_infos = NodeInfoCache()
        self._failed_event_at: dict[str, float] = {}  # pod key -> when FailedScheduling was last sent
        self._lock = threading.Lock()
        self._next_retry = clock() + retry_period
        self.bound = 0  # bindings that succeeded, for logs and tests
        # Upstream binds asynchronously (the binding cycle runs in its own goroutine), so the next
        # pod's scheduling cycle does not wait for the API server's round trip: binding one at a time
        # held the scheduler to ~50 pods/s under load.  The pool exists only while run() runs; 0
        # (or schedule_one outside run) binds inline.  3 workers + the event writer fit the client's
        # pool of 4 keep-alive connections.
        self.bind_workers = bind_workers
        self._binder: concurrent.futures.ThreadPoolExecutor | None = None
        self._stopping = False

    # ------------------------------------------------------------------ informer handlers
    def pod_changed(self, key: str) -> None:
        """Any pod event.  Its own state decides whether it is queued; any pod change may have
        freed room (deleted, finished, resized) so the unschedulable pods get another try."""
        pod = self.pods.get(key)
        if pod is None or (pod.get("spec") or {}).get("nodeName"):
            with self._lock:
                self._assumed.pop(key, None)  # the watch caught up (or the pod is gone)
        self.node_infos.mark_pod(key)
        if pod is not None and is_pending(pod, self.scheduler_name):
            self.queue.add(key)
        else:
            self.queue.forget(key)
            with self._lock:
                self._failed_event_at.pop(key, None)
        self.queue.move_all_to_active()

    def node_changed(self, key: str) -> None:
        self.node_infos.mark_node(key)
        self.queue.move_all_to_active()

    def assumed(self) -> dict[str, Obj]:
        with self._lock:
            return dict(self._assumed)

    # ------------------------------------------------------------------ the loop
    def run(self, stop: threading.Event, poll: float = 0.5) -> None:
        """Schedule until `stop` is set; `poll` bounds how late a stop is noticed.  Bindings in
        flight finish before it returns; queued ones are dropped (their pods requeued)."""
        if self.bind_workers > 0:
            self._stopping = False
            self._binder = concurrent.futures.ThreadPoolExecutor(self.bind_workers, "binder")
        try:
            while not stop.is_set():
                self.maybe_retry_unschedulable()
                key = self.queue.pop(poll)
                if key is None:
                    continue
                try:
                    self.schedule_one(key)
                except Exception:  # a transport error, a bug: this pod waits, the loop goes on
                    log.exception("scheduling %s failed", key)
                    self.queue.mark_unschedulable(key)
        finally:
            binder, self._binder = self._binder, None
            if binder is not None:
                self._stopping = True
                binder.shutdown(wait=True)

    def maybe_retry_unschedulable(self) -> None:
        """The periodic retry: a change the informers cannot see (or a failed write) is not stuck."""
        now = self.clock()
        if now >= self._next_retry:
            self._next_retry = now + self.retry_period
            self.node_infos.mark_all()
            moved = self.queue.move_all_to_active()
            if moved:
                log.debug("periodic retry of %d unschedulable pods", moved)

    def schedule_one(self, key: str) -> str | None:
        """One cycle for `key`: the node it was bound to, or None (not ours, did not fit, lost)."""
        pod = self.pods.get(key)
        if pod is None or not is_pending(pod, self.scheduler_name):
            return None
        with self._lock:
            if key in self._assumed:
                return None  # bound by us; the watch has not shown it yet
        infos = self._node_infos()
        try:
            node = schedule_on(pod, infos, self.rng)
        except Unschedulable as e:
            self._unschedulable(key, pod, e.message)
            return None
        self._assume(key, pod, node)
        binder = self._binder
        if binder is None:
            return node if self._bind(key, pod, node) else None
        binder.submit(self._bind_async, key, pod, node)
        return node

    def _node_infos(self) -> dict[str, NodeInfo]:
        """The cluster as this cycle sees it: caches plus assumed bindings."""
        with self._lock:
            for key in list(self._assumed):
                if self.pods.get(key) is None:  # deleted while its binding was in flight
                    del self._assumed[key]
                    self.node_infos.mark_pod(key)
            assumed = dict(self._assumed)
        return self.node_infos.refresh(self.nodes, self.pods, assumed)

    def _assume(self, key: str, pod: Obj, node: str) -> None:
        """Count the pod on `node` from now on: the next cycle must see it before the watch does."""
        with self._lock:
            self._assumed[key] = {**pod, "spec": {**(pod.get("spec") or {}), "nodeName": node}}
        self.node_infos.mark_pod(key)

    def _bind_async(self, key: str, pod: Obj, node: str) -> None:
        """A binder thread's job.  Once run() is stopping (leadership lost, SIGTERM) the queued
        bindings are not made: the assumption goes and the pod waits for the next run."""
        if self._stopping:
            self._forget(key)
            self.queue.add(key)
            return
        try:
            self._bind(key, pod, node)
        except Exception:  # a transport error: as in run(), this pod waits for a retry
            log.exception("binding %s to %s failed", key, node)
            self.queue.mark_unschedulable(key)

    def _bind(self, key: str, pod: Obj, node: str) -> bool:
        """POST the binding of an assumed pod; undo the assumption on failure."""
        meta = pod.get("metadata") or {}
        try:
            self.api.bind(str(meta["name"]), node, meta.get("namespace"))
        except ApiError as e:
            self._forget(key)
            if e.conflict:
                log.info("binding %s to %s: %s; requeued", key, node, e)
                self.queue.add(key)  # the next cycle re-reads the cache (it may be bound by then)
            else:
                log.warning("binding %s to %s: %s; retrying later", key, node, e)
                self.queue.mark_unschedulable(key)
            return False
        except Exception:
            self._forget(key)
            raise
        with self._lock:
            self.bound += 1
        log.info("bound %s to %s", key, node)
        # upstream's message; the event names the pod as it was scheduled
        self.recorder.event(pod, "Normal", "Scheduled",
                            f"Successfully assigned {meta.get('namespace')}/{meta['name']} to {node}",
                            kind="Pod", api_version="v1")
        return True

    def _forget(self, key: str) -> None:
        with self._lock:
            self._assumed.pop(key, None)
        self.node_infos.mark_pod(key)

    def _unschedulable(self, key: str, pod: Obj, message: str) -> None:
        """Park the pod and say why on its status (only when the message changed: the patch is a
        pod event, which would otherwise retry it forever)."""
        self.queue.mark_unschedulable(key)
        written = _has_condition(pod, message)
        self._failed_event(key, pod, message, changed=not written)
        if written:
            return
        log.info("%s is unschedulable: %s", key, message)
        meta = pod.get("metadata") or {}
        condition = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                     "message": message, "lastProbeTime": None, "lastTransitionTime": _now_rfc3339()}
        try:
            self.api.patch(PODS, str(meta["name"]), {"status": {"conditions": [condition]}},
                           meta.get("namespace"), patch_type="strategic", subresource="status")
        except ApiError as e:  # the pod stays parked; the next retry writes the condition again
            log.warning("patching PodScheduled on %s: %s", key, e)

    def _failed_event(self, key: str, pod: Obj, message: str, *, changed: bool) -> None:
        """FailedScheduling on a new message, else at most once a retry period: every pod event
        retries every parked pod, and an Event write per retry would load the API server for
        nothing (the recorder already folds repeats into one Event's count)."""
        now = self.clock()
        with self._lock:
            last = self._failed_event_at.get(key)
            if not changed and last is not None and now - last < self.retry_period:
                return
            self._failed_event_at[key] = now
        self.recorder.event(pod, "Warning", "FailedScheduling", message, kind="Pod", api_version="v1")
