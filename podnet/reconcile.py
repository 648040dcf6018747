"""The reconcile runner every daemon's dataplane loop uses (style.md section 4.2).

`Runner` combines kube-proxy's BoundedFrequencyRunner (pkg/util/async) with neutron's
`fullsync` flag:

* `request()` may be called from any thread; requests are coalesced into one pending run.
* Runs are at least `min_interval` apart (start to start) and a full sync happens at least
  every `max_interval`, even with no requests (the kernel may have been changed behind us:
  flannel #1070 is what happens without it).
* `need_full` is set at start, by `request(full=True)` and by any error; it is cleared only
  after a sync that ran with full=True succeeded and no new full request arrived meanwhile.
* After an error the next run waits an exponential backoff (capped), not just min_interval.

The clock is injected so tests drive time with `FakeClock` instead of sleeping.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from typing import Protocol

from podnet.log import get_logger

LOG = get_logger("reconcile")


class Clock(Protocol):
    def now(self) -> float: ...

    def wait(self, event: threading.Event, timeout: float) -> bool:
        """Block until `event` is set or `timeout` seconds passed; True if it was set."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.monotonic()

    def wait(self, event: threading.Event, timeout: float) -> bool:
        return event.wait(timeout)


class FakeClock:
    """Manual time.  wait() does not block: it advances time by `timeout` unless the event is
    already set, so a run_forever loop driven by it is deterministic and instant."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start
        self.waits: list[float] = []

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds

    def wait(self, event: threading.Event, timeout: float) -> bool:
        self.waits.append(timeout)
        if event.is_set():
            return True
        self.t += timeout
        return event.is_set()


class Runner:
    def __init__(
        self,
        sync_fn: Callable[[bool], None],
        *,
        min_interval: float = 1.0,
        max_interval: float = 60.0,
        clock: Clock | None = None,
        backoff_initial: float = 1.0,
        backoff_max: float = 30.0,
        name: str = "runner",
    ) -> None:
        if min_interval < 0 or max_interval <= 0 or max_interval < min_interval:
            raise ValueError("need 0 <= min_interval <= max_interval and max_interval > 0")
        self._sync_fn = sync_fn
        self.min_interval = min_interval
        self.max_interval = max_interval
        self._clock: Clock = clock or SystemClock()
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.name = name
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._dirty = False
        self._need_full = True  # nothing is known about the kernel at start
        self._full_requests = 0  # bumped by every full request; see _finish()
        self._last_run: float | None = None
        self._last_full: float | None = None
        self._failures = 0
        self._retry_at = 0.0
        self.runs = 0

    # --------------------------------------------------------------- any thread
    def request(self, full: bool = False) -> None:
        """Ask for a sync soon (coalesced with other pending requests)."""
        with self._lock:
            self._dirty = True
            if full:
                self._need_full = True
                self._full_requests += 1
        self._wake.set()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
        self._wake.set()

    @property
    def need_full(self) -> bool:
        return self._need_full

    @property
    def failures(self) -> int:
        return self._failures

    # --------------------------------------------------------------- the loop thread
    def run_forever(self) -> None:
        """Run syncs until stop(); call from the one thread that owns the dataplane."""
        while True:
            self._wake.clear()  # before run_once: a request during the sync re-sets it
            delay = self.run_once()
            if self._stopped:
                return
            self._clock.wait(self._wake, delay)
            if self._stopped:
                return

    def run_once(self) -> float:
        """Sync now if one is due; return the seconds until the next one could be due."""
        now = self._clock.now()
        with self._lock:
            if self._last_full is None or now - self._last_full >= self.max_interval:
                self._need_full = True
                self._dirty = True
            due_at = self._due_at()
            if not self._dirty or now < due_at:
                return self._next_delay(now, due_at)
            full, seen = self._need_full, self._full_requests
            self._dirty = False
            self._last_run = now
        self._sync(full, seen)
        return self._next_delay(self._clock.now(), self._due_at())

    def _due_at(self) -> float:
        not_before = self._last_run + self.min_interval if self._last_run is not None else 0.0
        return max(not_before, self._retry_at)

    def _next_delay(self, now: float, due_at: float) -> float:
        # When dirty only the rate limit/backoff matters (an overdue periodic resync has
        # already marked us dirty); otherwise sleep until the periodic full resync.
        if self._dirty:
            return max(0.0, due_at - now)
        periodic = (self._last_full if self._last_full is not None else now) + self.max_interval
        return max(0.0, periodic - now)

    def _sync(self, full: bool, seen: int) -> None:
        started = self._clock.now()
        self.runs += 1
        try:
            self._sync_fn(full)
        except Exception:
            self._failed(started)
            return
        with self._lock:
            self._failures = 0
            self._retry_at = 0.0
            if full:
                self._last_full = started
                # A full request that arrived while we were syncing still needs its own run.
                if self._full_requests == seen:
                    self._need_full = False

    def _failed(self, started: float) -> None:
        with self._lock:
            self._failures += 1
            delay = min(self.backoff_initial * 2 ** (self._failures - 1), self.backoff_max)
            self._retry_at = started + delay
            # We no longer know what the kernel holds: the retry must be a full sync.
            self._need_full = True
            self._dirty = True
        LOG.exception("%s: sync failed (attempt %d), retrying in %.1fs",
                      self.name, self._failures, delay)


def stop_event_on_signals(*signums: int) -> threading.Event:
    """An Event set by SIGTERM/SIGINT (or `signums`): a daemon's loops poll it and wind down.

    The handler only sets the flag: a signal handler runs between bytecodes of the main thread and
    must not take locks that thread may hold (a queue's, a cache's)."""
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    for signum in signums or (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    return stop
