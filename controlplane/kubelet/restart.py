"""Restart policy and the CrashLoopBackOff back-off (upstream kubelet semantics).

- Whether an exited container is started again: restartPolicy Always -> yes; OnFailure -> only after
  a non-zero exit; Never -> no (upstream ShouldContainerBeRestarted).  A container that never ran is
  always started.
- The back-off is upstream's flowcontrol.Backoff keyed per pod container (initial 10 s, doubling,
  capped at 300 s): the first restart of a container happens at once and records a 10 s back-off; an
  exit within the back-off of the previous restart waits out the rest of it (the container shows
  waiting.reason CrashLoopBackOff, "back-off 20s restarting failed container=c pod=p_ns(uid)"), and
  each restart doubles it.  When an exit comes more than 2 x the cap (10 min) after the last restart,
  the entry has expired: the container is restarted at once and the back-off starts over at 10 s.
- Termination reasons: Completed for exit 0, OOMKilled when the runtime says so, else Error.

Use from the pod worker (level-triggered: `remaining` is a pure read, repeated syncs are harmless):
    wait = backoff.remaining(key, finished_at, now)
    if wait > 0: requeue after `wait`; status waiting CrashLoopBackOff, crash_loop_message(...)
    else: start the next attempt; backoff.record_restart(key, now)
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

INITIAL = 10.0  # upstream backOffPeriod
MAXIMUM = 300.0  # upstream MaxContainerBackOff
RESTART_POLICIES = ("Always", "OnFailure", "Never")


def should_restart(policy: str, state: str, exit_code: int | None) -> bool:
    """Whether a container in `state` (created|running|exited) is (re)started under `policy`."""
    if state != "exited":
        return False
    if policy == "Never":
        return False
    if policy == "OnFailure":
        return exit_code != 0
    return True  # Always, and upstream's default for an unset policy


def termination_reason(exit_code: int | None, oom_killed: bool = False) -> str:
    if oom_killed:
        return "OOMKilled"
    return "Completed" if exit_code == 0 else "Error"


def backoff_key(pod: Mapping[str, Any], container: str) -> str:
    """One back-off entry per pod uid and container name (upstream getStableKey, minus the spec hash)."""
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace', '')}_{meta.get('name', '')}_{meta.get('uid', '')}_{container}"


def format_duration(seconds: float) -> str:
    """Go's time.Duration String for whole seconds and minutes: 10s, 1m20s, 5m0s."""
    whole = round(seconds)
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def crash_loop_message(delay: float, container: str, pod: Mapping[str, Any]) -> str:
    """waiting.message of a container in CrashLoopBackOff, in upstream's words."""
    meta = pod.get("metadata") or {}
    return (f"back-off {format_duration(delay)} restarting failed container={container} "
            f"pod={meta.get('name', '')}_{meta.get('namespace', '')}({meta.get('uid', '')})")


@dataclass
class _Entry:
    backoff: float
    last_update: float


class BackOff:
    """Per-key exponential back-off (upstream flowcontrol.Backoff).  Times are epoch seconds, the
    same clock as the containers' finished_at; thread-safe (pod workers run on their own threads)."""

    def __init__(self, initial: float = INITIAL, maximum: float = MAXIMUM) -> None:
        self.initial, self.maximum = initial, maximum
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def _expired(self, entry: _Entry, event_time: float) -> bool:
        # upstream hasExpired: an event more than 2 x maxDuration after the last update starts over
        return event_time - entry.last_update > 2 * self.maximum

    def get(self, key: str) -> float:
        """The current back-off of `key` (0 without an entry)."""
        with self._lock:
            entry = self._entries.get(key)
            return entry.backoff if entry else 0.0

    def remaining(self, key: str, finished_at: float, now: float) -> float:
        """Seconds still to wait before restarting a container that exited at `finished_at`
        (upstream IsInBackOffSince); 0 = restart now."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or self._expired(entry, finished_at):
                return 0.0
            return max(0.0, entry.backoff - (now - finished_at))

    def record_restart(self, key: str, now: float) -> float:
        """A restart happened at `now` (upstream Next): the back-off doubles, up to the cap, or starts
        at the initial value for a new or expired entry.  Returns the new back-off."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or self._expired(entry, now):
                entry = self._entries[key] = _Entry(self.initial, now)
            else:
                entry.backoff = min(entry.backoff * 2, self.maximum)
            entry.last_update = now
            return entry.backoff

    def reset(self, key: str) -> None:
        with self._lock:
            self._entries.pop(key, None)

    def forget_pod(self, pod_uid: str) -> None:
        """Drop every entry of a pod (it was deleted); keys end with _<uid>_<container>."""
        with self._lock:
            for key in [k for k in self._entries if f"_{pod_uid}_" in k]:
                del self._entries[key]

    def gc(self, now: float) -> None:
        """Drop expired entries (upstream GC), so the table does not grow with deleted pods."""
        with self._lock:
            for key in [k for k, e in self._entries.items() if self._expired(e, now)]:
                del self._entries[key]
