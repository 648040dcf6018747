"""bridge DEL's helper thread for the nft teardowns (overlapped with the link deletion)."""

from __future__ import annotations

import threading

import pytest

from cni import bridge


def test_background_steps_run_in_order_off_the_caller_thread() -> None:
    seen: list[tuple[str, bool]] = []
    me = threading.get_ident()
    join = bridge._in_background([(name, lambda name=name: seen.append((name, threading.get_ident() == me)))
                                  for name in ("a", "b")])
    join()
    assert seen == [("a", False), ("b", False)]


def test_a_background_failure_is_raised_by_join_and_stops_later_steps() -> None:
    ran: list[str] = []

    def boom() -> None:
        raise RuntimeError("nft said no")

    join = bridge._in_background([("boom", boom), ("later", lambda: ran.append("later"))])
    with pytest.raises(RuntimeError, match="nft said no"):
        join()
    assert ran == []


def test_foreground_runs_immediately() -> None:
    ran: list[str] = []
    join = bridge._in_foreground([("x", lambda: ran.append("x"))])
    assert ran == ["x"]
    join()
