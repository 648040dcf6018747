"""The loop every controller runs: dirty keys in, one level-triggered `sync(key)` per key out.

Informer handlers only `mark(key)`; `run` takes the dirty set, syncs each key (reading the
informer caches, writing through the API), retries a failed key after `retry_delay` and marks every
key from `resync_keys()` each `resync_period` (a missed event or an expired expectation heals).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from podnet.api.informer import DirtyKeys

__all__ = ["KeyedController"]


class KeyedController:
    """Subclasses implement `sync(key)` and `resync_keys()`; `name` labels the logs."""

    name = "controller"

    def __init__(self, *, resync_period: float = 30.0, retry_delay: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.resync_period, self.retry_delay, self.clock = resync_period, retry_delay, clock
        self.dirty = DirtyKeys()
        self._wake = threading.Event()
        self._retry: dict[str, float] = {}  # key -> when to sync it again (failure or requeue_after)
        self._next_resync = clock() + resync_period
        self.syncs = 0
        self.log = logging.getLogger(f"podnet.controllers.{self.name}")

    # ------------------------------------------------------------------ called from informer threads
    def mark(self, key: str) -> None:
        self.dirty.mark(key)
        self._wake.set()

    def requeue_after(self, key: str, delay: float) -> None:
        """Sync `key` again in `delay` seconds (a time-based condition: grace periods, minReady)."""
        due = self.clock() + delay
        if key not in self._retry or self._retry[key] > due:
            self._retry[key] = due

    # ------------------------------------------------------------------ to implement
    def sync(self, key: str) -> None:
        raise NotImplementedError

    def resync_keys(self) -> Iterable[str]:
        return ()

    # ------------------------------------------------------------------ the loop
    def run(self, stop: threading.Event, poll: float = 0.5) -> None:
        """Sync dirty keys until `stop` is set."""
        while not stop.is_set():
            self._wake.wait(poll)
            self._wake.clear()
            self.run_once(stop)

    def run_once(self, stop: threading.Event | None = None) -> None:
        """One pass: due retries and resyncs are marked, then every dirty key is synced."""
        self._requeue_due()
        for key in sorted(self.dirty.take()):
            if stop is not None and stop.is_set():
                return
            self.syncs += 1
            try:
                self.sync(key)
            except Exception:  # a transport error, a conflict, a bug: this key retries later
                self.log.exception("syncing %s failed; retrying", key)
                self.requeue_after(key, self.retry_delay)

    def _requeue_due(self) -> None:
        now = self.clock()
        for key, due in list(self._retry.items()):
            if due <= now:
                del self._retry[key]
                self.dirty.mark(key)
        if now >= self._next_resync:
            self._next_resync = now + self.resync_period
            for key in self.resync_keys():
                self.dirty.mark(key)
