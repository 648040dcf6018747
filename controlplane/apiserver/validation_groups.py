"""Validation of networking.k8s.io NetworkPolicies and rbac.authorization.k8s.io objects."""

from __future__ import annotations

import ipaddress
from typing import Any

from controlplane.apiserver.validation_common import (
    CIDR_MSG,
    PROTOCOLS,
    Causes,
    GoValue,
    Obj,
    as_list,
    as_map,
    as_str,
    go_quote,
    validate_label_selector,
    validate_port_num_or_name,
)
from controlplane.apiserver.validation_syntax import (
    is_dns1123_subdomain,
    is_path_segment_name,
    is_valid_port_num,
)

# ---------------------------------------------------------------------------------------------
# NetworkPolicy (networking/validation: ValidateNetworkPolicySpec).

POLICY_TYPES = ("Ingress", "Egress")


def _validate_policy_port(port: Obj, pp: str, c: Causes) -> None:
    if "protocol" in port and port["protocol"] not in PROTOCOLS:
        c.not_supported(f"{pp}.protocol", port["protocol"], PROTOCOLS)
    value, end = port.get("port"), port.get("endPort")
    validate_port_num_or_name(value, f"{pp}.port", c)
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


def _validate_ip_block(block: Obj, path: str, c: Causes) -> None:
    cidr = as_str(block.get("cidr"))
    if not cidr:
        c.required(f"{path}.cidr")
        return
    try:
        net = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        c.invalid(f"{path}.cidr", cidr, CIDR_MSG)
        return
    for i, text in enumerate(as_list(block.get("except"))):
        try:
            sub = ipaddress.ip_network(as_str(text), strict=False)
        except ValueError:
            c.invalid(f"{path}.except[{i}]", text, CIDR_MSG)
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
    for i, rule in enumerate(as_list(spec.get(direction))):
        rule, rp = as_map(rule), f"spec.{direction}[{i}]"
        for j, port in enumerate(as_list(rule.get("ports"))):
            _validate_policy_port(as_map(port), f"{rp}.ports[{j}]", c)
        for j, peer in enumerate(as_list(rule.get(peers_key))):
            _validate_peer(as_map(peer), f"{rp}.{peers_key}[{j}]", c)


def validate_network_policy(obj: Obj, old: Obj | None, c: Causes) -> None:
    spec = as_map(obj.get("spec"))
    validate_label_selector(spec.get("podSelector"), "spec.podSelector", c)
    _validate_rules(spec, "ingress", "from", c)
    _validate_rules(spec, "egress", "to", c)
    types = as_list(spec.get("policyTypes"))
    for i, kind in enumerate(types):
        if kind not in POLICY_TYPES:
            c.not_supported(f"spec.policyTypes[{i}]", kind, POLICY_TYPES)
    if len(types) > 2:
        c.invalid("spec.policyTypes", GoValue("[]networking.PolicyType{" + ", ".join(
            go_quote(str(t)) for t in types) + "}"), "may not specify more than two policyTypes")


# ---------------------------------------------------------------------------------------------
# RBAC (rbac/validation).

def _validate_policy_rules(rules: Any, c: Causes) -> None:
    for i, rule in enumerate(as_list(rules)):
        rule, rp = as_map(rule), f"rules[{i}]"
        if not as_list(rule.get("verbs")):
            c.required(f"{rp}.verbs", "verbs must contain at least one value")
        has_urls = bool(as_list(rule.get("nonResourceURLs")))
        if has_urls and (as_list(rule.get("resources")) or as_list(rule.get("apiGroups"))):
            c.invalid(f"{rp}.nonResourceURLs", rule.get("nonResourceURLs"),
                      "rules cannot apply to both regular resources and non-resource URLs")
        elif not has_urls and not as_list(rule.get("resources")):
            c.required(f"{rp}.resources", "resource rules must supply at least one resource")
        elif not has_urls and rule.get("apiGroups") is None:
            c.required(f"{rp}.apiGroups", "resource rules must supply at least one api group")


def validate_role(obj: Obj, old: Obj | None, c: Causes) -> None:
    if obj.get("aggregationRule") is not None:
        return  # ClusterRole aggregation: the controller fills rules in
    _validate_policy_rules(obj.get("rules"), c)


def _validate_subjects(obj: Obj, cluster: bool, c: Causes) -> None:
    for i, subject in enumerate(as_list(obj.get("subjects"))):
        subject, sp = as_map(subject), f"subjects[{i}]"
        kind, name = subject.get("kind"), as_str(subject.get("name"))
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
    ref = as_map(obj.get("roleRef"))
    kinds = ["ClusterRole"] if cluster else ["Role", "ClusterRole"]
    if ref.get("apiGroup") != "rbac.authorization.k8s.io":
        c.not_supported("roleRef.apiGroup", ref.get("apiGroup"), ["rbac.authorization.k8s.io"])
    if ref.get("kind") not in kinds:
        c.not_supported("roleRef.kind", ref.get("kind"), kinds)
    if not ref.get("name"):
        c.required("roleRef.name")
    else:
        c.invalid_each("roleRef.name", ref["name"], is_path_segment_name(as_str(ref["name"])))
    _validate_subjects(obj, cluster, c)
    if old is not None and as_map(old.get("roleRef")) != ref:
        c.invalid("roleRef", ref, "cannot change roleRef")


def validate_role_binding(obj: Obj, old: Obj | None, c: Causes) -> None:
    _validate_binding(obj, old, False, c)


def validate_cluster_role_binding(obj: Obj, old: Obj | None, c: Causes) -> None:
    _validate_binding(obj, old, True, c)
