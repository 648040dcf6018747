"""Validation with upstream field paths, reasons and messages (an Invalid 422's details.causes).

Mirrors k8s.io/apimachinery/pkg/util/validation (name/label syntax, RegexError wording) and
pkg/apis/core/validation, apps/validation, networking/validation and rbac/validation for the
fields we serve. validate(res, obj, old) returns causes {reason, message, field}; the server wraps
them with errors.invalid(), which prints `<Kind> "<name>" is invalid: <field>: <message>` exactly
as kubectl users know it. Runs after defaulting, so defaulted fields are present.

The checks live in validation_syntax (names, labels, ports), validation_common (causes,
metadata, selectors), validation_core, validation_workloads and validation_groups.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from controlplane.apiserver import validation_core as core
from controlplane.apiserver import validation_groups as groups
from controlplane.apiserver import validation_workloads as workloads
from controlplane.apiserver.resources import Resource
from controlplane.apiserver.validation_common import Causes, NameCheck, as_map, validate_object_meta
from controlplane.apiserver.validation_syntax import (
    is_dns1035_label,
    is_dns1123_label,
    is_dns1123_subdomain,
    is_path_segment_name,
)

Obj = dict[str, Any]
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
    ("", "Pod"): core.validate_pod,
    ("", "Service"): core.validate_service,
    ("", "ReplicationController"): workloads.validate_rc,
    ("", "Endpoints"): core.validate_endpoints,
    ("", "Node"): core.validate_node,
    ("coordination.k8s.io", "Lease"): core.validate_lease,
    ("", "ConfigMap"): core.validate_configmap,
    ("", "Secret"): core.validate_secret,
    ("discovery.k8s.io", "EndpointSlice"): core.validate_endpoint_slice,
    ("networking.k8s.io", "NetworkPolicy"): groups.validate_network_policy,
    ("apps", "ReplicaSet"): workloads.validate_replica_set,
    ("apps", "Deployment"): workloads.validate_deployment,
    ("rbac.authorization.k8s.io", "Role"): groups.validate_role,
    ("rbac.authorization.k8s.io", "ClusterRole"): groups.validate_role,
    ("rbac.authorization.k8s.io", "RoleBinding"): groups.validate_role_binding,
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"): groups.validate_cluster_role_binding,
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
        validate_object_meta(as_map(obj.get("metadata")), name_check, res.namespaced, c)
    validator = VALIDATORS.get(key)
    if validator is not None:
        try:
            validator(obj, old if isinstance(old, dict) else None, c)
        except (AttributeError, TypeError, ValueError) as exc:
            c.invalid("", type(exc).__name__, f"malformed {res.kind}: {exc}")
    return c.items
