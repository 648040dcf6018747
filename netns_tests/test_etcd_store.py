"""EtcdStore against a real etcd: the Store contract, reconnection, concurrency and crash safety."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from podnet.store.base import Conflict, Event, StoreError, StoreUnavailable
from podnet.store.etcd import EtcdStore, grpc_target
from podnet.testing.etcd import EtcdProcess
from podnet.testing.wait import wait_until
from tests.podnet.test_store_contract import StoreContract, collect


@pytest.fixture(scope="module")
def shared_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdProcess]:
    """One etcd for the contract tests (each test uses its own key prefix)."""
    proc = EtcdProcess(str(tmp_path_factory.mktemp("etcd")))
    try:
        yield proc.start()
    finally:
        proc.cleanup()


class TestEtcdStore(StoreContract):
    @pytest.fixture
    def store(self, shared_etcd: EtcdProcess) -> Iterator[EtcdStore]:
        self.P = f"/c-{uuid.uuid4().hex[:8]}/"
        s = EtcdStore([shared_etcd.endpoint], timeout=5)
        yield s
        s.close()


def test_grpc_target() -> None:
    assert grpc_target(["http://127.0.0.1:2379"]) == "127.0.0.1:2379"
    assert grpc_target(["http://127.0.0.1:1", "http://127.0.0.2:2"]) == "ipv4:127.0.0.1:1,127.0.0.2:2"


def test_fails_fast_while_down_and_recovers(etcd: EtcdProcess) -> None:
    store = EtcdStore([etcd.endpoint], timeout=2)
    try:
        store.create("/k/a", b"1")
        etcd.kill()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.get("/k/a")
        assert time.monotonic() - started < 2.5
        assert not store.healthy()
        etcd.restart()
        wait_until(store.healthy, timeout=15.0)
        kv = store.get("/k/a")
        assert kv is not None and kv.value == b"1"
    finally:
        store.close()


def test_watch_resumes_from_last_revision_after_restart(etcd: EtcdProcess) -> None:
    store = EtcdStore([etcd.endpoint], timeout=2)
    seen: list[Event] = []
    failed = threading.Event()

    def consume(start: int) -> None:
        try:
            for batch in store.watch("/w/", start):
                seen.extend(batch)
        except StoreUnavailable:
            failed.set()

    try:
        start = store.current_revision() + 1
        t = threading.Thread(target=consume, args=(start,), daemon=True)
        t.start()
        store.create("/w/1", b"")
        wait_until(lambda: len(seen) == 1, timeout=15.0)
        etcd.kill()
        assert failed.wait(10)
        etcd.restart()
        wait_until(store.healthy, timeout=15.0)
        store.create("/w/2", b"")
        store.create("/w/3", b"")
        events = collect(store.watch("/w/", seen[-1].kv.mod_revision + 1), 2)
        assert [e.kv.key for e in events] == ["/w/2", "/w/3"]
    finally:
        store.close()


def test_parallel_writers_one_winner_per_revision(etcd: EtcdProcess) -> None:
    """50 writers read-modify-write one key: every success starts from a distinct revision."""
    store = EtcdStore([etcd.endpoint], timeout=10)
    try:
        base = store.create("/race/obj", b"0")

        def attempt(i: int) -> tuple[int, int] | None:
            try:
                return base, store.update("/race/obj", str(i).encode(), base)
            except Conflict:
                return None

        with ThreadPoolExecutor(50) as pool:
            results = list(pool.map(attempt, range(50)))
        winners = [r for r in results if r is not None]
        assert len(winners) == 1

        # With retries everyone eventually wins, each from a distinct resourceVersion.
        def retry(i: int) -> int:
            while True:
                kv = store.get("/race/obj")
                assert kv is not None
                try:
                    store.update("/race/obj", str(i).encode(), kv.mod_revision)
                    return kv.mod_revision
                except Conflict:
                    continue

        with ThreadPoolExecutor(50) as pool:
            bases = list(pool.map(retry, range(50)))
        assert len(set(bases)) == 50
    finally:
        store.close()


def test_kill9_during_writes_loses_nothing_acknowledged(etcd: EtcdProcess) -> None:
    store = EtcdStore([etcd.endpoint], timeout=2)
    acked: list[str] = []
    stop = threading.Event()

    def writer(w: int) -> None:
        i = 0
        while not stop.is_set():
            key = f"/dur/{w}-{i}"
            try:
                store.create(key, b"x")
                acked.append(key)
                i += 1
            except StoreError:
                time.sleep(0.02)  # unacknowledged: may or may not exist; retry with a new key
                i += 1

    try:
        threads = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(4)]
        for t in threads:
            t.start()
        wait_until(lambda: len(acked) > 50, timeout=15.0)
        etcd.kill()
        time.sleep(0.3)
        etcd.restart()
        wait_until(store.healthy, timeout=15.0)
        count = len(acked)
        wait_until(lambda: len(acked) > count + 20, timeout=15.0)
        stop.set()
        for t in threads:
            t.join(10)
        items, _, _ = store.list("/dur/")
        stored = {kv.key for kv in items}
        assert set(acked) <= stored
    finally:
        stop.set()
        store.close()


def test_closed_store_is_unavailable(etcd: EtcdProcess) -> None:
    store = EtcdStore([etcd.endpoint], timeout=2)
    store.close()
    with pytest.raises(StoreUnavailable):
        store.get("/x")
    with pytest.raises(StoreUnavailable):
        store.watch("/x/", 0)
