"""Registry object semantics over the in-memory store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from controlplane.apiserver import registry as registry_mod
from controlplane.apiserver import resources
from controlplane.apiserver.errors import ApiError
from controlplane.apiserver.registry import Registry
from controlplane.apiserver.resources import Resource
from podnet.api.selectors import parse_field_selector, parse_label_selector
from podnet.store.memory import MemoryStore


def res(plural: str, group: str = "") -> Resource:
    r = next((r for r in resources.RESOURCES if r.plural == plural and r.group == group), None)
    assert r is not None
    return r


PODS, NS, CM, SVC = res("pods"), res("namespaces"), res("configmaps"), res("services")


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), 30))


@asynccontextmanager
async def started(**kwargs: Any) -> AsyncIterator[Registry]:
    reg = Registry(MemoryStore(), **kwargs)
    await reg.start()
    try:
        yield reg
    finally:
        await reg.stop()


def pod(name: str = "p", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}], **spec}}


async def caught_up(reg: Registry, r: Resource) -> None:
    cache = reg.cache_for(r)
    for _ in range(500):
        if cache.revision >= reg.store.current_revision():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("watch cache did not catch up")


async def expect_error(code: int, coro: Awaitable[Any]) -> ApiError:
    with pytest.raises(ApiError) as err:
        await coro
    assert err.value.code == code, err.value.status()
    return err.value


def test_start_creates_default_namespaces_idempotently() -> None:
    async def body() -> None:
        async with started() as reg:
            await reg.start()
            names = [o["metadata"]["name"] for o in (await reg.list(NS, ""))["items"]]
            assert names == ["default", "kube-node-lease", "kube-public", "kube-system"]
            ns = await reg.get(NS, "", "default")
            assert ns["status"]["phase"] == "Active" and ns["spec"]["finalizers"] == ["kubernetes"]
            assert ns["metadata"]["labels"] == {"kubernetes.io/metadata.name": "default"}

    run(body)


def test_create_sets_server_metadata() -> None:
    async def body() -> None:
        async with started() as reg:
            created = await reg.create(PODS, "default", pod())
            meta = created["metadata"]
            assert meta["namespace"] == "default" and meta["generation"] == 1
            assert len(meta["uid"]) == 36 and meta["creationTimestamp"].endswith("Z")
            stored = reg.store.get("/registry/core/pods/default/p")
            assert stored is not None and meta["resourceVersion"] == str(stored.mod_revision)
            assert b"resourceVersion" not in stored.value
            assert await reg.get(PODS, "default", "p") == created

    run(body)


def test_create_errors() -> None:
    async def body() -> None:
        async with started() as reg:
            await reg.create(PODS, "default", pod())
            err = await expect_error(409, reg.create(PODS, "default", pod()))
            assert (err.reason, err.message) == ("AlreadyExists", 'pods "p" already exists')
            err = await expect_error(404, reg.create(PODS, "nope", pod()))
            assert err.message == 'namespaces "nope" not found'
            bad = pod()
            bad["metadata"]["namespace"] = "kube-system"
            err = await expect_error(400, reg.create(PODS, "default", bad))
            assert "does not match the namespace" in err.message
            nameless = pod()
            del nameless["metadata"]["name"]
            err = await expect_error(422, reg.create(PODS, "default", nameless))
            assert err.details is not None and err.details["causes"][0]["field"] == "metadata.name"
            await expect_error(404, reg.get(PODS, "default", "other"))

    run(body)


def test_generate_name_retries_on_collision(monkeypatch: pytest.MonkeyPatch) -> None:
    generated = registry_mod.generate_name("x-")
    assert len(generated) == 7 and generated.startswith("x-")

    async def body() -> None:
        async with started() as reg:
            names = iter(["web-aaaaa", "web-aaaaa", "web-bbbbb"])
            monkeypatch.setattr(registry_mod, "generate_name", lambda base: next(names))
            obj = pod()
            obj["metadata"] = {"generateName": "web-"}
            first = await reg.create(PODS, "default", obj)
            second = await reg.create(PODS, "default", obj)
            assert (first["metadata"]["name"], second["metadata"]["name"]) == ("web-aaaaa", "web-bbbbb")

    run(body)


def test_dry_run_and_hooks() -> None:
    calls: list[tuple[str, str]] = []

    async def admit(r: Resource, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        obj.setdefault("spec", {})["defaulted"] = True
        calls.append(("admit", "update" if old else "create"))
        if obj["metadata"]["name"] == "invalid":
            raise ApiError(422, "Invalid", "no")

    def on_delete(r: Resource, obj: dict[str, Any]) -> None:
        calls.append(("delete", obj["metadata"]["name"]))

    async def body() -> None:
        async with started(admit=admit, on_delete=on_delete) as reg:
            calls.clear()
            dry = await reg.create(CM, "default", {"metadata": {"name": "c"}}, dry_run=True)
            assert dry["spec"]["defaulted"] and reg.store.get("/registry/core/configmaps/default/c") is None
            await expect_error(422, reg.create(CM, "default", {"metadata": {"name": "invalid"}}))
            await reg.create(CM, "default", {"metadata": {"name": "c"}})
            await reg.delete(CM, "default", "c")
            assert calls == [("admit", "create"), ("admit", "create"), ("admit", "create"),
                             ("delete", "c")]

    run(body)


def test_terminating_namespace_refuses_new_content() -> None:
    async def body() -> None:
        async with started() as reg:
            await reg.create(NS, "", {"metadata": {"name": "team"}, "spec": {"finalizers": ["kubernetes"]}})
            await reg.create(PODS, "team", pod())
            obj, now = await reg.delete(NS, "", "team")
            assert not now and obj["status"]["phase"] == "Terminating"
            assert obj["metadata"]["deletionTimestamp"]
            err = await expect_error(403, reg.create(PODS, "team", pod("q")))
            assert err.message == ('pods "q" is forbidden: unable to create new content in namespace '
                                   "team because it is being terminated")
            # upstream: an empty namespace also waits for the namespace controller's /finalize
            await reg.create(NS, "", {"metadata": {"name": "empty"}, "spec": {"finalizers": ["kubernetes"]}})
            obj, now = await reg.delete(NS, "", "empty")
            assert not now and obj["status"]["phase"] == "Terminating"
            # no spec.finalizers at all: nothing to wait for
            await reg.create(NS, "", {"metadata": {"name": "bare"}})
            obj, now = await reg.delete(NS, "", "bare")
            assert now and obj["status"]["phase"] == "Terminating"
            await expect_error(404, reg.get(NS, "", "bare"))

    run(body)


def test_update_precondition_and_immutable_metadata() -> None:
    async def body() -> None:
        async with started() as reg:
            created = await reg.create(PODS, "default", pod())
            rv = created["metadata"]["resourceVersion"]
            changed = pod(restartPolicy="Never")
            changed["metadata"].update(resourceVersion=rv, uid="forged",
                                       creationTimestamp="1970-01-01T00:00:00Z")
            updated = await reg.update(PODS, "default", "p", changed)
            assert updated["metadata"]["uid"] == created["metadata"]["uid"]
            assert updated["metadata"]["creationTimestamp"] == created["metadata"]["creationTimestamp"]
            assert updated["metadata"]["generation"] == 2
            assert int(updated["metadata"]["resourceVersion"]) > int(rv)
            err = await expect_error(409, reg.update(PODS, "default", "p", changed))  # stale rv
            assert err.reason == "Conflict"
            assert err.message == ('Operation cannot be fulfilled on pods "p": the object has been '
                                   "modified; please apply your changes to the latest version and try again")
            labels_only = await reg.update(PODS, "default", "p", {**pod(restartPolicy="Never"), "metadata": {
                "name": "p", "labels": {"app": "db"}}})  # no resourceVersion: unconditional
            assert labels_only["metadata"]["generation"] == 2  # metadata changes keep generation
            await expect_error(404, reg.update(PODS, "default", "nope", pod("nope")))

    run(body)


def test_noop_update_keeps_resource_version() -> None:
    async def body() -> None:
        async with started() as reg:
            created = await reg.create(CM, "default", {"metadata": {"name": "c"}, "data": {"a": "1"}})
            same = await reg.update(CM, "default", "c", {"metadata": {"name": "c"}, "data": {"a": "1"}})
            assert same["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]

    run(body)


def test_status_subresource() -> None:
    async def body() -> None:
        async with started() as reg:
            await reg.create(PODS, "default", pod())
            with_status = {**pod(), "status": {"phase": "Running"}}
            main = await reg.update(PODS, "default", "p", with_status)
            assert "status" not in main  # the main resource ignores status
            with_status["spec"]["restartPolicy"] = "Never"
            with_status["metadata"]["labels"] = {"changed": "yes"}
            status = await reg.update(PODS, "default", "p", with_status, subresource="status")
            assert status["status"] == {"phase": "Running"}
            assert "restartPolicy" not in status["spec"]  # the status subresource ignores the rest
            assert status["metadata"]["labels"] == {"app": "web"}
            main = await reg.update(PODS, "default", "p", {**pod(), "status": {"phase": "Failed"}})
            assert main["status"] == {"phase": "Running"}

    run(body)


def test_guaranteed_update_retries_concurrent_writers() -> None:
    async def body() -> None:
        async with started() as reg:
            await reg.create(CM, "default", {"metadata": {"name": "n"}, "data": {"n": "0"}})

            def increment(obj: dict[str, Any]) -> dict[str, Any]:
                obj["data"]["n"] = str(int(obj["data"]["n"]) + 1)
                return obj

            async def bump() -> None:
                await reg.guaranteed_update(CM, "default", "n", increment)

            await asyncio.gather(*(bump() for _ in range(20)))
            assert (await reg.get(CM, "default", "n"))["data"]["n"] == "20"

    run(body)


def test_finalizers_hold_deletion_until_removed() -> None:
    async def body() -> None:
        async with started() as reg:
            cm = {"metadata": {"name": "f", "finalizers": ["example.com/hold"]}}
            await reg.create(CM, "default", cm)
            obj, now = await reg.delete(CM, "default", "f", propagation_policy="Background")
            assert not now and obj["metadata"]["deletionTimestamp"]
            assert obj["metadata"]["deletionGracePeriodSeconds"] == 0
            again, now = await reg.delete(CM, "default", "f")
            assert not now and again["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]

            def drop_finalizers(o: dict[str, Any]) -> dict[str, Any]:
                o["metadata"]["finalizers"] = []
                return o

            await reg.guaranteed_update(CM, "default", "f", drop_finalizers)
            await expect_error(404, reg.get(CM, "default", "f"))

    run(body)


def test_delete_preconditions_and_dry_run() -> None:
    async def body() -> None:
        async with started() as reg:
            created = await reg.create(CM, "default", {"metadata": {"name": "c"}})
            err = await expect_error(409, reg.delete(CM, "default", "c", preconditions={"uid": "x"}))
            assert "Precondition failed: UID in precondition: x" in err.message
            _, now = await reg.delete(CM, "default", "c", dry_run=True)
            assert now and await reg.get(CM, "default", "c") == created
            obj, now = await reg.delete(CM, "default", "c", preconditions={"uid": created["metadata"]["uid"]})
            assert now and obj["metadata"]["name"] == "c"
            await expect_error(404, reg.delete(CM, "default", "c"))

    run(body)


def test_graceful_pod_deletion() -> None:
    async def body() -> None:
        async with started() as reg:
            await reg.create(PODS, "default", pod("bound", nodeName="n1"))
            obj, now = await reg.delete(PODS, "default", "bound")
            assert not now and obj["metadata"]["deletionGracePeriodSeconds"] == 30
            obj, now = await reg.delete(PODS, "default", "bound", grace_period_seconds=5)
            assert not now and obj["metadata"]["deletionGracePeriodSeconds"] == 5
            _, now = await reg.delete(PODS, "default", "bound", grace_period_seconds=0)  # forced
            assert now
            await reg.create(PODS, "default", pod("unbound"))
            _, now = await reg.delete(PODS, "default", "unbound", grace_period_seconds=30)
            assert now  # never scheduled: nothing to wait for

    run(body)


def test_list_paging_reads_one_revision() -> None:
    async def body() -> None:
        async with started() as reg:
            for i in range(5):
                await reg.create(CM, "default", {"metadata": {"name": f"c{i}"}})
            await reg.create(CM, "kube-system", {"metadata": {"name": "other"}})
            first = await reg.list(CM, "default", limit=2)
            assert [o["metadata"]["name"] for o in first["items"]] == ["c0", "c1"]
            token = first["metadata"]["continue"]
            await reg.delete(CM, "default", "c3")
            await reg.create(CM, "default", {"metadata": {"name": "c9"}})
            second = await reg.list(CM, "default", limit=2, continue_token=token)
            third = await reg.list(CM, "default", limit=2, continue_token=second["metadata"]["continue"])
            names = [o["metadata"]["name"] for o in second["items"] + third["items"]]
            assert names == ["c2", "c3", "c4"] and "continue" not in third["metadata"]
            assert first["metadata"]["resourceVersion"] == third["metadata"]["resourceVersion"]
            everything = await reg.list(CM, "")
            assert len(everything["items"]) == 6 and everything["kind"] == "ConfigMapList"
            reg.store.compact(reg.store.current_revision())
            err = await expect_error(410, reg.list(CM, "default", limit=2, continue_token=token))
            assert err.reason == "Expired"
            await expect_error(400, reg.list(CM, "default", continue_token="garbage!"))

    run(body)


def test_list_selectors_with_limit() -> None:
    async def body() -> None:
        async with started() as reg:
            for i in range(6):
                obj = pod(f"p{i}", nodeName=f"n{i % 2}")
                obj["metadata"]["labels"] = {"tier": "fe" if i % 3 else "be"}
                await reg.create(PODS, "default", obj)
            label = parse_label_selector("tier in (fe)")
            field = parse_field_selector("spec.nodeName=n1", PODS.field_selectors)
            page = await reg.list(PODS, "default", label_selector=label, limit=2)
            assert [o["metadata"]["name"] for o in page["items"]] == ["p1", "p2"]
            rest = await reg.list(PODS, "default", label_selector=label, limit=2,
                                  continue_token=page["metadata"]["continue"])
            assert [o["metadata"]["name"] for o in rest["items"]] == ["p4", "p5"]
            both = await reg.list(PODS, "", label_selector=label, field_selector=field)
            assert [o["metadata"]["name"] for o in both["items"]] == ["p1", "p5"]
            await caught_up(reg, PODS)
            cached = await reg.list(PODS, "default", field_selector=field, resource_version="0")
            assert [o["metadata"]["name"] for o in cached["items"]] == ["p1", "p3", "p5"]

    run(body)


async def events(stream: AsyncIterator[dict[str, Any]], n: int) -> list[tuple[str, str]]:
    out = []
    for _ in range(n):
        event = await asyncio.wait_for(anext(stream), 5)
        out.append((event["type"], event["object"]["metadata"]["name"]))
    return out


def test_watch_resource_versions() -> None:
    async def body() -> None:
        async with started() as reg:
            a = await reg.create(CM, "default", {"metadata": {"name": "a"}})
            await reg.create(CM, "kube-system", {"metadata": {"name": "elsewhere"}})
            consistent = reg.watch(CM, "default", resource_version="")
            assert await events(consistent, 1) == [("ADDED", "a")]
            replay = reg.watch(CM, "", resource_version=a["metadata"]["resourceVersion"])
            await reg.update(CM, "default", "a", {"metadata": {"name": "a"}, "data": {"x": "1"}})
            await reg.delete(CM, "default", "a")
            assert await events(consistent, 2) == [("MODIFIED", "a"), ("DELETED", "a")]
            assert await events(replay, 3) == [("ADDED", "elsewhere"), ("MODIFIED", "a"), ("DELETED", "a")]
            await caught_up(reg, CM)
            from_cache = reg.watch(CM, "", resource_version="0")
            assert await events(from_cache, 1) == [("ADDED", "elsewhere")]
            await expect_error(400, _call(lambda: reg.watch(CM, "", resource_version="abc")))
            await consistent.aclose()
            await replay.aclose()
            await from_cache.aclose()
            assert reg.cache_for(CM).watcher_count == 0

    run(body)


async def _call(fn: Callable[[], Any]) -> Any:
    return fn()


def test_watch_too_old_is_expired() -> None:
    async def body() -> None:
        async with started(cache_capacity=2) as reg:
            first = await reg.create(CM, "default", {"metadata": {"name": "a"}})
            for i in range(4):
                await reg.create(CM, "default", {"metadata": {"name": f"b{i}"}})
            await caught_up(reg, CM)
            rv = first["metadata"]["resourceVersion"]
            err = await expect_error(410, _call(lambda: reg.watch(CM, "", resource_version=rv)))
            assert err.reason == "Expired" and err.message.startswith(f"too old resource version: {rv} (")

    run(body)


def test_watch_selector_transitions() -> None:
    async def body() -> None:
        async with started() as reg:
            label = parse_label_selector("app=web")
            stream = reg.watch(PODS, "default", resource_version="0", label_selector=label)
            await reg.create(PODS, "default", pod("p"))  # app=web
            moved = pod("p")
            moved["metadata"]["labels"] = {"app": "db"}
            left = await reg.update(PODS, "default", "p", moved)
            await reg.update(PODS, "default", "p", pod("p"))
            other = pod("q")
            other["metadata"]["labels"] = {"app": "db"}
            await reg.create(PODS, "default", other)
            await reg.delete(PODS, "default", "p")
            got = await events(stream, 4)
            assert got == [("ADDED", "p"), ("DELETED", "p"), ("ADDED", "p"), ("DELETED", "p")]
            await stream.aclose()
            before = str(int(left["metadata"]["resourceVersion"]) - 1)
            replay = reg.watch(PODS, "default", resource_version=before, label_selector=label)
            deleted = await asyncio.wait_for(anext(replay), 5)
            assert deleted["type"] == "DELETED"
            assert deleted["object"]["metadata"]["resourceVersion"] == left["metadata"]["resourceVersion"]
            await replay.aclose()

    run(body)


def test_periodic_compaction_keeps_one_interval_of_history() -> None:
    async def body() -> None:
        async with started(compaction_interval=0.05) as reg:
            old = await reg.create(CM, "default", {"metadata": {"name": "a"}})
            await reg.update(CM, "default", "a", {"metadata": {"name": "a"}, "data": {"v": "2"}})
            store = reg.store
            assert isinstance(store, MemoryStore)
            for _ in range(200):
                if store._compacted >= int(old["metadata"]["resourceVersion"]):
                    break
                await asyncio.sleep(0.01)
            assert store._compacted >= int(old["metadata"]["resourceVersion"])

    run(body)


def test_put_creates_kinds_that_allow_create_on_update() -> None:
    async def body() -> None:
        async with started() as reg:
            ep = res("endpoints")
            created = await reg.update(ep, "default", "svc", {"metadata": {"name": "svc"}, "subsets": []})
            assert created["metadata"]["uid"] and created["metadata"]["generation"] == 1
            await expect_error(404, reg.update(CM, "default", "nope", {"metadata": {"name": "nope"}}))
            await expect_error(404, reg.update(ep, "default", "x", {"metadata": {
                "name": "x", "resourceVersion": "5"}}))
            cm = await reg.create(CM, "default", {"metadata": {"name": "c"}, "data": {"a": "1"}})
            dry = await reg.update(CM, "default", "c", {"metadata": {"name": "c"}, "data": {"a": "2"}},
                                   dry_run=True)
            assert dry["data"] == {"a": "2"} and dry["metadata"]["resourceVersion"] == cm["metadata"][
                "resourceVersion"]
            assert (await reg.get(CM, "default", "c"))["data"] == {"a": "1"}

    run(body)


@pytest.mark.parametrize(("finalizers", "policy", "expected"), [
    ([], None, []),
    ([], "Background", []),
    ([], "Foreground", ["foregroundDeletion"]),
    ([], "Orphan", ["orphan"]),
    (["a"], "Orphan", ["a", "orphan"]),
    (["orphan", "a"], None, ["orphan", "a"]),  # no policy: the one already there stays
    (["orphan", "a"], "Background", ["a"]),
    (["orphan"], "Foreground", ["foregroundDeletion"]),
    (["foregroundDeletion"], "Foreground", ["foregroundDeletion"]),
])
def test_deletion_finalizers(finalizers: list[str], policy: str | None, expected: list[str]) -> None:
    assert registry_mod.deletion_finalizers(finalizers, policy) == expected


def test_propagation_policy_finalizers() -> None:
    """Foreground/Orphan keep the object with the garbage collector's finalizer; Background and no
    policy delete at once; a second DELETE may switch the policy; the last finalizer removed ends it."""
    async def body() -> None:
        async with started() as reg:
            for name in ("bg", "none", "fg", "or"):
                await reg.create(CM, "default", {"metadata": {"name": name}})
            assert (await reg.delete(CM, "default", "bg", propagation_policy="Background"))[1]
            assert (await reg.delete(CM, "default", "none"))[1]
            obj, now = await reg.delete(CM, "default", "fg", propagation_policy="Foreground")
            assert not now and obj["metadata"]["finalizers"] == ["foregroundDeletion"]
            assert obj["metadata"]["deletionTimestamp"] and obj["metadata"]["deletionGracePeriodSeconds"] == 0
            obj, now = await reg.delete(CM, "default", "or", propagation_policy="Orphan")
            assert not now and obj["metadata"]["finalizers"] == ["orphan"]
            # a second DELETE switches orphan -> foreground (upstream updates the finalizers)
            obj, now = await reg.delete(CM, "default", "or", propagation_policy="Foreground")
            assert not now and obj["metadata"]["finalizers"] == ["foregroundDeletion"]
            again, now = await reg.delete(CM, "default", "or")  # no policy: unchanged, no write
            assert not now and again["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]
            # Background on an object held only by a GC finalizer: removed, so it goes
            _, now = await reg.delete(CM, "default", "or", propagation_policy="Background")
            assert now
            await expect_error(404, reg.get(CM, "default", "or"))

            def unfinalize(o: dict[str, Any]) -> dict[str, Any]:
                o["metadata"]["finalizers"] = []
                return o

            await reg.guaranteed_update(CM, "default", "fg", unfinalize)
            await expect_error(404, reg.get(CM, "default", "fg"))

    run(body)


def test_graceful_pod_stays_through_updates_and_keeps_finalizers() -> None:
    async def body() -> None:
        async with started() as reg:
            await reg.create(PODS, "default", pod("bound", nodeName="n1"))
            obj, now = await reg.delete(PODS, "default", "bound", propagation_policy="Foreground")
            assert not now and obj["metadata"]["finalizers"] == ["foregroundDeletion"]
            # while the grace period runs, DeleteOptions cannot change the finalizers (upstream)
            obj, now = await reg.delete(PODS, "default", "bound", propagation_policy="Orphan")
            assert not now and obj["metadata"]["finalizers"] == ["foregroundDeletion"]

            def unfinalize(o: dict[str, Any]) -> dict[str, Any]:
                o["metadata"]["finalizers"] = []
                return o

            # no finalizer left but the kubelet has not confirmed: the pod stays Terminating
            kept = await reg.guaranteed_update(PODS, "default", "bound", unfinalize)
            assert kept["metadata"]["deletionGracePeriodSeconds"] == 30
            assert (await reg.get(PODS, "default", "bound"))["metadata"]["deletionTimestamp"]
            assert (await reg.delete(PODS, "default", "bound", grace_period_seconds=0))[1]

    run(body)


def test_namespace_finalize_subresource() -> None:
    """A Terminating namespace goes once /finalize empties spec.finalizers and metadata.finalizers is
    empty; the main resource cannot change spec.finalizers, and a status write does not end it."""
    async def body() -> None:
        async with started() as reg:
            spec = {"finalizers": ["kubernetes", "example.com/x"]}
            await reg.create(NS, "", {"metadata": {"name": "t", "finalizers": ["example.com/m"]},
                                      "spec": spec, "status": {"phase": "Active"}})
            ns, now = await reg.delete(NS, "", "t")
            assert not now and ns["status"]["phase"] == "Terminating"
            main = await reg.update(NS, "", "t", {"metadata": {"name": "t", "finalizers": ["example.com/m"]},
                                                  "spec": {"finalizers": []}})
            assert main["spec"]["finalizers"] == ["kubernetes", "example.com/x"]
            assert main["status"]["phase"] == "Terminating"  # status only through /status
            status = {**main, "status": {"phase": "Terminating", "conditions": [{"type": "X"}]}}
            await reg.update(NS, "", "t", status, subresource="status")
            body_ = {"metadata": {"name": "t"}, "spec": {"finalizers": ["example.com/x"]},
                     "status": {"phase": "Active"}}
            fin = await reg.update(NS, "", "t", body_, subresource="finalize")
            assert fin["spec"]["finalizers"] == ["example.com/x"] and fin["status"]["phase"] == "Terminating"
            assert fin["metadata"]["finalizers"] == ["example.com/m"]
            await reg.update(NS, "", "t", {**body_, "spec": {}}, subresource="finalize")
            left = await reg.get(NS, "", "t")
            assert left["spec"]["finalizers"] == [] and left["metadata"]["finalizers"] == ["example.com/m"]
            await reg.guaranteed_update(NS, "", "t", lambda o: {**o, "metadata": {**o["metadata"],
                                                                                  "finalizers": []}})
            await expect_error(404, reg.get(NS, "", "t"))

    run(body)
