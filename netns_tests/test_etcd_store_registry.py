"""Registry and watch cache on a real etcd: racing writers, etcd crashes, one etcd watch per resource."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from controlplane.apiserver import resources
from controlplane.apiserver.errors import ApiError
from controlplane.apiserver.registry import Registry
from podnet.store.etcd import EtcdStore
from podnet.testing.etcd import EtcdProcess

CM = next(r for r in resources.RESOURCES if r.plural == "configmaps")


def run(test: Callable[[], Awaitable[None]], timeout: float = 90) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout))


async def registry_on(etcd: EtcdProcess) -> Registry:
    reg = Registry(EtcdStore([etcd.endpoint], timeout=2))
    await reg.start()
    return reg


def test_fifty_writers_one_winner_per_resource_version(etcd: EtcdProcess) -> None:
    async def body() -> None:
        reg = await registry_on(etcd)
        try:
            created = await reg.create(CM, "default", {"metadata": {"name": "race"}, "data": {"n": "start"}})
            stale = created["metadata"]["resourceVersion"]

            async def once(i: int) -> bool:
                obj = {"metadata": {"name": "race", "resourceVersion": stale}, "data": {"n": str(i)}}
                try:
                    await reg.update(CM, "default", "race", obj)
                    return True
                except ApiError as err:
                    assert err.code == 409 and err.reason == "Conflict"
                    return False

            assert sum(await asyncio.gather(*(once(i) for i in range(50)))) == 1

            bases: list[str] = []

            async def until_won(i: int) -> None:
                while True:
                    current = await reg.get(CM, "default", "race")
                    rv = current["metadata"]["resourceVersion"]
                    current["data"] = {"n": f"round2-{i}"}
                    try:
                        await reg.update(CM, "default", "race", current)
                    except ApiError as err:
                        assert err.code == 409
                        continue
                    bases.append(rv)
                    return

            await asyncio.gather(*(until_won(i) for i in range(50)))
            assert len(bases) == 50 and len(set(bases)) == 50
        finally:
            await reg.stop()
            reg.store.close()

    run(body)


async def collect_names(stream: AsyncIterator[dict[str, Any]], into: collections.Counter[str]) -> None:
    async for event in stream:
        if event["type"] == "ADDED":
            into[event["object"]["metadata"]["name"]] += 1


def test_etcd_kill9_during_writes_loses_nothing_and_watch_resumes(etcd: EtcdProcess) -> None:
    async def body() -> None:
        reg = await registry_on(etcd)
        acked: list[str] = []
        seen: collections.Counter[str] = collections.Counter()
        watch_task = asyncio.create_task(collect_names(reg.watch(CM, "default", resource_version="0"), seen))
        stop = asyncio.Event()

        async def writer(w: int) -> None:
            i = 0
            while not stop.is_set():
                name = f"w{w}-{i}"
                i += 1
                try:
                    await reg.create(CM, "default", {"metadata": {"name": name}})
                    acked.append(name)
                except ApiError as err:
                    assert err.code in (503, 504), err.status()  # etcd down: fail fast, no hang
                    await asyncio.sleep(0.02)

        try:
            writers = [asyncio.create_task(writer(w)) for w in range(4)]
            await wait_for(lambda: len(acked) > 40)
            etcd.kill()
            await asyncio.sleep(0.5)
            await asyncio.to_thread(etcd.restart)
            count = len(acked)
            await wait_for(lambda: len(acked) > count + 40, timeout=20)
            stop.set()
            await asyncio.gather(*writers)
            stored = await reg.list(CM, "default")
            assert set(acked) <= {o["metadata"]["name"] for o in stored["items"]}
            await wait_for(lambda: set(acked) <= set(seen), timeout=10)
            assert max(seen.values()) == 1  # no duplicates after the cache resumed
            assert reg.cache_for(CM).store_watches >= 2
        finally:
            watch_task.cancel()
            await reg.stop()
            reg.store.close()

    run(body)


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


def test_hundred_watchers_share_one_etcd_watch(etcd: EtcdProcess) -> None:
    async def body() -> None:
        reg = await registry_on(etcd)
        try:
            streams = [reg.watch(CM, "default", resource_version="0") for _ in range(100)]
            names = [f"c{i}" for i in range(10)]
            for name in names:
                await reg.create(CM, "default", {"metadata": {"name": name}})

            async def first_ten(stream: AsyncIterator[dict[str, Any]]) -> list[str]:
                return [(await anext(stream))["object"]["metadata"]["name"] for _ in range(10)]

            results = await asyncio.gather(*(first_ten(s) for s in streams))
            assert all(r == names for r in results)
            assert reg.cache_for(CM).store_watches == 1
            for s in streams:
                await s.aclose()
        finally:
            await reg.stop()
            reg.store.close()

    run(body)


def test_etcd_down_fails_fast_and_recovers(etcd: EtcdProcess) -> None:
    async def body() -> None:
        reg = await registry_on(etcd)
        try:
            etcd.kill()
            started = time.monotonic()
            try:
                await reg.get(CM, "default", "x")
                raise AssertionError("expected 503")
            except ApiError as err:
                assert err.code in (503, 504) and err.reason in ("ServiceUnavailable", "Timeout")
            assert time.monotonic() - started < 3
            await asyncio.to_thread(etcd.restart)
            await wait_for(reg.store.healthy, timeout=15)
            await reg.create(CM, "default", {"metadata": {"name": "after"}})
            assert (await reg.get(CM, "default", "after"))["metadata"]["name"] == "after"
        finally:
            await reg.stop()
            reg.store.close()

    run(body)
