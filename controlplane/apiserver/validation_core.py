"""Validation of core/v1 kinds: pods (and pod templates), services, endpoints, configmaps,
secrets, nodes, plus coordination.k8s.io leases (pkg/apis/core/validation).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
from typing import Any

from controlplane.apiserver.validation_common import (
    PROTOCOLS,
    Causes,
    Obj,
    as_list,
    as_map,
    as_str,
    go_string_list,
    validate_cidr,
    validate_ip,
    validate_labels,
    validate_port_num_or_name,
)
from controlplane.apiserver.validation_syntax import (
    is_config_key,
    is_dns1123_label,
    is_dns1123_subdomain,
    is_qualified_name,
    is_valid_port_name,
    is_valid_port_num,
)

# ---------------------------------------------------------------------------------------------
# Pods and pod templates (core/validation: ValidatePodSpec, validateContainers, ValidatePodUpdate).

RESTART_POLICIES = ("Always", "OnFailure", "Never")
DNS_POLICIES = ("ClusterFirstWithHostNet", "ClusterFirst", "Default", "None")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")


def _validate_container_ports(ports: list[Any], path: str, c: Causes) -> None:
    names: set[str] = set()
    for i, port in enumerate(ports):
        pp, port = f"{path}[{i}]", as_map(port)
        name = port.get("name")
        if name:
            c.invalid_each(f"{pp}.name", name, is_valid_port_name(as_str(name)))
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
    container = as_map(container)
    name = container.get("name")
    if not name:
        c.required(f"{path}.name")
    else:
        c.invalid_each(f"{path}.name", name, is_dns1123_label(as_str(name)))
        if name in names:
            c.duplicate(f"{path}.name", name)
        names.add(name)
    if not container.get("image"):
        c.required(f"{path}.image")
    policy = container.get("imagePullPolicy")
    if policy is not None and policy not in PULL_POLICIES:
        c.not_supported(f"{path}.imagePullPolicy", policy, PULL_POLICIES)
    _validate_container_ports(as_list(container.get("ports")), f"{path}.ports", c)
    for j, env in enumerate(as_list(container.get("env"))):
        if not as_map(env).get("name"):
            c.required(f"{path}.env[{j}].name")


TAINT_EFFECTS = ("NoExecute", "NoSchedule", "PreferNoSchedule")


def _validate_toleration(toleration: Obj, path: str, c: Causes) -> None:
    """validateTolerations: operator Exists takes no value; effect must be a taint effect."""
    key, operator = toleration.get("key"), toleration.get("operator", "Equal")
    if key:
        c.invalid_each(f"{path}.key", key, is_qualified_name(as_str(key)))
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
    spec = as_map(spec)
    containers = as_list(spec.get("containers"))
    if not containers:
        c.required(f"{path}.containers")
    names: set[str] = set()
    for i, container in enumerate(as_list(spec.get("initContainers"))):
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
    for i, volume in enumerate(as_list(spec.get("volumes"))):
        vname = as_map(volume).get("name")
        if not vname:
            c.required(f"{path}.volumes[{i}].name")
            continue
        c.invalid_each(f"{path}.volumes[{i}].name", vname, is_dns1123_label(as_str(vname)))
        if vname in volumes:
            c.duplicate(f"{path}.volumes[{i}].name", vname)
        volumes.add(vname)
    validate_labels(spec.get("nodeSelector"), f"{path}.nodeSelector", c)
    for i, toleration in enumerate(as_list(spec.get("tolerations"))):
        _validate_toleration(as_map(toleration), f"{path}.tolerations[{i}]", c)
    grace = spec.get("terminationGracePeriodSeconds")
    if grace is not None and (isinstance(grace, bool) or not isinstance(grace, int)):
        c.invalid(f"{path}.terminationGracePeriodSeconds", grace, "must be an integer")
    if spec.get("nodeName"):
        c.invalid_each(f"{path}.nodeName", spec["nodeName"], is_dns1123_subdomain(as_str(spec["nodeName"])))


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
        new_list, old_list = as_list(merged.get(key)), as_list(old_spec.get(key))
        for new_c, old_c in zip(new_list, old_list, strict=False):
            if isinstance(new_c, dict) and isinstance(old_c, dict):
                new_c["image"] = old_c.get("image")
    merged["activeDeadlineSeconds"] = old_spec.get("activeDeadlineSeconds")
    new_tol, old_tol = as_list(merged.get("tolerations")), as_list(old_spec.get("tolerations"))
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
    spec, old_spec = as_map(spec), as_map(old_spec)
    if _mutable_pod_fields_from(spec, old_spec) != _mutable_pod_fields_from(old_spec, old_spec):
        c.forbidden("spec", _POD_UPDATE_MSG)
    old_deadline, deadline = old_spec.get("activeDeadlineSeconds"), spec.get("activeDeadlineSeconds")
    if old_deadline and (not deadline or deadline > old_deadline):
        c.invalid("spec.activeDeadlineSeconds", deadline,
                  "must be less than or equal to previous value")


def validate_pod(obj: Obj, old: Obj | None, c: Causes) -> None:
    validate_pod_spec(obj.get("spec"), "spec", c)
    if old is not None:
        validate_pod_update(obj.get("spec"), old.get("spec"), c)


# ---------------------------------------------------------------------------------------------
# Services (core/validation: ValidateService, ValidateServiceUpdate).

SERVICE_TYPES = ("ClusterIP", "ExternalName", "LoadBalancer", "NodePort")  # sets.List order
SESSION_AFFINITIES = ("ClientIP", "None")
TRAFFIC_POLICIES = ("Cluster", "Local")


def _validate_service_port(port: Obj, pp: str, svc_type: str, many: bool, c: Causes) -> None:
    name = port.get("name")
    if many and not name:
        c.required(f"{pp}.name")
    elif name:
        c.invalid_each(f"{pp}.name", name, is_dns1123_label(as_str(name)))
    c.invalid_each(f"{pp}.port", port.get("port"), is_valid_port_num(port.get("port")))
    if port.get("protocol") not in PROTOCOLS:
        c.not_supported(f"{pp}.protocol", port.get("protocol"), PROTOCOLS)
    validate_port_num_or_name(port.get("targetPort"), f"{pp}.targetPort", c)
    node_port = port.get("nodePort")
    if node_port:
        if svc_type == "ClusterIP":
            c.forbidden(f"{pp}.nodePort", "may not be used when `type` is 'ClusterIP'")
        else:
            c.invalid_each(f"{pp}.nodePort", node_port, is_valid_port_num(node_port))


def _validate_service_ports(spec: Obj, svc_type: str, c: Causes) -> None:
    ports = as_list(spec.get("ports"))
    headless = spec.get("clusterIP") == "None"
    if not ports and not headless and svc_type != "ExternalName":
        c.required("spec.ports")
    names: set[str] = set()
    seen: set[tuple[Any, Any]] = set()
    for i, port in enumerate(ports):
        pp, port = f"spec.ports[{i}]", as_map(port)
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
        name = as_str(spec.get("externalName"))
        if not name:
            c.required("spec.externalName")
        else:
            c.invalid_each("spec.externalName", name, is_dns1123_subdomain(name.rstrip(".")))
        return
    if ip in (None, "", "None"):
        return
    try:
        ipaddress.ip_address(as_str(ip))
    except ValueError:
        c.invalid("spec.clusterIPs[0]", ip, "must be empty, 'None', or a valid IP address")


def validate_service(obj: Obj, old: Obj | None, c: Causes) -> None:
    spec = as_map(obj.get("spec"))
    svc_type = spec.get("type")
    if svc_type not in SERVICE_TYPES:
        c.not_supported("spec.type", svc_type, SERVICE_TYPES)
        svc_type = ""
    if spec.get("sessionAffinity") not in SESSION_AFFINITIES:
        c.not_supported("spec.sessionAffinity", spec.get("sessionAffinity"), SESSION_AFFINITIES)
    _validate_cluster_ip(spec, as_str(svc_type), c)
    _validate_service_ports(spec, as_str(svc_type), c)
    validate_labels(spec.get("selector"), "spec.selector", c)
    policy = spec.get("externalTrafficPolicy")
    if policy is not None and policy not in TRAFFIC_POLICIES:
        c.not_supported("spec.externalTrafficPolicy", policy, TRAFFIC_POLICIES)
    if old is not None:
        old_spec = as_map(old.get("spec"))
        old_ip, new_ip = old_spec.get("clusterIP"), spec.get("clusterIP")
        external = "ExternalName" in (svc_type, old_spec.get("type"))
        if old_ip and new_ip != old_ip and not external:
            # A request that changes clusterIP alone has its clusterIPs normalized to [clusterIP].
            ips = as_list(spec.get("clusterIPs"))
            shown = ips if ips and ips[0] == new_ip else [new_ip]
            c.invalid("spec.clusterIPs[0]", go_string_list(shown), "may not change once set")


# ---------------------------------------------------------------------------------------------
# Endpoints, EndpointSlices, ConfigMaps, Secrets.

def _validate_endpoint_ports(ports: list[Any], path: str, c: Causes) -> None:
    for i, port in enumerate(ports):
        port, pp = as_map(port), f"{path}[{i}]"
        if port.get("name"):
            c.invalid_each(f"{pp}.name", port["name"], is_dns1123_label(as_str(port["name"])))
        elif len(ports) > 1:
            c.required(f"{pp}.name")
        if port.get("port") is not None:
            c.invalid_each(f"{pp}.port", port["port"], is_valid_port_num(port["port"]))
        if port.get("protocol") not in (None, *PROTOCOLS):
            c.not_supported(f"{pp}.protocol", port["protocol"], PROTOCOLS)


def validate_endpoints(obj: Obj, old: Obj | None, c: Causes) -> None:
    for i, subset in enumerate(as_list(obj.get("subsets"))):
        subset, sp = as_map(subset), f"subsets[{i}]"
        for key in ("addresses", "notReadyAddresses"):
            for j, addr in enumerate(as_list(subset.get(key))):
                validate_ip(as_map(addr).get("ip"), f"{sp}.{key}[{j}].ip", c)
        _validate_endpoint_ports(as_list(subset.get("ports")), f"{sp}.ports", c)


ADDRESS_TYPES = ("FQDN", "IPv4", "IPv6")


def validate_endpoint_slice(obj: Obj, old: Obj | None, c: Causes) -> None:
    address_type = obj.get("addressType")
    if not address_type:
        c.required("addressType")
    elif address_type not in ADDRESS_TYPES:
        c.not_supported("addressType", address_type, ADDRESS_TYPES)
    elif old is not None and old.get("addressType") != address_type:
        c.invalid("addressType", address_type, "field is immutable")
    for i, endpoint in enumerate(as_list(obj.get("endpoints"))):
        addresses = as_list(as_map(endpoint).get("addresses"))
        if not addresses or len(addresses) > 100:
            c.invalid(f"endpoints[{i}].addresses", addresses,
                      "must contain at least 1 and at most 100 addresses")
        if address_type in ("IPv4", "IPv6"):
            for j, addr in enumerate(addresses):
                validate_ip(addr, f"endpoints[{i}].addresses[{j}]", c)
    _validate_endpoint_ports(as_list(obj.get("ports")), "ports", c)


def _validate_data_keys(obj: Obj, keys: tuple[str, ...], c: Causes) -> None:
    seen: set[str] = set()
    for key_field in keys:
        for key in as_map(obj.get(key_field)):
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


MAX_DATA_SIZE = 1024 * 1024  # core.MaxSecretSize; configmaps share the 1 MiB limit


def validate_configmap(obj: Obj, old: Obj | None, c: Causes) -> None:
    _validate_data_keys(obj, ("data", "binaryData"), c)
    size = sum(len(str(k)) + len(str(v)) for key in ("data", "binaryData")
               for k, v in as_map(obj.get(key)).items())
    if size > MAX_DATA_SIZE:
        c.too_long("", MAX_DATA_SIZE)
    _validate_immutable_data(obj, old, ("data", "binaryData"), c)


def validate_secret(obj: Obj, old: Obj | None, c: Causes) -> None:
    _validate_data_keys(obj, ("data", "stringData"), c)
    # Decoded size: base64 carries 3 bytes per 4 characters.
    if sum(len(str(v)) * 3 // 4 for v in as_map(obj.get("data")).values()) > MAX_DATA_SIZE:
        c.too_long("data", MAX_DATA_SIZE)
    for key, value in as_map(obj.get("data")).items():
        try:
            base64.b64decode(as_str(value), validate=True)
        except (binascii.Error, ValueError):
            c.invalid(f"data[{key}]", "<secret contents redacted>", "must be base64-encoded")
    if obj.get("type") == "kubernetes.io/service-account-token":
        annotations = as_map(as_map(obj.get("metadata")).get("annotations"))
        if not annotations.get("kubernetes.io/service-account.name"):
            c.required("metadata.annotations[kubernetes.io/service-account.name]")
    if old is not None and old.get("type") != obj.get("type"):
        c.invalid("type", obj.get("type"), "field is immutable")
    _validate_immutable_data(obj, old, ("data",), c)


# ---------------------------------------------------------------------------------------------
# Nodes and leases.

def validate_node(obj: Obj, old: Obj | None, c: Causes) -> None:
    spec = as_map(obj.get("spec"))
    if spec.get("podCIDR"):
        validate_cidr(spec["podCIDR"], "spec.podCIDR", c)
    for i, cidr in enumerate(as_list(spec.get("podCIDRs"))):
        validate_cidr(cidr, f"spec.podCIDRs[{i}]", c)
    for i, taint in enumerate(as_list(spec.get("taints"))):
        taint, tp = as_map(taint), f"spec.taints[{i}]"
        if not taint.get("key"):
            c.required(f"{tp}.key")
        else:
            c.invalid_each(f"{tp}.key", taint["key"], is_qualified_name(as_str(taint["key"])))
        if taint.get("effect") not in TAINT_EFFECTS:
            c.not_supported(f"{tp}.effect", taint.get("effect"), TAINT_EFFECTS)
    if old is not None:
        # The IPAM controller assigns podCIDR once; flannel/calico rely on it never moving.
        old_spec = as_map(old.get("spec"))
        for key in ("podCIDR", "podCIDRs"):
            if old_spec.get(key) and spec.get(key) != old_spec.get(key):
                c.forbidden(f"spec.{key}", f"node updates may not change {key} except from \"\" to valid")


def validate_lease(obj: Obj, old: Obj | None, c: Causes) -> None:
    spec = as_map(obj.get("spec"))
    for key in ("leaseDurationSeconds", "leaseTransitions"):
        value = spec.get(key)
        if value is None:
            continue
        minimum = 1 if key == "leaseDurationSeconds" else 0
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            c.invalid(f"spec.{key}", value, "must be greater than 0" if minimum else
                      "must be greater than or equal to 0")
