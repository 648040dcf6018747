"""core/v1 Events from components: what happened to which object, as `kubectl describe` lists them.

client-go's EventRecorder + EventCorrelator, simplified:

* An Event names its object (involvedObject: kind, namespace, name, uid, apiVersion,
  resourceVersion), says `reason` (a CamelCase word) and `message`, is `Normal` or `Warning`, and
  is attributed to `source.component`/`source.host` and `reportingComponent`/`reportingInstance`.
  Its name is "<object name>.<unix nanoseconds in hex>" and it lives in the object's namespace
  ("default" for cluster-scoped objects such as nodes), as upstream's recorder makes them.
* The same (object, type, reason, message) again within `window` seconds (10 minutes, upstream's
  aggregation interval) is not a new object: the recorder PATCHes the earlier Event's `count` and
  `lastTimestamp`.  Which events were sent is remembered in a bounded LRU (4096, upstream's
  cache size).  If that Event was deleted meanwhile (a 404), a fresh one is created.
* Similar events (upstream's EventAggregator): once an object has had 10 distinct messages for
  the same (type, reason) within the window, further ones become one Event whose message is
  "(combined from similar events): <latest message>" and whose count grows.
* Spam filter (upstream's EventSourceObjectSpamFilter): each involved object gets a token bucket
  of 25 events refilled at one per 5 minutes; events beyond it are skipped silently.  Scaling an
  RC to 1,000 thus writes ~25 SuccessfulCreate Events, not 1,000 (the API server has better things
  to do), while every pod still gets its own Scheduled Event.
* Recording never blocks the caller: `event()` puts onto a bounded queue that one background thread
  drains.  A full queue, or a failed write, drops the event with a log line: events are a
  diagnostic, never a reason to slow down or fail a scheduler or a controller.
  `stop()` gives the queue a short time to drain, then returns.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from podnet.api.client import EVENTS, ApiError, Resource

__all__ = ["NORMAL", "WARNING", "EventRecorder", "EventSink", "event_name", "object_reference"]

log = logging.getLogger(__name__)

NORMAL, WARNING = "Normal", "Warning"
DEFAULT_WINDOW = 600.0  # upstream defaultAggregateIntervalInSeconds
DEFAULT_CACHE_SIZE = 4096  # upstream maxLruCacheEntries
AGGREGATE_MAX_EVENTS = 10  # upstream defaultAggregateMaxEvents
COMBINED_PREFIX = "(combined from similar events): "
DEFAULT_SPAM_BURST = 25  # upstream defaultSpamBurst: events per source+object before throttling
DEFAULT_SPAM_QPS = 1.0 / 300.0  # upstream defaultSpamQPS: then one more every 5 minutes
Obj = dict[str, Any]


class EventSink(Protocol):
    """The part of podnet.api.client.Client the recorder writes with (unit tests fake this)."""

    def create(self, res: Resource, obj: Mapping[str, Any], namespace: str | None = None,
               **query: Any) -> Obj: ...

    def patch(self, res: Resource, name: str, patch: Any, namespace: str | None = None, *,
              patch_type: str = "merge", subresource: str | None = None, field_manager: str | None = None,
              force: bool | None = None) -> Obj: ...


def object_reference(obj: Mapping[str, Any], kind: str | None = None,
                     api_version: str | None = None) -> dict[str, str]:
    """An ObjectReference to `obj`.  Objects from a list carry no kind/apiVersion (the List does),
    so callers pass them; the object's own fields win when present."""
    meta = obj.get("metadata") or {}
    ref = {"kind": str(obj.get("kind") or kind or ""),
           "apiVersion": str(obj.get("apiVersion") or api_version or ""),
           "name": str(meta.get("name", "")), "namespace": str(meta.get("namespace") or ""),
           "uid": str(meta.get("uid") or ""), "resourceVersion": str(meta.get("resourceVersion") or "")}
    return {k: v for k, v in ref.items() if v}


def event_name(object_name: str, unix_nanos: int) -> str:
    """upstream: fmt.Sprintf("%v.%x", ref.Name, t.UnixNano())."""
    return f"{object_name}.{unix_nanos:x}"


def _rfc3339(unix: float) -> str:
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _Pending:
    ref: dict[str, str]
    type: str
    reason: str
    message: str
    at: float  # wall clock (unix seconds) when event() was called
    seen: float  # monotonic, the same moment: windows are measured on it, not on the write


@dataclass
class _Sent:
    name: str
    namespace: str
    count: int
    last_seen: float  # monotonic


CorrelationKey = tuple[str, ...]


@dataclass
class _Similar:
    messages: set[str]  # distinct messages seen for one (object, type, reason)
    since: float  # monotonic time of the last one


def _correlation_key(item: _Pending) -> CorrelationKey:
    # resourceVersion is left out: the object changing does not make "the same event" new.
    ref = item.ref
    return (ref.get("kind", ""), ref.get("apiVersion", ""), ref.get("namespace", ""), ref.get("name", ""),
            ref.get("uid", ""), item.type, item.reason, item.message)


class _TokenBuckets:
    """One token bucket per key (LRU-bounded): `burst` tokens, refilled at `qps` per second."""

    def __init__(self, burst: int, qps: float, size: int) -> None:
        self.burst, self.qps, self.size = burst, qps, size
        # key -> (tokens left, when they were counted)
        self._buckets: collections.OrderedDict[tuple[str, ...], tuple[float, float]] = (
            collections.OrderedDict())

    def take(self, key: tuple[str, ...], now: float) -> bool:
        tokens, since = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - since) * self.qps)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._buckets) > self.size:
            self._buckets.popitem(last=False)
        return allowed


def _spam_key(ref: Mapping[str, str]) -> tuple[str, ...]:
    # upstream getSpamKey: the source (one per recorder here) and the object, not the reason
    return tuple(ref.get(k, "") for k in ("kind", "namespace", "name", "uid", "apiVersion"))


class EventRecorder:
    """Asynchronous, correlating Event writer for one component (e.g. "default-scheduler")."""

    def __init__(self, sink: EventSink, component: str, host: str = "", *, instance: str | None = None,
                 queue_size: int = 1000, window: float = DEFAULT_WINDOW,
                 cache_size: int = DEFAULT_CACHE_SIZE, spam_burst: int = DEFAULT_SPAM_BURST,
                 spam_qps: float = DEFAULT_SPAM_QPS, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.sink, self.component, self.host = sink, component, host
        self.instance = instance if instance is not None else host
        self.window, self.cache_size = window, cache_size
        self.clock, self.monotonic = clock, monotonic
        self._queue: queue.Queue[_Pending | None] = queue.Queue(queue_size)
        self._sent: collections.OrderedDict[CorrelationKey, _Sent] = collections.OrderedDict()
        self._similar: collections.OrderedDict[CorrelationKey, _Similar] = collections.OrderedDict()
        self._cond = threading.Condition()
        self._unfinished = 0  # queued or being written; flush() waits for 0
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._last_drop_log = 0.0
        self._spam = _TokenBuckets(spam_burst, spam_qps, cache_size)
        self.created = self.patched = self.dropped = self.throttled = 0

    # ------------------------------------------------------------------ the caller's side
    def event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str, *,
              kind: str | None = None, api_version: str | None = None) -> bool:
        """Record an event about `obj`; returns False when it was dropped or throttled (never
        blocks)."""
        item = _Pending(object_reference(obj, kind, api_version), type_, reason, message, self.clock(),
                        self.monotonic())
        with self._cond:
            if self._stopped:
                return self._drop(item, "recorder stopped")
            if not self._spam.take(_spam_key(item.ref), item.seen):
                self.throttled += 1  # upstream skips these without a word
                return False
            self._ensure_thread()
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                return self._drop(item, "queue full")
            self._unfinished += 1
        return True

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued event was written (or dropped); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._unfinished == 0, timeout)

    def stop(self, timeout: float = 2.0) -> None:
        """Refuse new events, give the queued ones up to `timeout` seconds, end the thread."""
        with self._cond:
            self._stopped = True
            thread = self._thread
        if thread is None:
            return
        self.flush(timeout)
        # The sentinel wakes the thread, which exits at it.  A queue still full after the flush
        # timeout means a hung sink: the daemon thread then dies with the process.
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=0.1)
        thread.join(max(0.1, timeout / 4))

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"events-{self.component}", daemon=True)
            self._thread.start()

    def _drop(self, item: _Pending, why: str) -> bool:
        """Count it; log at most once a second (an overflowing queue is a storm, not one line each)."""
        self.dropped += 1
        now = self.monotonic()
        if now - self._last_drop_log >= 1.0:
            self._last_drop_log = now
            log.warning("dropping event %s %s on %s/%s (%s; %d dropped so far)", item.type, item.reason,
                        item.ref.get("namespace", ""), item.ref.get("name", ""), why, self.dropped)
        return False

    # ------------------------------------------------------------------ the writer thread
    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self._write(item)
            except ApiError as e:
                with self._cond:
                    self._drop(item, str(e))
            except Exception as e:  # a transport error: same as an API error, the event is lost
                with self._cond:
                    self._drop(item, f"{type(e).__name__}: {e}")
            finally:
                with self._cond:
                    self._unfinished -= 1
                    self._cond.notify_all()

    def _aggregate(self, item: _Pending, now: float) -> tuple[_Pending, CorrelationKey]:
        """upstream EventAggregate: the event as is (keyed by its message), or -- from the 10th
        distinct message of one (object, type, reason) in the window -- the combined event, keyed
        without the message so that every further one counts on the same Event."""
        similar_key = _correlation_key(item)[:-1]
        record = self._similar.pop(similar_key, None)
        if record is None or now - record.since >= self.window:
            record = _Similar(set(), now)
        record.messages.add(item.message)
        record.since = now
        self._similar[similar_key] = record
        while len(self._similar) > self.cache_size:
            self._similar.popitem(last=False)
        if len(record.messages) < AGGREGATE_MAX_EVENTS:
            return item, _correlation_key(item)
        record.messages.pop()  # stays at the threshold: every further distinct message aggregates
        combined = dataclasses.replace(item, message=COMBINED_PREFIX + item.message)
        return combined, (*similar_key, COMBINED_PREFIX)

    def _write(self, item: _Pending) -> None:
        now = item.seen
        item, key = self._aggregate(item, now)
        sent = self._sent.get(key)
        if sent is not None and now - sent.last_seen < self.window:
            try:
                self._patch(sent, item)
            except ApiError as e:
                if not e.not_found:
                    raise
                sent = None  # deleted (TTL, by hand): start over with a new Event
            else:
                sent.last_seen = now
                self._sent.move_to_end(key)
                return
        self._remember(key, self._create(item, now))

    def _remember(self, key: CorrelationKey, sent: _Sent) -> None:
        self._sent[key] = sent
        self._sent.move_to_end(key)
        while len(self._sent) > self.cache_size:
            self._sent.popitem(last=False)

    def _patch(self, sent: _Sent, item: _Pending) -> None:
        # upstream patches these three (a combined Event shows the latest message)
        patch = {"count": sent.count + 1, "lastTimestamp": _rfc3339(item.at), "message": item.message}
        self.sink.patch(EVENTS, sent.name, patch, sent.namespace)
        sent.count += 1
        self.patched += 1

    def _create(self, item: _Pending, now: float) -> _Sent:
        namespace = item.ref.get("namespace") or "default"
        nanos = int(item.at * 1e9)
        body = self._body(item, event_name(item.ref.get("name", ""), nanos), namespace)
        try:
            self.sink.create(EVENTS, body, namespace)
        except ApiError as e:
            if not e.conflict:
                raise
            # Two events of one object in the same nanosecond (clock granularity): next name.
            body["metadata"]["name"] = event_name(item.ref.get("name", ""), nanos + 1)
            self.sink.create(EVENTS, body, namespace)
        self.created += 1
        return _Sent(body["metadata"]["name"], namespace, 1, now)

    def _body(self, item: _Pending, name: str, namespace: str) -> Obj:
        stamp = _rfc3339(item.at)
        source = {"component": self.component, **({"host": self.host} if self.host else {})}
        return {"apiVersion": "v1", "kind": "Event", "metadata": {"name": name, "namespace": namespace},
                "involvedObject": dict(item.ref), "reason": item.reason, "message": item.message,
                "type": item.type, "source": source, "firstTimestamp": stamp, "lastTimestamp": stamp,
                "count": 1, "reportingComponent": self.component, "reportingInstance": self.instance}
