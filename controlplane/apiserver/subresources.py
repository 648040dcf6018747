"""The scale and binding subresources, and SelfSubjectAccessReview (a create-only virtual resource).

scale: GET/PUT/PATCH an autoscaling/v1 Scale {spec.replicas, status.replicas, status.selector} view of
replicationcontrollers, deployments and replicasets (kubectl scale sends a merge patch to /scale).
binding: POST a Binding to pods/<name>/binding sets spec.nodeName once (409 when already bound) and
answers 201 with a Success Status, as the scheduler expects (reference B2).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from controlplane.apiserver import auth, context, errors, negotiation, patching
from controlplane.apiserver.request_io import dry_run, json_response, read_body
from controlplane.apiserver.routing import Target

JsonObj = dict[str, Any]


def selector_string(res_plural: str, spec: JsonObj) -> str:
    """status.selector of a Scale: the label selector in its string form (`a=b,c in (d,e)`)."""
    sel = spec.get("selector") or {}
    if res_plural == "replicationcontrollers":  # a plain map for rc
        return ",".join(f"{k}={v}" for k, v in sorted(sel.items()))
    parts = [f"{k}={v}" for k, v in sorted((sel.get("matchLabels") or {}).items())]
    for expr in sel.get("matchExpressions") or []:
        key, op, values = expr.get("key", ""), expr.get("operator", ""), expr.get("values") or []
        if op == "In":
            parts.append(f"{key} in ({','.join(sorted(values))})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({','.join(sorted(values))})")
        elif op == "Exists":
            parts.append(key)
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(sorted(parts))


def to_scale(res_plural: str, obj: JsonObj) -> JsonObj:
    """The autoscaling/v1 Scale view of a scalable object."""
    meta = obj.get("metadata") or {}
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    scale_meta = {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion",
                                       "creationTimestamp") if k in meta}
    return {
        "kind": "Scale", "apiVersion": "autoscaling/v1", "metadata": scale_meta,
        "spec": {"replicas": int(spec.get("replicas", 1))},
        "status": {"replicas": int(status.get("replicas", 0)),
                   "selector": selector_string(res_plural, spec)},
    }


def _apply_replicas(res_plural: str, current: JsonObj, scale: JsonObj, name: str) -> JsonObj:
    replicas = (scale.get("spec") or {}).get("replicas")
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        raise errors.invalid("Scale", name, [{
            "reason": "FieldValueInvalid", "field": "spec.replicas",
            "message": f"Invalid value: {replicas!r}: must be greater than or equal to 0"}],
            "autoscaling")
    rv = (scale.get("metadata") or {}).get("resourceVersion")
    if rv and rv != (current.get("metadata") or {}).get("resourceVersion"):
        raise errors.stale_update(res_plural, name)
    new = copy.deepcopy(current)
    new.setdefault("spec", {})["replicas"] = replicas
    return new


async def scale(registry: Any, request: web.Request, t: Target, method: str) -> web.Response:
    """GET/PUT/PATCH <resource>/<name>/scale."""
    plural = t.resource.plural
    if method == "GET":
        return json_response(to_scale(plural, await registry.get(t.resource, t.namespace, t.name)))
    if method == "PUT":
        body = negotiation.require_object(await read_body(request))

        def mutate(current: JsonObj) -> JsonObj:
            return _apply_replicas(plural, current, body, t.name)
    elif method == "PATCH":
        apply_to = await patching.patch_function(request, t)

        def mutate(current: JsonObj) -> JsonObj:
            patched = apply_to(to_scale(plural, current))
            return _apply_replicas(plural, current, patched, t.name)
    else:
        raise errors.method_not_allowed(method, f"{plural}/scale")
    updated = await registry.guaranteed_update(t.resource, t.namespace, t.name, mutate,
                                               dry_run=dry_run(request))
    return json_response(to_scale(plural, updated))


async def binding(registry: Any, request: web.Request, t: Target) -> web.Response:
    """POST pods/<name>/binding: bind the pod to target.name once."""
    body = negotiation.require_object(await read_body(request))
    node = ((body.get("target") or {}).get("name") or "").strip()
    if not node:
        raise errors.invalid("Binding", t.name, [{"reason": "FieldValueRequired", "field": "target.name",
                                                  "message": "Required value"}])
    bound_name = (body.get("metadata") or {}).get("name")
    if bound_name and bound_name != t.name:
        raise errors.bad_request(f"the name of the object ({bound_name}) does not match the name on "
                                 f"the URL ({t.name})")

    def mutate(pod: JsonObj) -> JsonObj:
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        if meta.get("deletionTimestamp"):
            raise errors.conflict("pods/binding", t.name, f"pod {t.name} is being deleted, cannot be "
                                  "assigned to a host")
        if spec.get("nodeName"):
            raise errors.conflict("pods/binding", t.name, f"pod {t.name} is already assigned to node "
                                  f'"{spec["nodeName"]}"')
        new = copy.deepcopy(pod)
        new.setdefault("spec", {})["nodeName"] = node
        return new

    await registry.guaranteed_update(t.resource, t.namespace, t.name, mutate, dry_run=dry_run(request))
    return json_response(errors.success_status(), status=201)


async def self_subject_access_review(request: web.Request, body: JsonObj) -> web.Response:
    """POST selfsubjectaccessreviews (kubectl auth can-i): may the caller do what spec describes?"""
    access = request.app[context.ACCESS]
    user = context.request_user(request)

    async def decide(attrs: auth.Attributes) -> auth.Decision:
        return await access.decide(user, attrs)

    try:
        attrs = auth.review_attributes(dict(body.get("spec") or {}))
    except auth.ReviewInvalid as e:
        raise errors.invalid("SelfSubjectAccessReview", "", e.causes, "authorization.k8s.io") from None
    decision = await decide(attrs)
    review = auth.self_subject_access_review(user, body, lambda _u, _a: decision)
    return json_response(review, status=201)


async def self_subject_rules_review(request: web.Request, body: JsonObj) -> web.Response:
    """POST selfsubjectrulesreviews (kubectl auth can-i --list): the caller's rules in spec.namespace."""
    access = request.app[context.ACCESS]
    user = context.request_user(request)
    rbac = await asyncio.to_thread(access.authorizer.rbac)
    return json_response(auth.self_subject_rules_review(user, body, rbac), status=201)


async def self_subject_review(request: web.Request, body: JsonObj) -> web.Response:
    """POST selfsubjectreviews (kubectl auth whoami): who the server thinks the caller is."""
    return json_response(auth.self_subject_review(context.request_user(request)), status=201)


# Create-only virtual resources answered without storing anything.
REVIEWS: dict[str, Callable[[web.Request, JsonObj], Awaitable[web.Response]]] = {
    "selfsubjectaccessreviews": self_subject_access_review,
    "selfsubjectrulesreviews": self_subject_rules_review,
    "selfsubjectreviews": self_subject_review,
}
