"""Restart policy and the CrashLoopBackOff back-off (controlplane.kubelet.restart)."""

from __future__ import annotations

import pytest

from controlplane.kubelet.restart import (
    BackOff,
    backoff_key,
    crash_loop_message,
    format_duration,
    should_restart,
    termination_reason,
)

POD = {"metadata": {"name": "web", "namespace": "ns", "uid": "u-1"}}


@pytest.mark.parametrize(("policy", "state", "code", "want"), [
    ("Always", "exited", 0, True),
    ("Always", "exited", 1, True),
    ("OnFailure", "exited", 0, False),
    ("OnFailure", "exited", 137, True),
    ("Never", "exited", 1, False),
    ("Never", "exited", 0, False),
    ("Always", "running", None, False),
    ("Always", "created", None, False),
    ("", "exited", 0, True),  # unset: the API server defaults Always
])
def test_should_restart(policy: str, state: str, code: int | None, want: bool) -> None:
    assert should_restart(policy, state, code) is want


def test_termination_reason() -> None:
    assert termination_reason(0) == "Completed"
    assert termination_reason(2) == "Error"
    assert termination_reason(137, oom_killed=True) == "OOMKilled"


def test_crash_loop_message_in_upstream_words() -> None:
    assert crash_loop_message(20, "c", POD) == "back-off 20s restarting failed container=c pod=web_ns(u-1)"
    assert format_duration(300) == "5m0s"
    assert format_duration(80) == "1m20s"
    assert backoff_key(POD, "c") == "ns_web_u-1_c"


def crash_loop(backoff: BackOff, key: str, runs: list[float], start: float = 1000.0) -> list[float]:
    """Simulate a container that runs runs[i] seconds each attempt and is restarted as soon as the
    back-off allows; returns the wait before each restart."""
    now, waits = start, []
    for run in runs:
        finished = now + run
        wait = backoff.remaining(key, finished, finished)
        waits.append(wait)
        now = finished + wait
        assert backoff.remaining(key, finished, now) == 0
        backoff.record_restart(key, now)
    return waits


def test_back_off_doubles_to_the_cap_and_the_first_restart_is_immediate() -> None:
    waits = crash_loop(BackOff(), "k", [1.0] * 8)
    assert waits == [0, 10, 20, 40, 80, 160, 300, 300]  # counted from each exit


def test_back_off_counts_from_the_exit_and_is_a_pure_read() -> None:
    b = BackOff()
    b.record_restart("k", 100.0)  # backoff 10 s
    assert b.remaining("k", 102.0, 103.0) == 9.0
    assert b.remaining("k", 102.0, 103.0) == 9.0  # a second sync sees the same
    assert b.remaining("k", 102.0, 112.0) == 0.0
    assert b.get("k") == 10.0 and b.get("other") == 0.0


def test_back_off_starts_over_after_ten_minutes_of_running() -> None:
    b = BackOff()
    crash_loop(b, "k", [1.0] * 5)  # back-off now 160 s
    assert b.get("k") == 160
    last_restart = 1000.0 + 5 + 10 + 20 + 40 + 80
    finished = last_restart + 601  # ran more than 2 x the cap
    assert b.remaining("k", finished, finished) == 0
    assert b.record_restart("k", finished) == 10


def test_keys_are_independent_and_forgotten_with_their_pod() -> None:
    b = BackOff(initial=1, maximum=4)
    b.record_restart(backoff_key(POD, "a"), 0)
    b.record_restart(backoff_key(POD, "a"), 1)
    b.record_restart("ns_other_u-2_a", 1)
    assert b.get(backoff_key(POD, "a")) == 2 and b.get("ns_other_u-2_a") == 1
    b.forget_pod("u-1")
    assert b.get(backoff_key(POD, "a")) == 0 and b.get("ns_other_u-2_a") == 1
    b.gc(100)  # expired: more than 2 x 4 s since the last update
    assert b.get("ns_other_u-2_a") == 0
