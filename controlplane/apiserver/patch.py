"""The four PATCH algorithms of the API server, pure and deep-copying.

- merge_patch: RFC 7386 JSON merge patch (`application/merge-patch+json`; kubectl label/annotate/scale).
- json_patch: RFC 6902 (`application/json-patch+json`; kubectl patch --type=json, python list bodies).
- strategic_merge_patch: Kubernetes strategic merge patch (`application/strategic-merge-patch+json`;
  kubectl apply/patch, python dict bodies) as k8s.io/apimachinery/pkg/util/strategicpatch applies it
  on the server (IgnoreUnmatchedNulls, MergeParallelList): lists merge by the patchMergeKey of the Go
  struct tags of the built-in kinds (table below), other lists are atomic; directives `$patch`
  (replace/delete/merge), `$retainKeys`, `$setElementOrder/<list>`, `$deleteFromPrimitiveList/<list>`.
- server_side_apply: `application/apply-patch+yaml`, see its docstring for what is modelled.

Errors are PatchError with `.code`: 400 for a patch document that is malformed (upstream BadRequest:
wrong types, unknown directives), 422 when a well-formed patch does not apply to the object (upstream
answers json-patch application failures with 422), 409 for server-side apply conflicts.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "ApplyConflict",
    "PatchError",
    "json_patch",
    "merge_patch",
    "schema_for",
    "server_side_apply",
    "strategic_merge_patch",
]


class PatchError(ValueError):
    """A patch that is malformed (code 400) or does not apply to the object (code 422)."""

    def __init__(self, message: str, code: int = 422) -> None:
        super().__init__(message)
        self.code = code


class ApplyConflict(PatchError):
    """Server-side apply changed fields another manager owns (upstream 409 Conflict)."""

    def __init__(self, message: str, conflicts: list[tuple[str, str]]) -> None:
        super().__init__(message, 409)
        self.conflicts = conflicts  # (manager, field path as .a.b[name="x"])


# ---------------------------------------------------------------------------------------------
# RFC 7386 JSON merge patch


def merge_patch(obj: Any, patch: Any) -> Any:
    """Apply a JSON merge patch: null deletes a key, objects merge recursively, the rest replaces."""
    if not isinstance(patch, dict):
        # evanphx/json-patch MergePatch refuses a non-object patch document (upstream 400).
        raise PatchError("a merge patch must be a JSON object", 400)
    return _merge_patch_value(copy.deepcopy(obj), copy.deepcopy(patch))


def _merge_patch_value(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return patch
    result = target if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch_value(result.get(key), value)
    return result


# ---------------------------------------------------------------------------------------------
# RFC 6902 JSON patch

_INDEX_RE = re.compile(r"^-?(0|[1-9][0-9]*)$")
_MAX_JSON_PATCH_OPS = 10000  # upstream maxJSONPatchOperations


def json_patch(obj: Any, ops: Any) -> Any:
    """Apply an RFC 6902 operation list (add, remove, replace, move, copy, test) atomically."""
    if not isinstance(ops, list):
        raise PatchError("a JSON patch must be a JSON array of operations", 400)
    if len(ops) > _MAX_JSON_PATCH_OPS:
        raise PatchError(f"the allowed maximum operations in a JSON patch is {_MAX_JSON_PATCH_OPS}", 422)
    doc = copy.deepcopy(obj)
    for op in ops:
        doc = _apply_operation(doc, op)
    return doc


def _apply_operation(doc: Any, op: Any) -> Any:
    if not isinstance(op, dict) or not isinstance(op.get("op"), str):
        raise PatchError(f"invalid JSON patch operation {op!r}: missing 'op'", 400)
    name = op["op"]
    path = _pointer(op, "path")
    if name == "add":
        return _add(doc, path, copy.deepcopy(_operand(op)))
    if name == "remove":
        return _remove(doc, path, name)
    if name == "replace":
        return _replace(doc, path, copy.deepcopy(_operand(op)))
    if name in ("move", "copy"):
        source = _pointer(op, "from")
        if name == "move" and path[: len(source)] == source and len(path) > len(source):
            raise PatchError(f"move operation cannot move {_render(source)} into one of its children")
        value = copy.deepcopy(_get(doc, source, name))
        if name == "move":
            doc = _remove(doc, source, name)
        return _add(doc, path, value)
    if name == "test":
        if not _json_equal(_get(doc, path, name), _operand(op)):
            raise PatchError(f"testing value {_render(path)} failed: test failed")
        return doc
    raise PatchError(f"unexpected JSON patch operation {name!r}", 400)


def _operand(op: dict[str, Any]) -> Any:
    if "value" not in op:
        raise PatchError(f"{op['op']} operation on {op.get('path')!r}: missing value", 400)
    return op["value"]


def _pointer(op: dict[str, Any], key: str) -> list[str]:
    text = op.get(key)
    if not isinstance(text, str):
        raise PatchError(f"{op['op']} operation: missing {key!r} string", 400)
    if text == "":
        return []
    if not text.startswith("/"):
        raise PatchError(f"JSON pointer {text!r} must start with '/'", 400)
    return [part.replace("~1", "/").replace("~0", "~") for part in text[1:].split("/")]


def _render(path: list[str]) -> str:
    return "".join("/" + part.replace("~", "~0").replace("/", "~1") for part in path)


def _list_index(container: list[Any], part: str, path: list[str], *, allow_end: bool) -> int:
    if allow_end and part == "-":
        return len(container)
    if not _INDEX_RE.match(part):
        raise PatchError(f"invalid array index {part!r} in {_render(path)}")
    index = int(part)
    limit = len(container) if allow_end else len(container) - 1
    # kube-apiserver applies JSON patches with SupportNegativeIndices: -1 is the last element.
    if index > limit or index < -len(container):
        raise PatchError(f"array index {index} out of bounds in {_render(path)}")
    return index + len(container) if index < 0 else index


def _parent(doc: Any, path: list[str], op: str) -> Any:
    try:
        return _get(doc, path[:-1], op)
    except PatchError:
        raise PatchError(f"{op} operation does not apply: doc is missing path: {_render(path)}") from None


def _get(doc: Any, path: list[str], op: str) -> Any:
    current = doc
    for depth, part in enumerate(path):
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list):
            current = current[_list_index(current, part, path[: depth + 1], allow_end=False)]
        else:
            raise PatchError(f"{op} operation does not apply: doc is missing path: {_render(path)}")
    return current


def _add(doc: Any, path: list[str], value: Any) -> Any:
    if not path:
        return value
    parent = _parent(doc, path, "add")
    if isinstance(parent, dict):
        parent[path[-1]] = value
    elif isinstance(parent, list):
        parent.insert(_list_index(parent, path[-1], path, allow_end=True), value)
    else:
        raise PatchError(f"add operation does not apply: {_render(path[:-1])} is not a container")
    return doc


def _replace(doc: Any, path: list[str], value: Any) -> Any:
    _get(doc, path, "replace")  # the target must exist
    if not path:
        return value
    parent = _parent(doc, path, "replace")
    if isinstance(parent, list):
        parent[_list_index(parent, path[-1], path, allow_end=False)] = value
    else:
        parent[path[-1]] = value
    return doc


def _remove(doc: Any, path: list[str], op: str) -> Any:
    if not path:
        raise PatchError(f"{op} operation cannot remove the whole document")
    parent = _parent(doc, path, op)
    if isinstance(parent, dict) and path[-1] in parent:
        del parent[path[-1]]
    elif isinstance(parent, list):
        del parent[_list_index(parent, path[-1], path, allow_end=False)]
    else:
        raise PatchError(f"{op} operation does not apply: doc is missing key: {_render(path)}")
    return doc


def _json_equal(left: Any, right: Any) -> bool:
    # Python's 1 == True and 1 == 1.0; JSON distinguishes booleans from numbers.
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(_json_equal(left[k], right[k]) for k in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(_json_equal(a, b) for a, b in zip(left, right, strict=True))
    if isinstance(left, (int, float)) and isinstance(right, (int, float)):
        return left == right
    return type(left) is type(right) and left == right


# ---------------------------------------------------------------------------------------------
# Patch strategies of the built-in kinds (Go struct tags patchStrategy/patchMergeKey in k8s.io/api)


@dataclass(frozen=True)
class ListField:
    """A list with patchStrategy "merge": by `merge_key` for lists of objects, as a set otherwise."""

    merge_key: str | None = None
    item: Mapping[str, Any] = field(default_factory=dict)  # schema of the elements (objects)


PRIMITIVE_SET = ListField()  # e.g. metadata.finalizers, node spec.podCIDRs
CONDITIONS = ListField("type")

OBJECT_META: dict[str, Any] = {"ownerReferences": ListField("uid"), "finalizers": PRIMITIVE_SET}
CONTAINER: dict[str, Any] = {
    "ports": ListField("containerPort"),
    "env": ListField("name"),
    "volumeMounts": ListField("mountPath"),
    "volumeDevices": ListField("devicePath"),
}
POD_SPEC: dict[str, Any] = {
    "containers": ListField("name", CONTAINER),
    "initContainers": ListField("name", CONTAINER),
    "ephemeralContainers": ListField("name", CONTAINER),
    "volumes": ListField("name"),  # "merge,retainKeys": $retainKeys is honoured wherever it appears
    "imagePullSecrets": ListField("name"),
    "hostAliases": ListField("ip"),
    "topologySpreadConstraints": ListField("topologyKey"),
    "resourceClaims": ListField("name"),
    "schedulingGates": ListField("name"),
    # tolerations, readinessGates and the rest are atomic: the patch list replaces the live one
}
POD_STATUS: dict[str, Any] = {
    "conditions": CONDITIONS,
    "podIPs": ListField("ip"),
    "hostIPs": ListField("ip"),
    "resourceClaimStatuses": ListField("name"),
}
POD_TEMPLATE: dict[str, Any] = {"metadata": OBJECT_META, "spec": POD_SPEC}
WORKLOAD: dict[str, Any] = {
    "metadata": OBJECT_META,
    "spec": {"template": POD_TEMPLATE},
    "status": {"conditions": CONDITIONS},
}

SCHEMAS: dict[str, dict[str, Any]] = {
    "Pod": {"metadata": OBJECT_META, "spec": POD_SPEC, "status": POD_STATUS},
    "PodTemplate": {"metadata": OBJECT_META, "template": POD_TEMPLATE},
    "ReplicationController": WORKLOAD,
    "ReplicaSet": WORKLOAD,
    "Deployment": WORKLOAD,
    "StatefulSet": WORKLOAD,
    "DaemonSet": WORKLOAD,
    "Service": {
        "metadata": OBJECT_META,
        "spec": {"ports": ListField("port")},
        "status": {"conditions": CONDITIONS},
    },
    "Node": {
        "metadata": OBJECT_META,
        "spec": {"podCIDRs": PRIMITIVE_SET},
        "status": {"addresses": ListField("type"), "conditions": CONDITIONS},
    },
    "Namespace": {"metadata": OBJECT_META, "status": {"conditions": CONDITIONS}},
    "ServiceAccount": {"metadata": OBJECT_META, "secrets": ListField("name")},
    # Endpoints subsets, EndpointSlice endpoints/ports and every NetworkPolicy list are atomic.
}


def schema_for(kind: str) -> dict[str, Any]:
    """The patch-strategy schema of `kind`; kinds without merge lists only know ObjectMeta."""
    return SCHEMAS.get(kind, {"metadata": OBJECT_META})


# ---------------------------------------------------------------------------------------------
# Strategic merge patch

_DIRECTIVE = "$patch"
_RETAIN_KEYS = "$retainKeys"
_ORDER_PREFIX = "$setElementOrder/"
_DELETE_PREFIX = "$deleteFromPrimitiveList/"


def strategic_merge_patch(obj: Any, patch: Any, kind: str) -> dict[str, Any]:
    """Apply a strategic merge patch to `obj` (a `kind` object) the way kube-apiserver does."""
    if not isinstance(patch, dict):
        raise PatchError("a strategic merge patch must be a JSON object", 400)
    original = copy.deepcopy(obj) if isinstance(obj, dict) else {}
    return _merge_map(original, copy.deepcopy(patch), schema_for(kind))


def _merge_map(original: dict[str, Any], patch: dict[str, Any], schema: Mapping[str, Any]) -> dict[str, Any]:
    if _DIRECTIVE in patch:
        directive = patch.pop(_DIRECTIVE)
        if directive == "replace":
            return _merge_map({}, patch, schema)  # the patch itself, cleaned of directives/nulls
        if directive == "delete":
            return {}
        if directive != "merge":
            raise PatchError(f"unknown patch type: {directive!r} in map: {patch}", 400)
    _retain_keys(original, patch)
    _delete_from_primitive_lists(original, patch)
    order_keys = [key for key in patch if key.startswith(_ORDER_PREFIX)]
    orders = {key[len(_ORDER_PREFIX):]: patch.pop(key) for key in order_keys}
    before = {name: original.get(name) for name in orders}
    for key, value in patch.items():
        if value is None:
            original.pop(key, None)  # IgnoreUnmatchedNulls: a null for an absent key is no error
        else:
            original[key] = _merge_value(original.get(key), value, schema.get(key))
    for name, order in orders.items():
        if not isinstance(order, list):
            raise PatchError(f"invalid $setElementOrder/{name}: must be a list", 400)
        node = schema.get(name)
        merge_key = node.merge_key if isinstance(node, ListField) else None
        if isinstance(original.get(name), list):
            original[name] = _apply_element_order(before[name] or [], original[name], order, merge_key)
    return original


def _retain_keys(original: dict[str, Any], patch: dict[str, Any]) -> None:
    # $retainKeys lists the keys that survive; upstream checks the patch only sets retained keys.
    if _RETAIN_KEYS not in patch:
        return
    retain = patch.pop(_RETAIN_KEYS)
    if not isinstance(retain, list) or not all(isinstance(key, str) for key in retain):
        raise PatchError("invalid $retainKeys: must be a list of strings", 400)
    for key in patch:
        if not key.startswith("$") and key not in retain:
            raise PatchError(f"the patch sets {key!r} which is not listed in $retainKeys {retain}")
    for key in list(original):
        if key not in retain:
            del original[key]


def _delete_from_primitive_lists(original: dict[str, Any], patch: dict[str, Any]) -> None:
    for key in [k for k in patch if k.startswith(_DELETE_PREFIX)]:
        values = patch.pop(key)
        if not isinstance(values, list):
            raise PatchError(f"invalid {key}: must be a list", 400)
        name = key[len(_DELETE_PREFIX):]
        if isinstance(original.get(name), list):
            original[name] = [item for item in original[name] if item not in values]


def _merge_value(current: Any, value: Any, node: Any) -> Any:
    if isinstance(value, dict):
        base_map = current if isinstance(current, dict) else {}
        return _merge_map(base_map, value, node if isinstance(node, Mapping) else {})
    if isinstance(value, list) and isinstance(node, ListField):
        base_list = current if isinstance(current, list) else []
        return _merge_list(base_list, value, node)
    return value  # scalars and atomic lists replace


def _merge_list(original: list[Any], patch: list[Any], node: ListField) -> list[Any]:
    if node.merge_key is None or not all(isinstance(item, dict) for item in patch):
        # Primitive lists with strategy merge: union keeping first occurrences (deduplicateScalars).
        merged: list[Any] = []
        for item in original + patch:
            if item not in merged:
                merged.append(item)
        return merged
    key = node.merge_key
    items, replace = [], False
    for item in patch:
        directive = item.get(_DIRECTIVE)
        if directive is None:
            items.append(item)
        elif directive == "delete":
            if key not in item:
                raise PatchError(f"map: {item} does not contain declared merge key: {key}")
            original = [o for o in original if not (isinstance(o, dict) and o.get(key) == item[key])]
        elif directive == "replace":
            replace = True  # the list becomes exactly the other patch elements
        elif directive == "merge":
            raise PatchError("merging lists cannot yet be specified in the patch", 400)
        else:
            raise PatchError(f"unknown patch type: {directive!r} in map: {item}", 400)
    if replace:
        return [_merge_map({}, item, node.item) for item in items]
    for item in items:
        if key not in item:
            raise PatchError(f"map: {item} does not contain declared merge key: {key}")
        index = _find(original, key, item[key])
        if index is None:
            original.append(_merge_map({}, item, node.item))
        else:
            original[index] = _merge_map(original[index], item, node.item)
    return original


def _find(items: list[Any], key: str, value: Any) -> int | None:
    for index, item in enumerate(items):
        if isinstance(item, dict) and item.get(key) == value:
            return index
    return None


def _apply_element_order(
    server: list[Any], merged: list[Any], order: list[Any], key: str | None
) -> list[Any]:
    """normalizeElementOrder: patch elements in $setElementOrder order, server-only ones interleaved."""

    def ident(item: Any) -> Any:
        return item.get(key) if key is not None and isinstance(item, dict) else item

    wanted = [ident(item) for item in order]
    server_ids = [ident(item) for item in server]
    in_patch = sorted((i for i in merged if ident(i) in wanted), key=lambda i: wanted.index(ident(i)))
    server_only = [i for i in merged if ident(i) not in wanted]
    server_only.sort(key=lambda i: server_ids.index(ident(i)) if ident(i) in server_ids else len(server))
    result: list[Any] = []
    left, right = 0, 0
    while left < len(server_only) or right < len(in_patch):
        if right >= len(in_patch):
            take_left = True
        elif left >= len(server_only):
            take_left = False
        else:
            l_id, r_id = ident(server_only[left]), ident(in_patch[right])
            # mergeSortedSlice: the server-only element first only if both are in the live list
            # and it came before the patch element there.
            take_left = l_id in server_ids and r_id in server_ids and (
                server_ids.index(l_id) < server_ids.index(r_id)
            )
        if take_left:
            result.append(server_only[left])
            left += 1
        else:
            result.append(in_patch[right])
            right += 1
    return result


# ---------------------------------------------------------------------------------------------
# Server-side apply

_UNTRACKED_META = ("name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp",
                   "selfLink", "managedFields", "deletionTimestamp", "deletionGracePeriodSeconds")
Path = tuple[str, ...]


def server_side_apply(
    existing: dict[str, Any] | None,
    applied: Any,
    kind: str,
    field_manager: str,
    force: bool = False,
    *,
    now: str | None = None,
) -> dict[str, Any]:
    """Create-or-merge the applied configuration and record `field_manager`'s fields.

    Modelled from upstream SSA: the applied object is strategic-merged onto the live one (merge keys as
    for strategic merge patch); metadata.managedFields gets an `Apply` entry whose fieldsV1 lists the
    fields the manager applied; fields this manager applied before, omits now and nobody else owns
    are removed; applying a different value to a field another manager owns raises ApplyConflict (409)
    unless `force`, which takes the field over. Not modelled: ownership for non-apply writes (only
    what the server records in managedFields counts), structural schema validation, atomic maps.
    """
    if not isinstance(applied, dict):
        raise PatchError("an apply patch must be a YAML or JSON object", 400)
    intent = copy.deepcopy(applied)
    intent.setdefault("metadata", {}).pop("managedFields", None)
    schema = schema_for(kind)
    owned = _field_paths(intent, schema)
    stamp = now or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    api_version = str(intent.get("apiVersion", ""))
    if existing is None:
        result = _merge_map({}, intent, schema)
        entries: list[dict[str, Any]] = []
    else:
        entries = copy.deepcopy((existing.get("metadata") or {}).get("managedFields") or [])
        others = _other_owners(entries, field_manager)
        _check_conflicts(existing, intent, owned, entries, field_manager, force)
        previous = _owned_paths(entries, field_manager, "Apply")
        result = _merge_map(copy.deepcopy(existing), intent, schema)
        still_owned = set().union(*others.values()) if others else set()
        _remove_paths(result, previous - owned, still_owned)
        if force:
            entries = _release(entries, field_manager, owned)
    entries = [e for e in entries if (e.get("manager"), e.get("operation")) != (field_manager, "Apply")]
    entries.append({
        "manager": field_manager,
        "operation": "Apply",
        "apiVersion": api_version,
        "time": stamp,
        "fieldsType": "FieldsV1",
        "fieldsV1": _to_fields_v1(owned),
    })
    result.setdefault("metadata", {})["managedFields"] = entries
    return result


def _field_paths(obj: Any, schema: Mapping[str, Any], prefix: Path = ()) -> set[Path]:
    """The leaf fields of an applied object as fieldsV1 path tuples (f:, k:, v:, '.' segments)."""
    paths: set[Path] = set()
    for key, value in obj.items():
        if not prefix and key in ("apiVersion", "kind"):
            continue
        if prefix == ("f:metadata",) and key in _UNTRACKED_META:
            continue
        here = (*prefix, "f:" + key)
        node = schema.get(key)
        if isinstance(value, dict) and value:
            paths |= _field_paths(value, node if isinstance(node, Mapping) else {}, here)
        elif isinstance(value, list) and isinstance(node, ListField) and value:
            paths |= _list_paths(value, node, here)
        else:
            paths.add(here)
    return paths


def _list_paths(items: list[Any], node: ListField, here: Path) -> set[Path]:
    paths: set[Path] = set()
    for item in items:
        if node.merge_key and isinstance(item, dict) and node.merge_key in item:
            key = json.dumps({node.merge_key: item[node.merge_key]}, separators=(",", ":"))
            item_path = (*here, "k:" + key)
            paths.add((*item_path, "."))
            paths |= _field_paths(item, node.item, item_path)
        else:
            paths.add((*here, "v:" + json.dumps(item, separators=(",", ":"), sort_keys=True)))
    return paths


def _to_fields_v1(paths: set[Path]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path in sorted(paths):
        node = tree
        for segment in path:
            node = node.setdefault(segment, {})
    return tree


def _from_fields_v1(tree: Mapping[str, Any], prefix: Path = ()) -> set[Path]:
    paths: set[Path] = set()
    for segment, child in tree.items():
        here = (*prefix, segment)
        if isinstance(child, Mapping) and child:
            paths |= _from_fields_v1(child, here)
        else:
            paths.add(here)
    return paths


def _owned_paths(entries: list[dict[str, Any]], manager: str, operation: str | None) -> set[Path]:
    paths: set[Path] = set()
    for entry in entries:
        if entry.get("manager") == manager and operation in (None, entry.get("operation")):
            paths |= _from_fields_v1(entry.get("fieldsV1") or {})
    return paths


def _other_owners(entries: list[dict[str, Any]], manager: str) -> dict[str, set[Path]]:
    owners: dict[str, set[Path]] = {}
    for entry in entries:
        name = str(entry.get("manager", ""))
        if name != manager or entry.get("operation") != "Apply":
            owners.setdefault(name, set()).update(_from_fields_v1(entry.get("fieldsV1") or {}))
    return owners


def _check_conflicts(
    live: dict[str, Any], intent: dict[str, Any], owned: set[Path],
    entries: list[dict[str, Any]], field_manager: str, force: bool,
) -> None:
    found: dict[tuple[str, str], list[str]] = {}
    for entry in entries:
        manager = str(entry.get("manager", ""))
        if manager == field_manager and entry.get("operation") == "Apply":
            continue
        for path in sorted(owned & _from_fields_v1(entry.get("fieldsV1") or {})):
            if path[-1] != "." and not _json_equal(_value_at(live, path), _value_at(intent, path)):
                found.setdefault((manager, str(entry.get("apiVersion", ""))), []).append(_describe(path))
    if found and not force:
        raise ApplyConflict(_conflict_message(found),
                            [(manager, path) for (manager, _), paths in found.items() for path in paths])


def _conflict_message(found: dict[tuple[str, str], list[str]]) -> str:
    # structured-merge-diff's wording, as kubectl prints it after "Error from server (Conflict): ".
    total = sum(len(paths) for paths in found.values())
    parts = []
    for (manager, api_version), paths in found.items():
        if len(paths) == 1:
            parts.append(f'conflict with "{manager}" using {api_version}: {paths[0]}')
        else:
            listing = "".join(f"\n- {path}" for path in paths)
            parts.append(f'conflicts with "{manager}" using {api_version}:{listing}')
    count = "1 conflict" if total == 1 else f"{total} conflicts"
    return f"Apply failed with {count}: " + "\n".join(parts)


_MISSING = object()


def _value_at(obj: Any, path: Path) -> Any:
    current = obj
    for segment in path:
        kind, _, name = segment.partition(":")
        if kind == "f" and isinstance(current, dict) and name in current:
            current = current[name]
        elif kind == "k" and isinstance(current, list):
            current = _find_item(current, json.loads(name))
        elif kind == "v" and isinstance(current, list):
            current = json.loads(name) if json.loads(name) in current else _MISSING
        else:
            return _MISSING
        if current is _MISSING:
            return _MISSING
    return current


def _find_item(items: list[Any], key: dict[str, Any]) -> Any:
    for item in items:
        if isinstance(item, dict) and all(item.get(k) == v for k, v in key.items()):
            return item
    return _MISSING


def _describe(path: Path) -> str:
    text = ""
    for segment in path:
        kind, _, name = segment.partition(":")
        if kind == "f":
            text += "." + name
        elif kind == "k":
            text += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in json.loads(name).items()) + "]"
        elif kind == "v":
            text += f"[={name}]"
    return text


def _remove_paths(obj: dict[str, Any], paths: set[Path], keep: set[Path]) -> None:
    # Whole list items ('.' markers) first: their fields, merge key included, go with them.
    for path in sorted(paths, key=lambda p: (p[-1] != ".", len(p))):
        if path[-1] == ".":
            item_path = path[:-1]
            if any(other[: len(item_path)] == item_path for other in keep):
                continue  # another manager still owns fields of this list item
            _delete_at(obj, item_path)
        elif path not in keep:
            _delete_at(obj, path)


def _delete_at(obj: Any, path: Path) -> None:
    parent = _value_at(obj, path[:-1])
    kind, _, name = path[-1].partition(":")
    if kind == "f" and isinstance(parent, dict):
        parent.pop(name, None)
    elif kind == "k" and isinstance(parent, list):
        item = _find_item(parent, json.loads(name))
        if item is not _MISSING:
            parent.remove(item)
    elif kind == "v" and isinstance(parent, list) and json.loads(name) in parent:
        parent.remove(json.loads(name))


def _release(entries: list[dict[str, Any]], manager: str, taken: set[Path]) -> list[dict[str, Any]]:
    """Forced apply: other managers lose the fields `manager` took over; empty entries disappear."""
    kept = []
    for entry in entries:
        if entry.get("manager") == manager and entry.get("operation") == "Apply":
            kept.append(entry)
            continue
        remaining = _from_fields_v1(entry.get("fieldsV1") or {}) - taken
        if remaining:
            kept.append(dict(entry, fieldsV1=_to_fields_v1(remaining)))
    return kept
