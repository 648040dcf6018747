"""PATCH in the four upstream content types, as a read-modify-write through Registry.guaranteed_update.

merge-patch+json (kubectl label/annotate/scale), json-patch+json (kubectl patch --type=json, python
client list bodies), strategic-merge-patch+json (kubectl patch/apply, python client dict bodies) and
apply-patch+yaml (kubectl apply --server-side; creates the object when it does not exist, 201).
The algorithms are in patch.py; this module only wires them to requests and the registry.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from aiohttp import web

from controlplane.apiserver import errors, negotiation
from controlplane.apiserver import patch as patchlib
from controlplane.apiserver.request_io import dry_run, json_response, with_type_meta
from controlplane.apiserver.routing import Target

JsonObj = dict[str, Any]
PatchFn = Callable[[JsonObj], JsonObj]


async def patch_function(request: web.Request, t: Target) -> PatchFn:
    """Decode the request's patch body and return `current -> patched` (raises 415/400 early)."""
    mt = negotiation.media_type(request.headers.get("Content-Type"))
    if mt not in negotiation.PATCH_TYPES:
        raise errors.unsupported_media_type(
            request.headers.get("Content-Type", ""),
            "the patch type must be one of application/json-patch+json, application/merge-patch+json, "
            "application/strategic-merge-patch+json, application/apply-patch+yaml")
    data = negotiation.decode_body(mt, await request.read())
    kind = t.resource.kind
    if mt == negotiation.JSON_PATCH:
        if not isinstance(data, list):
            raise errors.bad_request("a JSON patch must be a list of operations")
        return _guard(lambda cur: patchlib.json_patch(cur, data), t.name)
    patch_obj = negotiation.require_object(data)
    if mt == negotiation.MERGE_PATCH:
        return _guard(lambda cur: patchlib.merge_patch(cur, patch_obj), t.name)
    if mt == negotiation.STRATEGIC_PATCH:
        return _guard(lambda cur: patchlib.strategic_merge_patch(cur, patch_obj, kind), t.name)
    manager = request.query.get("fieldManager") or "unknown"
    force = negotiation.parse_bool(request.query.get("force"))
    return _guard(lambda cur: patchlib.server_side_apply(cur, patch_obj, kind, manager, force), t.name)


def _guard(fn: PatchFn, name: str) -> PatchFn:
    """Turn PatchError into 422 and keep what a patch may not change (name, resourceVersion)."""

    def apply(current: JsonObj) -> JsonObj:
        cur_meta = current.get("metadata") or {}
        try:
            patched = fn(copy.deepcopy(current))
        except patchlib.PatchError as e:
            raise patch_error(e, name) from None
        if not isinstance(patched, dict):
            raise errors.bad_request("the patched object is not a JSON object")
        meta = patched.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise errors.bad_request("metadata must be an object")
        if meta.get("name", cur_meta.get("name")) != cur_meta.get("name"):
            raise errors.bad_request(f"the name of the object ({meta.get('name')}) does not match the "
                                     f"name on the URL ({name})")
        # a resourceVersion in the patch is a precondition (upstream: 409 when it differs)
        rv = meta.get("resourceVersion")
        if rv and rv != cur_meta.get("resourceVersion"):
            raise errors.ApiError(409, "Conflict", f'Operation cannot be fulfilled on "{name}": the '
                                  "object has been modified; please apply your changes to the latest "
                                  "version and try again", {"name": name})
        meta["resourceVersion"] = cur_meta.get("resourceVersion")
        for key in ("apiVersion", "kind"):
            if key in current:
                patched[key] = current[key]
        return patched

    return apply


def patch_error(e: patchlib.PatchError, name: str) -> errors.ApiError:
    """400 for a malformed patch, 422 for one that does not apply, 409 for an apply conflict."""
    if e.code == 400:
        return errors.bad_request(str(e))
    if e.code == 409:
        return errors.ApiError(409, "Conflict", f"Apply failed with conflicts: {e}", {"name": name})
    return errors.ApiError(422, "Invalid", f"the server rejected our request due to an error in our "
                           f"request: {e}")


async def patch(registry: Any, request: web.Request, t: Target) -> web.Response:
    """PATCH an item or its status subresource; server-side apply may create (201)."""
    apply_to = await patch_function(request, t)
    is_apply = negotiation.media_type(request.headers.get("Content-Type")) == negotiation.APPLY_PATCH
    try:
        updated = await registry.guaranteed_update(
            t.resource, t.namespace, t.name, apply_to, subresource=t.subresource or None,
            dry_run=dry_run(request))
    except errors.ApiError as e:
        if not (e.code == 404 and is_apply and not t.subresource and _names_object(e, t)):
            raise
        created = with_type_meta(t.resource, apply_to_new(apply_to, t))
        obj = await registry.create(t.resource, t.namespace, created, dry_run=dry_run(request))
        return json_response(obj, status=201)
    return json_response(updated)


def _names_object(err: errors.ApiError, t: Target) -> bool:
    """Whether a 404 is about the object itself (not its namespace)."""
    details = err.details or {}
    return details.get("name") in (None, t.name) and details.get("kind") in (None, t.resource.plural)


def apply_to_new(apply_to: PatchFn, t: Target) -> JsonObj:
    """Server-side apply onto nothing: the applied configuration becomes the new object."""
    empty: JsonObj = {"metadata": {"name": t.name}}
    if t.namespace:
        empty["metadata"]["namespace"] = t.namespace
    obj = apply_to(empty)
    obj["metadata"].pop("resourceVersion", None)
    return obj
