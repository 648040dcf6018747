"""podnet.api.leaderelection over a fake Lease API and FakeClock: acquire, renew, expiry judged by
local observation time, 409 races, release, the renew deadline, transitions, the flags."""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from podnet.api.client import LEASES, ApiError, Resource
from podnet.api.leaderelection import (
    LeaderElectionConfig,
    LeaderElector,
    Outcome,
    add_leader_election_flags,
    config_from_args,
    micro_time,
    run_with_leader_election,
)
from podnet.reconcile import FakeClock

Obj = dict[str, Any]
MICRO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def _status(code: int, reason: str) -> ApiError:
    return ApiError({"kind": "Status", "code": code, "reason": reason, "message": reason.lower()})


class FakeLeases:
    """An in-memory Lease store with the API server's optimistic concurrency: create of an existing
    name is 409 AlreadyExists, an update whose resourceVersion is stale is 409 Conflict."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], Obj] = {}
        self.rv = 0
        self.down = False  # every request fails as with the server unreachable
        self.fail_next = 0  # so many requests fail so
        self.before_update: Callable[[], None] | None = None  # runs once before the next update
        self.writes = 0

    def _check(self, res: Resource) -> None:
        assert res == LEASES
        if self.fail_next > 0:
            self.fail_next -= 1
            raise ConnectionRefusedError("connection refused")
        if self.down:
            raise ConnectionRefusedError("connection refused")

    def _store(self, obj: Mapping[str, Any]) -> Obj:
        self.rv += 1
        self.writes += 1
        stored = copy.deepcopy(dict(obj))
        stored["metadata"]["resourceVersion"] = str(self.rv)
        meta = stored["metadata"]
        self.objects[(meta["namespace"], meta["name"])] = stored
        return copy.deepcopy(stored)

    def get(self, res: Resource, name: str, namespace: str | None = None) -> Obj:
        self._check(res)
        if (str(namespace), name) not in self.objects:
            raise _status(404, "NotFound")
        return copy.deepcopy(self.objects[(str(namespace), name)])

    def create(self, res: Resource, obj: Mapping[str, Any], namespace: str | None = None) -> Obj:
        self._check(res)
        if (str(namespace), obj["metadata"]["name"]) in self.objects:
            raise _status(409, "AlreadyExists")
        return self._store({**obj, "metadata": {**obj["metadata"], "namespace": namespace}})

    def update(self, res: Resource, obj: Mapping[str, Any], namespace: str | None = None) -> Obj:
        self._check(res)
        hook, self.before_update = self.before_update, None
        if hook is not None:
            hook()
        current = self.objects.get((str(namespace), obj["metadata"]["name"]))
        if current is None:
            raise _status(404, "NotFound")
        if obj["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise _status(409, "Conflict")
        return self._store(obj)

    def spec(self, name: str = "kcm") -> Obj:
        return dict(self.objects[("kube-system", name)]["spec"])


def _config(identity: str, **kw: Any) -> LeaderElectionConfig:
    base: dict[str, Any] = {"name": "kcm", "identity": identity, "lease_duration": 15.0,
                            "renew_deadline": 10.0, "retry_period": 2.0}
    return LeaderElectionConfig(**{**base, **kw})


class Wall:
    """A settable wall clock for acquireTime/renewTime (what another host would write)."""

    def __init__(self) -> None:
        self.now = dt.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


def _elector(api: FakeLeases, clock: FakeClock, identity: str, wall: Wall | None = None,
             **kw: Any) -> LeaderElector:
    return LeaderElector(api, _config(identity, **kw), clock=clock, wall=wall or Wall(), jitter=lambda: 0.0)


@pytest.fixture
def api() -> FakeLeases:
    return FakeLeases()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# ------------------------------------------------------------------------------ one attempt
def test_acquire_fresh_creates_the_lease(api: FakeLeases, clock: FakeClock) -> None:
    a = _elector(api, clock, "a")
    assert a.try_acquire_or_renew()
    assert a.is_leader()
    spec = api.spec()
    assert spec["holderIdentity"] == "a"
    assert spec["leaseDurationSeconds"] == 15
    assert spec["leaseTransitions"] == 0
    assert spec["acquireTime"] == spec["renewTime"] == "2026-01-02T03:04:05.678901Z"
    lease = api.objects[("kube-system", "kcm")]
    assert (lease["apiVersion"], lease["kind"]) == ("coordination.k8s.io/v1", "Lease")


def test_renew_moves_renew_time_keeps_acquire_time_and_transitions(api: FakeLeases, clock: FakeClock) -> None:
    wall = Wall()
    a = _elector(api, clock, "a", wall)
    assert a.try_acquire_or_renew()
    first = api.spec()
    clock.advance(2.0)
    wall.now += dt.timedelta(seconds=2)
    assert a.try_acquire_or_renew()
    spec = api.spec()
    assert spec["acquireTime"] == first["acquireTime"]
    assert spec["renewTime"] == "2026-01-02T03:04:07.678901Z"
    assert spec["leaseTransitions"] == 0
    assert a.renewed_at == clock.now()


def test_standby_does_not_take_a_live_lease(api: FakeLeases, clock: FakeClock) -> None:
    a, b = _elector(api, clock, "a"), _elector(api, clock, "b")
    assert a.try_acquire_or_renew()
    writes = api.writes
    assert not b.try_acquire_or_renew()
    assert b.holder == "a" and not b.is_leader()
    assert api.writes == writes
    clock.advance(14.9)
    assert not b.try_acquire_or_renew()
    assert api.spec()["holderIdentity"] == "a"


def test_expiry_is_measured_from_local_observation_not_remote_renew_time(api: FakeLeases,
                                                                         clock: FakeClock) -> None:
    # the holder's clock is an hour behind ours: its renewTime looks long expired, yet the lease is
    # live until lease-duration after WE saw it change
    skewed = Wall()
    skewed.now -= dt.timedelta(hours=1)
    a, b = _elector(api, clock, "a", skewed), _elector(api, clock, "b")
    assert a.try_acquire_or_renew()
    clock.advance(5.0)
    assert not b.try_acquire_or_renew()  # first sighting: the countdown starts now, not at renewTime
    clock.advance(14.0)
    assert not b.try_acquire_or_renew()  # 14 s after our sighting < 15 s lease
    clock.advance(1.0)
    assert b.try_acquire_or_renew()
    spec = api.spec()
    assert spec["holderIdentity"] == "b"
    assert spec["leaseTransitions"] == 1
    assert spec["acquireTime"] == "2026-01-02T03:04:05.678901Z"  # b's own wall clock


def test_a_renewal_restarts_the_standbys_countdown(api: FakeLeases, clock: FakeClock) -> None:
    wall = Wall()
    a, b = _elector(api, clock, "a", wall), _elector(api, clock, "b")
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    clock.advance(10.0)
    wall.now += dt.timedelta(seconds=10)
    assert a.try_acquire_or_renew()
    clock.advance(1.0)
    assert not b.try_acquire_or_renew()  # sees the renewal: 15 s from now
    clock.advance(14.5)
    assert not b.try_acquire_or_renew()  # 25.5 s after a first acquired, but a renewed since
    clock.advance(0.5)
    assert b.try_acquire_or_renew()


def test_future_remote_renew_time_does_not_extend_the_lease(api: FakeLeases, clock: FakeClock) -> None:
    ahead = Wall()
    ahead.now += dt.timedelta(hours=1)
    a, b = _elector(api, clock, "a", ahead), _elector(api, clock, "b")
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    clock.advance(15.0)
    assert b.try_acquire_or_renew()


def test_released_lease_is_taken_at_once(api: FakeLeases, clock: FakeClock) -> None:
    a, b = _elector(api, clock, "a"), _elector(api, clock, "b")
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    assert a.release()
    spec = api.spec()
    assert spec["holderIdentity"] == "" and spec["leaseDurationSeconds"] == 1
    assert spec["leaseTransitions"] == 0
    assert b.try_acquire_or_renew()  # no waiting for the old lease duration
    assert api.spec()["leaseTransitions"] == 1


def test_release_only_by_the_holder(api: FakeLeases, clock: FakeClock) -> None:
    a, b = _elector(api, clock, "a"), _elector(api, clock, "b")
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()
    assert not b.release()
    assert api.spec()["holderIdentity"] == "a"


def test_conflict_on_update_loses_the_race(api: FakeLeases, clock: FakeClock) -> None:
    a, b, c = (_elector(api, clock, n) for n in "abc")
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew() and not c.try_acquire_or_renew()
    clock.advance(15.0)
    # c writes between b's read and b's update: b's resourceVersion is stale -> 409, c wins
    api.before_update = lambda: None if c.try_acquire_or_renew() else pytest.fail("c must win")
    assert not b.try_acquire_or_renew()
    assert api.spec()["holderIdentity"] == "c"
    assert not b.is_leader()


def test_conflict_on_create_loses_the_race(api: FakeLeases, clock: FakeClock) -> None:
    a, b = _elector(api, clock, "a"), _elector(api, clock, "b")
    original_get = api.get

    def get_then_lose(res: Resource, name: str, namespace: str | None = None) -> Obj:
        try:
            return original_get(res, name, namespace)
        finally:
            if ("kube-system", "kcm") not in api.objects:
                api.get = original_get  # type: ignore[method-assign]
                assert a.try_acquire_or_renew()  # a creates it after b saw 404

    api.get = get_then_lose  # type: ignore[method-assign]
    assert not b.try_acquire_or_renew()
    assert api.spec()["holderIdentity"] == "a"


def test_unreachable_server_is_a_failed_attempt(api: FakeLeases, clock: FakeClock) -> None:
    a = _elector(api, clock, "a")
    api.down = True
    assert not a.try_acquire_or_renew()
    api.down = False
    assert a.try_acquire_or_renew()


def test_transitions_count_every_change_of_holder(api: FakeLeases, clock: FakeClock) -> None:
    a, b = _elector(api, clock, "a"), _elector(api, clock, "b")
    assert a.try_acquire_or_renew() and a.release()
    assert b.try_acquire_or_renew() and b.release()
    assert a.try_acquire_or_renew()
    assert a.try_acquire_or_renew()  # a renewal is no transition
    assert api.spec()["leaseTransitions"] == 2
    assert not b.try_acquire_or_renew()  # b's countdown starts at its first sighting of a's record
    clock.advance(15.0)
    assert b.try_acquire_or_renew()  # expiry takeover
    assert api.spec()["leaseTransitions"] == 3


def test_lease_duration_seconds_rounds_up(api: FakeLeases, clock: FakeClock) -> None:
    a = _elector(api, clock, "a", lease_duration=2.5, renew_deadline=2.0, retry_period=0.5)
    assert a.try_acquire_or_renew()
    assert api.spec()["leaseDurationSeconds"] == 3


# ------------------------------------------------------------------------------ loops
def test_acquire_retries_every_retry_period_until_expiry(api: FakeLeases, clock: FakeClock) -> None:
    a, b = _elector(api, clock, "a"), _elector(api, clock, "b")
    assert a.try_acquire_or_renew()
    start = clock.now()
    assert b.acquire(threading.Event())
    assert clock.now() - start == pytest.approx(16.0)  # first sighting at 0, 8 retries of 2 s
    assert set(clock.waits) == {2.0}


def test_acquire_jitter_stretches_the_retry(api: FakeLeases, clock: FakeClock) -> None:
    a = _elector(api, clock, "a")
    b = LeaderElector(api, _config("b"), clock=clock, wall=Wall(), jitter=lambda: 0.5)
    assert a.try_acquire_or_renew()
    assert b.acquire(threading.Event())
    assert clock.waits[0] == pytest.approx(2.0 * (1 + 1.2 * 0.5))


def test_acquire_returns_false_when_stopped(api: FakeLeases, clock: FakeClock) -> None:
    a, b = _elector(api, clock, "a"), _elector(api, clock, "b")
    assert a.try_acquire_or_renew()
    stop = threading.Event()
    stop.set()
    assert not b.acquire(stop)


def test_renew_loses_after_the_renew_deadline(api: FakeLeases, clock: FakeClock) -> None:
    a = _elector(api, clock, "a")
    assert a.acquire(threading.Event())
    renewed = a.renewed_at
    api.down = True
    assert a.renew(threading.Event()) is Outcome.LOST
    # the last renewal was at `renewed`; retries until `renewed + deadline`, never past it
    assert clock.now() == pytest.approx(renewed + 10.0)
    assert renewed + 10.0 < renewed + 15.0  # before any standby may take over


def test_renew_survives_failures_shorter_than_the_deadline(api: FakeLeases, clock: FakeClock) -> None:
    a = _elector(api, clock, "a")
    assert a.acquire(threading.Event())
    stop = threading.Event()
    rounds = {"n": 0}

    def keep_going() -> bool:
        rounds["n"] += 1
        if rounds["n"] == 2:
            # three failed attempts 2 s apart: the 4th try comes 8 s after the last renewal, < 10 s
            api.fail_next = 3
        return rounds["n"] < 5

    assert a.renew(stop, keep_going=keep_going) is Outcome.STOPPED
    assert api.fail_next == 0
    assert api.spec()["holderIdentity"] == "a"


def test_renew_loses_at_once_when_another_holds_the_lease(api: FakeLeases, clock: FakeClock) -> None:
    a = _elector(api, clock, "a")
    assert a.acquire(threading.Event())
    # an operator (or a split brain) hands the lease to b
    stolen = api.get(LEASES, "kcm", "kube-system")
    stolen["spec"]["holderIdentity"] = "b"
    api.update(LEASES, stolen, "kube-system")
    start = clock.now()
    assert a.renew(threading.Event()) is Outcome.LOST
    assert clock.now() - start == pytest.approx(2.0)  # one retry period, not the whole deadline


def test_renew_stops_when_asked(api: FakeLeases, clock: FakeClock) -> None:
    a = _elector(api, clock, "a")
    assert a.acquire(threading.Event())
    stop = threading.Event()
    stop.set()
    assert a.renew(stop) is Outcome.STOPPED


# ------------------------------------------------------------------------------ run_with_leader_election
def test_run_releases_on_stop_after_the_work_stopped(api: FakeLeases, clock: FakeClock) -> None:
    stop = threading.Event()
    seen: list[str] = []

    def work(leading: threading.Event) -> None:
        seen.append(api.spec()["holderIdentity"])
        stop.set()  # as SIGTERM would
        assert leading.wait(5)
        seen.append(api.spec()["holderIdentity"])  # still ours while the work winds down

    assert run_with_leader_election(api, _config("a"), work, stop, clock=clock) == 0
    assert seen == ["a", "a"]
    spec = api.spec()
    assert spec["holderIdentity"] == "" and spec["leaseDurationSeconds"] == 1


def test_run_lost_leadership_stops_the_work_and_fails(api: FakeLeases, clock: FakeClock) -> None:
    stopped = threading.Event()

    def work(leading: threading.Event) -> None:
        api.down = True  # the API server vanishes under the leader
        assert leading.wait(5)
        stopped.set()

    assert run_with_leader_election(api, _config("a"), work, threading.Event(), clock=clock) == 1
    assert stopped.wait(5)


def test_run_work_that_ends_releases_the_lease(api: FakeLeases, clock: FakeClock) -> None:
    assert run_with_leader_election(api, _config("a"), lambda leading: None, threading.Event(),
                                    clock=clock) == 0
    assert api.spec()["holderIdentity"] == ""


def test_run_work_that_raises_exits_non_zero(api: FakeLeases, clock: FakeClock) -> None:
    def work(leading: threading.Event) -> None:
        raise RuntimeError("boom")

    assert run_with_leader_election(api, _config("a"), work, threading.Event(), clock=clock) == 1
    assert api.spec()["holderIdentity"] == ""


def test_run_stopped_before_acquiring_never_works(api: FakeLeases) -> None:
    stop = threading.Event()

    class SignalDuringFirstWait(FakeClock):
        def wait(self, event: threading.Event, timeout: float) -> bool:
            stop.set()  # SIGTERM while a standby
            return super().wait(event, timeout)

    clock = SignalDuringFirstWait()
    assert _elector(api, clock, "other").try_acquire_or_renew()
    ran: list[threading.Event] = []
    assert run_with_leader_election(api, _config("a"), ran.append, stop, clock=clock) == 0
    assert ran == []
    assert api.spec()["holderIdentity"] == "other"


def test_watchdog_stops_the_work_at_the_deadline_while_a_renewal_hangs(api: FakeLeases) -> None:
    """Real clock: the third renewal blocks until the work has been told to stop, which must happen
    at the renew deadline, not whenever the hung call returns (client-go cancels it there)."""
    hung_at: list[float] = []
    unblock = threading.Event()
    update = api.update

    def stalling_update(res: Resource, obj: Mapping[str, Any], namespace: str | None = None) -> Obj:
        if api.writes == 3:  # create + two renewals went through
            hung_at.append(time.monotonic())
            unblock.wait(5)
        return update(res, obj, namespace)

    api.update = stalling_update  # type: ignore[method-assign]
    stopped_at: list[float] = []

    def work(leading: threading.Event) -> None:
        assert leading.wait(5)
        stopped_at.append(time.monotonic())
        unblock.set()  # only now may the hung renewal return

    config = _config("a", lease_duration=0.6, renew_deadline=0.4, retry_period=0.1)
    assert run_with_leader_election(api, config, work, threading.Event()) == 1
    assert hung_at and stopped_at
    assert stopped_at[0] - hung_at[0] < 0.4 + 0.4  # the deadline counts from the last renewal's start
    assert api.spec()["holderIdentity"] == "a"  # not released: it may belong to another by now


def test_run_disabled_runs_the_work_at_once(api: FakeLeases) -> None:
    stop = threading.Event()
    got: list[threading.Event] = []
    assert run_with_leader_election(api, _config("a", enabled=False), got.append, stop) == 0
    assert got == [stop]
    assert api.objects == {}


# ------------------------------------------------------------------------------ flags and formats
def _parse(*argv: str, name: str = "kube-scheduler") -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_leader_election_flags(parser, name)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize(("argv", "enabled"), [
    ((), True), (("--leader-elect",), True), (("--leader-elect=true",), True),
    (("--leader-elect=false",), False), (("--leader-elect=0",), False), (("--leader-elect=F",), False),
])
def test_leader_elect_flag(argv: tuple[str, ...], enabled: bool) -> None:
    assert config_from_args(_parse(*argv)).enabled is enabled


def test_flag_defaults_as_upstream() -> None:
    config = config_from_args(_parse(name="kube-controller-manager"), identity="me")
    assert config == LeaderElectionConfig(name="kube-controller-manager", namespace="kube-system",
                                          identity="me", lease_duration=15.0, renew_deadline=10.0,
                                          retry_period=2.0, enabled=True)


def test_flags_take_go_durations_and_a_default_identity() -> None:
    argv = ("--leader-elect-lease-duration=2s", "--leader-elect-renew-deadline=1500ms",
            "--leader-elect-retry-period=0.3", "--leader-elect-resource-name=x",
            "--leader-elect-resource-namespace=y")
    config = config_from_args(_parse(*argv))
    assert (config.lease_duration, config.renew_deadline, config.retry_period) == (2.0, 1.5, 0.3)
    assert (config.name, config.namespace) == ("x", "y")
    host, _, uid = config.identity.rpartition("_")
    assert host and re.fullmatch(r"[0-9a-f-]{36}", uid)


@pytest.mark.parametrize("argv", [
    ("--leader-elect-lease-duration=10s",),  # not > renew deadline
    ("--leader-elect-retry-period=9s",),  # renew deadline not > 1.2 * retry
    ("--leader-elect-resource-name=",),
])
def test_inconsistent_durations_are_rejected(argv: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        config_from_args(_parse(*argv))


def test_inconsistent_durations_are_fine_when_disabled() -> None:
    assert not config_from_args(_parse("--leader-elect=false", "--leader-elect-lease-duration=1s")).enabled


def test_bad_boolean_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parse("--leader-elect=maybe")
    assert "invalid boolean" in capsys.readouterr().err


def test_micro_time_is_rfc3339_with_microseconds_in_utc() -> None:
    plus_two = dt.timezone(dt.timedelta(hours=2))
    assert micro_time(dt.datetime(2026, 5, 6, 9, 8, 7, 5, tzinfo=plus_two)) == "2026-05-06T07:08:07.000005Z"
    assert MICRO.match(micro_time(dt.datetime.now(dt.UTC)))
