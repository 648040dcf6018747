"""podnet.api.client over a fake Transport of our own: paths, queries, headers, bodies, errors,
retries, paging and watch decoding."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from podnet.api.client import (
    CONFIGMAPS,
    DEPLOYMENTS,
    NODES,
    PODS,
    REPLICATIONCONTROLLERS,
    ApiError,
    Client,
    Resource,
    WatchEvent,
)


@dataclass
class FakeResponse:
    status: int = 200
    body: Any = None  # JSON-encoded unless bytes
    events: list[Any] = field(default_factory=list)  # watch lines (dicts or raw bytes)
    closed: bool = False

    def read(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        return b"" if self.body is None else json.dumps(self.body).encode()

    def lines(self) -> Iterator[bytes]:
        for ev in self.events:
            if isinstance(ev, BaseException):
                raise ev
            yield ev if isinstance(ev, bytes) else json.dumps(ev).encode() + b"\n"

    def close(self) -> None:
        self.closed = True


@dataclass
class Sent:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    headers: dict[str, str]
    stream: bool
    timeout: float | None


class FakeTransport:
    """Answers each request with the next scripted response (or raises a scripted exception)."""

    def __init__(self, *script: FakeResponse | BaseException) -> None:
        self.script = list(script)
        self.sent: list[Sent] = []
        self.closed = False

    def request(self, method: str, path: str, *, body: bytes | None, headers: Mapping[str, str],
                stream: bool = False, timeout: float | None = None) -> FakeResponse:
        url = urlsplit(path)
        decoded = None if body is None else json.loads(body)
        self.sent.append(Sent(method, url.path, parse_qs(url.query), decoded, dict(headers), stream, timeout))
        item = self.script.pop(0) if self.script else FakeResponse(body={})
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self.closed = True


def _client(*script: FakeResponse | BaseException, **kw: Any) -> tuple[Client, FakeTransport]:
    t = FakeTransport(*script)
    sleeps: list[float] = []
    return Client(t, token=kw.pop("token", "tok"), _sleep=sleeps.append, **kw), t


def _status(code: int, reason: str, message: str = "m") -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason,
            "message": message}


# ------------------------------------------------------------------------------ paths
@pytest.mark.parametrize(("res", "ns", "name", "sub", "path"), [
    (PODS, "default", None, None, "/api/v1/namespaces/default/pods"),
    (PODS, None, None, None, "/api/v1/pods"),
    (PODS, "ns", "p", "binding", "/api/v1/namespaces/ns/pods/p/binding"),
    (NODES, None, "n1", "status", "/api/v1/nodes/n1/status"),
    (DEPLOYMENTS, "a", "d", "scale", "/apis/apps/v1/namespaces/a/deployments/d/scale"),
    (Resource("x.io", "v1beta1", "things", namespaced=False), None, None, None, "/apis/x.io/v1beta1/things"),
    (CONFIGMAPS, "default", "a b/c", None, "/api/v1/namespaces/default/configmaps/a%20b%2Fc"),
])
def test_resource_paths(res: Resource, ns: str | None, name: str | None, sub: str | None, path: str) -> None:
    assert res.path(ns, name, sub) == path


def test_resource_path_misuse() -> None:
    with pytest.raises(ValueError, match="cluster-scoped"):
        NODES.path("default")
    with pytest.raises(ValueError, match="object name"):
        PODS.path("default", None, "status")


# ------------------------------------------------------------------------------ verbs
def test_get_uses_default_namespace_and_headers() -> None:
    c, t = _client(FakeResponse(body={"metadata": {"name": "a"}}), default_namespace="team")
    assert c.get(CONFIGMAPS, "a") == {"metadata": {"name": "a"}}
    sent = t.sent[0]
    assert (sent.method, sent.path) == ("GET", "/api/v1/namespaces/team/configmaps/a")
    assert sent.headers["Authorization"] == "Bearer tok"
    assert sent.headers["Accept"] == "application/json" and "Content-Type" not in sent.headers


def test_token_callable_is_asked_every_request() -> None:
    tokens = iter(["one", "two"])
    t = FakeTransport()
    c = Client(t, token=lambda: next(tokens))
    c.get(NODES, "n")
    c.get(NODES, "n")
    assert [s.headers["Authorization"] for s in t.sent] == ["Bearer one", "Bearer two"]


def test_no_token_no_authorization_header() -> None:
    t = FakeTransport()
    Client(t).get(NODES, "n")
    assert "Authorization" not in t.sent[0].headers


def test_list_query_parameters() -> None:
    c, t = _client(FakeResponse(body={"items": [], "metadata": {"resourceVersion": "5"}}))
    c.list(PODS, label_selector="app in (a,b),!x", field_selector="spec.nodeName=n1", limit=10,
           continue_="tok", resource_version="0")
    assert t.sent[0].path == "/api/v1/pods"
    assert t.sent[0].query == {"labelSelector": ["app in (a,b),!x"], "fieldSelector": ["spec.nodeName=n1"],
                               "limit": ["10"], "continue": ["tok"], "resourceVersion": ["0"]}


def test_list_all_follows_continue_tokens() -> None:
    c, t = _client(
        FakeResponse(body={"items": [{"n": 1}, {"n": 2}],
                           "metadata": {"resourceVersion": "7", "continue": "c1"}}),
        FakeResponse(body={"items": [{"n": 3}], "metadata": {"resourceVersion": "7", "continue": ""}}))
    items, rv = c.list_all(CONFIGMAPS, "default", limit=2)
    assert items == [{"n": 1}, {"n": 2}, {"n": 3}] and rv == "7"
    assert [s.query.get("continue") for s in t.sent] == [None, ["c1"]]
    assert all(s.query["limit"] == ["2"] for s in t.sent)


def test_list_all_expired_continue_raises_410() -> None:
    c, _ = _client(FakeResponse(body={"items": [], "metadata": {"continue": "c1", "resourceVersion": "3"}}),
                   FakeResponse(410, _status(410, "Expired", "continue token expired")))
    with pytest.raises(ApiError) as e:
        c.list_all(CONFIGMAPS)
    assert e.value.expired


def test_create_takes_namespace_from_object_and_passes_query() -> None:
    c, t = _client(FakeResponse(201, {"metadata": {"name": "a"}}))
    c.create(CONFIGMAPS, {"metadata": {"name": "a", "namespace": "x"}}, field_manager="me", dry_run="All")
    sent = t.sent[0]
    assert (sent.method, sent.path) == ("POST", "/api/v1/namespaces/x/configmaps")
    assert sent.query == {"fieldManager": ["me"], "dryRun": ["All"]}
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.body == {"metadata": {"name": "a", "namespace": "x"}}


def test_update_and_status() -> None:
    c, t = _client()
    obj = {"metadata": {"name": "n1", "resourceVersion": "4"}, "status": {}}
    c.update(NODES, obj)
    c.update_status(PODS, {"metadata": {"name": "p", "namespace": "ns"}})
    assert [(s.method, s.path) for s in t.sent] == [("PUT", "/api/v1/nodes/n1"),
                                                     ("PUT", "/api/v1/namespaces/ns/pods/p/status")]


@pytest.mark.parametrize(("kind", "ctype"), [
    ("merge", "application/merge-patch+json"),
    ("strategic", "application/strategic-merge-patch+json"),
    ("json", "application/json-patch+json"),
    ("apply", "application/apply-patch+yaml"),
])
def test_patch_content_types(kind: str, ctype: str) -> None:
    c, t = _client()
    c.patch(PODS, "p", {"a": 1} if kind != "json" else [{"op": "add"}], "ns", patch_type=kind,
            field_manager="fm", force=True if kind == "apply" else None)
    sent = t.sent[0]
    assert sent.method == "PATCH" and sent.headers["Content-Type"] == ctype
    assert sent.query["fieldManager"] == ["fm"]
    assert sent.query.get("force") == (["true"] if kind == "apply" else None)


def test_patch_argument_errors() -> None:
    c, t = _client()
    with pytest.raises(ValueError, match="patch_type"):
        c.patch(PODS, "p", {}, patch_type="xml")
    with pytest.raises(ValueError, match="field_manager"):
        c.patch(PODS, "p", {}, patch_type="apply")
    assert t.sent == []


def test_delete_body_carries_options() -> None:
    c, t = _client()
    c.delete(PODS, "p", "ns", propagation_policy="Foreground", grace_period_seconds=0,
             preconditions={"uid": "u1"})
    sent = t.sent[0]
    assert (sent.method, sent.path) == ("DELETE", "/api/v1/namespaces/ns/pods/p")
    assert sent.body == {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Foreground",
                         "gracePeriodSeconds": 0, "preconditions": {"uid": "u1"}}


def test_bind_and_scale() -> None:
    c, t = _client()
    c.bind("p", "node-1", "ns")
    c.get_scale(REPLICATIONCONTROLLERS, "rc", "ns")
    c.set_scale(REPLICATIONCONTROLLERS, "rc", 5, "ns")
    bind, get_scale, set_scale = t.sent
    assert (bind.method, bind.path) == ("POST", "/api/v1/namespaces/ns/pods/p/binding")
    assert bind.body["target"] == {"apiVersion": "v1", "kind": "Node", "name": "node-1"}
    assert bind.body["metadata"] == {"name": "p", "namespace": "ns"}
    assert get_scale.path == set_scale.path == "/api/v1/namespaces/ns/replicationcontrollers/rc/scale"
    assert set_scale.body == {"spec": {"replicas": 5}}
    assert set_scale.headers["Content-Type"] == "application/merge-patch+json"


# ------------------------------------------------------------------------------ errors and retries
def test_status_errors_become_api_error() -> None:
    c, _ = _client(FakeResponse(404, _status(404, "NotFound", 'configmaps "a" not found')))
    with pytest.raises(ApiError) as e:
        c.get(CONFIGMAPS, "a")
    assert (e.value.code, e.value.reason, e.value.not_found) == (404, "NotFound", True)
    assert e.value.status["kind"] == "Status" and "not found" in str(e.value)


def test_non_status_error_body_still_an_api_error() -> None:
    c, _ = _client(FakeResponse(502, b"<html>bad gateway</html>"))
    with pytest.raises(ApiError) as e:
        c.get(CONFIGMAPS, "a")
    assert (e.value.code, e.value.reason) == (502, "Bad Gateway") and "bad gateway" in e.value.message


def test_undecodable_success_is_an_error() -> None:
    c, _ = _client(FakeResponse(200, b"not json"))
    with pytest.raises(ApiError, match="undecodable"):
        c.get(CONFIGMAPS, "a")


def test_reads_are_retried_on_connection_errors() -> None:
    c, t = _client(ConnectionResetError("reset"), ConnectionRefusedError("refused"),
                   FakeResponse(body={"ok": 1}))
    assert c.get(CONFIGMAPS, "a") == {"ok": 1}
    assert len(t.sent) == 3


def test_reads_give_up_after_three_attempts() -> None:
    c, t = _client(*[ConnectionResetError("reset")] * 4)
    with pytest.raises(ConnectionResetError):
        c.list(PODS)
    assert len(t.sent) == 3


@pytest.mark.parametrize("verb", ["create", "delete", "patch"])
def test_writes_are_never_retried(verb: str) -> None:
    c, t = _client(ConnectionResetError("reset"), FakeResponse(body={}))
    with pytest.raises(ConnectionResetError):
        if verb == "create":
            c.create(PODS, {"metadata": {"name": "p"}})
        elif verb == "delete":
            c.delete(PODS, "p")
        else:
            c.patch(PODS, "p", {})
    assert len(t.sent) == 1


def test_api_errors_are_not_retried() -> None:
    c, t = _client(FakeResponse(503, _status(503, "ServiceUnavailable")))
    with pytest.raises(ApiError):
        c.get(PODS, "p")
    assert len(t.sent) == 1


# ------------------------------------------------------------------------------ watch
def test_watch_request_and_events() -> None:
    obj = {"metadata": {"name": "a", "resourceVersion": "11"}}
    resp = FakeResponse(events=[{"type": "ADDED", "object": obj},
                                {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "12"}}}])
    c, t = _client(resp)
    with c.watch(PODS, "ns", resource_version="10", label_selector="a=b", timeout_seconds=60) as stream:
        events = list(stream)
    bookmark = WatchEvent("BOOKMARK", {"metadata": {"resourceVersion": "12"}})
    assert events == [WatchEvent("ADDED", obj), bookmark]
    assert stream.last_resource_version == "12" and resp.closed
    sent = t.sent[0]
    assert sent.stream and sent.timeout == 90.0 and sent.path == "/api/v1/namespaces/ns/pods"
    assert sent.query == {"watch": ["true"], "resourceVersion": ["10"], "labelSelector": ["a=b"],
                          "timeoutSeconds": ["60"], "allowWatchBookmarks": ["true"]}


def test_watch_error_event_raises_410() -> None:
    expired = _status(410, "Expired", "too old resource version: 3 (9)")
    c, _ = _client(FakeResponse(events=[{"type": "ERROR", "object": expired}]))
    with pytest.raises(ApiError) as e:
        list(c.watch(PODS, resource_version="3"))
    assert e.value.expired and e.value.message.startswith("too old")


def test_watch_refused_at_open_raises() -> None:
    c, _ = _client(FakeResponse(403, _status(403, "Forbidden")))
    with pytest.raises(ApiError) as e:
        c.watch(PODS, allow_bookmarks=False)
    assert e.value.code == 403


def test_watch_broken_stream_raises_unless_closed() -> None:
    c, _ = _client(FakeResponse(events=[ConnectionResetError("cut")]),
                   FakeResponse(events=[ConnectionResetError("cut")]))
    with pytest.raises(ConnectionResetError):
        list(c.watch(PODS))
    stream = c.watch(PODS)
    stream.close()  # a close() from another thread makes the reader see an error: that is not one
    assert list(stream) == []


def test_watch_garbage_line_raises() -> None:
    c, _ = _client(FakeResponse(events=[b"{not json\n"]))
    with pytest.raises(ValueError):
        list(c.watch(PODS))


def test_close_closes_transport() -> None:
    c, t = _client()
    c.close()
    assert t.closed
