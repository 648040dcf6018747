"""The reconcile Runner driven by FakeClock, and the log conventions it uses."""

from __future__ import annotations

import io
import json
import logging
import threading

import pytest

from podnet import log
from podnet.reconcile import FakeClock, Runner


class Sync:
    """A sync_fn that records (time, full) and fails while `failing` is set."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.calls: list[tuple[float, bool]] = []
        self.failing = False

    def __call__(self, full: bool) -> None:
        self.calls.append((self.clock.now() - 1000.0, full))
        if self.failing:
            raise RuntimeError("iptables-restore exited 4")


def make(**kwargs: float) -> tuple[Runner, Sync, FakeClock]:
    clock = FakeClock(start=1000.0)
    sync = Sync(clock)
    opts: dict[str, float] = {"min_interval": 1.0, "max_interval": 60.0, "backoff_initial": 2.0,
                              "backoff_max": 10.0, **kwargs}
    return Runner(sync, clock=clock, **opts), sync, clock


def test_first_run_is_an_immediate_full_sync_then_nothing_until_requested() -> None:
    runner, sync, clock = make()
    assert runner.need_full
    delay = runner.run_once()
    assert sync.calls == [(0.0, True)] and not runner.need_full
    assert delay == pytest.approx(60.0)  # idle: next wake-up is the periodic resync
    clock.advance(5)
    runner.run_once()
    assert len(sync.calls) == 1


def test_requests_are_coalesced_and_partial() -> None:
    runner, sync, clock = make()
    runner.run_once()
    clock.advance(5)
    for _ in range(10):
        runner.request()
    runner.run_once()
    runner.run_once()
    assert sync.calls == [(0.0, True), (5.0, False)]


def test_min_interval_delays_a_request() -> None:
    runner, sync, clock = make(min_interval=2.0)
    runner.run_once()
    clock.advance(0.5)
    runner.request()
    assert runner.run_once() == pytest.approx(1.5)  # not yet: 2 s after the last start
    assert len(sync.calls) == 1
    clock.advance(1.5)
    runner.run_once()
    assert sync.calls[-1] == (2.0, False)


def test_periodic_full_resync_without_requests() -> None:
    runner, sync, clock = make(max_interval=30.0)
    runner.run_once()
    clock.advance(29)
    runner.run_once()
    assert len(sync.calls) == 1
    clock.advance(1)
    runner.run_once()
    assert sync.calls[-1] == (30.0, True)


def test_request_full_forces_full_and_partial_syncs_do_not_clear_it() -> None:
    runner, sync, clock = make()
    runner.run_once()
    clock.advance(2)
    runner.request(full=True)
    assert runner.need_full
    runner.run_once()
    assert sync.calls[-1] == (2.0, True) and not runner.need_full


def test_full_request_during_a_sync_survives_that_sync() -> None:
    clock = FakeClock()
    runner: Runner
    calls: list[bool] = []

    def sync(full: bool) -> None:
        calls.append(full)
        if len(calls) == 2:
            runner.request(full=True)  # e.g. a watch gap noticed while we were applying

    runner = Runner(sync, clock=clock, min_interval=1.0, max_interval=60.0)
    runner.run_once()
    clock.advance(2)
    runner.request()
    runner.run_once()  # partial; a full request lands meanwhile
    assert runner.need_full
    clock.advance(2)
    runner.run_once()
    assert calls == [True, False, True] and not runner.need_full


def test_error_sets_need_full_and_backs_off_exponentially_with_cap() -> None:
    runner, sync, clock = make(backoff_initial=2.0, backoff_max=5.0)
    runner.run_once()
    sync.failing = True
    clock.advance(10)
    runner.request()
    delays = []
    for _ in range(4):
        delays.append(runner.run_once())
        assert runner.need_full
        clock.advance(delays[-1])
    assert delays == pytest.approx([2.0, 4.0, 5.0, 5.0])
    assert [full for _, full in sync.calls] == [True, False, True, True, True]
    assert runner.failures == 4
    sync.failing = False
    runner.run_once()
    assert not runner.need_full and runner.failures == 0
    assert sync.calls[-1][1] is True


def test_backoff_blocks_early_requests() -> None:
    runner, sync, clock = make(backoff_initial=4.0)
    sync.failing = True
    runner.run_once()
    clock.advance(1.5)
    runner.request()
    assert runner.run_once() == pytest.approx(2.5)
    assert len(sync.calls) == 1


def test_run_forever_with_fake_clock_until_stop() -> None:
    clock = FakeClock()
    runner: Runner
    seen: list[tuple[float, bool]] = []

    def sync(full: bool) -> None:
        seen.append((clock.now() - 1000.0, full))
        if len(seen) == 3:
            runner.stop()

    runner = Runner(sync, clock=clock, min_interval=1.0, max_interval=10.0)
    runner.run_forever()
    # start, then two periodic resyncs: the fake wait() jumped straight to each deadline.
    assert seen == [(0.0, True), (10.0, True), (20.0, True)]
    assert clock.waits == [10.0, 10.0]


def test_run_forever_on_a_thread_with_real_clock() -> None:
    done = threading.Event()
    calls: list[bool] = []

    def sync(full: bool) -> None:
        calls.append(full)
        if len(calls) == 2:
            done.set()

    runner = Runner(sync, min_interval=0.01, max_interval=30.0)
    thread = threading.Thread(target=runner.run_forever, daemon=True)
    thread.start()
    runner.request()
    assert done.wait(5)
    runner.stop()
    thread.join(5)
    assert not thread.is_alive() and calls[0] is True


def test_bad_intervals() -> None:
    with pytest.raises(ValueError):
        Runner(lambda full: None, min_interval=5, max_interval=1)


# ------------------------------------------------------------------------------------ log
def reset_logging() -> None:
    """Undo setup() so later tests (and caplog) see podnet loggers as before."""
    root = logging.getLogger("podnet")
    root.handlers.clear()
    root.propagate = True
    root.setLevel(logging.NOTSET)


def test_failed_sync_is_logged_in_the_house_format() -> None:
    stream = io.StringIO()
    log.setup("INFO", stream=stream)
    try:
        runner, sync, _ = make()
        sync.failing = True
        runner.run_once()
    finally:
        reset_logging()
    first = stream.getvalue().splitlines()[0]
    assert first.endswith("ERROR reconcile: runner: sync failed (attempt 1), retrying in 2.0s")
    assert first[:4].isdigit() and first[10] == "T" and first.split()[0].endswith("Z")
    assert "RuntimeError: iptables-restore exited 4" in stream.getvalue()


def test_json_log_lines_and_setup_is_idempotent() -> None:
    stream = io.StringIO()
    log.setup("DEBUG", json=True, stream=io.StringIO())
    log.setup("DEBUG", json=True, stream=stream)  # replaces, not adds, our handler
    try:
        log.get_logger("flanneld.lease").debug("renewed %s", "10.244.1.0/24")
    finally:
        reset_logging()
    (line,) = stream.getvalue().splitlines()
    data = json.loads(line)
    assert data["component"] == "flanneld.lease" and data["msg"] == "renewed 10.244.1.0/24"
    assert data["level"] == "DEBUG" and data["ts"].endswith("Z")


def test_importing_log_configures_nothing() -> None:
    import importlib
    import subprocess
    import sys

    importlib.import_module("podnet.log")
    code = "import logging, podnet.log, podnet.reconcile; assert not logging.getLogger('podnet').handlers"
    subprocess.run([sys.executable, "-c", code], check=True)
