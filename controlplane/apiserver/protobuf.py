r"""Decoder for the Kubernetes protobuf request bodies kubectl >= 1.32 sends.

client-go's typed clients switched to protobuf (kubernetes#125314), so `kubectl create namespace|
configmap|secret|service|deployment|serviceaccount|role|rolebinding|clusterrole|clusterrolebinding`,
`kubectl auth can-i [--list]` and `kubectl auth whoami` POST `application/vnd.kubernetes.protobuf`,
and kubectl does not retry as JSON after a 415 (reference proxy_apiserver.md 0.1, B5.6). The body
is the magic `k8s\x00` followed by a runtime.Unknown message {1: TypeMeta{1: apiVersion, 2: kind},
2: raw, 3: contentEncoding, 4: contentType}; `raw` is the object in the proto2 schema of k8s.io/api
generated.proto.

Only the kinds above are modelled, by per-message field tables whose numbers come from the upstream
generated.proto files (checked against bodies captured from kubectl 1.32, tests/controlplane/data/
protobuf). The result is the dict the same object has in JSON: Go's encoding drops zero values of
`omitempty` scalars, so zero scalars are dropped unless the Go field is a pointer (then present on the
wire means set); nested structs stay as `{}`; bytes become base64; IntOrString, Quantity and Time
take their JSON forms. A field the tables do not know makes the body undecodable (ProtobufError,
the server answers 415) unless it is empty, so nothing a client sent is ever silently dropped.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = ["MAGIC", "ProtobufError", "decode_object", "supported_kinds"]

MAGIC = b"k8s\x00"


class ProtobufError(ValueError):
    """The body is not a protobuf-encoded object of a kind this server can decode (-> 415)."""


# ---------------------------------------------------------------------------------------------
# Wire format

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5


def encode_varint(value: int) -> bytes:
    """Protobuf base-128 varint (negative int64 values as their 64-bit two's complement)."""
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if not value:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        if pos >= len(data):
            raise ProtobufError("truncated varint in protobuf body")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ProtobufError("varint longer than 10 bytes in protobuf body")


def wire_fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) of a message; value is an int, or bytes for LENGTH."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ProtobufError("field number 0 in protobuf body")
        value: int | bytes
        if wire == VARINT:
            value, pos = _varint(data, pos)
        elif wire == LENGTH:
            size, pos = _varint(data, pos)
            if pos + size > len(data):
                raise ProtobufError("truncated length-delimited field in protobuf body")
            value, pos = data[pos:pos + size], pos + size
        elif wire in (FIXED64, FIXED32):
            width = 8 if wire == FIXED64 else 4
            if pos + width > len(data):
                raise ProtobufError("truncated fixed-width field in protobuf body")
            value, pos = int.from_bytes(data[pos:pos + width], "little"), pos + width
        else:
            raise ProtobufError(f"unsupported protobuf wire type {wire} (field {number})")
        yield number, wire, value


def _signed(value: int) -> int:
    # int32/int64 are two's complement in 64 bits on the wire (negative int32 take 10 bytes).
    return value - (1 << 64) if value >= 1 << 63 else value


# ---------------------------------------------------------------------------------------------
# Schema DSL


@dataclass(frozen=True)
class Field:
    """One message field: JSON name, kind and whether Go holds it as a pointer or a slice/map."""

    name: str
    kind: str  # string bytes int bool message map bytesmap quantitymap intstr quantity time inline
    message: Mapping[int, Field] | None = None
    repeated: bool = False
    pointer: bool = False  # keep the zero value when present on the wire
    always: bool = False  # Go field without omitempty: JSON carries even the zero value


def s(name: str, *, pointer: bool = False, always: bool = False) -> Field:
    return Field(name, "string", pointer=pointer, always=always)


def strs(name: str, *, always: bool = False) -> Field:
    return Field(name, "string", repeated=True, always=always)


def i(name: str, *, pointer: bool = False, always: bool = False) -> Field:
    return Field(name, "int", pointer=pointer, always=always)


def b(name: str, *, pointer: bool = False, always: bool = False) -> Field:
    return Field(name, "bool", pointer=pointer, always=always)


def m(name: str, message: Mapping[int, Field], *, repeated: bool = False, always: bool = False) -> Field:
    return Field(name, "message", message, repeated=repeated, always=always)


def smap(name: str) -> Field:
    return Field(name, "map")


Message = dict[int, Field]

# k8s.io/apimachinery/pkg/apis/meta/v1/generated.proto
OWNER_REFERENCE: Message = {1: s("kind", always=True), 3: s("name", always=True), 4: s("uid", always=True),
                            5: s("apiVersion", always=True),
                            6: b("controller", pointer=True), 7: b("blockOwnerDeletion", pointer=True)}
OBJECT_META: Message = {
    1: s("name"), 2: s("generateName"), 3: s("namespace"), 4: s("selfLink"), 5: s("uid"),
    6: s("resourceVersion"), 7: i("generation"),
    8: Field("creationTimestamp", "time", always=True),  # the zero Time is JSON null
    9: Field("deletionTimestamp", "time", pointer=True), 10: i("deletionGracePeriodSeconds", pointer=True),
    11: smap("labels"), 12: smap("annotations"), 13: m("ownerReferences", OWNER_REFERENCE, repeated=True),
    14: strs("finalizers"),
}
LABEL_SELECTOR: Message = {
    1: smap("matchLabels"),
    2: m("matchExpressions", {1: s("key", always=True), 2: s("operator", always=True), 3: strs("values")},
         repeated=True),
}

# k8s.io/api/core/v1/generated.proto
OBJECT_REFERENCE: Message = {1: s("kind"), 2: s("namespace"), 3: s("name"), 4: s("uid"), 5: s("apiVersion"),
                             6: s("resourceVersion"), 7: s("fieldPath")}
LOCAL_OBJECT_REFERENCE: Message = {1: s("name")}
NAMESPACE: Message = {1: m("metadata", OBJECT_META), 2: m("spec", {1: strs("finalizers")}),
                      3: m("status", {1: s("phase")})}
CONFIG_MAP: Message = {1: m("metadata", OBJECT_META), 2: smap("data"), 3: Field("binaryData", "bytesmap"),
                       4: b("immutable", pointer=True)}
SECRET: Message = {1: m("metadata", OBJECT_META), 2: Field("data", "bytesmap"), 3: s("type"),
                   4: smap("stringData"), 5: b("immutable", pointer=True)}
SERVICE_ACCOUNT: Message = {
    1: m("metadata", OBJECT_META), 2: m("secrets", OBJECT_REFERENCE, repeated=True),
    3: m("imagePullSecrets", LOCAL_OBJECT_REFERENCE, repeated=True),
    4: b("automountServiceAccountToken", pointer=True),
}
SERVICE_PORT: Message = {1: s("name"), 2: s("protocol"), 6: s("appProtocol", pointer=True),
                         3: i("port", always=True), 4: Field("targetPort", "intstr"), 5: i("nodePort")}
SERVICE_SPEC: Message = {
    1: m("ports", SERVICE_PORT, repeated=True), 2: smap("selector"), 3: s("clusterIP"),
    18: strs("clusterIPs"), 4: s("type"), 5: strs("externalIPs"), 7: s("sessionAffinity"),
    8: s("loadBalancerIP"), 9: strs("loadBalancerSourceRanges"), 10: s("externalName"),
    11: s("externalTrafficPolicy"), 12: i("healthCheckNodePort"), 13: b("publishNotReadyAddresses"),
    14: m("sessionAffinityConfig", {1: m("clientIP", {1: i("timeoutSeconds", pointer=True)})}),
    19: strs("ipFamilies"), 17: s("ipFamilyPolicy", pointer=True),
    20: b("allocateLoadBalancerNodePorts", pointer=True), 21: s("loadBalancerClass", pointer=True),
    22: s("internalTrafficPolicy", pointer=True), 23: s("trafficDistribution", pointer=True),
}
SERVICE: Message = {1: m("metadata", OBJECT_META), 2: m("spec", SERVICE_SPEC),
                    3: m("status", {1: m("loadBalancer", {})})}

KEY_SELECTOR: Message = {1: Field("", "inline", LOCAL_OBJECT_REFERENCE), 2: s("key", always=True),
                         3: b("optional", pointer=True)}
ENV_VAR: Message = {1: s("name", always=True), 2: s("value"), 3: m("valueFrom", {
    1: m("fieldRef", {1: s("apiVersion"), 2: s("fieldPath", always=True)}),
    2: m("resourceFieldRef", {1: s("containerName"), 2: s("resource", always=True),
                              3: Field("divisor", "quantity")}),
    3: m("configMapKeyRef", KEY_SELECTOR), 4: m("secretKeyRef", KEY_SELECTOR)})}
CONTAINER_PORT: Message = {1: s("name"), 2: i("hostPort"), 3: i("containerPort", always=True),
                           4: s("protocol"), 5: s("hostIP")}
RESOURCES: Message = {1: Field("limits", "quantitymap"), 2: Field("requests", "quantitymap")}
VOLUME_MOUNT: Message = {1: s("name", always=True), 2: b("readOnly"), 3: s("mountPath", always=True),
                         4: s("subPath"), 5: s("mountPropagation", pointer=True), 6: s("subPathExpr")}
CONTAINER: Message = {
    1: s("name", always=True), 2: s("image"), 3: strs("command"), 4: strs("args"), 5: s("workingDir"),
    6: m("ports", CONTAINER_PORT, repeated=True), 7: m("env", ENV_VAR, repeated=True),
    8: m("resources", RESOURCES), 9: m("volumeMounts", VOLUME_MOUNT, repeated=True),
    13: s("terminationMessagePath"), 14: s("imagePullPolicy"), 16: b("stdin"), 17: b("stdinOnce"),
    18: b("tty"), 20: s("terminationMessagePolicy"), 24: s("restartPolicy", pointer=True),
}
TOLERATION: Message = {1: s("key"), 2: s("operator"), 3: s("value"), 4: s("effect"),
                       5: i("tolerationSeconds", pointer=True)}
POD_SPEC: Message = {
    2: m("containers", CONTAINER, repeated=True), 3: s("restartPolicy"),
    4: i("terminationGracePeriodSeconds", pointer=True), 5: i("activeDeadlineSeconds", pointer=True),
    6: s("dnsPolicy"), 7: smap("nodeSelector"), 8: s("serviceAccountName"), 9: s("serviceAccount"),
    10: s("nodeName"), 11: b("hostNetwork"), 12: b("hostPID"), 13: b("hostIPC"),
    15: m("imagePullSecrets", LOCAL_OBJECT_REFERENCE, repeated=True), 16: s("hostname"), 17: s("subdomain"),
    19: s("schedulerName"), 20: m("initContainers", CONTAINER, repeated=True),
    21: b("automountServiceAccountToken", pointer=True), 22: m("tolerations", TOLERATION, repeated=True),
    24: s("priorityClassName"), 25: i("priority", pointer=True), 30: b("enableServiceLinks", pointer=True),
}
POD_TEMPLATE_SPEC: Message = {1: m("metadata", OBJECT_META), 2: m("spec", POD_SPEC)}

# k8s.io/api/apps/v1/generated.proto
DEPLOYMENT_SPEC: Message = {
    1: i("replicas", pointer=True), 2: m("selector", LABEL_SELECTOR), 3: m("template", POD_TEMPLATE_SPEC),
    4: m("strategy", {1: s("type"), 2: m("rollingUpdate", {1: Field("maxUnavailable", "intstr"),
                                                           2: Field("maxSurge", "intstr")})}),
    5: i("minReadySeconds"), 6: i("revisionHistoryLimit", pointer=True), 7: b("paused"),
    9: i("progressDeadlineSeconds", pointer=True),
}
DEPLOYMENT_STATUS: Message = {1: i("observedGeneration"), 2: i("replicas"), 3: i("updatedReplicas"),
                              4: i("availableReplicas"), 5: i("unavailableReplicas"), 7: i("readyReplicas"),
                              8: i("collisionCount", pointer=True), 9: i("terminatingReplicas", pointer=True)}
DEPLOYMENT: Message = {1: m("metadata", OBJECT_META), 2: m("spec", DEPLOYMENT_SPEC),
                       3: m("status", DEPLOYMENT_STATUS)}

# k8s.io/api/authorization/v1/generated.proto
RESOURCE_ATTRIBUTES: Message = {1: s("namespace"), 2: s("verb"), 3: s("group"), 4: s("version"),
                                5: s("resource"), 6: s("subresource"), 7: s("name")}
SELF_SUBJECT_ACCESS_REVIEW: Message = {
    1: m("metadata", OBJECT_META),
    2: m("spec", {1: m("resourceAttributes", RESOURCE_ATTRIBUTES),
                  2: m("nonResourceAttributes", {1: s("path"), 2: s("verb")})}),
    3: m("status", {1: b("allowed", always=True), 4: b("denied"), 2: s("reason"), 3: s("evaluationError")}),
}

SUBJECT_RULES_REVIEW_STATUS: Message = {
    1: m("resourceRules", {1: strs("verbs", always=True), 2: strs("apiGroups"), 3: strs("resources"),
                           4: strs("resourceNames")}, repeated=True, always=True),
    2: m("nonResourceRules", {1: strs("verbs", always=True), 2: strs("nonResourceURLs")},
         repeated=True, always=True),
    3: b("incomplete", always=True), 4: s("evaluationError"),
}
SELF_SUBJECT_RULES_REVIEW: Message = {1: m("metadata", OBJECT_META), 2: m("spec", {1: s("namespace")}),
                                      3: m("status", SUBJECT_RULES_REVIEW_STATUS)}

# k8s.io/api/authentication/v1/generated.proto
# userInfo.extra (4: map of ExtraValue lists) is output only: a request carrying it is refused.
USER_INFO: Message = {1: s("username"), 2: s("uid"), 3: strs("groups")}
SELF_SUBJECT_REVIEW: Message = {1: m("metadata", OBJECT_META), 2: m("status", {1: m("userInfo", USER_INFO)})}

# k8s.io/api/rbac/v1/generated.proto
POLICY_RULE: Message = {1: strs("verbs", always=True), 2: strs("apiGroups"), 3: strs("resources"),
                        4: strs("resourceNames"), 5: strs("nonResourceURLs")}
ROLE: Message = {1: m("metadata", OBJECT_META), 2: m("rules", POLICY_RULE, repeated=True)}
CLUSTER_ROLE: Message = {**ROLE, 3: m("aggregationRule", {1: m("clusterRoleSelectors", LABEL_SELECTOR,
                                                                repeated=True)})}
ROLE_BINDING: Message = {
    1: m("metadata", OBJECT_META),
    2: m("subjects", {1: s("kind", always=True), 2: s("apiGroup"), 3: s("name", always=True),
                      4: s("namespace")}, repeated=True),
    3: m("roleRef", {1: s("apiGroup", always=True), 2: s("kind", always=True), 3: s("name", always=True)}),
}

KINDS: dict[tuple[str, str], Message] = {
    ("v1", "Namespace"): NAMESPACE,
    ("v1", "ConfigMap"): CONFIG_MAP,
    ("v1", "Secret"): SECRET,
    ("v1", "Service"): SERVICE,
    ("v1", "ServiceAccount"): SERVICE_ACCOUNT,
    ("apps/v1", "Deployment"): DEPLOYMENT,
    ("authorization.k8s.io/v1", "SelfSubjectAccessReview"): SELF_SUBJECT_ACCESS_REVIEW,
    ("authorization.k8s.io/v1", "SelfSubjectRulesReview"): SELF_SUBJECT_RULES_REVIEW,
    ("authentication.k8s.io/v1", "SelfSubjectReview"): SELF_SUBJECT_REVIEW,
    ("rbac.authorization.k8s.io/v1", "Role"): ROLE,
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): CLUSTER_ROLE,
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): ROLE_BINDING,
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): ROLE_BINDING,
}


def supported_kinds() -> list[tuple[str, str]]:
    """(apiVersion, kind) pairs decode_object understands."""
    return sorted(KINDS)


# ---------------------------------------------------------------------------------------------
# Decoding


def decode_object(body: bytes) -> dict[str, Any]:
    """The JSON-equivalent dict of a `k8s\\x00`-enveloped protobuf Kubernetes object."""
    if not body.startswith(MAGIC):
        raise ProtobufError("the body does not start with the Kubernetes protobuf magic 'k8s\\x00'")
    envelope = _message_fields(body[len(MAGIC):], "runtime.Unknown")
    type_meta = _message_fields(_as_bytes(envelope.get(1, b"")), "TypeMeta")
    api_version = _text(type_meta.get(1, b""))
    kind = _text(type_meta.get(2, b""))
    encoding = _text(envelope.get(3, b""))
    if encoding:
        raise ProtobufError(f"unsupported protobuf content encoding {encoding!r}")
    schema = KINDS.get((api_version, kind))
    if schema is None:
        raise ProtobufError(
            f"this server decodes protobuf only for {', '.join(k for _, k in supported_kinds())}; "
            f"send {api_version or '?'} {kind or '?'} as application/json"
        )
    decoded = decode_message(_as_bytes(envelope.get(2, b"")), schema, kind)
    return {"apiVersion": api_version, "kind": kind, **decoded}


def _message_fields(data: bytes, what: str) -> dict[int, int | bytes]:
    """The last value of every field of a small fixed message (the envelope and TypeMeta)."""
    try:
        return {number: value for number, _, value in wire_fields(data)}
    except ProtobufError as e:
        raise ProtobufError(f"malformed {what}: {e}") from None


def _as_bytes(value: int | bytes) -> bytes:
    if not isinstance(value, bytes):
        raise ProtobufError("expected a length-delimited field in protobuf body")
    return value


def _text(value: int | bytes) -> str:
    try:
        return _as_bytes(value).decode()
    except UnicodeDecodeError:
        raise ProtobufError("a string field of the protobuf body is not UTF-8") from None


def decode_message(data: bytes, schema: Mapping[int, Field], where: str) -> dict[str, Any]:
    """Decode one message with its field table into the JSON-equivalent dict."""
    out: dict[str, Any] = {}
    for number, wire, value in wire_fields(data):
        spec = schema.get(number)
        if spec is None:
            _refuse_unknown(number, value, where)
            continue
        path = f"{where}.{spec.name}" if spec.name else where
        if spec.kind == "inline":  # Go embedded struct: its fields sit in the parent's JSON
            out.update(decode_message(_as_bytes(value), spec.message or {}, path))
        elif spec.kind in ("map", "bytesmap", "quantitymap"):
            key, item = _map_entry(_as_bytes(value), spec.kind, path)
            out.setdefault(spec.name, {})[key] = item
        elif spec.repeated:
            out.setdefault(spec.name, []).extend(_repeated_values(spec, wire, value, path))
        else:
            out[spec.name] = _value(spec, wire, value, path)
    for spec in schema.values():
        if spec.repeated and spec.always and spec.name not in out:
            out[spec.name] = None  # a nil slice without omitempty is JSON null
    return {name: v for name, v in out.items() if not _omitted(schema, name, v)}


def _refuse_unknown(number: int, value: int | bytes, where: str) -> None:
    # Go's encoder writes every non-pointer field even when empty; those carry nothing to lose.
    if not _is_empty(value):
        raise ProtobufError(f"protobuf field {number} of {where} is not supported by this server; "
                            "send the object as application/json")


def _is_empty(value: int | bytes) -> bool:
    """A zero scalar, an empty string, or a message made only of such values (e.g. `spec {}`)."""
    if value in (0, b""):
        return True
    if isinstance(value, int):
        return False
    try:
        return all(_is_empty(inner) for _, _, inner in wire_fields(value))
    except ProtobufError:
        return False


def _omitted(schema: Mapping[int, Field], name: str, value: Any) -> bool:
    spec = next((f for f in schema.values() if f.name == name), None)
    if spec is None or spec.always:
        return False
    if spec.pointer or spec.repeated or spec.kind in ("message", "map", "bytesmap", "quantitymap"):
        return value is None
    return value in ("", 0, False, None)


def _repeated_values(spec: Field, wire: int, value: int | bytes, path: str) -> list[Any]:
    if spec.kind in ("int", "bool") and wire == LENGTH:  # packed encoding
        values, pos, data = [], 0, _as_bytes(value)
        while pos < len(data):
            number, pos = _varint(data, pos)
            values.append(_scalar(spec.kind, number))
        return values
    return [_value(spec, wire, value, path)]


def _value(spec: Field, wire: int, value: int | bytes, path: str) -> Any:
    expected = VARINT if spec.kind in ("int", "bool") else LENGTH
    if wire != expected:
        raise ProtobufError(f"protobuf field {path} has wire type {wire}, expected {expected}")
    if isinstance(value, int):
        return _scalar(spec.kind, value)
    if spec.kind == "string":
        return _text(value)
    if spec.kind == "bytes":
        return base64.b64encode(value).decode()
    if spec.kind == "message":
        return decode_message(value, spec.message or {}, path)
    if spec.kind == "intstr":
        return _int_or_string(value, path)
    if spec.kind == "quantity":
        return _text(_message_fields(value, "Quantity").get(1, b""))
    if spec.kind == "time":
        return _time(value)
    raise ProtobufError(f"protobuf field {path}: unsupported kind {spec.kind}")  # pragma: no cover


def _scalar(kind: str, value: int) -> int | bool:
    return bool(value) if kind == "bool" else _signed(value)


def _int_or_string(data: bytes, path: str) -> int | str:
    # intstr.IntOrString {1: type (0 Int, 1 String), 2: intVal, 3: strVal}
    fields = _message_fields(data, path)
    kind = fields.get(1, 0)
    if kind == 1:
        return _text(fields.get(3, b""))
    value = fields.get(2, 0)
    if not isinstance(value, int):
        raise ProtobufError(f"malformed IntOrString at {path}")
    return _signed(value)


def _time(data: bytes) -> str | None:
    # metav1.Time {1: seconds, 2: nanos}; the zero time is JSON null, which the server fills in.
    fields = _message_fields(data, "Time")
    seconds = fields.get(1, 0)
    if not isinstance(seconds, int) or seconds == 0:
        return None
    return datetime.fromtimestamp(_signed(seconds), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _map_entry(data: bytes, kind: str, path: str) -> tuple[str, Any]:
    fields = _message_fields(data, f"{path} entry")
    key = _text(fields.get(1, b""))
    raw = _as_bytes(fields.get(2, b""))
    if kind == "bytesmap":
        return key, base64.b64encode(raw).decode()
    if kind == "quantitymap":
        return key, _text(_message_fields(raw, "Quantity").get(1, b""))
    return key, _text(raw)
