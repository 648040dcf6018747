"""Resource request handlers: list/watch/create/deletecollection on collections, get/update/patch/
delete on items, and the status/scale/binding subresources.

Every handler turns a routed request into Registry calls and answers JSON (or a server-side Table when
kubectl asks for one).  Errors are raised as ApiError and rendered as Status by the server middleware.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

from aiohttp import web

from controlplane.apiserver import (
    errors,
    fieldvalidation,
    negotiation,
    patching,
    podlog,
    routing,
    subresources,
    tables,
    watch_http,
)
from controlplane.apiserver.negotiation import parse_bool, parse_int
from controlplane.apiserver.request_io import (
    check_name,
    delete_options,
    dry_run,
    json_response,
    read_body,
    read_optional_body,
    with_type_meta,
    with_warnings,
)
from controlplane.apiserver.resources import Resource
from controlplane.apiserver.routing import Target
from podnet.api import selectors

JsonObj = dict[str, Any]

# Concurrent deletions of one deletecollection (upstream --delete-collection-workers, default 1): each
# is two etcd round trips through the store threads, so the namespace controller's deletecollection
# of many objects (hundreds of events) would otherwise take seconds.
DELETE_COLLECTION_WORKERS = 16

# Kinds whose DELETE answers the object itself; upstream answers the others with a Status Success
# (generic registry Store.ReturnDeletedObject is set for these).
RETURNS_DELETED_OBJECT = frozenset({"pods", "services", "namespaces"})


class ResourceHandlers:
    """The resource routes over one Registry (object semantics) and the tables module (output)."""

    def __init__(self, registry: Any, bookmark_interval: float = watch_http.BOOKMARK_INTERVAL,
                 min_request_timeout: float = watch_http.DEFAULT_TIMEOUT) -> None:
        self.registry = registry
        self.bookmark_interval = bookmark_interval
        self.min_request_timeout = min_request_timeout

    async def handle(self, request: web.Request, target: Target) -> web.StreamResponse:
        """Dispatch a routed resource request by method, collection/item and subresource."""
        method = request.method.upper()
        if target.subresource:
            return await self._subresource(request, target, method)
        watch = target.watch_path or parse_bool(request.query.get("watch"))
        verb = routing.verb_for(method, target, watch)
        if not target.resource.has_verb(verb):
            # e.g. GET on selfsubjectaccessreviews, DELETE on the namespaces collection
            raise errors.method_not_allowed(method, target.resource.plural)
        if target.is_collection:
            if method in ("GET", "HEAD"):
                return await self.list_or_watch(request, target, watch)
            if method == "POST":
                return await self.create(request, target)
            if method == "DELETE":
                return await self.delete_collection(request, target)
        else:
            if method in ("GET", "HEAD"):
                if watch:
                    return await self.watch_one(request, target)
                return await self.get(request, target)
            if method == "PUT":
                return await self.update(request, target)
            if method == "PATCH":
                return await self.patch(request, target)
            if method == "DELETE":
                return await self.delete(request, target)
        raise errors.method_not_allowed(method)

    async def _subresource(self, request: web.Request, t: Target, method: str) -> web.StreamResponse:
        sub = t.subresource
        if not t.name:
            raise errors.not_found_path()
        if sub == "status":
            if method == "GET":
                return await self.get(request, t)
            if method == "PUT":
                return await self.update(request, t)
            if method == "PATCH":
                return await self.patch(request, t)
        elif sub == "scale":
            return await subresources.scale(self.registry, request, t, method)
        elif sub == "binding" and method == "POST":
            return await subresources.binding(self.registry, request, t)
        elif sub == "log" and method == "GET":
            return await podlog.pod_log(self.registry, request, t)
        elif sub == "finalize" and method == "PUT":
            # namespaces/<name>/finalize: only spec.finalizers is taken (registry._merge_update)
            return await self.update(request, t)
        raise errors.method_not_allowed(method, f"{t.resource.plural}/{sub}")

    # ------------------------------------------------------------------------------------ reads

    async def get(self, request: web.Request, t: Target) -> web.Response:
        obj = await self.registry.get(t.resource, t.namespace, t.name)
        return self.render(request, t.resource, obj)

    async def list_or_watch(self, request: web.Request, t: Target, watch: bool) -> web.StreamResponse:
        q = request.query
        label_sel, field_sel = self.selectors(request, t.resource)
        if watch:
            return await self.watch(request, t, label_sel, field_sel)
        result = await self.registry.list(
            t.resource, t.namespace, label_selector=label_sel, field_selector=field_sel,
            limit=parse_int("limit", q.get("limit")) or 0, continue_token=q.get("continue") or None,
            resource_version=q.get("resourceVersion") or None,
        )
        return self.render_list(request, t.resource, result)

    async def watch(self, request: web.Request, t: Target, label_sel: Any, field_sel: Any
                    ) -> web.StreamResponse:
        q = request.query
        rv = q.get("resourceVersion", "")
        transform: Callable[[JsonObj], JsonObj] | None = None
        if negotiation.wants_table(request.headers.get("Accept")):
            transform = self._table_event_transform(request, t.resource)
        try:
            events = self.registry.watch(t.resource, t.namespace, resource_version=rv,
                                         label_selector=label_sel, field_selector=field_sel)
        except errors.ApiError as e:
            # a too-old resourceVersion: upstream answers 200 and one ERROR event (reference B3)
            if e.code != 410:
                raise
            events = _single_error(e)
        timeout = parse_int("timeoutSeconds", q.get("timeoutSeconds"))
        if not timeout or timeout <= 0:
            # upstream: a random duration in [min-request-timeout, 2x) spreads reconnects
            timeout = int(self.min_request_timeout * (1 + random.random()))
        return await watch_http.serve_watch(
            request, t.resource, events, timeout=float(timeout),
            cache_revision=self._cache_revision(t.resource),
            bookmarks=parse_bool(q.get("allowWatchBookmarks")), start_rv=rv, transform=transform,
            bookmark_interval=self.bookmark_interval,
        )

    def _cache_revision(self, res: Resource) -> Callable[[], int] | None:
        """The applied revision of the resource's watch cache (for bookmarks), if the registry has one."""
        cache_for = getattr(self.registry, "cache_for", None)
        if cache_for is None:
            return None
        try:
            cache = cache_for(res)
        except errors.ApiError:
            return None
        return lambda: int(cache.revision)

    async def watch_one(self, request: web.Request, t: Target) -> web.StreamResponse:
        """GET <item>?watch=true (older clients): a watch of the collection narrowed to the name."""
        name_sel = selectors.parse_field_selector(f"metadata.name={t.name}", t.resource.field_selectors)
        collection = Target(t.resource, t.namespace, "", "")
        return await self.watch(request, collection, None, name_sel)

    def _table_event_transform(self, request: web.Request, res: Resource) -> Callable[[JsonObj], JsonObj]:
        include = request.query.get("includeObject") or "Metadata"
        if include not in ("None", "Metadata", "Object"):
            raise errors.bad_request(f"includeObject: unsupported value {include!r}")
        first = [True]

        def transform(event: JsonObj) -> JsonObj:
            if event.get("type") in ("ERROR", "BOOKMARK"):
                return event
            obj = event["object"]
            rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
            # upstream sends the column definitions with the first event only
            table = tables.to_table(res, [obj], include, resource_version=rv, include_headers=first[0])
            first[0] = False
            return {"type": event["type"], "object": table}

        return transform

    def selectors(self, request: web.Request, res: Resource) -> tuple[Any, Any]:
        """Parsed labelSelector and fieldSelector (None when absent); 400 BadRequest when malformed."""
        q = request.query
        try:
            label = selectors.parse_label_selector(q["labelSelector"]) if q.get("labelSelector") else None
            field = (selectors.parse_field_selector(q["fieldSelector"], res.field_selectors)
                     if q.get("fieldSelector") else None)
        except selectors.SelectorError as e:
            raise errors.bad_request(str(e)) from None
        return label, field

    # ------------------------------------------------------------------------------------ writes

    async def create(self, request: web.Request, t: Target) -> web.Response:
        body = negotiation.require_object(await read_body(request))
        review = subresources.REVIEWS.get(t.resource.plural)
        if review is not None:
            return await review(request, body)
        obj = with_type_meta(t.resource, body)
        warnings = fieldvalidation.check(t.resource, obj, request.query.get("fieldValidation"))
        created = await self.registry.create(t.resource, t.namespace, obj, dry_run=dry_run(request))
        return with_warnings(json_response(created, status=201), warnings)

    async def update(self, request: web.Request, t: Target) -> web.Response:
        body = negotiation.require_object(await read_body(request))
        obj = with_type_meta(t.resource, body)
        check_name(obj, t.name)
        warnings = fieldvalidation.check(t.resource, obj, request.query.get("fieldValidation"))
        updated = await self.registry.update(t.resource, t.namespace, t.name, obj,
                                             subresource=t.subresource or None, dry_run=dry_run(request))
        return with_warnings(json_response(updated), warnings)

    async def patch(self, request: web.Request, t: Target) -> web.Response:
        return await patching.patch(self.registry, request, t)

    async def delete(self, request: web.Request, t: Target) -> web.Response:
        opts = delete_options(request, await read_optional_body(request))
        obj, deleted_now = await self.registry.delete(
            t.resource, t.namespace, t.name, grace_period_seconds=opts.get("gracePeriodSeconds"),
            propagation_policy=opts.get("propagationPolicy"), preconditions=opts.get("preconditions"),
            dry_run=opts["dryRun"],
        )
        if deleted_now and t.resource.plural not in RETURNS_DELETED_OBJECT:
            meta = obj.get("metadata") or {}
            details = {"name": t.name, "kind": t.resource.plural, "uid": meta.get("uid", "")}
            if t.resource.group:
                details["group"] = t.resource.group
            return json_response(errors.success_status(details))
        return json_response(obj)

    async def delete_collection(self, request: web.Request, t: Target) -> web.Response:
        opts = delete_options(request, await read_optional_body(request))
        label_sel, field_sel = self.selectors(request, t.resource)
        listed = await self.registry.list(t.resource, t.namespace, label_selector=label_sel,
                                          field_selector=field_sel)
        workers = asyncio.Semaphore(DELETE_COLLECTION_WORKERS)

        async def delete_one(item: JsonObj) -> JsonObj | None:
            meta = item.get("metadata") or {}
            async with workers:
                try:
                    obj, _ = await self.registry.delete(
                        t.resource, meta.get("namespace", ""), meta["name"],
                        grace_period_seconds=opts.get("gracePeriodSeconds"),
                        propagation_policy=opts.get("propagationPolicy"), dry_run=opts["dryRun"])
                except errors.ApiError as e:
                    if e.code == 404:  # deleted concurrently: upstream skips it as well
                        return None
                    raise
                return dict(obj)

        results = await asyncio.gather(*(delete_one(item) for item in listed.get("items", [])))
        deleted = [obj for obj in results if obj is not None]
        return json_response({"kind": t.resource.list_kind, "apiVersion": t.resource.api_version,
                              "metadata": {"resourceVersion": listed.get("metadata", {})
                                           .get("resourceVersion", "")}, "items": deleted})

    # ------------------------------------------------------------------------------------ output

    def render(self, request: web.Request, res: Resource, obj: JsonObj) -> web.Response:
        """One object as JSON, or as a one-row Table when the client asked for Tables."""
        if negotiation.wants_table(request.headers.get("Accept")):
            include = request.query.get("includeObject") or "Metadata"
            meta = {"resourceVersion": (obj.get("metadata") or {}).get("resourceVersion", "")}
            return json_response(_to_table(res, [obj], include, meta))
        return json_response(obj)

    def render_list(self, request: web.Request, res: Resource, result: JsonObj) -> web.Response:
        if negotiation.wants_table(request.headers.get("Accept")):
            include = request.query.get("includeObject") or "Metadata"
            return json_response(_to_table(res, result.get("items", []), include,
                                           result.get("metadata") or {}))
        return json_response(result)


def _to_table(res: Resource, objects: list[JsonObj], include: str, list_meta: JsonObj) -> JsonObj:
    if include not in ("None", "Metadata", "Object"):
        raise errors.bad_request(f"includeObject: unsupported value {include!r}")
    remaining = list_meta.get("remainingItemCount")
    return tables.to_table(res, objects, include,
                           resource_version=str(list_meta.get("resourceVersion") or ""),
                           continue_token=str(list_meta.get("continue") or ""),
                           remaining_item_count=int(remaining) if remaining is not None else None)


async def _single_error(err: errors.ApiError) -> Any:
    raise err
    yield  # pragma: no cover - makes this an async generator
