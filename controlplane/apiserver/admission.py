"""The Registry's admit/on_delete hooks: defaulting, validation and Service IP/port allocation.

Allocation has to be undone when the write it was made for fails (AlreadyExists, a lost
resourceVersion race, etcd down), but the Registry only calls `admit` before its write.  So each
mutating request gets a scope (the `reservations` middleware): admit records its Reservation there,
and after the handler the scope commits them (success) or undoes them (any error).  A second admit in
the same request means the registry retried after a conflict: the earlier attempt's reservation is
undone first, so retries never leak.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from controlplane.apiserver import defaults, errors, validation
from controlplane.apiserver.allocators import Reservation, ServiceAllocators
from controlplane.apiserver.resources import Resource

log = logging.getLogger(__name__)

JsonObj = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# A mutable list per request: contextvars are copied into asyncio.to_thread, so the list itself
# (not the variable) carries reservations back to the request.
_PENDING: contextvars.ContextVar[list[Reservation] | None] = contextvars.ContextVar(
    "podnet_reservations", default=None)


class Admission:
    """Defaults, validation and allocations for objects on their way into the store."""

    def __init__(self, services: ServiceAllocators | None) -> None:
        self.services = services

    async def admit(self, res: Resource, obj: JsonObj, old: JsonObj | None) -> None:
        defaults.apply_defaults(res, obj)
        if res.plural == "services" and old is not None:
            _carry_over_cluster_ip(obj, old)
        causes = validation.validate(res, obj, old)
        if causes:
            meta = obj.get("metadata") or {}
            raise errors.invalid(res.kind, meta.get("name") or meta.get("generateName", ""), causes,
                                 res.group)
        if res.plural == "services" and self.services is not None:
            await self._reserve(obj, old)

    async def _reserve(self, obj: JsonObj, old: JsonObj | None) -> None:
        assert self.services is not None
        pending = _PENDING.get()
        if pending:  # the registry retries after a conflict: the last attempt's write failed
            for r in pending:
                await asyncio.to_thread(r.undo)
            pending.clear()
        reservation = await asyncio.to_thread(self.services.reserve_update, old, obj)
        if pending is None:
            # no request scope (startup, tests): nothing can undo it later, keep it
            await asyncio.to_thread(reservation.commit)
        else:
            pending.append(reservation)

    async def on_delete(self, res: Resource, obj: JsonObj) -> None:
        if res.plural == "services" and self.services is not None:
            await asyncio.to_thread(self.services.release, obj)


def _carry_over_cluster_ip(obj: JsonObj, old: JsonObj) -> None:
    """An update that omits spec.clusterIP keeps the allocated one (upstream patchAllocatedValues);
    done before validation, which treats clusterIP as immutable."""
    spec, old_spec = obj.setdefault("spec", {}), old.get("spec") or {}
    if not spec.get("clusterIP") and old_spec.get("clusterIP"):
        spec["clusterIP"] = old_spec["clusterIP"]
        if old_spec.get("clusterIPs") and not spec.get("clusterIPs"):
            spec["clusterIPs"] = list(old_spec["clusterIPs"])


@web.middleware
async def reservations(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Commit the allocations of a successful write, undo those of a failed one."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return await handler(request)
    pending: list[Reservation] = []
    token = _PENDING.set(pending)
    ok = False
    try:
        resp = await handler(request)
        # a dry run answers success but stored nothing: its allocations are given back
        ok = resp.status < 400 and "dryRun" not in request.query
        return resp
    finally:
        _PENDING.reset(token)
        for r in pending:
            try:
                await asyncio.to_thread(r.commit if ok else r.undo)
            except Exception:  # the store went away: the allocation stays until a repair
                log.exception("could not %s a service allocation", "commit" if ok else "undo")
