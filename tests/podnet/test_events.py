"""podnet.api.events over a fake sink: the Event object, correlation (count/lastTimestamp patches),
never blocking the caller, drops on overflow and API errors, stop()."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from podnet.api.client import EVENTS, ApiError, Resource
from podnet.api.events import NORMAL, WARNING, EventRecorder, event_name, object_reference

T0 = 1_800_000_000.25  # 2027-01-15T08:00:00.25Z


class FakeSink:
    """Records writes; `errors` are raised by the next calls in order; `gate` (when set) blocks
    every write until released, to prove the caller never waits."""

    def __init__(self) -> None:
        self.creates: list[tuple[dict[str, Any], str | None]] = []
        self.patches: list[tuple[str, Any, str | None, str]] = []
        self.errors: list[Exception] = []
        self.gate: threading.Event | None = None

    def _maybe_fail(self) -> None:
        if self.gate is not None:
            self.gate.wait(10)
        if self.errors:
            raise self.errors.pop(0)

    def create(self, res: Resource, obj: Any, namespace: str | None = None, **query: Any) -> dict[str, Any]:
        assert res == EVENTS
        self._maybe_fail()
        self.creates.append((obj, namespace))
        return dict(obj)

    def patch(self, res: Resource, name: str, patch: Any, namespace: str | None = None, *,
              patch_type: str = "merge", subresource: str | None = None, field_manager: str | None = None,
              force: bool | None = None) -> dict[str, Any]:
        assert res == EVENTS
        self._maybe_fail()
        self.patches.append((name, patch, namespace, patch_type))
        return {}


def pod(name: str = "web-1", ns: str = "default") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}", "resourceVersion": "7"}}


def node(name: str = "node-a") -> dict[str, Any]:
    return {"kind": "Node", "apiVersion": "v1", "metadata": {"name": name, "uid": "uid-node"}}


class Clocks:
    def __init__(self) -> None:
        self.wall, self.mono = T0, 1000.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


def make(**kw: Any) -> tuple[EventRecorder, FakeSink, Clocks]:
    sink, clocks = FakeSink(), Clocks()
    rec = EventRecorder(sink, "default-scheduler", "host-1", clock=lambda: clocks.wall,
                        monotonic=lambda: clocks.mono, **kw)
    return rec, sink, clocks


def record(rec: EventRecorder, obj: dict[str, Any], type_: str = NORMAL, reason: str = "Scheduled",
           message: str = "Successfully assigned default/web-1 to node-a") -> None:
    assert rec.event(obj, type_, reason, message, kind="Pod", api_version="v1")
    assert rec.flush(5)


# ---------------------------------------------------------------------------------------- the object
def test_event_object_like_upstream() -> None:
    rec, sink, _ = make()
    record(rec, pod())
    [(body, ns)] = sink.creates
    assert ns == "default"
    assert body == {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": event_name("web-1", int(T0 * 1e9)), "namespace": "default"},
        "involvedObject": {"kind": "Pod", "apiVersion": "v1", "name": "web-1", "namespace": "default",
                           "uid": "uid-web-1", "resourceVersion": "7"},
        "reason": "Scheduled", "message": "Successfully assigned default/web-1 to node-a", "type": "Normal",
        "source": {"component": "default-scheduler", "host": "host-1"},
        "firstTimestamp": "2027-01-15T08:00:00Z", "lastTimestamp": "2027-01-15T08:00:00Z", "count": 1,
        "reportingComponent": "default-scheduler", "reportingInstance": "host-1",
    }
    assert body["metadata"]["name"] == f"web-1.{int(T0 * 1e9):x}"
    rec.stop()


def test_cluster_scoped_object_events_go_to_default_and_keep_their_own_kind() -> None:
    rec, sink, _ = make()
    record(rec, node(), WARNING, "NodeNotReady", "Node node-a status is now: NodeNotReady")
    [(body, ns)] = sink.creates
    assert ns == "default" and body["metadata"]["namespace"] == "default"
    assert body["involvedObject"] == {"kind": "Node", "apiVersion": "v1", "name": "node-a", "uid": "uid-node"}
    rec.stop()


def test_object_reference_prefers_the_objects_own_kind() -> None:
    assert object_reference(node(), kind="Pod")["kind"] == "Node"
    assert object_reference({"metadata": {"name": "x"}}) == {"name": "x"}


def test_no_host_means_no_source_host() -> None:
    sink = FakeSink()
    rec = EventRecorder(sink, "controller-manager")
    assert rec.event(pod(), NORMAL, "SuccessfulCreate", "Created pod: web-1")
    assert rec.flush(5)
    body = sink.creates[0][0]
    assert body["source"] == {"component": "controller-manager"} and body["reportingInstance"] == ""
    rec.stop()


# ---------------------------------------------------------------------------------------- correlation
def test_same_event_again_patches_count_and_last_timestamp() -> None:
    rec, sink, clocks = make()
    record(rec, pod(), WARNING, "FailedScheduling", "0/3 nodes are available: 3 Insufficient cpu.")
    clocks.advance(30)
    record(rec, pod(), WARNING, "FailedScheduling", "0/3 nodes are available: 3 Insufficient cpu.")
    clocks.advance(30)
    record(rec, pod(), WARNING, "FailedScheduling", "0/3 nodes are available: 3 Insufficient cpu.")
    assert len(sink.creates) == 1
    name = sink.creates[0][0]["metadata"]["name"]
    message = "0/3 nodes are available: 3 Insufficient cpu."
    assert sink.patches == [
        (name, {"count": 2, "lastTimestamp": "2027-01-15T08:00:30Z", "message": message}, "default", "merge"),
        (name, {"count": 3, "lastTimestamp": "2027-01-15T08:01:00Z", "message": message}, "default", "merge"),
    ]
    assert (rec.created, rec.patched, rec.dropped) == (1, 2, 0)
    rec.stop()


@pytest.mark.parametrize(
    ("change", "new_event"),
    [
        ({}, False),
        ({"message": "0/3 nodes are available: 3 Insufficient memory."}, True),
        ({"reason": "Other"}, True),
        ({"type_": NORMAL}, True),
        ({"obj": pod("web-2")}, True),
        ({"obj": pod("web-1", ns="other")}, True),
        ({"obj": {**pod(), "metadata": {**pod()["metadata"], "resourceVersion": "8"}}}, False),
    ],
)
def test_what_counts_as_the_same_event(change: dict[str, Any], new_event: bool) -> None:
    rec, sink, _ = make()
    first: dict[str, Any] = {"obj": pod(), "type_": WARNING, "reason": "FailedScheduling",
                             "message": "0/3 nodes are available: 3 Insufficient cpu."}
    second = {**first, **change}
    for args in (first, second):
        assert rec.event(args["obj"], args["type_"], args["reason"], args["message"], kind="Pod")
    assert rec.flush(5)
    assert (len(sink.creates), len(sink.patches)) == ((2, 0) if new_event else (1, 1))
    rec.stop()


def test_after_the_window_a_new_event_is_created() -> None:
    rec, sink, clocks = make(window=600.0)
    record(rec, pod())
    clocks.advance(599)
    record(rec, pod())
    clocks.advance(600)  # 600 s after the last occurrence
    record(rec, pod())
    assert len(sink.creates) == 2 and len(sink.patches) == 1
    assert sink.creates[1][0]["count"] == 1
    rec.stop()


def test_deleted_event_is_created_again() -> None:
    rec, sink, _ = make()
    record(rec, pod())
    sink.errors = [ApiError({"code": 404, "reason": "NotFound"})]
    record(rec, pod())
    assert len(sink.creates) == 2 and sink.patches == []
    record(rec, pod())
    assert sink.patches[0][0] == sink.creates[1][0]["metadata"]["name"]
    assert sink.patches[0][1]["count"] == 2
    rec.stop()


def test_name_collision_takes_the_next_nanosecond() -> None:
    rec, sink, _ = make()
    sink.errors = [ApiError({"code": 409, "reason": "AlreadyExists"})]
    record(rec, pod())
    assert sink.creates[0][0]["metadata"]["name"] == event_name("web-1", int(T0 * 1e9) + 1)
    rec.stop()


def test_correlation_cache_is_bounded() -> None:
    rec, sink, _ = make(cache_size=2)
    for name in ("a", "b", "c", "a"):  # "a" was evicted by "c": created again
        record(rec, pod(name))
    assert [b["involvedObject"]["name"] for b, _ in sink.creates] == ["a", "b", "c", "a"]
    record(rec, pod("c"))
    assert len(sink.patches) == 1
    rec.stop()


# ---------------------------------------------------------------------------------------- async, drops
def test_never_blocks_and_drops_on_overflow(caplog: pytest.LogCaptureFixture) -> None:
    rec, sink, _ = make(queue_size=2)
    sink.gate = threading.Event()
    caplog.set_level(logging.WARNING, logger="podnet.api.events")
    results = [rec.event(pod(f"p{i}"), NORMAL, "Scheduled", "m", kind="Pod") for i in range(10)]
    # one is being written (blocked at the gate), two wait in the queue, the rest are dropped
    assert results[:2] == [True, True] and results.count(True) in (2, 3)
    assert rec.dropped == results.count(False)
    assert "dropping event Normal Scheduled" in caplog.text and "queue full" in caplog.text
    assert len(caplog.records) == 1  # one line a second, not one per drop
    sink.gate.set()
    assert rec.flush(5)
    assert len(sink.creates) == results.count(True)
    rec.stop()


def test_api_and_transport_errors_drop_the_event_and_the_writer_goes_on() -> None:
    rec, sink, _ = make()
    sink.errors = [ApiError({"code": 500, "reason": "InternalError"}), ConnectionResetError("gone")]
    for name in ("a", "b", "c"):
        assert rec.event(pod(name), NORMAL, "Scheduled", "m", kind="Pod")
    assert rec.flush(5)
    assert rec.dropped == 2 and [b["involvedObject"]["name"] for b, _ in sink.creates] == ["c"]
    rec.stop()


def test_stop_flushes_then_refuses() -> None:
    rec, sink, _ = make()
    for name in ("a", "b", "c"):
        assert rec.event(pod(name), NORMAL, "Scheduled", "m", kind="Pod")
    rec.stop(2.0)
    assert len(sink.creates) == 3
    assert rec.event(pod("d"), NORMAL, "Scheduled", "m") is False and rec.dropped == 1
    assert rec._thread is not None and not rec._thread.is_alive()


def test_stop_without_any_event_starts_no_thread() -> None:
    rec, _, _ = make()
    rec.stop()
    assert rec._thread is None


def test_stop_returns_while_the_sink_hangs() -> None:
    rec, sink, _ = make()
    sink.gate = threading.Event()
    assert rec.event(pod(), NORMAL, "Scheduled", "m", kind="Pod")
    rec.stop(0.2)  # returns although the write is stuck
    sink.gate.set()


# ---------------------------------------------------------------------------------------- spam filter
def test_spam_filter_25_per_object_then_one_every_5_minutes() -> None:
    rec, sink, clocks = make()
    rc = {"kind": "ReplicationController", "metadata": {"name": "x", "namespace": "default", "uid": "u"}}
    accepted = [rec.event(rc, NORMAL, "SuccessfulCreate", f"Created pod: x-{i}") for i in range(30)]
    assert accepted == [True] * 25 + [False] * 5 and rec.throttled == 5
    assert rec.event(pod(), NORMAL, "Scheduled", "m", kind="Pod")  # another object: its own bucket
    clocks.advance(299)
    assert not rec.event(rc, NORMAL, "SuccessfulCreate", "Created pod: x-30")
    clocks.advance(1)
    assert rec.event(rc, NORMAL, "SuccessfulCreate", "Created pod: x-31")
    assert not rec.event(rc, NORMAL, "SuccessfulCreate", "Created pod: x-32")
    assert rec.flush(5)
    assert len(sink.creates) + len(sink.patches) == 27 and rec.dropped == 0
    rec.stop()


def test_spam_filter_counts_repeats_too() -> None:
    """Upstream filters after correlation: a repeat that would only be a count patch still
    takes a token."""
    rec, sink, _ = make(spam_burst=3)
    results = [rec.event(pod(), WARNING, "FailedScheduling", "same", kind="Pod") for _ in range(5)]
    assert results == [True, True, True, False, False]
    assert rec.flush(5)
    assert len(sink.creates) == 1 and len(sink.patches) == 2
    rec.stop()


# ---------------------------------------------------------------------------------------- similar events
def rc_obj(name: str = "x") -> dict[str, Any]:
    return {"kind": "ReplicationController", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}"}}


def test_the_tenth_distinct_message_starts_one_combined_event() -> None:
    rec, sink, clocks = make()
    for i in range(12):
        assert rec.event(rc_obj(), NORMAL, "SuccessfulCreate", f"Created pod: x-{i}")
        clocks.advance(1)
    assert rec.flush(5)
    messages = [body["message"] for body, _ in sink.creates]
    assert messages == [f"Created pod: x-{i}" for i in range(9)] + [
        "(combined from similar events): Created pod: x-9"]
    combined = sink.creates[-1][0]["metadata"]["name"]
    assert [(name, patch["count"], patch["message"]) for name, patch, _, _ in sink.patches] == [
        (combined, 2, "(combined from similar events): Created pod: x-10"),
        (combined, 3, "(combined from similar events): Created pod: x-11"),
    ]
    rec.stop()


def test_similar_events_are_per_object_type_and_reason_and_expire_with_the_window() -> None:
    rec, sink, clocks = make()
    for i in range(9):
        assert rec.event(rc_obj(), NORMAL, "SuccessfulCreate", f"Created pod: x-{i}")
    # other reason, other object: their own counts
    assert rec.event(rc_obj(), NORMAL, "SuccessfulDelete", "Deleted pod: x-0")
    assert rec.event(rc_obj("y"), NORMAL, "SuccessfulCreate", "Created pod: y-0")
    # a repeat of a known message does not add a distinct one
    assert rec.event(rc_obj(), NORMAL, "SuccessfulCreate", "Created pod: x-0")
    clocks.advance(600)  # the window has passed: counting starts over
    assert rec.event(rc_obj(), NORMAL, "SuccessfulCreate", "Created pod: x-9")
    assert rec.flush(5)
    assert not any(body["message"].startswith("(combined") for body, _ in sink.creates)
    assert len(sink.creates) == 12 and len(sink.patches) == 1
    rec.stop()
