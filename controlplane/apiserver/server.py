"""The aiohttp application: middlewares (Status errors, authn/authz), non-resource routes (discovery,
/version, /openapi, health) and the catch-all resource route.

`build_app(registry, store, access)` is what both the process (`__main__`) and the unit tests (aiohttp
test client over a MemoryStore-backed Registry) use, so the tests exercise the real routing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import yaml
from aiohttp import web

from controlplane.apiserver import (
    admission,
    auth,
    context,
    discovery,
    errors,
    negotiation,
    openapi,
    resources,
    routing,
    watch_http,
)
from controlplane.apiserver.context import Access
from controlplane.apiserver.handlers import ResourceHandlers
from controlplane.apiserver.request_io import json_response
from podnet.errors import AlreadyExists, NotFound
from podnet.store.base import Compacted, Conflict, StoreUnavailable

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Readable without credentials, as upstream's system:public-info-viewer role grants.
PUBLIC_PATHS = ("/healthz", "/livez", "/readyz", "/version")
HEALTH_TIMEOUT = 2.0
STARTED_CHECK = "poststarthook/podnet-registry"
# Status reasons for errors aiohttp raises itself (e.g. a body over client_max_size)
HTTP_REASONS = {413: "RequestEntityTooLarge", 415: "UnsupportedMediaType", 429: "TooManyRequests",
                503: "ServiceUnavailable", 504: "Timeout"}


def _is_public(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in PUBLIC_PATHS)


def error_response(err: errors.ApiError) -> web.Response:
    return json_response(err.status(), status=err.code)


def api_error_from(exc: Exception) -> errors.ApiError | None:
    """The ApiError for an exception a handler let through (store errors that the registry did not
    translate); None for bugs."""
    if isinstance(exc, errors.ApiError):
        return exc
    if isinstance(exc, StoreUnavailable):
        if exc.timeout:
            return errors.timeout(f"etcd did not answer in time: {exc}")
        return errors.service_unavailable(f"etcd is unavailable: {exc}")
    if isinstance(exc, Compacted):
        return errors.expired(f"The provided resourceVersion is too old: {exc}")
    if isinstance(exc, Conflict):
        return errors.ApiError(409, "Conflict", str(exc))
    if isinstance(exc, NotFound):
        return errors.ApiError(404, "NotFound", str(exc) or "not found")
    if isinstance(exc, AlreadyExists):
        return errors.ApiError(409, "AlreadyExists", str(exc) or "already exists")
    return None


@web.middleware
async def status_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes a Status object with the upstream reason and code."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        if e.status == 404:
            return error_response(errors.not_found_path())
        if e.status == 405:
            return error_response(errors.method_not_allowed(request.method))
        reason = HTTP_REASONS.get(e.status, "InternalError" if e.status >= 500 else "BadRequest")
        return error_response(errors.ApiError(e.status, reason, e.text or e.reason))
    except asyncio.CancelledError:
        raise
    except Exception as e:
        err = api_error_from(e)
        if err is None:
            log.exception("%s %s failed", request.method, request.path_qs)
            err = errors.internal(repr(e))
        return error_response(err)


@web.middleware
async def yaml_output(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer YAML when the client prefers it (`Accept: application/yaml`), as upstream can."""
    resp = await handler(request)
    if not isinstance(resp, web.Response) or not negotiation.prefers_yaml(request.headers.get("Accept")):
        return resp
    if not (resp.content_type or "").startswith("application/json") or not isinstance(resp.body, bytes):
        return resp
    text = yaml.safe_dump(json.loads(resp.body), sort_keys=False, default_flow_style=False)
    out = web.Response(text=text, status=resp.status, content_type="application/yaml")
    for k, v in resp.headers.items():
        if k.lower() not in ("content-type", "content-length"):
            out.headers[k] = v
    return out


@web.middleware
async def startup_gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """503 until the registry has started (etcd reachable, caches synced); health stays open."""
    if not request.app[context.STARTED].is_set() and not _is_public(request.path):
        raise errors.service_unavailable("the API server is starting: waiting for etcd")
    return await handler(request)


@web.middleware
async def authn_authz(request: web.Request, handler: Handler) -> web.StreamResponse:
    """401 without a valid token, 403 when RBAC denies; health and /version stay open."""
    if _is_public(request.path):
        return await handler(request)
    access = request.app[context.ACCESS]
    user = access.authenticate(request)
    if user is None:
        raise errors.unauthorized()
    user = await _impersonated(access, user, request)
    request[context.USER_KEY] = user
    attrs = auth.request_attributes(request.method, request.path, request.query)
    decision = await access.decide(user, attrs)
    if not decision.allowed:
        raise errors.ApiError(403, "Forbidden", auth.forbidden_message(user, attrs, decision.reason),
                              auth.forbidden_details(attrs))
    return await handler(request)


async def _impersonated(access: context.Access, user: auth.User, request: web.Request) -> auth.User:
    """`kubectl --as`: act as the Impersonate-User if RBAC grants the requester `impersonate`."""
    if not any(k.lower().startswith("impersonate-") for k in request.headers):
        return user
    try:
        return await asyncio.to_thread(auth.impersonate, user, request.headers, access.authorizer.decide)
    except auth.ImpersonationInvalid as e:
        raise errors.bad_request(str(e)) from None
    except auth.ImpersonationDenied as e:
        raise errors.ApiError(403, "Forbidden", str(e), auth.forbidden_details(e.attrs)) from None


@dataclass(frozen=True)
class Limits:
    """Upstream's --max-requests-inflight, --max-mutating-requests-inflight (0 = unlimited) and
    --min-request-timeout (watches without timeoutSeconds last a random [N, 2N) seconds)."""

    max_readonly: int = 400
    max_mutating: int = 200
    min_request_timeout: int = 1800


def inflight_limit(limits: Limits) -> Any:
    """429 TooManyRequests (Retry-After: 1) beyond the in-flight limits; watches and the open health
    endpoints are not counted, as upstream exempts long-running requests."""
    counts = {"readonly": 0, "mutating": 0}
    caps = {"readonly": limits.max_readonly, "mutating": limits.max_mutating}

    @web.middleware
    async def limit(request: web.Request, handler: Handler) -> web.StreamResponse:
        q = request.query
        long_running = negotiation.parse_bool_lenient(q.get("watch")) or (
            request.path.endswith("/log") and negotiation.parse_bool_lenient(q.get("follow")))
        if _is_public(request.path) or long_running:  # watches and followed logs
            return await handler(request)
        kind = "readonly" if request.method in ("GET", "HEAD", "OPTIONS") else "mutating"
        if caps[kind] and counts[kind] >= caps[kind]:
            err = errors.ApiError(429, "TooManyRequests", "Too many requests, please try again later.",
                                  {"retryAfterSeconds": 1})
            resp = error_response(err)
            resp.headers["Retry-After"] = "1"
            return resp
        counts[kind] += 1
        try:
            return await handler(request)
        finally:
            counts[kind] -= 1

    return limit


# ------------------------------------------------------------------------------ non-resource routes


async def api_versions(request: web.Request) -> web.Response:
    version = discovery.negotiate_aggregated(request.headers.get("Accept", ""))
    if version:
        return _aggregated(discovery.aggregated_discovery(True, version), version)
    return json_response(discovery.api_versions(request.app[context.SERVER_ADDRESS]))


async def api_groups(request: web.Request) -> web.Response:
    version = discovery.negotiate_aggregated(request.headers.get("Accept", ""))
    if version:
        return _aggregated(discovery.aggregated_discovery(False, version), version)
    return json_response(discovery.api_group_list())


def _aggregated(doc: dict[str, Any], version: str) -> web.Response:
    # kubectl trusts the aggregated document only under this exact Content-Type (reference B1)
    resp = web.Response(body=json.dumps(doc, separators=(",", ":")))
    resp.headers["Content-Type"] = discovery.AGGREGATED_CONTENT_TYPES[version]
    return resp


async def core_resources(request: web.Request) -> web.Response:
    return _resource_list("", request.match_info["version"])


async def group_resources(request: web.Request) -> web.Response:
    return _resource_list(request.match_info["group"], request.match_info["version"])


def _resource_list(group: str, version: str) -> web.Response:
    doc = discovery.api_resource_list(group, version)
    if doc is None:
        raise errors.not_found_path()
    return json_response(doc)


async def api_group(request: web.Request) -> web.Response:
    doc = discovery.api_group(request.match_info["group"])
    if doc is None:
        raise errors.not_found_path()
    return json_response(doc)


async def root_paths(request: web.Request) -> web.Response:
    """GET / (kubectl get --raw /): the served path prefixes, as upstream's index."""
    paths = ["/api", "/api/v1", "/apis", "/healthz", "/livez", "/openapi/v2", "/openapi/v3",
             "/readyz", "/version"]
    paths += [f"/apis/{g}" for g in sorted(set(resources.groups()))]
    paths += [f"/apis/{g}/{v}" for g, v in resources.group_versions() if g]
    return json_response({"paths": sorted(paths)})


async def version(request: web.Request) -> web.Response:
    return json_response(discovery.version_info())


async def openapi_root(request: web.Request) -> web.Response:
    return json_response(openapi.openapi_v3_root())


async def openapi_v2(request: web.Request) -> web.Response:
    # kubectl <= 1.31 validates `create -f`/`apply -f` against /openapi/v2 (protobuf only)
    return web.Response(body=openapi.openapi_v2_protobuf(),
                        headers={"Content-Type": openapi.OPENAPI_V2_CONTENT_TYPE})


async def openapi_document(request: web.Request) -> web.Response:
    doc = openapi.document_for_path(request.match_info["path"])
    if doc is None:
        raise errors.not_found_path()
    return json_response(doc)


# ------------------------------------------------------------------------------------ health


async def _etcd_ok(request: web.Request) -> bool:
    store = request.app[context.STORE]
    try:
        return bool(await asyncio.wait_for(asyncio.to_thread(store.healthy), HEALTH_TIMEOUT))
    except Exception:
        return False


def health_handler(name: str) -> Handler:
    """/healthz, /livez, /readyz (and /<name>/<check>): `ok`, or the upstream check list."""

    async def handle(request: web.Request) -> web.Response:
        only = request.match_info.get("check", "")
        checks = {"ping": True}
        if only in ("", "etcd"):
            checks["etcd"] = await _etcd_ok(request)
        if name != "livez" and only in ("", STARTED_CHECK):
            checks[STARTED_CHECK] = request.app[context.STARTED].is_set()
        if only and only not in checks:
            raise errors.not_found_path()
        if only:
            checks = {only: checks[only]}
        healthy = all(checks.values())
        verbose = "verbose" in request.query
        if healthy and not verbose:
            body = "ok"
        else:
            lines = [f"[+]{c} ok" if ok else f"[-]{c} failed: reason withheld" for c, ok in checks.items()]
            lines.append(f"{name} check {'passed' if healthy else 'failed'}")
            body = "\n".join(lines) + "\n"
        return web.Response(text=body, status=200 if healthy else 500, content_type="text/plain",
                            headers={"X-Content-Type-Options": "nosniff"})

    return handle


# ------------------------------------------------------------------------------------ the app


def resource_handler(handlers: ResourceHandlers) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await handlers.handle(request, routing.resolve(request.path))

    return handle


def build_app(registry: Any, store: Any, access: Access, *, server_address: str = "127.0.0.1:6443",
              bookmark_interval: float = watch_http.BOOKMARK_INTERVAL,
              limits: Limits | None = None, started: asyncio.Event | None = None) -> web.Application:
    """The API server application over a Registry (objects), its Store (health) and Access (auth).

    `started` gates resource requests until set (the process sets it once the registry runs);
    without it the registry is taken as started."""
    limits = limits or Limits()
    if started is None:
        started = asyncio.Event()
        started.set()
    middlewares = [yaml_output, status_errors, startup_gate, inflight_limit(limits), authn_authz,
                   admission.reservations]
    app = web.Application(middlewares=middlewares, client_max_size=8 * 1024 * 1024)
    app[context.REGISTRY] = registry
    app[context.STORE] = store
    app[context.ACCESS] = access
    app[context.SERVER_ADDRESS] = server_address
    app[context.STARTED] = started
    handlers = ResourceHandlers(registry, bookmark_interval=bookmark_interval,
                                min_request_timeout=limits.min_request_timeout)
    r = app.router
    for name in ("healthz", "livez", "readyz"):
        r.add_get(f"/{name}", health_handler(name))
        r.add_get(f"/{name}/{{check}}", health_handler(name))
    r.add_get("/", root_paths)
    r.add_get("/version", version)
    r.add_get("/version/", version)
    r.add_get("/api", api_versions)
    r.add_get("/api/", api_versions)
    r.add_get("/apis", api_groups)
    r.add_get("/apis/", api_groups)
    r.add_get("/api/{version}", core_resources)
    r.add_get("/apis/{group}", api_group)
    r.add_get("/apis/{group}/{version}", group_resources)
    r.add_get("/openapi/v2", openapi_v2)
    r.add_get("/openapi/v3", openapi_root)
    r.add_get("/openapi/v3/{path:.+}", openapi_document)
    resource = resource_handler(handlers)
    r.add_route("*", "/api/{version}/{tail:.+}", resource)
    r.add_route("*", "/apis/{group}/{version}/{tail:.+}", resource)
    return app
