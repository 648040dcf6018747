"""podnet.api.client / kubeconfig / informer against a real podnet-apiserver on a real etcd."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from netns_tests.apiserver_fixtures import ApiServerProcess
from podnet.api.client import CONFIGMAPS, NAMESPACES, NODES, PODS, REPLICATIONCONTROLLERS, ApiError, Client
from podnet.api.informer import Handlers, Informer
from podnet.api.kubeconfig import load_kubeconfig
from podnet.testing.wait import wait_until


def _cm(name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels or {}},
            "data": {"k": name}}


def test_crud_and_errors(client: Client) -> None:
    created = client.create(CONFIGMAPS, _cm("a"))
    assert created["metadata"]["namespace"] == "default"  # the kubeconfig context's namespace
    with pytest.raises(ApiError) as dup:
        client.create(CONFIGMAPS, _cm("a"))
    assert (dup.value.code, dup.value.reason) == (409, "AlreadyExists")
    stale = dict(created, data={"k": "stale"})
    client.update(CONFIGMAPS, dict(created, data={"k": "new"}))
    with pytest.raises(ApiError) as conflict:
        client.update(CONFIGMAPS, stale)
    assert conflict.value.conflict
    assert client.get(CONFIGMAPS, "a")["data"] == {"k": "new"}
    client.delete(CONFIGMAPS, "a")
    with pytest.raises(ApiError) as gone:
        client.get(CONFIGMAPS, "a")
    assert gone.value.not_found and "not found" in gone.value.message


def test_patch_types(client: Client) -> None:
    client.create(CONFIGMAPS, _cm("p"))
    assert client.patch(CONFIGMAPS, "p", {"data": {"m": "1"}})["data"] == {"k": "p", "m": "1"}
    assert client.patch(CONFIGMAPS, "p", {"data": {"s": "2"}}, patch_type="strategic")["data"]["s"] == "2"
    ops = [{"op": "remove", "path": "/data/m"}]
    assert "m" not in client.patch(CONFIGMAPS, "p", ops, patch_type="json")["data"]
    desired = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "p"}, "data": {"a": "3"}}
    applied = client.patch(CONFIGMAPS, "p", desired, patch_type="apply", field_manager="test")
    assert applied["data"]["a"] == "3"


def test_subresources_binding_status_scale(client: Client) -> None:
    client.create(NODES, {"metadata": {"name": "n1"}})
    pod = {"metadata": {"name": "p1"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}
    client.create(PODS, pod)
    client.bind("p1", "n1")
    assert client.get(PODS, "p1")["spec"]["nodeName"] == "n1"
    with pytest.raises(ApiError) as again:
        client.bind("p1", "n1")
    assert again.value.conflict
    current = client.get(PODS, "p1")
    current["status"] = {"phase": "Running"}
    assert client.update_status(PODS, current)["status"]["phase"] == "Running"
    rc = {"metadata": {"name": "rc"}, "spec": {"replicas": 1, "selector": {"app": "x"}, "template": {
        "metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}}
    client.create(REPLICATIONCONTROLLERS, rc)
    client.set_scale(REPLICATIONCONTROLLERS, "rc", 3)
    assert client.get_scale(REPLICATIONCONTROLLERS, "rc")["spec"]["replicas"] == 3


def test_selectors_and_paging(client: Client) -> None:
    for i in range(7):
        client.create(CONFIGMAPS, _cm(f"c{i}", {"parity": "even" if i % 2 == 0 else "odd"}))
    page = client.list(CONFIGMAPS, label_selector="parity=odd")
    assert sorted(o["metadata"]["name"] for o in page["items"]) == ["c1", "c3", "c5"]
    by_name = client.list(CONFIGMAPS, field_selector="metadata.name=c4")["items"]
    assert [o["metadata"]["name"] for o in by_name] == ["c4"]
    first = client.list(CONFIGMAPS, "default", limit=3)
    assert len(first["items"]) == 3 and first["metadata"]["continue"]
    items, rv = client.list_all(CONFIGMAPS, "default", limit=2)
    assert sorted(o["metadata"]["name"] for o in items) == [f"c{i}" for i in range(7)]
    assert int(rv) >= max(int(o["metadata"]["resourceVersion"]) for o in items)
    all_ns = client.list(NAMESPACES)["items"]
    assert {"default", "kube-system"} <= {o["metadata"]["name"] for o in all_ns}


def test_watch_events_timeout_and_410(client: Client, apiserver: ApiServerProcess) -> None:
    _, rv = client.list_all(CONFIGMAPS, "default")
    seen: list[tuple[str, str]] = []
    with client.watch(CONFIGMAPS, "default", resource_version=rv, timeout_seconds=2) as stream:
        client.create(CONFIGMAPS, _cm("w"))
        client.patch(CONFIGMAPS, "w", {"data": {"x": "1"}})
        client.delete(CONFIGMAPS, "w")
        started = time.monotonic()
        for ev in stream:  # ends by itself after timeoutSeconds
            seen.append((ev.type, ev.object["metadata"].get("name", "")))
        assert time.monotonic() - started < 10
    assert [s for s in seen if s[0] != "BOOKMARK"] == [("ADDED", "w"), ("MODIFIED", "w"), ("DELETED", "w")]
    # a restarted server's watch cache starts at the current revision: older ones are gone
    apiserver.restart()
    with pytest.raises(ApiError) as expired, client.watch(CONFIGMAPS, "default", resource_version=rv,
                                                          read_timeout=10) as old:
        list(old)
    assert expired.value.expired and expired.value.reason == "Expired"


def test_watch_close_from_another_thread(client: Client) -> None:
    stream = client.watch(CONFIGMAPS, "default", timeout_seconds=60)
    done = threading.Event()

    def drain() -> None:
        for _ in stream:
            pass
        done.set()

    threading.Thread(target=drain, daemon=True).start()
    time.sleep(0.3)
    stream.close()
    assert done.wait(5)


class _ExpireFirstWatch:
    """Our ListWatcher seam around the real client: the first watch asks for `old_rv`, a version the
    (restarted) server no longer has, after creating an object the informer has not listed — what
    happens when a watch reconnects too late.  The real server answers 410 Expired."""

    def __init__(self, client: Client, old_rv: str) -> None:
        self.client, self.old_rv, self.watches = client, old_rv, 0

    def list_all(self, *args: Any, **kw: Any) -> Any:
        return self.client.list_all(*args, **kw)

    def watch(self, *args: Any, **kw: Any) -> Any:
        self.watches += 1
        if self.watches == 1:
            self.client.create(CONFIGMAPS, _cm("during-gap"))
            kw["resource_version"] = self.old_rv
        return self.client.watch(*args, **kw)


def _recording_informer(lw: Any, events: list[tuple[str, str]]) -> Informer:
    handlers = Handlers(
        on_add=lambda o: events.append(("add", o["metadata"]["name"])),
        on_update=lambda old, new: events.append(("update", new["metadata"]["name"])),
        on_delete=lambda o: events.append(("delete", o["metadata"]["name"])))
    return Informer(lw, CONFIGMAPS, namespace="default", handlers=handlers, watch_timeout=(30, 30),
                    backoff_initial=0.1, backoff_max=0.5,
                    indexers={"parity": lambda o: [o["metadata"].get("labels", {}).get("parity", "")]})


def test_informer_sync_events_and_index(client: Client) -> None:
    client.create(CONFIGMAPS, _cm("before", {"parity": "odd"}))
    events: list[tuple[str, str]] = []
    inf = _recording_informer(client, events).start()
    try:
        assert inf.wait_for_sync(10)
        assert inf.keys() == {"default/before"} and events == [("add", "before")]
        client.create(CONFIGMAPS, _cm("after", {"parity": "odd"}))
        client.patch(CONFIGMAPS, "before", {"metadata": {"labels": {"parity": "even"}}})
        client.delete(CONFIGMAPS, "after")
        wait_until(lambda: ("delete", "after") in events)
        assert events == [("add", "before"), ("add", "after"), ("update", "before"), ("delete", "after")]
        assert [o["metadata"]["name"] for o in inf.by_index("parity", "even")] == ["before"]
        assert inf.by_index("parity", "odd") == []
    finally:
        inf.stop()


def test_informer_relists_after_410_without_losing_events(client: Client,
                                                          apiserver: ApiServerProcess) -> None:
    _, old_rv = client.list_all(CONFIGMAPS, "default")
    client.create(CONFIGMAPS, _cm("x"))
    apiserver.restart()
    events: list[tuple[str, str]] = []
    lw = _ExpireFirstWatch(client, old_rv)
    inf = _recording_informer(lw, events).start()
    try:
        wait_until(lambda: inf.get("default/during-gap") is not None)
        assert inf.relists == 2 and ("add", "during-gap") in events
        client.create(CONFIGMAPS, _cm("later"))
        wait_until(lambda: ("add", "later") in events)
    finally:
        inf.stop()


def test_informer_survives_apiserver_restart(client: Client, apiserver: ApiServerProcess) -> None:
    for name in ("keep", "gone"):
        client.create(CONFIGMAPS, _cm(name))
    events: list[tuple[str, str]] = []
    inf = _recording_informer(client, events).start()
    try:
        assert inf.wait_for_sync(10)
        apiserver.kill()  # a crash: the watch stream breaks mid-flight
        apiserver.start()
        # changes the informer could not watch: it must learn them from the relist's diff
        client.delete(CONFIGMAPS, "gone")
        client.patch(CONFIGMAPS, "keep", {"data": {"k": "changed"}})
        client.create(CONFIGMAPS, _cm("new"))
        wait_until(lambda: inf.keys() == {"default/keep", "default/new"}
              and inf.get("default/keep")["data"]["k"] == "changed")  # type: ignore[index]
        assert {("delete", "gone"), ("update", "keep"), ("add", "new")} <= set(events)
        assert inf.relists >= 2
    finally:
        inf.stop()
    assert inf._thread is not None and not inf._thread.is_alive()


def test_kubeconfig_token_file_and_wrong_token(apiserver: ApiServerProcess, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(apiserver.nobody_token + "\n")
    kc = apiserver.kubeconfig(tmp_path / "kc")
    kc.write_text(kc.read_text().replace(f'"token": "{apiserver.token}"', f'"tokenFile": "{token_file}"'))
    c = Client.from_config(load_kubeconfig(kc))
    with pytest.raises(ApiError) as denied:
        c.list(PODS)
    assert denied.value.code == 403
    token_file.write_text(apiserver.token)  # rotation: re-read on the next request
    assert c.list(PODS)["items"] == []
    c.close()
