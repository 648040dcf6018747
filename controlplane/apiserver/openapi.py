"""OpenAPI v3 documents: just enough for `kubectl create -f` / `apply -f` to trust server-side validation.

kubectl's default `--validate=strict` downloads /openapi/v3 and looks, per group-version document,
for a PATCH operation tagged with the object's x-kubernetes-group-version-kind; if that operation
lists a `fieldValidation` query parameter, kubectl skips client-side schema validation and sends
`fieldValidation=Strict` to the server instead (cli-runtime query_param_verifier_v3.go; verified in
reference proxy_apiserver.md B5.3). A 404 here makes create -f / apply -f fail outright.

We deliberately publish no component schemas and no PATCH requestBody: kubectl apply computes
strategic merge patches from the v3 schema when a PATCH operation for the kind accepts
application/strategic-merge-patch+json (apply/patcher.go gvkSupportsPatchOpenAPIV3), and a partial
schema (missing patch merge keys) would make it replace lists it should merge. Without one it
falls back to /openapi/v2 (404) and then its compiled-in Go types, which are exact for the built-in
kinds. `kubectl explain` therefore reports the kind as unknown.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from controlplane.apiserver import discovery, resources
from controlplane.apiserver.protobuf import encode_varint
from controlplane.apiserver.resources import Resource

# Upstream's PATCH operations carry these; the verifier only needs fieldValidation (and dryRun for
# --dry-run=server on older kubectl), fieldManager/force complete the set for other tooling.
_PATCH_QUERY_PARAMS = ("dryRun", "fieldManager", "fieldValidation", "force", "pretty")
_WRITE_QUERY_PARAMS = ("dryRun", "fieldManager", "fieldValidation", "pretty")


def gv_path(group: str, version: str) -> str:
    """The root document's key for a group-version: `api/v1` or `apis/<group>/<version>`."""
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _params(names: tuple[str, ...]) -> list[dict[str, Any]]:
    return [
        {"name": name, "in": "query", "schema": {"type": "boolean" if name == "force" else "string"}}
        for name in names
    ]


def _operation(res: Resource, action: str, params: tuple[str, ...]) -> dict[str, Any]:
    return {
        "operationId": f"{action}{res.kind}",
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": res.group, "version": res.version, "kind": res.kind},
        "parameters": _params(params),
        "responses": {"200": {"description": "OK"}},
    }


def _collection_path(res: Resource) -> str:
    return res.url_prefix + ("/namespaces/{namespace}/" if res.namespaced else "/") + res.plural


def _resource_paths(res: Resource) -> dict[str, Any]:
    base = _collection_path(res)
    if res.verbs == resources.CREATE_ONLY:
        return {base: {"post": _operation(res, "post", _WRITE_QUERY_PARAMS)}}
    item = {
        "get": _operation(res, "get", ("pretty",)),
        "put": _operation(res, "put", _WRITE_QUERY_PARAMS),
        "patch": _operation(res, "patch", _PATCH_QUERY_PARAMS),
        "delete": _operation(res, "delete", ("dryRun", "gracePeriodSeconds", "propagationPolicy")),
    }
    collection = {
        "get": _operation(res, "list", ("labelSelector", "fieldSelector", "limit", "continue")),
        "post": _operation(res, "post", _WRITE_QUERY_PARAMS),
    }
    return {base: collection, base + "/{name}": item}


def openapi_v3_document(group: str, version: str) -> dict[str, Any] | None:
    """GET /openapi/v3/api/v1 or /openapi/v3/apis/<g>/<v>; None when the group-version is not served."""
    served = resources.resources_in(group, version)
    if not served:
        return None
    paths: dict[str, Any] = {}
    for res in served:
        paths.update(_resource_paths(res))
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": discovery.SERVER_GIT_VERSION},
        "paths": paths,
        "components": {},
    }


def document_hash(doc: dict[str, Any]) -> str:
    """Content hash for the `?hash=` query; kubectl caches each document under its URL."""
    return hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest().upper()


def openapi_v3_root() -> dict[str, Any]:
    """GET /openapi/v3: one entry per served group-version pointing at its document."""
    paths: dict[str, Any] = {}
    for group, version in resources.group_versions():
        doc = openapi_v3_document(group, version)
        assert doc is not None  # group_versions() only yields served pairs
        key = gv_path(group, version)
        paths[key] = {"serverRelativeURL": f"/openapi/v3/{key}?hash={document_hash(doc)}"}
    return {"paths": paths}


def document_for_path(path: str) -> dict[str, Any] | None:
    """Resolve the part after /openapi/v3/ (`api/v1`, `apis/apps/v1`) to its document, else None."""
    parts = path.strip("/").split("/")
    if len(parts) == 2 and parts[0] == "api":
        return openapi_v3_document("", parts[1])
    if len(parts) == 3 and parts[0] == "apis":
        return openapi_v3_document(parts[1], parts[2])
    return None


# ---------------------------------------------------------------------------------------------
# /openapi/v2: kubectl <= 1.27 validates `create -f` / `apply -f` from the v2 document only, which
# it downloads as gnostic protobuf (openapi_v2.Document) and refuses to proceed without
# ("the server could not find the requested resource"). The same handshake as v3 works there:
# a PATCH operation tagged with x-kubernetes-group-version-kind that lists a fieldValidation query
# parameter (cli-runtime query_param_verifier.go supportsQueryParam). No definitions, so kubectl's
# client-side schema check finds no model for the kind and skips itself, and `apply` keeps its
# compiled-in strategic-merge metadata.

# What kubectl puts in Accept; the reply must NOT echo it as Content-Type ('@' is not a MIME token
# character, Go's mime parser rejects it): kube-openapi answers application/octet-stream.
OPENAPI_V2_PROTOBUF_ACCEPT = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
OPENAPI_V2_CONTENT_TYPE = "application/octet-stream"


def _pb_field(number: int, payload: bytes | str) -> bytes:
    """A length-delimited protobuf field (strings and embedded messages)."""
    data = payload.encode() if isinstance(payload, str) else payload
    return encode_varint(number << 3 | 2) + encode_varint(len(data)) + data


def _pb_query_parameter(name: str) -> bytes:
    # ParametersItem{1: Parameter{2: NonBodyParameter{3: QueryParameterSubSchema{2: in, 4: name}}}}
    sub_schema = _pb_field(2, "query") + _pb_field(4, name)
    return _pb_field(1, _pb_field(2, _pb_field(3, sub_schema)))


def _pb_patch_path(res: Resource) -> bytes:
    gvk_yaml = f'group: "{res.group}"\nkind: {res.kind}\nversion: {res.version}\n'
    operation = _pb_field(5, f"patch{res.kind}")  # operation_id
    for name in _PATCH_QUERY_PARAMS:
        operation += _pb_field(8, _pb_query_parameter(name))
    # vendor_extension: NamedAny{1: name, 2: Any{2: yaml}}
    extension = _pb_field(1, "x-kubernetes-group-version-kind") + _pb_field(2, _pb_field(2, gvk_yaml))
    operation += _pb_field(13, extension)
    item_path = _collection_path(res) + "/{name}"
    # NamedPathItem{1: name, 2: PathItem{8: patch}}
    return _pb_field(1, item_path) + _pb_field(2, _pb_field(8, operation))


def openapi_v2_protobuf() -> bytes:
    """GET /openapi/v2 body (serve with Content-Type OPENAPI_V2_CONTENT_TYPE)."""
    info = _pb_field(1, "Kubernetes") + _pb_field(2, discovery.SERVER_GIT_VERSION)
    paths = b"".join(_pb_field(2, _pb_patch_path(r)) for r in resources.RESOURCES if "patch" in r.verbs)
    return _pb_field(1, "2.0") + _pb_field(2, info) + _pb_field(8, paths)
