"""Content negotiation: what the client accepts and how its request body is encoded.

Pure functions over header and query strings, so they are unit-tested without a server.  The
behaviours follow what real clients send (reference proxy_apiserver.md B4/B5): kubectl asks for
server-side Tables with `as=Table;g=meta.k8s.io` and kubectl >= 1.32 posts protobuf bodies from its
typed commands; the Python client spells booleans `True`.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from controlplane.apiserver import errors

JSON = "application/json"
YAML = "application/yaml"
PROTOBUF = "application/vnd.kubernetes.protobuf"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
APPLY_PATCH_CBOR = "application/apply-patch+cbor"
PATCH_TYPES = frozenset({MERGE_PATCH, JSON_PATCH, STRATEGIC_PATCH, APPLY_PATCH})


@dataclass(frozen=True)
class MediaRange:
    """One entry of an Accept header: `type/subtype` plus parameters (lower-cased keys)."""

    mime: str
    params: dict[str, str] = field(default_factory=dict)


def parse_accept(header: str | None) -> list[MediaRange]:
    """The media ranges of an Accept header, in the client's order (q values are not used by clients)."""
    return list(_parse_accept(header or ""))


@functools.lru_cache(maxsize=256)
def _parse_accept(header: str) -> tuple[MediaRange, ...]:
    # clients send the same few Accept headers on every request: parse each once
    out: list[MediaRange] = []
    for part in header.split(","):
        pieces = [p.strip() for p in part.split(";")]
        if not pieces[0]:
            continue
        params: dict[str, str] = {}
        for p in pieces[1:]:
            k, _, v = p.partition("=")
            params[k.strip().lower()] = v.strip().strip('"')
        out.append(MediaRange(pieces[0].lower(), params))
    return tuple(out)


def wants_table(accept: str | None) -> bool:
    """Whether the client asked for a meta.k8s.io Table (kubectl get, also on its watches)."""
    return any(
        r.params.get("as") == "Table" and r.params.get("g") == "meta.k8s.io"
        and r.params.get("v") in ("v1", "v1beta1") and r.mime in (JSON, "*/*")
        for r in parse_accept(accept)
    )


def prefers_yaml(accept: str | None) -> bool:
    """Whether the first media range the client names is YAML (curl users; kubectl asks for JSON)."""
    ranges = parse_accept(accept)
    return bool(ranges) and ranges[0].mime in (YAML, "application/x-yaml", "text/yaml") \
        and not ranges[0].params.get("as")


def table_version(accept: str | None) -> str:
    """The meta.k8s.io version of the Table the client asked for first (v1 unless only v1beta1)."""
    for r in parse_accept(accept):
        if r.params.get("as") == "Table" and r.params.get("g") == "meta.k8s.io":
            return r.params.get("v", "v1")
    return "v1"


def parse_bool(value: str | None, *, default: bool = False) -> bool:
    """A query boolean: `1`, `true`, `True`, `TRUE` are true (the Python client sends `True`)."""
    if value is None or value == "":
        return default
    v = value.strip().lower()
    if v in ("1", "true", "t", "yes"):
        return True
    if v in ("0", "false", "f", "no"):
        return False
    raise errors.bad_request(f"invalid boolean value {value!r}")


def parse_bool_lenient(value: str | None) -> bool:
    """parse_bool for classification only (never raises; a bad value counts as false)."""
    try:
        return parse_bool(value)
    except errors.ApiError:
        return False


def parse_int(name: str, value: str | None) -> int | None:
    """An optional integer query parameter; 400 BadRequest when it is not a number."""
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise errors.bad_request(f"invalid value for {name}: {value!r}") from None


def media_type(content_type: str | None) -> str:
    """The bare media type of a Content-Type header, lower-cased (`application/json`)."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def decode_body(content_type: str | None, body: bytes) -> Any:
    """The request body as JSON data, from JSON, YAML or a Kubernetes protobuf envelope.

    The Python client sends `Content-Type: application/json` even on GETs, and some clients send no
    Content-Type at all, so JSON is the default.  Protobuf decoding is limited to the kinds kubectl's
    typed commands send (protobuf.decode_object); anything else is a 415.
    """
    mt = media_type(content_type)
    if mt == PROTOBUF:
        return _decode_protobuf(body, content_type or "")
    if mt in (YAML, "application/x-yaml", "text/yaml", APPLY_PATCH):
        return _decode_yaml(body)
    if mt in ("", JSON, MERGE_PATCH, JSON_PATCH, STRATEGIC_PATCH, "*/*", "text/plain"):
        return _decode_json(body)
    raise errors.unsupported_media_type(content_type or "")


def _decode_json(body: bytes) -> Any:
    if not body.strip():
        raise errors.bad_request("the request body is empty")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise errors.bad_request(f"the body of the request could not be decoded as JSON: {e}") from None


def _decode_yaml(body: bytes) -> Any:
    # apply-patch+yaml is YAML or JSON (a JSON document is valid YAML; kubectl sends JSON)
    try:
        data = yaml.safe_load(body)
    except yaml.YAMLError as e:
        raise errors.bad_request(f"the body of the request could not be decoded as YAML: {e}") from None
    if data is None:
        raise errors.bad_request("the request body is empty")
    return data


def _decode_protobuf(body: bytes, content_type: str) -> Any:
    from controlplane.apiserver import protobuf  # H-algo's module; imported late so JSON never needs it

    try:
        return protobuf.decode_object(body)
    except protobuf.ProtobufError as e:
        raise errors.unsupported_media_type(content_type, str(e)) from None


def require_object(data: Any) -> dict[str, Any]:
    """A decoded body that must be a JSON object (a Kubernetes object or DeleteOptions)."""
    if not isinstance(data, dict):
        raise errors.bad_request("the request body must be a JSON object")
    return data
