"""Validation causes and the checks every kind shares: metadata, labels, selectors, ports, IPs.

Causes mirror apimachinery/pkg/util/validation/field/errors.go: reason FieldValue*, a message
worded as upstream's ErrorBody (values quoted like Go prints them) and the field path.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterable
from typing import Any

from controlplane.apiserver.validation_syntax import (
    is_dns1123_label,
    is_qualified_name,
    is_valid_label_value,
    is_valid_port_name,
    is_valid_port_num,
)

Obj = dict[str, Any]


# ---------------------------------------------------------------------------------------------
# Causes (apimachinery/pkg/util/validation/field/errors.go wording).

class GoValue(str):
    """A value already rendered the way Go's %#v prints it (field.Error's fallback for structs,
    slices and maps), e.g. map[string]string{"app":"web"}; format_value prints it verbatim."""


def go_quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def go_string_list(values: Iterable[Any]) -> GoValue:
    """[]string{"a", "b"}"""
    return GoValue("[]string{" + ", ".join(go_quote(str(v)) for v in values) + "}")


def go_string_map(mapping: Any) -> GoValue:
    """map[string]string{"a":"b", "c":"d"} (Go prints maps with sorted keys)."""
    items = as_map(mapping)
    body = ", ".join(f"{go_quote(str(k))}:{go_quote(str(items[k]))}" for k in sorted(items))
    return GoValue("map[string]string{" + body + "}")


def go_label_selector(selector: Any) -> GoValue:
    """v1.LabelSelector{MatchLabels:..., MatchExpressions:...} as upstream's messages show it."""
    sel = as_map(selector)
    labels = "map[string]string(nil)" if sel.get("matchLabels") is None else go_string_map(sel["matchLabels"])
    exprs = sel.get("matchExpressions")
    if exprs is None:
        expressions = "[]v1.LabelSelectorRequirement(nil)"
    else:
        expressions = "[]v1.LabelSelectorRequirement{" + ", ".join(
            f'v1.LabelSelectorRequirement{{Key:{go_quote(as_str(as_map(e).get("key")))}, '
            f'Operator:{go_quote(as_str(as_map(e).get("operator")))}, '
            f'Values:{go_string_list(as_list(as_map(e).get("values")))}}}' for e in as_list(exprs)) + "}"
    return GoValue(f"v1.LabelSelector{{MatchLabels:{labels}, MatchExpressions:{expressions}}}")


def format_value(value: Any) -> str:
    """How field.Error prints a value: strings quoted, numbers and booleans bare."""
    if isinstance(value, GoValue):
        return str(value)
    if value is None:
        return '"null"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _quoted_list(values: Iterable[str]) -> str:
    return ", ".join(json.dumps(v) for v in values)


class Causes:
    """Collects causes; one method per upstream field.Error type."""

    def __init__(self) -> None:
        self.items: list[Obj] = []

    def _add(self, reason: str, field: str, message: str) -> None:
        self.items.append({"reason": reason, "message": message, "field": field})

    def required(self, field: str, detail: str = "") -> None:
        self._add("FieldValueRequired", field, "Required value" + (f": {detail}" if detail else ""))

    def invalid(self, field: str, value: Any, detail: str = "") -> None:
        message = f"Invalid value: {format_value(value)}" + (f": {detail}" if detail else "")
        self._add("FieldValueInvalid", field, message)

    def invalid_each(self, field: str, value: Any, messages: Iterable[str]) -> None:
        for msg in messages:
            self.invalid(field, value, msg)

    def not_supported(self, field: str, value: Any, supported: Iterable[str]) -> None:
        message = f"Unsupported value: {format_value(value)}: supported values: {_quoted_list(supported)}"
        self._add("FieldValueNotSupported", field, message)

    def duplicate(self, field: str, value: Any) -> None:
        self._add("FieldValueDuplicate", field, f"Duplicate value: {format_value(value)}")

    def forbidden(self, field: str, detail: str) -> None:
        self._add("FieldValueForbidden", field, f"Forbidden: {detail}")

    def too_long(self, field: str, limit: int) -> None:
        self._add("FieldValueTooLong", field, f"Too long: must have at most {limit} bytes")


def as_map(value: Any) -> Obj:
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def as_str(value: Any) -> str:
    return value if isinstance(value, str) else ""


# ---------------------------------------------------------------------------------------------
# Object metadata (apimachinery/pkg/api/validation/objectmeta.go).

NameCheck = Callable[[str], list[str]]
TOTAL_ANNOTATION_SIZE_LIMIT = 256 * 1024


def _mask_trailing_dash(name: str) -> str:
    """generateName prefixes may end in '-' (upstream validates them with the dash masked)."""
    return name[:-1] + "a" if len(name) > 1 and name.endswith("-") else name


def validate_labels(labels: Any, field: str, c: Causes) -> None:
    if labels is None:
        return
    if not isinstance(labels, dict):
        c.invalid(field, labels, "must be a map of string keys to string values")
        return
    for key, value in labels.items():
        c.invalid_each(field, key, is_qualified_name(str(key)))
        if not isinstance(value, str):
            c.invalid(field, value, "must be a string")
        else:
            c.invalid_each(field, value, is_valid_label_value(value))


def validate_annotations(annotations: Any, field: str, c: Causes) -> None:
    if annotations is None:
        return
    if not isinstance(annotations, dict):
        c.invalid(field, annotations, "must be a map of string keys to string values")
        return
    total = 0
    for key, value in annotations.items():
        c.invalid_each(field, key, is_qualified_name(str(key).lower()))
        total += len(str(key)) + len(str(value))
    if total > TOTAL_ANNOTATION_SIZE_LIMIT:
        c.too_long(field, TOTAL_ANNOTATION_SIZE_LIMIT)


def validate_object_meta(meta: Obj, name_check: NameCheck, namespaced: bool, c: Causes) -> None:
    name, generate = as_str(meta.get("name")), as_str(meta.get("generateName"))
    if generate:
        c.invalid_each("metadata.generateName", generate, name_check(_mask_trailing_dash(generate)))
    if name:
        c.invalid_each("metadata.name", name, name_check(name))
    elif not generate:
        c.required("metadata.name", "name or generateName is required")
    namespace = as_str(meta.get("namespace"))
    if namespaced and namespace:
        c.invalid_each("metadata.namespace", namespace, is_dns1123_label(namespace))
    validate_labels(meta.get("labels"), "metadata.labels", c)
    validate_annotations(meta.get("annotations"), "metadata.annotations", c)
    for i, finalizer in enumerate(as_list(meta.get("finalizers"))):
        c.invalid_each(f"metadata.finalizers[{i}]", finalizer, is_qualified_name(str(finalizer)))
    validate_owner_references(meta.get("ownerReferences"), c)


def validate_owner_references(refs: Any, c: Causes) -> None:
    """ValidateOwnerReferences: every reference complete; at most one controller reference."""
    field = "metadata.ownerReferences"
    controller = ""
    for ref in as_list(refs):
        ref = as_map(ref)
        version = as_str(ref.get("apiVersion")).rpartition("/")[2]
        for key, value, what in (("apiVersion", version, "version"), ("kind", ref.get("kind"), "kind"),
                                 ("name", ref.get("name"), "name"), ("uid", ref.get("uid"), "uid")):
            if not value:
                c.invalid(f"{field}.{key}", ref.get(key, ""), f"{what} must not be empty")
        if ref.get("controller") is True:
            current = f"{ref.get('kind', '')}/{ref.get('name', '')}"
            if controller:
                c.invalid(field, GoValue("[]v1.OwnerReference{...}"),
                          'Only one reference can have Controller set to true. Found "true" in references '
                          f"for {controller} and {current}")
            else:
                controller = current


def validate_label_selector(selector: Any, field: str, c: Causes) -> None:
    """metav1validation.ValidateLabelSelector: matchLabels syntax and operator/values rules."""
    if selector is None:
        return
    sel = as_map(selector)
    validate_labels(sel.get("matchLabels"), f"{field}.matchLabels", c)
    for i, expr in enumerate(as_list(sel.get("matchExpressions"))):
        path = f"{field}.matchExpressions[{i}]"
        expr = as_map(expr)
        op, values = expr.get("operator"), as_list(expr.get("values"))
        if op in ("In", "NotIn") and not values:
            c.required(f"{path}.values", "must be specified when `operator` is 'In' or 'NotIn'")
        elif op in ("Exists", "DoesNotExist") and values:
            c.forbidden(f"{path}.values",
                        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'")
        elif op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            c.invalid(f"{path}.operator", op, "not a valid selector operator")
        c.invalid_each(f"{path}.key", expr.get("key"), is_qualified_name(as_str(expr.get("key"))))


# ---------------------------------------------------------------------------------------------
# Shared field checks (ports, IPs, CIDRs) used by several kinds.

PROTOCOLS = ("SCTP", "TCP", "UDP")


def validate_port_num_or_name(value: Any, field: str, c: Causes) -> None:
    """intstr targetPort: a port number, or an IANA service name."""
    if isinstance(value, str):
        c.invalid_each(field, value, is_valid_port_name(value))
    elif value is not None:
        c.invalid_each(field, value, is_valid_port_num(value))


def validate_ip(value: Any, field: str, c: Causes) -> None:
    try:
        ipaddress.ip_address(as_str(value))
    except ValueError:
        c.invalid(field, value, "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)")


CIDR_MSG = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"


def validate_cidr(value: Any, field: str, c: Causes) -> None:
    try:
        ipaddress.ip_network(as_str(value), strict=False)
    except ValueError:
        c.invalid(field, value, "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)")
