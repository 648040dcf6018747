"""Validation with upstream field paths, reasons and messages (an Invalid 422's details.causes).

Mirrors k8s.io/apimachinery/pkg/util/validation (name/label syntax, RegexError wording) and
pkg/apis/core/validation, apps/validation, networking/validation and rbac/validation for the
fields we serve. validate(res, obj, old) returns causes {reason, message, field}; the server wraps
them with errors.invalid(), which prints `<Kind> "<name>" is invalid: <field>: <message>` exactly
as kubectl users know it. Runs after defaulting, so defaulted fields are present.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
from collections.abc import Callable, Iterable
from typing import Any

from controlplane.apiserver.resources import Resource
from podnet.api.selectors import SelectorError, label_selector_from_spec

Obj = dict[str, Any]

# ---------------------------------------------------------------------------------------------
# Syntax checks (apimachinery/pkg/util/validation/validation.go): each returns a list of messages.

DNS1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN_FMT = DNS1123_LABEL_FMT + r"(\." + DNS1123_LABEL_FMT + ")*"
DNS1035_LABEL_FMT = "[a-z]([-a-z0-9]*[a-z0-9])?"
QUALIFIED_NAME_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
LABEL_VALUE_FMT = "(" + QUALIFIED_NAME_FMT + ")?"
CONFIG_KEY_FMT = "[-._a-zA-Z0-9]+"

_DNS1123_LABEL = re.compile(f"^{DNS1123_LABEL_FMT}$")
_DNS1123_SUBDOMAIN = re.compile(f"^{DNS1123_SUBDOMAIN_FMT}$")
_DNS1035_LABEL = re.compile(f"^{DNS1035_LABEL_FMT}$")
_QUALIFIED_NAME = re.compile(f"^{QUALIFIED_NAME_FMT}$")
_LABEL_VALUE = re.compile(f"^{LABEL_VALUE_FMT}$")
_CONFIG_KEY = re.compile(f"^{CONFIG_KEY_FMT}$")

_START_END = "and must start and end with an alphanumeric character"
_DNS1123_LABEL_MSG = ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters "
                      f"or '-', {_START_END}")
_DNS1123_SUBDOMAIN_MSG = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                          f"characters, '-' or '.', {_START_END}")
_DNS1035_LABEL_MSG = ("a DNS-1035 label must consist of lower case alphanumeric characters or '-', "
                      "start with an alphabetic character, and end with an alphanumeric character")
_QUALIFIED_NAME_MSG = f"must consist of alphanumeric characters, '-', '_' or '.', {_START_END}"
_LABEL_VALUE_MSG = ("a valid label must be an empty string or consist of alphanumeric characters, "
                    f"'-', '_' or '.', {_START_END}")
_CONFIG_KEY_MSG = "a valid config key must consist of alphanumeric characters, '-', '_' or '.'"


def regex_error(msg: str, fmt: str, *examples: str) -> str:
    """validation.RegexError, including upstream's "',  or '" double space between examples."""
    if not examples:
        return f"{msg} (regex used for validation is '{fmt}')"
    shown = " or ".join(f"'{e}', " for e in examples)
    return f"{msg} (e.g. {shown}regex used for validation is '{fmt}')"


def max_len_error(length: int) -> str:
    return f"must be no more than {length} characters"


def is_dns1123_label(value: str) -> list[str]:
    errs = [max_len_error(63)] if len(value) > 63 else []
    if not _DNS1123_LABEL.match(value):
        if _DNS1123_SUBDOMAIN.match(value):
            errs.append("must not contain dots")
        else:
            errs.append(regex_error(_DNS1123_LABEL_MSG, DNS1123_LABEL_FMT, "my-name", "123-abc"))
    return errs


def is_dns1123_subdomain(value: str) -> list[str]:
    errs = [max_len_error(253)] if len(value) > 253 else []
    if not _DNS1123_SUBDOMAIN.match(value):
        errs.append(regex_error(_DNS1123_SUBDOMAIN_MSG, DNS1123_SUBDOMAIN_FMT, "example.com"))
    return errs


def is_dns1035_label(value: str) -> list[str]:
    errs = [max_len_error(63)] if len(value) > 63 else []
    if not _DNS1035_LABEL.match(value):
        errs.append(regex_error(_DNS1035_LABEL_MSG, DNS1035_LABEL_FMT, "my-name", "abc-123"))
    return errs


def _qualified_regex_error() -> str:
    return regex_error(_QUALIFIED_NAME_MSG, QUALIFIED_NAME_FMT, "MyName", "my.name", "123-abc")


def is_qualified_name(value: str) -> list[str]:
    """Label and annotation keys: an optional DNS-subdomain prefix, '/', and a 63-character name."""
    parts = value.split("/")
    errs: list[str] = []
    if len(parts) > 2:
        return ["a qualified name " + _qualified_regex_error()
                + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"]
    name = parts[-1]
    if len(parts) == 2:
        if not parts[0]:
            errs.append("prefix part must be non-empty")
        else:
            errs.extend("prefix part " + m for m in is_dns1123_subdomain(parts[0]))
    if not name:
        errs.append("name part must be non-empty")
    elif len(name) > 63:
        errs.append("name part " + max_len_error(63))
    if not _QUALIFIED_NAME.match(name):
        errs.append("name part " + _qualified_regex_error())
    return errs


def is_valid_label_value(value: str) -> list[str]:
    errs = [max_len_error(63)] if len(value) > 63 else []
    if not _LABEL_VALUE.match(value):
        errs.append(regex_error(_LABEL_VALUE_MSG, LABEL_VALUE_FMT, "MyValue", "my_value", "12345"))
    return errs


def is_valid_port_num(port: Any) -> list[str]:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        return ["must be between 1 and 65535, inclusive"]
    return []


def is_valid_port_name(name: str) -> list[str]:
    """An IANA_SVC_NAME (RFC 6335): what a named container/target port must look like."""
    errs = [max_len_error(15)] if len(name) > 15 else []
    if not re.match(r"^[-a-z0-9]+$", name):
        errs.append("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    if not re.search(r"[a-z]", name):
        errs.append("must contain at least one letter (a-z)")
    if "--" in name:
        errs.append("must not contain consecutive hyphens")
    if name and (name[0] == "-" or name[-1] == "-"):
        errs.append("must not begin or end with a hyphen")
    return errs


def is_path_segment_name(name: str) -> list[str]:
    """path.IsValidPathSegmentName: RBAC object names only need to be usable in a URL path."""
    errs = [f"may not be '{name}'"] if name in (".", "..") else []
    errs.extend(f"may not contain '{bad}'" for bad in ("/", "%") if bad in name)
    return errs


def is_config_key(key: str) -> list[str]:
    errs = [max_len_error(253)] if len(key) > 253 else []
    if not _CONFIG_KEY.match(key):
        errs.append(regex_error(_CONFIG_KEY_MSG, CONFIG_KEY_FMT, "key.name", "KEY_NAME", "key-name"))
    if key in (".", ".."):
        errs.append(f"must not be '{key}'")
    elif key.startswith(".."):
        errs.append("must not start with '..'")
    return errs


# ---------------------------------------------------------------------------------------------
# Causes (apimachinery/pkg/util/validation/field/errors.go wording).

class GoValue(str):
    """A value already rendered the way Go's %#v prints it (field.Error's fallback for structs,
    slices and maps), e.g. map[string]string{"app":"web"}; format_value prints it verbatim."""


def _go_quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def go_string_list(values: Iterable[Any]) -> GoValue:
    """[]string{"a", "b"}"""
    return GoValue("[]string{" + ", ".join(_go_quote(str(v)) for v in values) + "}")


def go_string_map(mapping: Any) -> GoValue:
    """map[string]string{"a":"b", "c":"d"} (Go prints maps with sorted keys)."""
    items = _map(mapping)
    body = ", ".join(f"{_go_quote(str(k))}:{_go_quote(str(items[k]))}" for k in sorted(items))
    return GoValue("map[string]string{" + body + "}")


def go_label_selector(selector: Any) -> GoValue:
    """v1.LabelSelector{MatchLabels:..., MatchExpressions:...} as upstream's messages show it."""
    sel = _map(selector)
    labels = "map[string]string(nil)" if sel.get("matchLabels") is None else go_string_map(sel["matchLabels"])
    exprs = sel.get("matchExpressions")
    if exprs is None:
        expressions = "[]v1.LabelSelectorRequirement(nil)"
    else:
        expressions = "[]v1.LabelSelectorRequirement{" + ", ".join(
            f'v1.LabelSelectorRequirement{{Key:{_go_quote(_str(_map(e).get("key")))}, '
            f'Operator:{_go_quote(_str(_map(e).get("operator")))}, '
            f'Values:{go_string_list(_list(_map(e).get("values")))}}}' for e in _list(exprs)) + "}"
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
        self._add("FieldValueTooLong", field, f"Too long: may not be more than {limit} bytes")


def _map(value: Any) -> Obj:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _str(value: Any) -> str:
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
    name, generate = _str(meta.get("name")), _str(meta.get("generateName"))
    if generate:
        c.invalid_each("metadata.generateName", generate, name_check(_mask_trailing_dash(generate)))
    if name:
        c.invalid_each("metadata.name", name, name_check(name))
    elif not generate:
        c.required("metadata.name", "name or generateName is required")
    namespace = _str(meta.get("namespace"))
    if namespaced and namespace:
        c.invalid_each("metadata.namespace", namespace, is_dns1123_label(namespace))
    validate_labels(meta.get("labels"), "metadata.labels", c)
    validate_annotations(meta.get("annotations"), "metadata.annotations", c)
    for i, finalizer in enumerate(_list(meta.get("finalizers"))):
        c.invalid_each(f"metadata.finalizers[{i}]", finalizer, is_qualified_name(str(finalizer)))


def validate_label_selector(selector: Any, field: str, c: Causes) -> None:
    """metav1validation.ValidateLabelSelector: matchLabels syntax and operator/values rules."""
    if selector is None:
        return
    sel = _map(selector)
    validate_labels(sel.get("matchLabels"), f"{field}.matchLabels", c)
    for i, expr in enumerate(_list(sel.get("matchExpressions"))):
        path = f"{field}.matchExpressions[{i}]"
        expr = _map(expr)
        op, values = expr.get("operator"), _list(expr.get("values"))
        if op in ("In", "NotIn") and not values:
            c.required(f"{path}.values", "must be specified when `operator` is 'In' or 'NotIn'")
        elif op in ("Exists", "DoesNotExist") and values:
            c.forbidden(f"{path}.values",
                        "may not be specified when `operator` is 'Exists' or 'DoesNotExist'")
        elif op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            c.invalid(f"{path}.operator", op, "not a valid selector operator")
        c.invalid_each(f"{path}.key", expr.get("key"), is_qualified_name(_str(expr.get("key"))))


# ---------------------------------------------------------------------------------------------
# Pods and pod templates (core/validation: ValidatePodSpec, validateContainers, ValidatePodUpdate).

PROTOCOLS = ("SCTP", "TCP", "UDP")
RESTART_POLICIES = ("Always", "OnFailure", "Never")
DNS_POLICIES = ("ClusterFirstWithHostNet", "ClusterFirst", "Default", "None")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")


def _validate_container_ports(ports: list[Any], path: str, c: Causes) -> None:
    names: set[str] = set()
    for i, port in enumerate(ports):
        pp, port = f"{path}[{i}]", _map(port)
        name = port.get("name")
        if name:
            c.invalid_each(f"{pp}.name", name, is_valid_port_name(_str(name)))
            if name in names:
                c.duplicate(f"{pp}.name", name)
            names.add(name)
        if not port.get("containerPort"):
            c.required(f"{pp}.containerPort")
        else:
            number = port["containerPort"]
            c.invalid_each(f"{pp}.containerPort", number, is_valid_port_num(number))
        if port.get("hostPort"):
            c.invalid_each(f"{pp}.hostPort", port["hostPort"], is_valid_port_num(port["hostPort"]))
        if "protocol" in port and port["protocol"] not in PROTOCOLS:
            c.not_supported(f"{pp}.protocol", port["protocol"], PROTOCOLS)


def _validate_container(container: Any, path: str, names: set[str], c: Causes) -> None:
    container = _map(container)
    name = container.get("name")
    if not name:
        c.required(f"{path}.name")
    else:
        c.invalid_each(f"{path}.name", name, is_dns1123_label(_str(name)))
        if name in names:
            c.duplicate(f"{path}.name", name)
        names.add(name)
    if not container.get("image"):
        c.required(f"{path}.image")
    policy = container.get("imagePullPolicy")
    if policy is not None and policy not in PULL_POLICIES:
        c.not_supported(f"{path}.imagePullPolicy", policy, PULL_POLICIES)
    _validate_container_ports(_list(container.get("ports")), f"{path}.ports", c)
    for j, env in enumerate(_list(container.get("env"))):
        if not _map(env).get("name"):
            c.required(f"{path}.env[{j}].name")


TAINT_EFFECTS = ("NoExecute", "NoSchedule", "PreferNoSchedule")


def _validate_toleration(toleration: Obj, path: str, c: Causes) -> None:
    """validateTolerations: operator Exists takes no value; effect must be a taint effect."""
    key, operator = toleration.get("key"), toleration.get("operator", "Equal")
    if key:
        c.invalid_each(f"{path}.key", key, is_qualified_name(_str(key)))
    elif operator != "Exists":
        c.invalid(f"{path}.operator", operator, "operator must be Exists when `key` is empty, which means "
                  '"match all values and all keys"')
    if operator == "Exists" and toleration.get("value"):
        c.invalid(f"{path}.operator", toleration.get("value"),
                  "value must be empty when `operator` is 'Exists'")
    elif operator not in ("Equal", "Exists"):
        c.not_supported(f"{path}.operator", operator, ["Equal", "Exists"])
    effect = toleration.get("effect")
    if effect and effect not in TAINT_EFFECTS:
        c.not_supported(f"{path}.effect", effect, TAINT_EFFECTS)


def validate_pod_spec(spec: Any, path: str, c: Causes) -> None:
    spec = _map(spec)
    containers = _list(spec.get("containers"))
    if not containers:
        c.required(f"{path}.containers")
    names: set[str] = set()
    for i, container in enumerate(_list(spec.get("initContainers"))):
        _validate_container(container, f"{path}.initContainers[{i}]", names, c)
    for i, container in enumerate(containers):
        _validate_container(container, f"{path}.containers[{i}]", names, c)
    restart = spec.get("restartPolicy")
    if restart == "":
        c.required(f"{path}.restartPolicy")
    elif restart is not None and restart not in RESTART_POLICIES:
        c.not_supported(f"{path}.restartPolicy", restart, RESTART_POLICIES)
    dns = spec.get("dnsPolicy")
    if dns is not None and dns not in DNS_POLICIES:
        c.not_supported(f"{path}.dnsPolicy", dns, DNS_POLICIES)
    volumes: set[str] = set()
    for i, volume in enumerate(_list(spec.get("volumes"))):
        vname = _map(volume).get("name")
        if not vname:
            c.required(f"{path}.volumes[{i}].name")
            continue
        c.invalid_each(f"{path}.volumes[{i}].name", vname, is_dns1123_label(_str(vname)))
        if vname in volumes:
            c.duplicate(f"{path}.volumes[{i}].name", vname)
        volumes.add(vname)
    validate_labels(spec.get("nodeSelector"), f"{path}.nodeSelector", c)
    for i, toleration in enumerate(_list(spec.get("tolerations"))):
        _validate_toleration(_map(toleration), f"{path}.tolerations[{i}]", c)
    grace = spec.get("terminationGracePeriodSeconds")
    if grace is not None and (isinstance(grace, bool) or not isinstance(grace, int)):
        c.invalid(f"{path}.terminationGracePeriodSeconds", grace, "must be an integer")
    if spec.get("nodeName"):
        c.invalid_each(f"{path}.nodeName", spec["nodeName"], is_dns1123_subdomain(_str(spec["nodeName"])))


_POD_UPDATE_MSG = (
    "pod updates may not change fields other than `spec.containers[*].image`,"
    "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` "
    "(only additions to existing tolerations),`spec.terminationGracePeriodSeconds` "
    "(allow it to be set to 1 if it was previously negative)"
)


def _mutable_pod_fields_from(spec: Obj, old_spec: Obj) -> Obj:
    """A copy of spec with the fields a pod update may change taken from old_spec."""
    merged = json.loads(json.dumps(spec))
    for key in ("containers", "initContainers"):
        new_list, old_list = _list(merged.get(key)), _list(old_spec.get(key))
        for new_c, old_c in zip(new_list, old_list, strict=False):
            if isinstance(new_c, dict) and isinstance(old_c, dict):
                new_c["image"] = old_c.get("image")
    merged["activeDeadlineSeconds"] = old_spec.get("activeDeadlineSeconds")
    new_tol, old_tol = _list(merged.get("tolerations")), _list(old_spec.get("tolerations"))
    if new_tol[: len(old_tol)] == old_tol:
        merged["tolerations"] = old_tol  # additions only
    # Binding (pods/binding) assigns spec.nodeName once; everything else about it is immutable.
    if not old_spec.get("nodeName"):
        merged["nodeName"] = old_spec.get("nodeName")
    for key in ("activeDeadlineSeconds", "tolerations", "nodeName"):
        if merged.get(key) is None:
            merged.pop(key, None)
    return merged


def validate_pod_update(spec: Any, old_spec: Any, c: Causes) -> None:
    spec, old_spec = _map(spec), _map(old_spec)
    if _mutable_pod_fields_from(spec, old_spec) != _mutable_pod_fields_from(old_spec, old_spec):
        c.forbidden("spec", _POD_UPDATE_MSG)
    old_deadline, deadline = old_spec.get("activeDeadlineSeconds"), spec.get("activeDeadlineSeconds")
    if old_deadline and (not deadline or deadline > old_deadline):
        c.invalid("spec.activeDeadlineSeconds", deadline,
                  "must be less than or equal to previous value")


def _validate_pod(obj: Obj, old: Obj | None, c: Causes) -> None:
    validate_pod_spec(obj.get("spec"), "spec", c)
    if old is not None:
        validate_pod_update(obj.get("spec"), old.get("spec"), c)


# ---------------------------------------------------------------------------------------------
# Services (core/validation: ValidateService, ValidateServiceUpdate).

SERVICE_TYPES = ("ClusterIP", "ExternalName", "LoadBalancer", "NodePort")  # sets.List order
SESSION_AFFINITIES = ("ClientIP", "None")
TRAFFIC_POLICIES = ("Cluster", "Local")


def _validate_port_num_or_name(value: Any, field: str, c: Causes) -> None:
    """intstr targetPort: a port number, or an IANA service name."""
    if isinstance(value, str):
        c.invalid_each(field, value, is_valid_port_name(value))
    elif value is not None:
        c.invalid_each(field, value, is_valid_port_num(value))


def _validate_service_port(port: Obj, pp: str, svc_type: str, many: bool, c: Causes) -> None:
    name = port.get("name")
    if many and not name:
        c.required(f"{pp}.name")
    elif name:
        c.invalid_each(f"{pp}.name", name, is_dns1123_label(_str(name)))
    c.invalid_each(f"{pp}.port", port.get("port"), is_valid_port_num(port.get("port")))
    if port.get("protocol") not in PROTOCOLS:
        c.not_supported(f"{pp}.protocol", port.get("protocol"), PROTOCOLS)
    _validate_port_num_or_name(port.get("targetPort"), f"{pp}.targetPort", c)
    node_port = port.get("nodePort")
    if node_port:
        if svc_type == "ClusterIP":
            c.forbidden(f"{pp}.nodePort", "may not be used when `type` is 'ClusterIP'")
        else:
            c.invalid_each(f"{pp}.nodePort", node_port, is_valid_port_num(node_port))


def _validate_service_ports(spec: Obj, svc_type: str, c: Causes) -> None:
    ports = _list(spec.get("ports"))
    headless = spec.get("clusterIP") == "None"
    if not ports and not headless and svc_type != "ExternalName":
        c.required("spec.ports")
    names: set[str] = set()
    seen: set[tuple[Any, Any]] = set()
    for i, port in enumerate(ports):
        pp, port = f"spec.ports[{i}]", _map(port)
        _validate_service_port(port, pp, svc_type, len(ports) > 1, c)
        name = port.get("name")
        if name:
            if name in names:
                c.duplicate(f"{pp}.name", name)
            names.add(name)
        key = (port.get("port"), port.get("protocol"))
        if key in seen:
            c.duplicate(pp, {"port": key[0], "protocol": key[1]})
        seen.add(key)


def _validate_cluster_ip(spec: Obj, svc_type: str, c: Causes) -> None:
    ip = spec.get("clusterIP")
    if svc_type == "ExternalName":
        if ip:
            c.forbidden("spec.clusterIPs", "may not be set for ExternalName services")
        name = _str(spec.get("externalName"))
        if not name:
            c.required("spec.externalName")
        else:
            c.invalid_each("spec.externalName", name, is_dns1123_subdomain(name.rstrip(".")))
        return
    if ip in (None, "", "None"):
        return
    try:
        ipaddress.ip_address(_str(ip))
    except ValueError:
        c.invalid("spec.clusterIPs[0]", ip, "must be empty, 'None', or a valid IP address")


def _validate_service(obj: Obj, old: Obj | None, c: Causes) -> None:
    spec = _map(obj.get("spec"))
    svc_type = spec.get("type")
    if svc_type not in SERVICE_TYPES:
        c.not_supported("spec.type", svc_type, SERVICE_TYPES)
        svc_type = ""
    if spec.get("sessionAffinity") not in SESSION_AFFINITIES:
        c.not_supported("spec.sessionAffinity", spec.get("sessionAffinity"), SESSION_AFFINITIES)
    _validate_cluster_ip(spec, _str(svc_type), c)
    _validate_service_ports(spec, _str(svc_type), c)
    validate_labels(spec.get("selector"), "spec.selector", c)
    policy = spec.get("externalTrafficPolicy")
    if policy is not None and policy not in TRAFFIC_POLICIES:
        c.not_supported("spec.externalTrafficPolicy", policy, TRAFFIC_POLICIES)
    if old is not None:
        old_spec = _map(old.get("spec"))
        old_ip, new_ip = old_spec.get("clusterIP"), spec.get("clusterIP")
        external = "ExternalName" in (svc_type, old_spec.get("type"))
        if old_ip and new_ip != old_ip and not external:
            # A request that changes clusterIP alone has its clusterIPs normalized to [clusterIP].
            ips = _list(spec.get("clusterIPs"))
            shown = ips if ips and ips[0] == new_ip else [new_ip]
            c.invalid("spec.clusterIPs[0]", go_string_list(shown), "may not change once set")


# ---------------------------------------------------------------------------------------------
# Workloads: replication controllers (core), replica sets and deployments (apps/v1).

_SELECTOR_MISMATCH = "`selector` does not match template `labels`"


def _validate_replicas(spec: Obj, c: Causes) -> None:
    replicas = spec.get("replicas")
    if replicas is not None and (isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0):
        c.invalid("spec.replicas", replicas, "must be greater than or equal to 0")


def _validate_template(spec: Obj, c: Causes) -> Obj | None:
    """ValidatePodTemplateSpecForRC/ReplicaSet: labels, a pod spec, and restartPolicy Always."""
    template = spec.get("template")
    if not isinstance(template, dict):
        c.required("spec.template")
        return None
    validate_labels(_map(template.get("metadata")).get("labels"), "spec.template.metadata.labels", c)
    tspec = _map(template.get("spec"))
    validate_pod_spec(tspec, "spec.template.spec", c)
    if tspec.get("restartPolicy") not in (None, "Always"):
        c.not_supported("spec.template.spec.restartPolicy", tspec["restartPolicy"], ["Always"])
    if tspec.get("activeDeadlineSeconds") is not None:
        c.forbidden("spec.template.spec.activeDeadlineSeconds",
                    "activeDeadlineSeconds in ReplicationController is not Supported")
    return template


def _validate_rc(obj: Obj, old: Obj | None, c: Causes) -> None:
    spec = _map(obj.get("spec"))
    _validate_replicas(spec, c)
    selector = spec.get("selector")
    template = _validate_template(spec, c)
    if not selector:
        c.required("spec.selector")
        return
    validate_labels(selector, "spec.selector", c)
    if template is not None:
        labels = _map(_map(template.get("metadata")).get("labels"))
        if not isinstance(selector, dict) or any(labels.get(k) != v for k, v in selector.items()):
            c.invalid("spec.template.metadata.labels", go_string_map(labels), _SELECTOR_MISMATCH)


def _validate_apps_selector(spec: Obj, template: Obj | None, kind: str, c: Causes) -> None:
    selector = spec.get("selector")
    if selector is None:
        c.required("spec.selector")
        return
    validate_label_selector(selector, "spec.selector", c)
    sel = _map(selector)
    if not sel.get("matchLabels") and not sel.get("matchExpressions"):
        c.invalid("spec.selector", go_label_selector(selector), f"empty selector is invalid for {kind}")
        return
    if template is None:
        return
    labels = _map(_map(template.get("metadata")).get("labels"))
    try:
        matches = label_selector_from_spec(sel).matches(labels)
    except SelectorError:
        return  # already reported by validate_label_selector
    if not matches:
        c.invalid("spec.template.metadata.labels", go_string_map(labels), _SELECTOR_MISMATCH)


def _validate_selector_immutable(obj: Obj, old: Obj | None, c: Causes) -> None:
    """apps/v1 made spec.selector immutable for Deployments and ReplicaSets."""
    if old is None:
        return
    new_sel = _map(obj.get("spec")).get("selector")
    if new_sel != _map(old.get("spec")).get("selector"):
        c.invalid("spec.selector", go_label_selector(new_sel), "field is immutable")


def _validate_replica_set(obj: Obj, old: Obj | None, c: Causes) -> None:
    spec = _map(obj.get("spec"))
    _validate_replicas(spec, c)
    _validate_apps_selector(spec, _validate_template(spec, c), "replicaset", c)
    _validate_selector_immutable(obj, old, c)


def _validate_strategy(spec: Obj, c: Causes) -> None:
    strategy = _map(spec.get("strategy"))
    kind = strategy.get("type")
    if kind not in ("Recreate", "RollingUpdate"):
        c.not_supported("spec.strategy.type", kind, ["Recreate", "RollingUpdate"])
    elif kind == "Recreate" and strategy.get("rollingUpdate") is not None:
        c.forbidden("spec.strategy.rollingUpdate", "may not be specified when strategy `type` is 'Recreate'")
    rolling = _map(strategy.get("rollingUpdate"))
    surge, unavailable = rolling.get("maxSurge"), rolling.get("maxUnavailable")
    if kind == "RollingUpdate" and surge in (0, "0%") and unavailable in (0, "0%"):
        c.invalid("spec.strategy.rollingUpdate.maxUnavailable", unavailable,
                  "may not be 0 when `maxSurge` is 0")


def _validate_deployment(obj: Obj, old: Obj | None, c: Causes) -> None:
    spec = _map(obj.get("spec"))
    _validate_replicas(spec, c)
    _validate_apps_selector(spec, _validate_template(spec, c), "deployment", c)
    _validate_strategy(spec, c)
    for key in ("revisionHistoryLimit", "progressDeadlineSeconds", "minReadySeconds"):
        value = spec.get(key)
        if value is not None and (not isinstance(value, int) or value < 0):
            c.invalid(f"spec.{key}", value, "must be greater than or equal to 0")
    _validate_selector_immutable(obj, old, c)


# ---------------------------------------------------------------------------------------------
# NetworkPolicy (networking/validation: ValidateNetworkPolicySpec).

POLICY_TYPES = ("Ingress", "Egress")


def _validate_policy_port(port: Obj, pp: str, c: Causes) -> None:
    if "protocol" in port and port["protocol"] not in PROTOCOLS:
        c.not_supported(f"{pp}.protocol", port["protocol"], PROTOCOLS)
    value, end = port.get("port"), port.get("endPort")
    _validate_port_num_or_name(value, f"{pp}.port", c)
    if end is None:
        return
    if isinstance(value, str):
        c.forbidden(f"{pp}.endPort", "may not be specified when `port` is non-numeric")
    elif value is None:
        c.required(f"{pp}.port", "must be specified when `endPort` is specified")
    elif isinstance(end, int) and isinstance(value, int) and end < value:
        c.invalid(f"{pp}.endPort", end, "must be greater than or equal to `port`")
    else:
        c.invalid_each(f"{pp}.endPort", end, is_valid_port_num(end))


_CIDR_MSG = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"


def _validate_ip_block(block: Obj, path: str, c: Causes) -> None:
    cidr = _str(block.get("cidr"))
    if not cidr:
        c.required(f"{path}.cidr")
        return
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        c.invalid(f"{path}.cidr", cidr, _CIDR_MSG)
        return
    for i, text in enumerate(_list(block.get("except"))):
        try:
            sub = ipaddress.ip_network(_str(text), strict=False)
        except ValueError:
            c.invalid(f"{path}.except[{i}]", text, _CIDR_MSG)
            continue
        if sub.version != net.version or not sub.subnet_of(net) or sub == net:  # type: ignore[arg-type]
            c.invalid(f"{path}.except[{i}]", text, "must be a strict subset of `cidr`")


def _validate_peer(peer: Obj, path: str, c: Causes) -> None:
    selectors = [k for k in ("podSelector", "namespaceSelector") if peer.get(k) is not None]
    for key in selectors:
        validate_label_selector(peer[key], f"{path}.{key}", c)
    if isinstance(peer.get("ipBlock"), dict):
        if selectors:
            c.forbidden(path, "may not specify both ipBlock and another peer")
        _validate_ip_block(peer["ipBlock"], f"{path}.ipBlock", c)
    elif not selectors:
        c.required(path, "must specify a peer")


def _validate_rules(spec: Obj, direction: str, peers_key: str, c: Causes) -> None:
    for i, rule in enumerate(_list(spec.get(direction))):
        rule, rp = _map(rule), f"spec.{direction}[{i}]"
        for j, port in enumerate(_list(rule.get("ports"))):
            _validate_policy_port(_map(port), f"{rp}.ports[{j}]", c)
        for j, peer in enumerate(_list(rule.get(peers_key))):
            _validate_peer(_map(peer), f"{rp}.{peers_key}[{j}]", c)


def _validate_network_policy(obj: Obj, old: Obj | None, c: Causes) -> None:
    spec = _map(obj.get("spec"))
    validate_label_selector(spec.get("podSelector"), "spec.podSelector", c)
    _validate_rules(spec, "ingress", "from", c)
    _validate_rules(spec, "egress", "to", c)
    types = _list(spec.get("policyTypes"))
    for i, kind in enumerate(types):
        if kind not in POLICY_TYPES:
            c.not_supported(f"spec.policyTypes[{i}]", kind, POLICY_TYPES)
    if len(types) > 2:
        c.invalid("spec.policyTypes", GoValue("[]networking.PolicyType{" + ", ".join(
            _go_quote(str(t)) for t in types) + "}"), "may not specify more than two policyTypes")


# ---------------------------------------------------------------------------------------------
# Endpoints, EndpointSlices, ConfigMaps, Secrets.

def _validate_ip(value: Any, field: str, c: Causes) -> None:
    try:
        ipaddress.ip_address(_str(value))
    except ValueError:
        c.invalid(field, value, "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)")


def _validate_endpoint_ports(ports: list[Any], path: str, c: Causes) -> None:
    for i, port in enumerate(ports):
        port, pp = _map(port), f"{path}[{i}]"
        if port.get("name"):
            c.invalid_each(f"{pp}.name", port["name"], is_dns1123_label(_str(port["name"])))
        elif len(ports) > 1:
            c.required(f"{pp}.name")
        if port.get("port") is not None:
            c.invalid_each(f"{pp}.port", port["port"], is_valid_port_num(port["port"]))
        if port.get("protocol") not in (None, *PROTOCOLS):
            c.not_supported(f"{pp}.protocol", port["protocol"], PROTOCOLS)


def _validate_endpoints(obj: Obj, old: Obj | None, c: Causes) -> None:
    for i, subset in enumerate(_list(obj.get("subsets"))):
        subset, sp = _map(subset), f"subsets[{i}]"
        for key in ("addresses", "notReadyAddresses"):
            for j, addr in enumerate(_list(subset.get(key))):
                _validate_ip(_map(addr).get("ip"), f"{sp}.{key}[{j}].ip", c)
        _validate_endpoint_ports(_list(subset.get("ports")), f"{sp}.ports", c)


ADDRESS_TYPES = ("FQDN", "IPv4", "IPv6")


def _validate_endpoint_slice(obj: Obj, old: Obj | None, c: Causes) -> None:
    address_type = obj.get("addressType")
    if not address_type:
        c.required("addressType")
    elif address_type not in ADDRESS_TYPES:
        c.not_supported("addressType", address_type, ADDRESS_TYPES)
    elif old is not None and old.get("addressType") != address_type:
        c.invalid("addressType", address_type, "field is immutable")
    for i, endpoint in enumerate(_list(obj.get("endpoints"))):
        addresses = _list(_map(endpoint).get("addresses"))
        if not addresses or len(addresses) > 100:
            c.invalid(f"endpoints[{i}].addresses", addresses,
                      "must contain at least 1 and at most 100 addresses")
        if address_type in ("IPv4", "IPv6"):
            for j, addr in enumerate(addresses):
                _validate_ip(addr, f"endpoints[{i}].addresses[{j}]", c)
    _validate_endpoint_ports(_list(obj.get("ports")), "ports", c)


def _validate_data_keys(obj: Obj, keys: tuple[str, ...], c: Causes) -> None:
    seen: set[str] = set()
    for key_field in keys:
        for key in _map(obj.get(key_field)):
            c.invalid_each(f"{key_field}[{key}]", key, is_config_key(str(key)))
            if key in seen:
                c.invalid(f"{key_field}[{key}]", key, "duplicate of key present in data")
            seen.add(key)


def _validate_immutable_data(obj: Obj, old: Obj | None, keys: tuple[str, ...], c: Causes) -> None:
    if old is None:
        return
    if old.get("immutable") is True:
        if obj.get("immutable") is not True:
            c.forbidden("immutable", "field is immutable when `immutable` is set")
        for key in keys:
            if obj.get(key) != old.get(key):
                c.forbidden(key, "field is immutable when `immutable` is set")


def _validate_configmap(obj: Obj, old: Obj | None, c: Causes) -> None:
    _validate_data_keys(obj, ("data", "binaryData"), c)
    _validate_immutable_data(obj, old, ("data", "binaryData"), c)


def _validate_secret(obj: Obj, old: Obj | None, c: Causes) -> None:
    _validate_data_keys(obj, ("data", "stringData"), c)
    for key, value in _map(obj.get("data")).items():
        try:
            base64.b64decode(_str(value), validate=True)
        except (binascii.Error, ValueError):
            c.invalid(f"data[{key}]", "<secret contents redacted>", "must be base64-encoded")
    if obj.get("type") == "kubernetes.io/service-account-token":
        annotations = _map(_map(obj.get("metadata")).get("annotations"))
        if not annotations.get("kubernetes.io/service-account.name"):
            c.required("metadata.annotations[kubernetes.io/service-account.name]")
    if old is not None and old.get("type") != obj.get("type"):
        c.invalid("type", obj.get("type"), "field is immutable")
    _validate_immutable_data(obj, old, ("data",), c)


# ---------------------------------------------------------------------------------------------
# RBAC (rbac/validation).

def _validate_policy_rules(rules: Any, c: Causes) -> None:
    for i, rule in enumerate(_list(rules)):
        rule, rp = _map(rule), f"rules[{i}]"
        if not _list(rule.get("verbs")):
            c.required(f"{rp}.verbs", "verbs must contain at least one value")
        has_urls = bool(_list(rule.get("nonResourceURLs")))
        if has_urls and (_list(rule.get("resources")) or _list(rule.get("apiGroups"))):
            c.invalid(f"{rp}.nonResourceURLs", rule.get("nonResourceURLs"),
                      "rules cannot apply to both regular resources and non-resource URLs")
        elif not has_urls and not _list(rule.get("resources")):
            c.required(f"{rp}.resources", "resource rules must supply at least one resource")
        elif not has_urls and rule.get("apiGroups") is None:
            c.required(f"{rp}.apiGroups", "resource rules must supply at least one api group")


def _validate_role(obj: Obj, old: Obj | None, c: Causes) -> None:
    if obj.get("aggregationRule") is not None:
        return  # ClusterRole aggregation: the controller fills rules in
    _validate_policy_rules(obj.get("rules"), c)


def _validate_subjects(obj: Obj, cluster: bool, c: Causes) -> None:
    for i, subject in enumerate(_list(obj.get("subjects"))):
        subject, sp = _map(subject), f"subjects[{i}]"
        kind, name = subject.get("kind"), _str(subject.get("name"))
        if not name:
            c.required(f"{sp}.name")
        if kind not in ("ServiceAccount", "User", "Group"):
            c.not_supported(f"{sp}.kind", kind, ["ServiceAccount", "User", "Group"])
        elif kind == "ServiceAccount":
            if name:
                c.invalid_each(f"{sp}.name", name, is_dns1123_subdomain(name))
            if cluster and not subject.get("namespace"):
                c.required(f"{sp}.namespace")


def _validate_binding(obj: Obj, old: Obj | None, cluster: bool, c: Causes) -> None:
    ref = _map(obj.get("roleRef"))
    kinds = ["ClusterRole"] if cluster else ["Role", "ClusterRole"]
    if ref.get("apiGroup") != "rbac.authorization.k8s.io":
        c.not_supported("roleRef.apiGroup", ref.get("apiGroup"), ["rbac.authorization.k8s.io"])
    if ref.get("kind") not in kinds:
        c.not_supported("roleRef.kind", ref.get("kind"), kinds)
    if not ref.get("name"):
        c.required("roleRef.name")
    else:
        c.invalid_each("roleRef.name", ref["name"], is_path_segment_name(_str(ref["name"])))
    _validate_subjects(obj, cluster, c)
    if old is not None and _map(old.get("roleRef")) != ref:
        c.invalid("roleRef", ref, "cannot change roleRef")


def _validate_role_binding(obj: Obj, old: Obj | None, c: Causes) -> None:
    _validate_binding(obj, old, False, c)


def _validate_cluster_role_binding(obj: Obj, old: Obj | None, c: Causes) -> None:
    _validate_binding(obj, old, True, c)


# ---------------------------------------------------------------------------------------------
# Nodes and leases.

def _validate_cidr(value: Any, field: str, c: Causes) -> None:
    try:
        ipaddress.ip_network(_str(value), strict=False)
    except ValueError:
        c.invalid(field, value, "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)")


def _validate_node(obj: Obj, old: Obj | None, c: Causes) -> None:
    spec = _map(obj.get("spec"))
    if spec.get("podCIDR"):
        _validate_cidr(spec["podCIDR"], "spec.podCIDR", c)
    for i, cidr in enumerate(_list(spec.get("podCIDRs"))):
        _validate_cidr(cidr, f"spec.podCIDRs[{i}]", c)
    for i, taint in enumerate(_list(spec.get("taints"))):
        taint, tp = _map(taint), f"spec.taints[{i}]"
        if not taint.get("key"):
            c.required(f"{tp}.key")
        else:
            c.invalid_each(f"{tp}.key", taint["key"], is_qualified_name(_str(taint["key"])))
        if taint.get("effect") not in TAINT_EFFECTS:
            c.not_supported(f"{tp}.effect", taint.get("effect"), TAINT_EFFECTS)
    if old is not None:
        # The IPAM controller assigns podCIDR once; flannel/calico rely on it never moving.
        old_spec = _map(old.get("spec"))
        for key in ("podCIDR", "podCIDRs"):
            if old_spec.get(key) and spec.get(key) != old_spec.get(key):
                c.forbidden(f"spec.{key}", f"node updates may not change {key} except from \"\" to valid")


def _validate_lease(obj: Obj, old: Obj | None, c: Causes) -> None:
    spec = _map(obj.get("spec"))
    for key in ("leaseDurationSeconds", "leaseTransitions"):
        value = spec.get(key)
        if value is None:
            continue
        minimum = 1 if key == "leaseDurationSeconds" else 0
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            c.invalid(f"spec.{key}", value, "must be greater than 0" if minimum else
                      "must be greater than or equal to 0")


# ---------------------------------------------------------------------------------------------
# Dispatch.

Validator = Callable[[Obj, "Obj | None", Causes], None]

# Which name rule each kind's metadata.name follows (upstream ValidateXName functions).
NAME_CHECKS: dict[tuple[str, str], NameCheck] = {
    ("", "Namespace"): is_dns1123_label,
    ("", "Service"): is_dns1035_label,
    ("rbac.authorization.k8s.io", "Role"): is_path_segment_name,
    ("rbac.authorization.k8s.io", "ClusterRole"): is_path_segment_name,
    ("rbac.authorization.k8s.io", "RoleBinding"): is_path_segment_name,
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"): is_path_segment_name,
}

VALIDATORS: dict[tuple[str, str], Validator] = {
    ("", "Pod"): _validate_pod,
    ("", "Service"): _validate_service,
    ("", "ReplicationController"): _validate_rc,
    ("", "Endpoints"): _validate_endpoints,
    ("", "Node"): _validate_node,
    ("coordination.k8s.io", "Lease"): _validate_lease,
    ("", "ConfigMap"): _validate_configmap,
    ("", "Secret"): _validate_secret,
    ("discovery.k8s.io", "EndpointSlice"): _validate_endpoint_slice,
    ("networking.k8s.io", "NetworkPolicy"): _validate_network_policy,
    ("apps", "ReplicaSet"): _validate_replica_set,
    ("apps", "Deployment"): _validate_deployment,
    ("rbac.authorization.k8s.io", "Role"): _validate_role,
    ("rbac.authorization.k8s.io", "ClusterRole"): _validate_role,
    ("rbac.authorization.k8s.io", "RoleBinding"): _validate_role_binding,
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"): _validate_cluster_role_binding,
}

# Virtual resources with no stored object and no name (kubectl auth can-i).
_UNNAMED = {("authorization.k8s.io", "SelfSubjectAccessReview")}


def validate(res: Resource, obj: Obj, old: Obj | None = None) -> list[Obj]:
    """Causes for everything wrong with `obj` (a create when old is None, else an update of old).

    An empty list means valid. Wrongly typed input yields causes rather than exceptions.
    """
    c = Causes()
    if not isinstance(obj, dict):
        c.invalid("", obj, "must be an object")
        return c.items
    for part in ("metadata", "spec"):
        if part in obj and not isinstance(obj[part], dict):
            c.invalid(part, obj[part], "must be an object")
    key = (res.group, res.kind)
    if key not in _UNNAMED:
        name_check = NAME_CHECKS.get(key, is_dns1123_subdomain)
        validate_object_meta(_map(obj.get("metadata")), name_check, res.namespaced, c)
    validator = VALIDATORS.get(key)
    if validator is not None:
        try:
            validator(obj, old if isinstance(old, dict) else None, c)
        except (AttributeError, TypeError, ValueError) as exc:
            c.invalid("", type(exc).__name__, f"malformed {res.kind}: {exc}")
    return c.items
