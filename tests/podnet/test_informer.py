"""podnet.api.informer over a fake ListWatcher: sync, events, relist diff, backoff, indexes, resync,
stop, and the DirtyKeys -> Runner wiring."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from podnet.api.client import CONFIGMAPS, NODES, ApiError, Resource, WatchEvent
from podnet.api.informer import DirtyKeys, Handlers, Informer, object_key
from podnet.reconcile import FakeClock, Runner


def obj(name: str, rv: str, ns: str | None = "default", **labels: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "resourceVersion": rv, "labels": labels}
    if ns:
        meta["namespace"] = ns
    return {"metadata": meta}


def ev(kind: str, o: dict[str, Any]) -> WatchEvent:
    return WatchEvent(kind, o)


class FakeStream:
    def __init__(self, events: list[Any], block: bool = False) -> None:
        self.events, self.block = events, block
        self.closed = threading.Event()

    def __iter__(self) -> Iterator[WatchEvent]:
        for e in self.events:
            if isinstance(e, BaseException):
                raise e
            yield e
        if self.block:  # a quiet, healthy stream: ends only when closed
            self.closed.wait(10)

    def close(self) -> None:
        self.closed.set()


class FakeListWatcher:
    """Scripted lists ((items, rv) or an exception) and watches (event lists, FakeStreams or an
    exception).  When a script runs out the informer is stopped, so `run()` returns in the test."""

    def __init__(self, lists: list[Any], watches: list[Any]) -> None:
        self.lists, self.watches = lists, watches
        self.informer: Informer | None = None
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def list_all(self, res: Resource, namespace: str | None = None, **kw: Any) -> tuple[list[Any], str]:
        self.calls.append(("list", {"namespace": namespace, **kw}))
        if not self.lists:
            return self._end_list()
        item = self.lists.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    def watch(self, res: Resource, namespace: str | None = None, **kw: Any) -> FakeStream:
        self.calls.append(("watch", kw))
        if not self.watches:
            assert self.informer is not None
            self.informer.stop()
            return FakeStream([])
        item = self.watches.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item if isinstance(item, FakeStream) else FakeStream(item)

    def _end_list(self) -> tuple[list[Any], str]:
        assert self.informer is not None
        self.informer.stop()
        raise ConnectionRefusedError("script over")


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def handlers(self) -> Handlers:
        return Handlers(on_add=lambda o: self.events.append(("add", object_key(o))),
                        on_update=lambda a, b: self.events.append(("update", object_key(b))),
                        on_delete=lambda o: self.events.append(("delete", object_key(o))))


def make(lists: list[Any], watches: list[Any], **kw: Any) -> tuple[Informer, FakeListWatcher, Recorder,
                                                                   list[float]]:
    lw = FakeListWatcher(lists, watches)
    rec = Recorder()
    inf = Informer(lw, CONFIGMAPS, handlers=rec.handlers(), **kw)
    lw.informer = inf
    waits: list[float] = []

    def no_sleep(timeout: float | None = None) -> bool:
        waits.append(timeout or 0.0)
        return False

    inf._wait = no_sleep
    return inf, lw, rec, waits


def gone() -> ApiError:
    return ApiError({"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"})


def test_object_key() -> None:
    assert object_key(obj("a", "1")) == "default/a"
    assert object_key(obj("n1", "1", ns=None)) == "n1"


def test_list_then_watch_events_in_order() -> None:
    a1, a2, b = obj("a", "5"), obj("a", "7"), obj("b", "6")
    inf, lw, rec, waits = make([([a1], "5")], [[ev("ADDED", b), ev("MODIFIED", a2), ev("DELETED", b)]],
                               namespace="default", label_selector="x=y", field_selector="f=g", page_size=50)
    assert not inf.has_synced()
    inf.run()
    assert inf.has_synced()
    assert rec.events == [("add", "default/a"), ("add", "default/b"), ("update", "default/a"),
                          ("delete", "default/b")]
    assert inf.snapshot() == {"default/a": a2} and inf.resource_version == "6"
    assert lw.calls[0] == ("list", {"namespace": "default", "label_selector": "x=y", "field_selector": "f=g",
                                    "limit": 50})
    watch_kw = lw.calls[1][1]
    assert watch_kw["resource_version"] == "5" and watch_kw["allow_bookmarks"]
    assert (watch_kw["label_selector"], watch_kw["field_selector"]) == ("x=y", "f=g")
    assert 300 <= watch_kw["timeout_seconds"] <= 600
    assert waits == []


def test_normal_stream_end_rewatches_from_last_version_without_relist() -> None:
    bookmark = ev("BOOKMARK", {"metadata": {"resourceVersion": "20"}})
    inf, lw, rec, _ = make([([], "3")], [[ev("ADDED", obj("a", "4"))], [bookmark], []])
    inf.run()
    assert inf.relists == 1
    assert [kw["resource_version"] for op, kw in lw.calls if op == "watch"] == ["3", "4", "20", "20"]
    assert rec.events == [("add", "default/a")]


def test_410_relists_at_once_and_emits_the_diff() -> None:
    keep, changed, removed = obj("keep", "1"), obj("chg", "2"), obj("rm", "3")
    relisted = [keep, obj("chg", "8"), obj("new", "9")]
    inf, lw, rec, waits = make([([keep, changed, removed], "3"), (relisted, "9")], [[gone()], []])
    inf.run()
    assert inf.relists == 2 and waits == []  # no backoff for Expired: client-go relists immediately
    assert rec.events[3:] == [("update", "default/chg"), ("add", "default/new"), ("delete", "default/rm")]
    assert inf.keys() == {"default/keep", "default/chg", "default/new"}
    assert [kw["resource_version"] for op, kw in lw.calls if op == "watch"] == ["3", "9", "9"]


def test_repeated_410_without_progress_backs_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("podnet.api.informer.random.uniform", lambda a, b: 1.0)
    watches = [[gone()], [gone()], [ev("ADDED", obj("a", "2")), gone()], [gone()]]
    inf, _, _, waits = make([([], "1")] * 4, watches, backoff_initial=1.0)
    inf.run()
    assert inf.relists == 4
    # 410 (at once), 410 again with no progress (wait), event then 410 (at once), 410 again (wait)
    assert waits == [1.0, 1.0]


def test_stream_errors_relist_with_growing_backoff_reset_by_success(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("podnet.api.informer.random.uniform", lambda a, b: 1.0)
    unavailable = ApiError({"code": 503, "reason": "ServiceUnavailable"})
    inf, _, _, waits = make(
        [([], "1"), unavailable, ([], "2"), ([], "3")],
        [[ConnectionResetError("cut")], [OSError("eof")], [ValueError("bad json")]],
        backoff_initial=0.5, backoff_max=1.5)
    inf.run()
    # cut -> 0.5; 503 -> 1.0; list ok, eof -> 0.5 (reset); list ok, bad json -> 0.5; script over
    assert waits[:4] == [0.5, 1.0, 0.5, 0.5]
    assert max(waits) <= 1.5


def test_backoff_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("podnet.api.informer.random.uniform", lambda a, b: 1.0)
    inf, _, _, waits = make([OSError("down")] * 6, [], backoff_initial=1.0, backoff_max=4.0)
    inf.run()
    assert waits[:6] == [1.0, 2.0, 4.0, 4.0, 4.0, 4.0]


def test_not_synced_until_first_list_succeeds() -> None:
    inf, _, _, _ = make([OSError("down")], [])
    inf.run()
    assert not inf.has_synced() and not inf.wait_for_sync(0)


def test_delete_of_unknown_key_is_no_event_and_modified_of_unknown_is_add() -> None:
    inf, _, rec, _ = make([([], "1")], [[ev("DELETED", obj("x", "2")), ev("MODIFIED", obj("y", "3"))]])
    inf.run()
    assert rec.events == [("add", "default/y")]


def test_indexes_follow_updates_and_deletes() -> None:
    a = obj("a", "1", node="n1")
    b = obj("b", "2", node="n1")
    inf, _, _, _ = make([([a, b], "2")], [[ev("MODIFIED", obj("a", "3", node="n2")), ev("DELETED", b)]],
                        indexers={"node": lambda o: [o["metadata"]["labels"]["node"]]})
    inf.run()
    assert [o["metadata"]["name"] for o in inf.by_index("node", "n2")] == ["a"]
    assert inf.by_index("node", "n1") == []


def test_index_rebuilt_on_relist() -> None:
    inf, _, _, _ = make([([obj("a", "1", node="n1")], "1"), ([obj("a", "5", node="n3")], "5")], [[gone()]],
                        indexers={"node": lambda o: [o["metadata"]["labels"]["node"]]})
    inf.run()
    assert inf.by_index("node", "n1") == [] and len(inf.by_index("node", "n3")) == 1


def test_a_failing_handler_does_not_stop_the_informer() -> None:
    lw = FakeListWatcher([([obj("a", "1")], "1")], [[ev("ADDED", obj("b", "2"))]])
    def broken(o: dict[str, Any]) -> None:
        raise ZeroDivisionError

    inf = Informer(lw, CONFIGMAPS, handlers=Handlers(on_add=broken))
    lw.informer = inf
    inf.run()
    assert inf.keys() == {"default/a", "default/b"} and inf.relists == 1


def test_cluster_scoped_keys_and_get_by_name() -> None:
    inf, _, _, _ = make([([obj("n1", "1", ns=None)], "1")], [])
    inf.res = NODES
    inf.run()
    assert inf.get_by_name("n1") is not None and inf.get_by_name("n1", "default") is None
    assert [o["metadata"]["name"] for o in inf.list()] == ["n1"]


def test_resync_reports_every_object_as_update() -> None:
    inf, _, rec, _ = make([([obj("a", "1"), obj("b", "1")], "1")], [])
    inf.run()
    rec.events.clear()
    inf.resync()
    assert sorted(rec.events) == [("update", "default/a"), ("update", "default/b")]


def test_periodic_resync_runs_when_due(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    stream_events = [ev("ADDED", obj("a", "2")), ev("BOOKMARK", {"metadata": {"resourceVersion": "3"}})]
    inf, _, rec, _ = make([([], "1")], [stream_events], resync_period=30.0)
    monkeypatch.setattr(inf, "_clock_now", lambda: now[0])
    original = inf.apply_event

    def apply_and_tick(event: WatchEvent) -> None:
        original(event)
        now[0] += 20.0  # the second event arrives 40 s after start: one resync is due

    monkeypatch.setattr(inf, "apply_event", apply_and_tick)
    inf.run()
    assert rec.events == [("add", "default/a"), ("update", "default/a")]


def test_stop_closes_a_blocked_stream_from_another_thread() -> None:
    stream = FakeStream([], block=True)
    lw = FakeListWatcher([([], "1")], [stream])
    inf = Informer(lw, CONFIGMAPS)
    lw.informer = inf
    inf.start()
    assert inf.wait_for_sync(5)
    inf.stop(timeout=5)
    assert stream.closed.is_set()
    assert inf._thread is not None and not inf._thread.is_alive()


def test_dirty_keys_wake_a_runner() -> None:
    synced: list[tuple[bool, set[str]]] = []
    dirty = DirtyKeys()
    clock = FakeClock()
    runner = Runner(lambda full: synced.append((full, dirty.take())), clock=clock, min_interval=0.0)
    runner.run_once()  # the initial full sync
    events = [ev("MODIFIED", obj("a", "2")), ev("ADDED", obj("b", "3"))]
    lw = FakeListWatcher([([obj("a", "1")], "1")], [events])
    inf = Informer(lw, CONFIGMAPS, handlers=dirty.handlers(wake=runner.request))
    lw.informer = inf
    inf.run()
    runner.run_once()
    assert synced[-1] == (False, {"default/a", "default/b"})
    assert dirty.take() == set()
