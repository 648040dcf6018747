"""Server-side Table output (meta.k8s.io/v1 Table) with the columns kube-apiserver prints.

kubectl get asks for `as=Table;v=v1;g=meta.k8s.io` and prints whatever columns the server returns
(reference proxy_apiserver.md B4). The server always generates the wide columns (upstream calls its
printers with Wide: true); kubectl hides priority>0 columns unless `-o wide`. Columns and cell rules
follow kubernetes pkg/printers/internalversion/printers.go; durations follow
apimachinery/pkg/util/duration.HumanDuration.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from controlplane.apiserver.resources import Resource

Obj = dict[str, Any]
Column = tuple[str, str, int, str]  # (name, type, priority, format)
RowFunc = Callable[[Obj, datetime], list[Any]]


def human_duration(seconds: float) -> str:
    """apimachinery duration.HumanDuration: ~2-3 significant figures ("5s", "3m2s", "10m", "2d3h")."""
    secs = int(seconds)
    if secs < -1:
        return "<invalid>"
    if secs < 0:
        return "0s"
    if secs < 120:
        return f"{secs}s"
    minutes = secs // 60
    if minutes < 10:
        s = secs % 60
        return f"{minutes}m" if s == 0 else f"{minutes}m{s}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = secs // 3600
    if hours < 8:
        m = minutes % 60
        return f"{hours}h" if m == 0 else f"{hours}h{m}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        h = hours % 24
        return f"{hours // 24}d" if h == 0 else f"{hours // 24}d{h}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        dy = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if dy == 0 else f"{hours // 24 // 365}y{dy}d"
    return f"{hours // 24 // 365}y"


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def since(value: Any, now: datetime) -> str:
    """translateTimestampSince: "<unknown>" for a missing timestamp."""
    when = parse_time(value)
    if when is None:
        return "<unknown>"
    return human_duration((now - when).total_seconds())


def age(obj: Obj, now: datetime) -> str:
    return since(obj.get("metadata", {}).get("creationTimestamp"), now)


def name_of(obj: Obj) -> str:
    meta = obj.get("metadata")
    return str(meta.get("name", "")) if isinstance(meta, dict) else ""


def format_labels(labels: dict[str, str] | None) -> str:
    """labels.FormatLabels: sorted k=v pairs, "<none>" when empty."""
    if not labels:
        return "<none>"
    return ",".join(f"{k}={labels[k]}" for k in sorted(labels))


def selector_string(selector: dict[str, Any] | None) -> str:
    """metav1.LabelSelector as labels.Selector.String(): requirements sorted by key, "" if empty."""
    if not selector:
        return ""
    reqs: list[tuple[str, str]] = []
    for key, value in (selector.get("matchLabels") or {}).items():
        reqs.append((key, f"{key}={value}"))
    for expr in selector.get("matchExpressions") or []:
        key, op = expr.get("key", ""), expr.get("operator", "")
        values = ",".join(sorted(expr.get("values") or []))
        text = {"In": f"{key} in ({values})", "NotIn": f"{key} notin ({values})",
                "Exists": key, "DoesNotExist": f"!{key}"}.get(op, f"{key} {op}")
        reqs.append((key, text))
    return ",".join(text for _, text in sorted(reqs, key=lambda r: r[0]))


def format_label_selector(selector: dict[str, Any] | None) -> str:
    """metav1.FormatLabelSelector: like selector_string but "<none>" when empty."""
    return selector_string(selector) or "<none>"


def container_cells(pod_spec: Obj | None) -> tuple[str, str]:
    """layoutContainerCells: comma-joined container names and images."""
    containers = (pod_spec or {}).get("containers") or []
    return ",".join(c.get("name", "") for c in containers), ",".join(c.get("image", "") for c in containers)


def template_spec(obj: Obj) -> Obj:
    return obj.get("spec", {}).get("template", {}).get("spec", {}) or {}


def list_with_more(items: list[str], max_items: int = 3, empty: str = "<unset>") -> str:
    """listWithMoreString: first three, then " + N more..."."""
    shown = ",".join(items[:max_items])
    if len(items) > max_items:
        return f"{shown} + {len(items) - max_items} more..."
    return shown or empty


def join_host_port(host: str, port: Any) -> str:
    """net.JoinHostPort: IPv6 literals get brackets."""
    try:
        if isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address):
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


# ---------------------------------------------------------------------------------------------
# Pods (printPod, including the restartable-init-container ("sidecar") rules of 1.29+).

def _is_restartable_init(container: Obj | None) -> bool:
    return bool(container) and (container or {}).get("restartPolicy") == "Always"


def _terminated_reason(term: Obj, prefix: str = "") -> str:
    if term.get("reason"):
        return prefix + str(term["reason"])
    if term.get("signal"):
        return f"{prefix}Signal:{term['signal']}"
    return f"{prefix}ExitCode:{term.get('exitCode', 0)}"


class _PodStatusSummary:
    """Accumulates READY, STATUS and RESTARTS the way printPod walks the container statuses."""

    def __init__(self, pod: Obj) -> None:
        self.pod = pod
        spec, status = pod.get("spec", {}), pod.get("status", {})
        self.ready = 0
        self.total = len(spec.get("containers") or [])
        self.restarts = 0
        self.last_restart: datetime | None = None
        self.sidecar_restarts = 0
        self.sidecar_last_restart: datetime | None = None
        self.reason = str(status.get("reason") or status.get("phase") or "")
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("reason") == "SchedulingGated":
                self.reason = "SchedulingGated"
        self.init_specs = {c.get("name"): c for c in spec.get("initContainers") or []}
        self.total += sum(1 for c in self.init_specs.values() if _is_restartable_init(c))

    @staticmethod
    def _later(current: datetime | None, status: Obj) -> datetime | None:
        finished = parse_time(((status.get("lastState") or {}).get("terminated") or {}).get("finishedAt"))
        if finished is not None and (current is None or finished > current):
            return finished
        return current

    def walk_init(self) -> bool:
        """Returns True while the pod is still initializing (reason becomes Init:...)."""
        statuses = self.pod.get("status", {}).get("initContainerStatuses") or []
        n_init = len(self.pod.get("spec", {}).get("initContainers") or [])
        for i, cs in enumerate(statuses):
            self.restarts += int(cs.get("restartCount", 0))
            self.last_restart = self._later(self.last_restart, cs)
            restartable = _is_restartable_init(self.init_specs.get(cs.get("name")))
            if restartable:
                self.sidecar_restarts += int(cs.get("restartCount", 0))
                self.sidecar_last_restart = self._later(self.sidecar_last_restart, cs)
            state = cs.get("state") or {}
            term, waiting = state.get("terminated"), state.get("waiting")
            if term is not None and int(term.get("exitCode", 0)) == 0:
                continue
            if restartable and cs.get("started"):
                self.ready += 1 if cs.get("ready") else 0
                continue
            if term is not None:
                self.reason = _terminated_reason(term, "Init:")
            elif waiting and waiting.get("reason") and waiting["reason"] != "PodInitializing":
                self.reason = "Init:" + str(waiting["reason"])
            else:
                self.reason = f"Init:{i}/{n_init}"
            return True
        return False

    def walk_containers(self) -> None:
        self.restarts, self.last_restart = self.sidecar_restarts, self.sidecar_last_restart
        has_running = False
        for cs in reversed(self.pod.get("status", {}).get("containerStatuses") or []):
            self.restarts += int(cs.get("restartCount", 0))
            self.last_restart = self._later(self.last_restart, cs)
            state = cs.get("state") or {}
            waiting, term = state.get("waiting"), state.get("terminated")
            if waiting and waiting.get("reason"):
                self.reason = str(waiting["reason"])
            elif term is not None:
                self.reason = _terminated_reason(term)
            elif cs.get("ready") and state.get("running") is not None:
                has_running = True
                self.ready += 1
        if self.reason == "Completed" and has_running:
            conditions = self.pod.get("status", {}).get("conditions") or []
            ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
            self.reason = "Running" if ready else "NotReady"


def _pod_initialized(pod: Obj) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Initialized" and c.get("status") == "True" for c in conditions)


def pod_status_cells(pod: Obj, now: datetime) -> tuple[str, str, str]:
    """(READY, STATUS, RESTARTS) exactly as kubectl shows them."""
    summary = _PodStatusSummary(pod)
    initializing = summary.walk_init()
    if not initializing or _pod_initialized(pod):
        summary.walk_containers()
    status = pod.get("status", {})
    if pod.get("metadata", {}).get("deletionTimestamp"):
        if status.get("reason") == "NodeLost":
            summary.reason = "Unknown"
        elif status.get("phase") not in ("Succeeded", "Failed"):
            summary.reason = "Terminating"
    restarts = str(summary.restarts)
    if summary.restarts and summary.last_restart is not None:
        restarts = f"{summary.restarts} ({human_duration((now - summary.last_restart).total_seconds())} ago)"
    return f"{summary.ready}/{summary.total}", summary.reason, restarts


def _readiness_gates(pod: Obj) -> str:
    gates = pod.get("spec", {}).get("readinessGates") or []
    if not gates:
        return "<none>"
    conditions = {c.get("type"): c.get("status") for c in pod.get("status", {}).get("conditions") or []}
    true = sum(1 for g in gates if conditions.get(g.get("conditionType")) == "True")
    return f"{true}/{len(gates)}"


def pod_row(pod: Obj, now: datetime) -> list[Any]:
    ready, reason, restarts = pod_status_cells(pod, now)
    status = pod.get("status", {})
    pod_ips = status.get("podIPs") or []
    # v1 -> internal conversion fills podIPs from podIP, so fall back to it like upstream sees it.
    ip = (pod_ips[0].get("ip") if pod_ips else status.get("podIP")) or "<none>"
    node = pod.get("spec", {}).get("nodeName") or "<none>"
    nominated = status.get("nominatedNodeName") or "<none>"
    return [name_of(pod), ready, reason, restarts, age(pod, now), ip, node, nominated, _readiness_gates(pod)]


def pod_row_conditions(pod: Obj) -> list[dict[str, str]] | None:
    phase = pod.get("status", {}).get("phase")
    if phase == "Succeeded":
        return [{"type": "Completed", "status": "True", "reason": "Succeeded",
                 "message": "The pod has completed successfully."}]
    if phase == "Failed":
        return [{"type": "Completed", "status": "True", "reason": "Failed", "message": "The pod failed."}]
    return None


# ---------------------------------------------------------------------------------------------
# Services, nodes and the other kinds.

def _service_external_ip(svc: Obj) -> str:
    spec = svc.get("spec", {})
    external = spec.get("externalIPs") or []
    svc_type = spec.get("type", "ClusterIP")
    if svc_type in ("ClusterIP", "NodePort"):
        return ",".join(external) if external else "<none>"
    if svc_type == "LoadBalancer":
        ingress = svc.get("status", {}).get("loadBalancer", {}).get("ingress") or []
        lb = sorted({i.get("ip") or i.get("hostname") for i in ingress if i.get("ip") or i.get("hostname")})
        # Wide output (what the server generates) is not clipped to 16 characters.
        if external:
            return ",".join(lb + external)
        return ",".join(lb) if lb else "<pending>"
    if svc_type == "ExternalName":
        return str(spec.get("externalName", ""))
    return "<unknown>"


def service_ports(ports: list[Obj] | None) -> str:
    """makePortString: 80/TCP, 80:30080/TCP for node ports; "<none>" without ports."""
    pieces = []
    for port in ports or []:
        proto = port.get("protocol", "TCP")
        if port.get("nodePort"):
            pieces.append(f"{port.get('port')}:{port['nodePort']}/{proto}")
        else:
            pieces.append(f"{port.get('port')}/{proto}")
    return ",".join(pieces) or "<none>"


def service_row(svc: Obj, now: datetime) -> list[Any]:
    spec = svc.get("spec", {})
    cluster_ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    return [name_of(svc), spec.get("type", ""), cluster_ips[0] if cluster_ips else "<none>",
            _service_external_ip(svc), service_ports(spec.get("ports")), age(svc, now),
            format_labels(spec.get("selector"))]


def _node_status(node: Obj) -> str:
    status = []
    for cond in node.get("status", {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            status = ["Ready" if cond.get("status") == "True" else "NotReady"]
    if not status:
        status = ["Unknown"]
    if node.get("spec", {}).get("unschedulable"):
        status.append("SchedulingDisabled")
    return ",".join(status)


def _node_roles(node: Obj) -> str:
    roles = set()
    for key, value in (node.get("metadata", {}).get("labels") or {}).items():
        if key.startswith("node-role.kubernetes.io/") and key != "node-role.kubernetes.io/":
            roles.add(key.removeprefix("node-role.kubernetes.io/"))
        elif key == "kubernetes.io/role" and value:
            roles.add(value)
    return ",".join(sorted(roles)) or "<none>"


def _node_address(node: Obj, kind: str) -> str:
    for addr in node.get("status", {}).get("addresses") or []:
        if addr.get("type") == kind:
            return str(addr.get("address", ""))
    return "<none>"


def node_row(node: Obj, now: datetime) -> list[Any]:
    info = node.get("status", {}).get("nodeInfo") or {}
    return [name_of(node), _node_status(node), _node_roles(node), age(node, now),
            info.get("kubeletVersion", ""), _node_address(node, "InternalIP"),
            _node_address(node, "ExternalIP"), info.get("osImage") or "<unknown>",
            info.get("kernelVersion") or "<unknown>", info.get("containerRuntimeVersion") or "<unknown>"]


def format_endpoints(ep: Obj) -> str:
    """formatEndpoints: up to three ip:port, then " + N more..."; "<none>" without subsets."""
    subsets = ep.get("subsets") or []
    if not subsets:
        return "<none>"
    items: list[str] = []
    for subset in subsets:
        addresses = [a.get("ip", "") for a in subset.get("addresses") or []]
        ports = subset.get("ports") or []
        if not ports:
            items.extend(addresses)  # headless services without ports
            continue
        for port in ports:
            items.extend(join_host_port(ip, port.get("port")) for ip in addresses)
    return list_with_more(items, empty="")


def endpoints_row(ep: Obj, now: datetime) -> list[Any]:
    return [name_of(ep), format_endpoints(ep), age(ep, now)]


def _discovery_ports(ports: list[Obj] | None) -> str:
    items = []
    for port in ports or []:
        if port.get("port") is not None:
            items.append(str(port["port"]))
        elif port.get("name") is not None:
            items.append(str(port["name"]))
        else:
            items.append("*")
    return list_with_more(items)


def endpointslice_row(eps: Obj, now: datetime) -> list[Any]:
    addresses = [a for e in eps.get("endpoints") or [] for a in e.get("addresses") or []]
    return [name_of(eps), eps.get("addressType", ""), _discovery_ports(eps.get("ports")),
            list_with_more(addresses), age(eps, now)]


def _replicas_row(obj: Obj, now: datetime, selector: str) -> list[Any]:
    spec, status = obj.get("spec", {}), obj.get("status", {})
    names, images = container_cells(template_spec(obj))
    return [name_of(obj), int(spec.get("replicas", 1)), int(status.get("replicas", 0)),
            int(status.get("readyReplicas", 0)), age(obj, now), names, images, selector]


def rc_row(rc: Obj, now: datetime) -> list[Any]:
    return _replicas_row(rc, now, format_labels(rc.get("spec", {}).get("selector")))


def replicaset_row(rs: Obj, now: datetime) -> list[Any]:
    return _replicas_row(rs, now, format_label_selector(rs.get("spec", {}).get("selector")))


def deployment_row(deploy: Obj, now: datetime) -> list[Any]:
    spec, status = deploy.get("spec", {}), deploy.get("status", {})
    names, images = container_cells(template_spec(deploy))
    ready = f"{int(status.get('readyReplicas', 0))}/{int(spec.get('replicas', 1))}"
    return [name_of(deploy), ready, int(status.get("updatedReplicas", 0)),
            int(status.get("availableReplicas", 0)), age(deploy, now), names, images,
            selector_string(spec.get("selector"))]


def namespace_row(ns: Obj, now: datetime) -> list[Any]:
    return [name_of(ns), ns.get("status", {}).get("phase", ""), age(ns, now)]


def configmap_row(cm: Obj, now: datetime) -> list[Any]:
    return [name_of(cm), len(cm.get("data") or {}) + len(cm.get("binaryData") or {}), age(cm, now)]


def secret_row(secret: Obj, now: datetime) -> list[Any]:
    return [name_of(secret), secret.get("type", ""), len(secret.get("data") or {}), age(secret, now)]


def serviceaccount_row(sa: Obj, now: datetime) -> list[Any]:
    return [name_of(sa), len(sa.get("secrets") or []), age(sa, now)]


def networkpolicy_row(np: Obj, now: datetime) -> list[Any]:
    return [name_of(np), format_label_selector(np.get("spec", {}).get("podSelector")), age(np, now)]


def lease_row(lease: Obj, now: datetime) -> list[Any]:
    return [name_of(lease), lease.get("spec", {}).get("holderIdentity") or "", age(lease, now)]


def role_row(role: Obj, now: datetime) -> list[Any]:
    created = parse_time(role.get("metadata", {}).get("creationTimestamp"))
    return [name_of(role), created.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if created else ""]


def _subjects(subjects: list[Obj] | None) -> tuple[str, str, str]:
    users, groups, sas = [], [], []
    for subject in subjects or []:
        kind = subject.get("kind")
        if kind == "ServiceAccount":
            sas.append(f"{subject.get('namespace', '')}/{subject.get('name', '')}")
        elif kind == "User":
            users.append(str(subject.get("name", "")))
        elif kind == "Group":
            groups.append(str(subject.get("name", "")))
    return ", ".join(users), ", ".join(groups), ", ".join(sas)


def rolebinding_row(binding: Obj, now: datetime) -> list[Any]:
    ref = binding.get("roleRef") or {}
    return [name_of(binding), f"{ref.get('kind', '')}/{ref.get('name', '')}", age(binding, now),
            *_subjects(binding.get("subjects"))]


def _event_source(event: Obj) -> str:
    source = event.get("source") or {}
    component = source.get("component") or event.get("reportingComponent") or ""
    instance = source.get("host") or event.get("reportingInstance") or ""
    return f"{component}, {instance}" if instance else component


def event_row(event: Obj, now: datetime) -> list[Any]:
    first = since(event.get("firstTimestamp"), now)
    if not event.get("firstTimestamp"):
        first = since(event.get("eventTime"), now)
    last = since(event["lastTimestamp"], now) if event.get("lastTimestamp") else first
    count = event.get("count") or 1  # singleton events of the new API carry no count
    if event.get("series"):
        last = since(event["series"].get("lastObservedTime"), now)
        count = event["series"].get("count", count)
    involved = event.get("involvedObject") or {}
    kind = str(involved.get("kind", "")).lower()
    target = f"{kind}/{involved['name']}" if involved.get("name") else kind
    return [last, event.get("type", ""), event.get("reason", ""), target, involved.get("fieldPath", ""),
            _event_source(event), str(event.get("message", "")).strip(), first, int(count), name_of(event)]


def generic_row(obj: Obj, now: datetime) -> list[Any]:
    return [name_of(obj), age(obj, now)]


# ---------------------------------------------------------------------------------------------
# Column definitions (name, type, priority, format) per kind, in upstream order.

_NAME: Column = ("Name", "string", 0, "name")
_AGE: Column = ("Age", "string", 0, "")


def _col(name: str, type_: str = "string", priority: int = 0) -> Column:
    return (name, type_, priority, "")


_TEMPLATE_WIDE = [_col("Containers", priority=1), _col("Images", priority=1), _col("Selector", priority=1)]
_REPLICAS = [_NAME, _col("Desired", "integer"), _col("Current", "integer"), _col("Ready", "integer"), _AGE,
             *_TEMPLATE_WIDE]
_BINDINGS = [_NAME, _col("Role"), _AGE, _col("Users", priority=1), _col("Groups", priority=1),
             _col("ServiceAccounts", priority=1)]
_ROLES = [_NAME, _col("Created At", "date")]

PRINTERS: dict[tuple[str, str], tuple[list[Column], RowFunc]] = {
    ("", "Pod"): ([_NAME, _col("Ready"), _col("Status"), _col("Restarts"), _AGE, _col("IP", priority=1),
                   _col("Node", priority=1), _col("Nominated Node", priority=1),
                   _col("Readiness Gates", priority=1)], pod_row),
    ("", "Service"): ([_NAME, _col("Type"), _col("Cluster-IP"), _col("External-IP"), _col("Port(s)"), _AGE,
                       _col("Selector", priority=1)], service_row),
    ("", "Node"): ([_NAME, _col("Status"), _col("Roles"), _AGE, _col("Version"),
                    _col("Internal-IP", priority=1), _col("External-IP", priority=1),
                    _col("OS-Image", priority=1), _col("Kernel-Version", priority=1),
                    _col("Container-Runtime", priority=1)], node_row),
    ("", "Namespace"): ([_NAME, _col("Status"), _AGE], namespace_row),
    ("", "Endpoints"): ([_NAME, _col("Endpoints"), _AGE], endpoints_row),
    ("", "ReplicationController"): (_REPLICAS, rc_row),
    ("", "Event"): ([_col("Last Seen"), _col("Type"), _col("Reason"), _col("Object"),
                     _col("Subobject", priority=1), _col("Source", priority=1), _col("Message"),
                     _col("First Seen", priority=1), _col("Count", priority=1),
                     ("Name", "string", 1, "name")], event_row),
    ("", "ConfigMap"): ([_NAME, _col("Data"), _AGE], configmap_row),
    ("", "Secret"): ([_NAME, _col("Type"), _col("Data"), _AGE], secret_row),
    ("", "ServiceAccount"): ([_NAME, _col("Secrets"), _AGE], serviceaccount_row),
    ("discovery.k8s.io", "EndpointSlice"): ([_NAME, _col("AddressType"), _col("Ports"), _col("Endpoints"),
                                             _AGE], endpointslice_row),
    ("networking.k8s.io", "NetworkPolicy"): ([_NAME, _col("Pod-Selector"), _AGE], networkpolicy_row),
    ("coordination.k8s.io", "Lease"): ([_NAME, _col("Holder"), _AGE], lease_row),
    ("apps", "Deployment"): ([_NAME, _col("Ready"), _col("Up-to-date", "integer"),
                              _col("Available", "integer"), _AGE, *_TEMPLATE_WIDE], deployment_row),
    ("apps", "ReplicaSet"): (_REPLICAS, replicaset_row),
    ("rbac.authorization.k8s.io", "Role"): (_ROLES, role_row),
    ("rbac.authorization.k8s.io", "ClusterRole"): (_ROLES, role_row),
    ("rbac.authorization.k8s.io", "RoleBinding"): (_BINDINGS, rolebinding_row),
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"): (_BINDINGS, rolebinding_row),
}
_GENERIC: tuple[list[Column], RowFunc] = ([_NAME, _AGE], generic_row)


def column_definitions(res: Resource) -> list[dict[str, Any]]:
    columns, _ = PRINTERS.get((res.group, res.kind), _GENERIC)
    return [
        {"name": name, "type": type_, "format": fmt, "description": "", "priority": priority}
        for name, type_, priority, fmt in columns
    ]


def _row_object(obj: Obj, include_object: str) -> Obj | None:
    if include_object == "None":
        return None
    if include_object == "Object":
        return obj
    # includeObject=Metadata (the default): kubectl reads namespace (-A), labels (--show-labels).
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata", {})}


def table_row(res: Resource, obj: Obj, include_object: str = "Metadata",
              now: datetime | None = None) -> dict[str, Any]:
    columns, row_func = PRINTERS.get((res.group, res.kind), _GENERIC)
    row: dict[str, Any] = {}
    try:
        row["cells"] = row_func(obj, now or datetime.now(UTC))
        if res.kind == "Pod" and (conditions := pod_row_conditions(obj)):
            row["conditions"] = conditions
    except (AttributeError, TypeError, ValueError, KeyError, IndexError):
        # An object of an unexpected shape (validation never saw it: an old or hand-written etcd
        # value) must not fail the whole list: print its name and mark the rest unknown.
        row["cells"] = [name_of(obj) if fmt == "name" else "<unknown>" for _, _, _, fmt in columns]
    row_object = _row_object(obj, include_object)
    if row_object is not None:
        row["object"] = row_object
    return row


def to_table(res: Resource, objects: Iterable[Obj], include_object: str = "Metadata", *,
             resource_version: str = "", continue_token: str = "",
             remaining_item_count: int | None = None, include_headers: bool = True,
             now: datetime | None = None) -> dict[str, Any]:
    """A meta.k8s.io/v1 Table for `kubectl get` (also one-row tables for each watch event).

    include_object is the `includeObject` query value: None, Metadata (default) or Object.
    include_headers=False drops columnDefinitions, as upstream does after the first watch event.
    """
    when = now or datetime.now(UTC)
    metadata: dict[str, Any] = {"resourceVersion": resource_version}
    if continue_token:
        metadata["continue"] = continue_token
    if remaining_item_count is not None:
        metadata["remainingItemCount"] = remaining_item_count
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": column_definitions(res) if include_headers else [],
        "rows": [table_row(res, obj, include_object, when) for obj in objects],
    }
