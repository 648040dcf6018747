"""Defaulting: the values kube-apiserver fills in before validation and storage.

Mirrors pkg/apis/core/v1/defaults.go, pkg/apis/apps/v1/defaults.go, networking/v1 and rbac/v1
defaults for the fields we serve, plus the few values upstream's create strategies set (pod
status.phase Pending and qosClass, namespace phase Active and its metadata.name label) because
clients (kubectl describe, the scheduler, `kubectl get` STATUS) read them right after a create.
Defaulting only ever fills what is missing, so running it again on an update is harmless.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Callable
from typing import Any

from controlplane.apiserver.resources import Resource

Obj = dict[str, Any]

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
RBAC_GROUP = "rbac.authorization.k8s.io"


def _spec(obj: Obj) -> Obj:
    """obj.spec, created when absent; a malformed (non-map) spec is left for validation."""
    if "spec" not in obj or obj["spec"] is None:
        obj["spec"] = {}
    spec = obj["spec"]
    return spec if isinstance(spec, dict) else {}


def image_pull_policy(image: str) -> str:
    """Always for `:latest` or an untagged image, IfNotPresent otherwise (digests included)."""
    if "@" in image:
        return "IfNotPresent"
    last = image.rsplit("/", 1)[-1]
    tag = last.rsplit(":", 1)[1] if ":" in last else "latest"
    return "Always" if tag == "latest" else "IfNotPresent"


def _default_ports(ports: list[Obj] | None) -> None:
    for port in ports or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")


def _default_probe(probe: Obj | None) -> None:
    if not isinstance(probe, dict):
        return
    for key, value in (("timeoutSeconds", 1), ("periodSeconds", 10), ("successThreshold", 1),
                       ("failureThreshold", 3)):
        probe.setdefault(key, value)
    http = probe.get("httpGet")
    if isinstance(http, dict):
        http.setdefault("path", "/")
        http.setdefault("scheme", "HTTP")


def _default_container(container: Obj, host_network: bool) -> None:
    if not isinstance(container, dict):
        return
    if "imagePullPolicy" not in container and isinstance(container.get("image"), str):
        container["imagePullPolicy"] = image_pull_policy(container["image"])
    container.setdefault("terminationMessagePath", "/dev/termination-log")
    container.setdefault("terminationMessagePolicy", "File")
    resources = container.setdefault("resources", {})
    # SetDefaults_Pod: limits without requests imply equal requests.
    if isinstance(resources, dict) and resources.get("limits"):
        requests = resources.setdefault("requests", {})
        for name, value in resources["limits"].items():
            requests.setdefault(name, value)
    _default_ports(container.get("ports"))
    for port in container.get("ports") or []:
        if host_network and isinstance(port, dict) and "containerPort" in port:
            port.setdefault("hostPort", port["containerPort"])
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        _default_probe(container.get(probe))
    for env in container.get("env") or []:
        field_ref = (env.get("valueFrom") or {}).get("fieldRef") if isinstance(env, dict) else None
        if isinstance(field_ref, dict):
            field_ref.setdefault("apiVersion", "v1")


_VOLUME_SOURCES_WITH_MODE = ("secret", "configMap", "downwardAPI", "projected")


def _default_volume(volume: Obj) -> None:
    if not isinstance(volume, dict):
        return
    if set(volume) <= {"name"}:
        volume["emptyDir"] = {}  # a volume without a source is an emptyDir
    for source in _VOLUME_SOURCES_WITH_MODE:
        if isinstance(volume.get(source), dict):
            volume[source].setdefault("defaultMode", 0o644)
    if isinstance(volume.get("hostPath"), dict):
        volume["hostPath"].setdefault("type", "")


def default_pod_spec(spec: Obj) -> None:
    """SetDefaults_PodSpec + containers/volumes; also used for the templates of rc/rs/deployments."""
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    spec.setdefault("enableServiceLinks", True)
    host_network = bool(spec.get("hostNetwork"))
    for key in ("containers", "initContainers"):
        for container in spec.get(key) or []:
            _default_container(container, host_network)
    for volume in spec.get("volumes") or []:
        _default_volume(volume)


def qos_class(spec: Obj) -> str:
    """BestEffort without any cpu/memory request or limit; Guaranteed when every container's
    requests equal its limits for both; Burstable otherwise (pkg/apis/core/helper/qos)."""
    containers = list(spec.get("containers") or []) + list(spec.get("initContainers") or [])
    resources = [c.get("resources") or {} for c in containers if isinstance(c, dict)]
    compute = ("cpu", "memory")
    if not any(name in (r.get(kind) or {}) for r in resources for kind in ("requests", "limits")
               for name in compute):
        return "BestEffort"
    for r in resources:
        limits, requests = r.get("limits") or {}, r.get("requests") or {}
        if any(name not in limits or str(requests.get(name)) != str(limits[name]) for name in compute):
            return "Burstable"
    return "Guaranteed"


def _pod(obj: Obj) -> None:
    spec = _spec(obj)
    default_pod_spec(spec)
    # Set by the Priority admission plugin upstream; `kubectl get -o yaml` shows them on every pod.
    spec.setdefault("priority", 0)
    spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    status = obj.get("status")
    if not isinstance(status, dict):
        status = obj["status"] = {}
    status.setdefault("phase", "Pending")
    status.setdefault("qosClass", qos_class(spec))


def _template(obj: Obj) -> None:
    template = _spec(obj).get("template")
    if isinstance(template, dict):
        tspec = template.get("spec")
        if isinstance(tspec, dict):
            default_pod_spec(tspec)


def _service(obj: Obj) -> None:
    spec = _spec(obj)
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if spec["sessionAffinity"] == "ClientIP":
        config = spec.setdefault("sessionAffinityConfig", {}).setdefault("clientIP", {})
        config.setdefault("timeoutSeconds", 10800)
    for port in spec.get("ports") or []:
        if not isinstance(port, dict):
            continue
        port.setdefault("protocol", "TCP")
        if port.get("targetPort") in (None, 0, "") and "port" in port:
            port["targetPort"] = port["port"]
    svc_type = spec["type"]
    if svc_type in ("NodePort", "LoadBalancer"):
        spec.setdefault("externalTrafficPolicy", "Cluster")
    if svc_type == "LoadBalancer":
        spec.setdefault("allocateLoadBalancerNodePorts", True)
    if svc_type != "ExternalName":
        spec.setdefault("internalTrafficPolicy", "Cluster")
        _default_ip_families(spec)


def _default_ip_families(spec: Obj) -> None:
    """Single-stack clusters: the family follows the requested clusterIP, IPv4 otherwise."""
    if "ipFamilies" not in spec:
        family = "IPv4"
        try:
            if ipaddress.ip_address(str(spec.get("clusterIP", ""))).version == 6:
                family = "IPv6"
        except ValueError:
            pass
        spec["ipFamilies"] = [family]
    spec.setdefault("ipFamilyPolicy", "SingleStack")


def _replication_controller(obj: Obj) -> None:
    """SetDefaults_ReplicationController: selector and labels from the template's labels."""
    spec = _spec(obj)
    labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    if labels:
        if not spec.get("selector"):
            spec["selector"] = dict(labels)
        meta = obj.setdefault("metadata", {})
        if not meta.get("labels"):
            meta["labels"] = dict(labels)
    spec.setdefault("replicas", 1)
    spec.setdefault("minReadySeconds", 0)
    _template(obj)


def _replica_set(obj: Obj) -> None:
    spec = _spec(obj)
    spec.setdefault("replicas", 1)
    _template(obj)


def _deployment(obj: Obj) -> None:
    spec = _spec(obj)
    spec.setdefault("replicas", 1)
    strategy = spec.setdefault("strategy", {})
    strategy.setdefault("type", "RollingUpdate")
    if strategy["type"] == "RollingUpdate":
        rolling = strategy.setdefault("rollingUpdate", {})
        rolling.setdefault("maxUnavailable", "25%")
        rolling.setdefault("maxSurge", "25%")
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)
    _template(obj)


def _network_policy(obj: Obj) -> None:
    """policyTypes: Ingress always, plus Egress when egress rules are present (networking/v1)."""
    spec = _spec(obj)
    spec.setdefault("podSelector", {})
    if not spec.get("policyTypes"):
        spec["policyTypes"] = ["Ingress", "Egress"] if spec.get("egress") else ["Ingress"]
    for direction in ("ingress", "egress"):
        for rule in spec.get(direction) or []:
            if isinstance(rule, dict):
                _default_ports(rule.get("ports"))


def _namespace(obj: Obj) -> None:
    spec = _spec(obj)
    if "finalizers" not in spec:
        spec["finalizers"] = ["kubernetes"]
    status = obj.setdefault("status", {})
    if isinstance(status, dict):
        status.setdefault("phase", "Active")
    meta = obj.setdefault("metadata", {})
    name = meta.get("name")
    if name:
        # The namespace strategy always (re)sets this label to the name.
        labels = meta.get("labels") if isinstance(meta.get("labels"), dict) else {}
        labels[NAMESPACE_NAME_LABEL] = name
        meta["labels"] = labels


def _node(obj: Obj) -> None:
    status = obj.get("status")
    if isinstance(status, dict) and status.get("capacity") and "allocatable" not in status:
        status["allocatable"] = dict(status["capacity"])


def _endpoints(obj: Obj) -> None:
    for subset in obj.get("subsets") or []:
        if isinstance(subset, dict):
            _default_ports(subset.get("ports"))


def _endpoint_slice(obj: Obj) -> None:
    for port in obj.get("ports") or []:
        if isinstance(port, dict):
            port.setdefault("protocol", "TCP")
            port.setdefault("name", "")


def _secret(obj: Obj) -> None:
    obj.setdefault("type", "Opaque")


def _binding(obj: Obj) -> None:
    """SetDefaults_Subject: User and Group subjects live in the rbac group, ServiceAccounts in core."""
    for subject in obj.get("subjects") or []:
        if isinstance(subject, dict) and "apiGroup" not in subject:
            subject["apiGroup"] = "" if subject.get("kind") == "ServiceAccount" else RBAC_GROUP


DEFAULTERS: dict[tuple[str, str], Callable[[Obj], None]] = {
    ("", "Pod"): _pod,
    ("", "Service"): _service,
    ("", "ReplicationController"): _replication_controller,
    ("", "Namespace"): _namespace,
    ("", "Node"): _node,
    ("", "Endpoints"): _endpoints,
    ("", "Secret"): _secret,
    ("discovery.k8s.io", "EndpointSlice"): _endpoint_slice,
    ("networking.k8s.io", "NetworkPolicy"): _network_policy,
    ("apps", "ReplicaSet"): _replica_set,
    ("apps", "Deployment"): _deployment,
    (RBAC_GROUP, "RoleBinding"): _binding,
    (RBAC_GROUP, "ClusterRoleBinding"): _binding,
}


def apply_defaults(res: Resource, obj: Obj) -> Obj:
    """Fill in upstream defaults for `res` in place (and return obj for chaining).

    Malformed shapes (a list where a map belongs) are left alone: validation reports them.
    """
    defaulter = DEFAULTERS.get((res.group, res.kind))
    if defaulter is not None and isinstance(obj, dict):
        # A wrongly typed field must not become a 500 here: validation answers 422 for it.
        with contextlib.suppress(AttributeError, TypeError, ValueError):
            defaulter(obj)
    return obj
