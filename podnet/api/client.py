"""A small synchronous Kubernetes API client: CRUD, patch, subresources, paged lists and watches.

Why synchronous stdlib `http.client` rather than aiohttp: every consumer (scheduler, controllers,
kubelet, flanneld, kube-proxy) follows podnet.reconcile.Runner, i.e. threads — informer threads
feed a single sync thread.  A blocking client with a small keep-alive pool is thread-safe and
needs no event loop in processes that otherwise have none.

Seams: `Transport` sends one request and returns a `Response` (status, headers, body or lines).
`HttpTransport` is the real one; unit tests supply their own.  Errors from the server are raised
as ApiError carrying the upstream Status (code, reason, message); a watch's ERROR event is raised
the same way (410 Expired -> ApiError(code=410)).  Only idempotent reads (GET, not watches) are
retried on connection errors: a write whose answer was lost may have happened.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from podnet.api.kubeconfig import KubeConfig

__all__ = [
    "CONFIGMAPS", "DEPLOYMENTS", "ENDPOINTS", "ENDPOINTSLICES", "EVENTS", "LEASES", "NAMESPACES", "NODES",
    "PODS", "REPLICASETS", "REPLICATIONCONTROLLERS", "SERVICEACCOUNTS", "SERVICES",
    "ApiError", "Client", "HttpTransport", "Resource", "Response", "Transport", "WatchEvent", "WatchStream",
]

log = logging.getLogger(__name__)

Objs = list[dict[str, Any]]  # an alias: inside Client, `list` is the method

PATCH_TYPES = {
    "merge": "application/merge-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "json": "application/json-patch+json",
    "apply": "application/apply-patch+yaml",
}
READ_RETRIES = 3


@dataclass(frozen=True)
class Resource:
    """One REST resource: /api/v1/... for the core group, /apis/<group>/<version>/... otherwise."""
    group: str
    version: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None = None, name: str | None = None,
             subresource: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        parts = [base]
        if self.namespaced and namespace:
            parts.append(f"namespaces/{_q(namespace)}")
        elif not self.namespaced and namespace:
            raise ValueError(f"{self.plural} is cluster-scoped; no namespace allowed")
        parts.append(self.plural)
        if name:
            parts.append(_q(name))
        elif subresource:
            raise ValueError("a subresource needs an object name")
        if subresource:
            parts.append(subresource)
        return "/".join(parts)


def _q(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


PODS = Resource("", "v1", "pods")
SERVICES = Resource("", "v1", "services")
ENDPOINTS = Resource("", "v1", "endpoints")
CONFIGMAPS = Resource("", "v1", "configmaps")
EVENTS = Resource("", "v1", "events")
SERVICEACCOUNTS = Resource("", "v1", "serviceaccounts")
REPLICATIONCONTROLLERS = Resource("", "v1", "replicationcontrollers")
NODES = Resource("", "v1", "nodes", namespaced=False)
NAMESPACES = Resource("", "v1", "namespaces", namespaced=False)
DEPLOYMENTS = Resource("apps", "v1", "deployments")
REPLICASETS = Resource("apps", "v1", "replicasets")
ENDPOINTSLICES = Resource("discovery.k8s.io", "v1", "endpointslices")
LEASES = Resource("coordination.k8s.io", "v1", "leases")


class ApiError(Exception):
    """A non-2xx answer (or a watch ERROR event) with the server's Status object."""

    def __init__(self, status: Mapping[str, Any], http_status: int | None = None) -> None:
        self.status = dict(status)
        self.code = int(self.status.get("code") or http_status or 0)
        self.reason = str(self.status.get("reason", ""))
        self.message = str(self.status.get("message", ""))
        super().__init__(f"{self.code} {self.reason}: {self.message}")

    @property
    def not_found(self) -> bool:
        return self.code == 404

    @property
    def conflict(self) -> bool:
        return self.code == 409

    @property
    def expired(self) -> bool:
        """410 Gone / Expired: a too-old resourceVersion or continue token; the caller must relist."""
        return self.code == 410


@dataclass
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED, BOOKMARK
    object: dict[str, Any]


class Response(Protocol):
    status: int

    def read(self) -> bytes: ...

    def lines(self) -> Iterator[bytes]: ...

    def close(self) -> None:
        """Must be safe while another thread is blocked in lines() (it makes lines() end)."""


class Transport(Protocol):
    def request(self, method: str, path: str, *, body: bytes | None, headers: Mapping[str, str],
                stream: bool = False, timeout: float | None = None) -> Response: ...

    def close(self) -> None: ...


# ------------------------------------------------------------------------------------------ real HTTP
class _HttpResponse:
    """An http.client response; a non-stream one returns its connection to the pool once read."""

    def __init__(self, resp: http.client.HTTPResponse, conn: http.client.HTTPConnection,
                 pool: HttpTransport | None) -> None:
        self._resp, self._conn, self._pool = resp, conn, pool
        self._reading = False
        self.status = resp.status

    def read(self) -> bytes:
        try:
            data = self._resp.read()
        except BaseException:
            self._conn.close()
            raise
        if self._pool is not None and not self._resp.will_close:
            self._pool.put(self._conn)
        else:
            self._conn.close()
        return data

    def lines(self) -> Iterator[bytes]:
        # http.client undoes the chunked encoding; events are newline-delimited JSON
        self._reading = True
        try:
            while True:
                line = self._resp.readline()
                if not line:
                    return
                if line.strip():
                    yield line
        finally:
            self._reading = False
            self._conn.close()

    def close(self) -> None:
        """Safe from another thread: shutting the socket down wakes a reader blocked in recv; the
        reader then closes the connection itself (closing it under the reader races in http.client)."""
        sock = self._conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if not self._reading:
            self._conn.close()


class HttpTransport:
    """http.client over TLS (or plain http) with a small pool of keep-alive connections."""

    def __init__(self, server: str, ssl_context: ssl.SSLContext | None = None, *, pool_size: int = 4,
                 timeout: float = 30.0, idle_timeout: float = 30.0) -> None:
        url = urllib.parse.urlsplit(server)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"unsupported server URL {server!r}")
        self.host = url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.https = url.scheme == "https"
        self.ssl_context = ssl_context if ssl_context is not None else (
            ssl.create_default_context() if self.https else None)
        self.pool_size, self.timeout, self.idle_timeout = pool_size, timeout, idle_timeout
        self._idle: list[tuple[float, http.client.HTTPConnection]] = []
        self._lock = threading.Lock()

    def _new(self, timeout: float | None) -> http.client.HTTPConnection:
        if self.https:
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout,
                                               context=self.ssl_context)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def _get(self) -> tuple[http.client.HTTPConnection, bool]:
        """An idle connection (reused=True) or a new one.  Connections idle longer than the server's
        keep-alive are dropped rather than risked, since a write on a dead one cannot be retried."""
        now = time.monotonic()
        with self._lock:
            while self._idle:
                since, conn = self._idle.pop()
                if now - since < self.idle_timeout:
                    return conn, True
                conn.close()
        return self._new(self.timeout), False

    def put(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self.pool_size:
                self._idle.append((time.monotonic(), conn))
                return
        conn.close()

    def request(self, method: str, path: str, *, body: bytes | None, headers: Mapping[str, str],
                stream: bool = False, timeout: float | None = None) -> Response:
        # a watch gets its own connection with its own read timeout; it is never pooled
        conn, reused = (self._new(timeout), False) if stream else self._get()
        try:
            resp = self._send(conn, method, path, body, headers)
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            if not reused:
                raise
            # a pooled connection the server had closed before reading our request: nothing was
            # processed (no response bytes), so sending once more on a fresh connection is safe
            conn = self._new(self.timeout)
            resp = self._send(conn, method, path, body, headers)
        return _HttpResponse(resp, conn, None if stream else self)

    @staticmethod
    def _send(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None,
              headers: Mapping[str, str]) -> http.client.HTTPResponse:
        try:
            conn.request(method, path, body=body, headers=dict(headers))
            return conn.getresponse()
        except BaseException:
            conn.close()
            raise

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for _, conn in idle:
            conn.close()


# ------------------------------------------------------------------------------------------ watch
class WatchStream:
    """Iterate WatchEvents; ends when the server ends the stream (timeoutSeconds) or close() is called
    (from any thread).  An ERROR event raises ApiError; a broken stream raises OSError/ValueError."""

    def __init__(self, resp: Response) -> None:
        self._resp = resp
        self._closed = False
        self.last_resource_version: str | None = None

    def __iter__(self) -> Iterator[WatchEvent]:
        try:
            for line in self._resp.lines():
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    raise ApiError(obj)
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                if rv:
                    self.last_resource_version = rv
                yield WatchEvent(kind, obj)
        except (OSError, ValueError, http.client.HTTPException):
            if not self._closed:
                raise
        finally:
            self._resp.close()

    def close(self) -> None:
        self._closed = True
        self._resp.close()

    def __enter__(self) -> WatchStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------------------------------ client
@dataclass
class Client:
    """Kubernetes REST verbs over a Transport.  Objects are plain dicts (the JSON the server speaks)."""
    transport: Transport
    token: Any = None  # str, or a callable returning the current token (token-file rotation)
    user_agent: str = "podnet"
    retry_delay: float = 0.2
    default_namespace: str = "default"
    _sleep: Any = field(default=time.sleep, repr=False)

    @classmethod
    def from_config(cls, config: KubeConfig, **kw: Any) -> Client:
        transport = HttpTransport(config.server, config.ssl_context())
        return cls(transport, token=config.bearer_token, default_namespace=config.namespace, **kw)

    def close(self) -> None:
        self.transport.close()

    # ------------------------------------------------------------------ plumbing
    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": self.user_agent}
        token = self.token() if callable(self.token) else self.token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    def request(self, method: str, path: str, *, query: Mapping[str, Any] | None = None, body: Any = None,
                content_type: str = "application/json") -> Any:
        """One request; the decoded JSON answer, or ApiError.  GETs are retried on connection errors."""
        url = _with_query(path, query)
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        headers = self._headers(content_type if data is not None else None)
        attempts = READ_RETRIES if method == "GET" else 1
        for attempt in range(attempts):
            try:
                resp = self.transport.request(method, url, body=data, headers=headers)
                raw = resp.read()
                break
            except (OSError, http.client.HTTPException) as e:
                if attempt + 1 == attempts:
                    raise
                log.debug("GET %s failed (%s); retrying", url, e)
                self._sleep(self.retry_delay * (2 ** attempt))
        return _decode(resp.status, raw)

    # ------------------------------------------------------------------ verbs
    def get(self, res: Resource, name: str, namespace: str | None = None) -> dict[str, Any]:
        return self.request("GET", res.path(self._ns(res, namespace), name))

    def list(self, res: Resource, namespace: str | None = None, *, label_selector: str | None = None,
             field_selector: str | None = None, limit: int | None = None, continue_: str | None = None,
             resource_version: str | None = None) -> dict[str, Any]:
        """One page: the List object (items, metadata.resourceVersion, metadata.continue).
        `namespace=None` on a namespaced resource lists across all namespaces."""
        query = {"labelSelector": label_selector, "fieldSelector": field_selector, "limit": limit,
                 "continue": continue_, "resourceVersion": resource_version}
        return self.request("GET", res.path(namespace), query=query)

    def list_all(self, res: Resource, namespace: str | None = None, *, label_selector: str | None = None,
                 field_selector: str | None = None, limit: int = 500) -> tuple[Objs, str]:
        """Every page (one consistent snapshot) -> (items, the list's resourceVersion).  An expired
        continue token raises ApiError(410); the caller relists from scratch."""
        items: Objs = []
        token: str | None = None
        while True:
            page = self.list(res, namespace, label_selector=label_selector, field_selector=field_selector,
                             limit=limit, continue_=token)
            items.extend(page.get("items") or [])
            meta = page.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                return items, str(meta.get("resourceVersion", ""))

    def create(self, res: Resource, obj: Mapping[str, Any], namespace: str | None = None,
               **query: Any) -> dict[str, Any]:
        ns = self._ns(res, namespace or (obj.get("metadata") or {}).get("namespace"))
        return self.request("POST", res.path(ns), body=obj, query=_params(query))

    def update(self, res: Resource, obj: Mapping[str, Any], namespace: str | None = None,
               subresource: str | None = None, **query: Any) -> dict[str, Any]:
        """PUT; a stale metadata.resourceVersion is a 409 Conflict (ApiError.conflict)."""
        meta = obj.get("metadata") or {}
        ns = self._ns(res, namespace or meta.get("namespace"))
        path = res.path(ns, meta["name"], subresource)
        return self.request("PUT", path, body=obj, query=_params(query))

    def update_status(self, res: Resource, obj: Mapping[str, Any],
                      namespace: str | None = None) -> dict[str, Any]:
        return self.update(res, obj, namespace, subresource="status")

    def patch(self, res: Resource, name: str, patch: Any, namespace: str | None = None, *,
              patch_type: str = "merge", subresource: str | None = None, field_manager: str | None = None,
              force: bool | None = None) -> dict[str, Any]:
        """PATCH with `patch_type` merge | strategic | json | apply (apply needs field_manager)."""
        if patch_type not in PATCH_TYPES:
            raise ValueError(f"patch_type must be one of {sorted(PATCH_TYPES)}")
        if patch_type == "apply" and not field_manager:
            raise ValueError("an apply patch needs field_manager")
        query = {"fieldManager": field_manager, "force": force}
        return self.request("PATCH", res.path(self._ns(res, namespace), name, subresource),
                            query=query, body=patch, content_type=PATCH_TYPES[patch_type])

    def delete(self, res: Resource, name: str, namespace: str | None = None, *,
               propagation_policy: str | None = None, grace_period_seconds: int | None = None,
               preconditions: Mapping[str, str] | None = None) -> dict[str, Any]:
        """DELETE; returns the object (with deletionTimestamp while finalizers remain) or a Status."""
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if propagation_policy:
            body["propagationPolicy"] = propagation_policy
        if grace_period_seconds is not None:
            body["gracePeriodSeconds"] = grace_period_seconds
        if preconditions:
            body["preconditions"] = dict(preconditions)
        return self.request("DELETE", res.path(self._ns(res, namespace), name), body=body)

    def bind(self, pod_name: str, node_name: str, namespace: str | None = None) -> dict[str, Any]:
        """POST pods/<name>/binding (what the scheduler does); 409 when already bound."""
        ns = self._ns(PODS, namespace)
        binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod_name, "namespace": ns},
                   "target": {"apiVersion": "v1", "kind": "Node", "name": node_name}}
        return self.request("POST", PODS.path(ns, pod_name, "binding"), body=binding)

    def get_scale(self, res: Resource, name: str, namespace: str | None = None) -> dict[str, Any]:
        return self.request("GET", res.path(self._ns(res, namespace), name, "scale"))

    def set_scale(self, res: Resource, name: str, replicas: int,
                  namespace: str | None = None) -> dict[str, Any]:
        return self.patch(res, name, {"spec": {"replicas": replicas}}, namespace, subresource="scale")

    def watch(self, res: Resource, namespace: str | None = None, *, resource_version: str | None = None,
              label_selector: str | None = None, field_selector: str | None = None,
              timeout_seconds: int | None = None, allow_bookmarks: bool = True,
              read_timeout: float | None = None) -> WatchStream:
        """Open a watch.  The socket's read timeout defaults to timeoutSeconds + 30 s (plus bookmarks
        keep an idle stream talking), so a server that vanished is noticed.  Not retried."""
        query = {"watch": "true", "resourceVersion": resource_version, "labelSelector": label_selector,
                 "fieldSelector": field_selector, "timeoutSeconds": timeout_seconds,
                 "allowWatchBookmarks": "true" if allow_bookmarks else None}
        if read_timeout is None and timeout_seconds is not None:
            read_timeout = timeout_seconds + 30.0
        resp = self.transport.request("GET", _with_query(res.path(namespace), query), body=None,
                                      headers=self._headers(None), stream=True, timeout=read_timeout)
        if resp.status >= 300:
            _decode(resp.status, resp.read())  # raises ApiError
        return WatchStream(resp)

    def _ns(self, res: Resource, namespace: str | None) -> str | None:
        if not res.namespaced:
            return None
        return namespace or self.default_namespace


def _params(query: Mapping[str, Any]) -> dict[str, Any]:
    """Python-style keyword arguments (field_manager=...) -> query names (fieldManager=...)."""
    out = {}
    for key, value in query.items():
        head, *rest = key.split("_")
        out[head + "".join(p.capitalize() for p in rest)] = value
    return out


def _with_query(path: str, query: Mapping[str, Any] | None) -> str:
    pairs = [(k, str(v).lower() if isinstance(v, bool) else str(v))
             for k, v in (query or {}).items() if v is not None]
    return f"{path}?{urllib.parse.urlencode(pairs)}" if pairs else path


def _decode(status: int, raw: bytes) -> Any:
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = None
    if 200 <= status < 300:
        if body is None and raw:
            raise ApiError({"code": status, "reason": "InternalError",
                            "message": f"undecodable response: {raw[:200]!r}"}, status)
        return body
    if isinstance(body, dict) and body.get("kind") == "Status":
        raise ApiError(body, status)
    text = raw[:500].decode(errors="replace")
    raise ApiError({"code": status, "reason": http.client.responses.get(status, "Unknown"), "message": text},
                   status)
