"""`fieldValidation=Strict|Warn|Ignore` for create and update bodies, on the fields we know exactly.

Upstream decodes request bodies strictly against the Go types: unknown fields are a 400 BadRequest
under Strict (what `kubectl create -f`/`apply -f` send), a `Warning: 299` response header under Warn
(the server default since 1.27), and silently dropped under Ignore.  Without full schemas we check the
two levels whose fields are fixed and easy to get wrong in a manifest: the top-level fields of every
kind we serve and ObjectMeta.  Deeper unknown fields are kept and stored as they are.
"""

from __future__ import annotations

from typing import Any

from controlplane.apiserver import errors
from controlplane.apiserver.resources import Resource

COMMON = frozenset({"apiVersion", "kind", "metadata"})
SPEC_STATUS = frozenset({"spec", "status"})

TOP_LEVEL: dict[str, frozenset[str]] = {
    "Namespace": SPEC_STATUS, "Node": SPEC_STATUS, "Pod": SPEC_STATUS, "Service": SPEC_STATUS,
    "ReplicationController": SPEC_STATUS, "Deployment": SPEC_STATUS, "ReplicaSet": SPEC_STATUS,
    "NetworkPolicy": SPEC_STATUS, "Lease": frozenset({"spec"}),
    "SelfSubjectAccessReview": SPEC_STATUS, "SelfSubjectRulesReview": SPEC_STATUS,
    "SelfSubjectReview": frozenset({"status"}),
    "Endpoints": frozenset({"subsets"}),
    "ConfigMap": frozenset({"data", "binaryData", "immutable"}),
    "Secret": frozenset({"data", "stringData", "type", "immutable"}),
    "ServiceAccount": frozenset({"secrets", "imagePullSecrets", "automountServiceAccountToken"}),
    "Event": frozenset({"involvedObject", "reason", "message", "source", "firstTimestamp",
                        "lastTimestamp", "count", "type", "eventTime", "series", "action", "related",
                        "reportingComponent", "reportingInstance"}),
    "EndpointSlice": frozenset({"addressType", "endpoints", "ports"}),
    "Role": frozenset({"rules"}),
    "ClusterRole": frozenset({"rules", "aggregationRule"}),
    "RoleBinding": frozenset({"subjects", "roleRef"}),
    "ClusterRoleBinding": frozenset({"subjects", "roleRef"}),
}

OBJECT_META = frozenset({
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
    "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations",
    "ownerReferences", "finalizers", "managedFields",
})

DIRECTIVES = ("Strict", "Warn", "Ignore")


def unknown_fields(res: Resource, obj: dict[str, Any]) -> list[str]:
    """Unknown top-level and metadata field paths of obj (empty for kinds without a table)."""
    allowed = TOP_LEVEL.get(res.kind)
    if allowed is None:
        return []
    out = [k for k in obj if k not in COMMON and k not in allowed]
    meta = obj.get("metadata")
    if isinstance(meta, dict):
        out += [f"metadata.{k}" for k in meta if k not in OBJECT_META]
    return sorted(out)


def check(res: Resource, obj: dict[str, Any], directive: str | None) -> list[str]:
    """Apply the directive: raise 400 under Strict, return warning texts under Warn (the default)."""
    mode = directive or "Warn"
    if mode not in DIRECTIVES:
        raise errors.bad_request(f'fieldValidation: Unsupported value: "{mode}": supported values: '
                                 '"Ignore", "Strict", "Warn"')
    if mode == "Ignore":
        return []
    unknown = unknown_fields(res, obj)
    if not unknown:
        return []
    if mode == "Strict":
        detail = ", ".join(f'unknown field "{f}"' for f in unknown)
        raise errors.bad_request(f'{res.kind} in version "{res.version}" cannot be handled as a '
                                 f"{res.kind}: strict decoding error: {detail}")
    return [f'unknown field "{f}"' for f in unknown]


def warning_header(warnings: list[str]) -> str:
    """The `Warning` header value (RFC 7234 code 299, agent "-"), one entry per warning."""
    return ", ".join('299 - "' + w.replace("\\", "\\\\").replace('"', '\\"') + '"' for w in warnings)
