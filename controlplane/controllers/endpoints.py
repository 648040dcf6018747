"""The Endpoints controller: one core/v1 Endpoints per service with a selector, same name.

Pods the selector matches (same namespace), with an IP, not finished and not terminating (unless
spec.publishNotReadyAddresses) become addresses: ready pods in `addresses`, the others in
`notReadyAddresses` (everything in `addresses` with publishNotReadyAddresses).  Each service port's
targetPort is resolved per pod (a named port may have a different number in every pod; a pod
lacking the name is left out of that port), and addresses are grouped into subsets by identical
port sets (upstream RepackSubsets).  Services without a selector are user-managed and untouched;
a deleted service's Endpoints is deleted.  Writes happen only when the subsets or labels differ,
so a resync of an unchanged service leaves the resourceVersion alone.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from controlplane.controllers.context import ControllerContext
from controlplane.controllers.endpoint_common import (
    Api,
    Cache,
    Obj,
    ServicePodController,
    find_port,
    hostname_for,
    ip_family,
    ip_sort_key,
    is_headless,
    is_pod_ready,
    meta,
    pod_ips,
    pods_for_service,
    prune,
    quiet_write_error,
    service_labels,
    service_selector,
    should_pod_be_in_endpoints,
    spec,
    split_key,
    target_ref,
)
from podnet.api.client import ENDPOINTS, PODS, SERVICES, ApiError
from podnet.api.informer import Handlers, object_key

__all__ = ["MAX_CAPACITY", "OVER_CAPACITY_ANNOTATION", "EndpointsController", "build", "desired_endpoints",
           "endpoint_address", "endpoint_ports", "endpoints_object", "endpoints_unchanged",
           "truncate_subsets"]

log = logging.getLogger("podnet.controllers.endpoint")

# Endpoints objects used as leader-election locks by old components carry this annotation; they
# have no service and must survive the leftover sweep (upstream skips them too).
LEADER_ANNOTATION = "control-plane.alpha.kubernetes.io/leader"
# One Endpoints holds at most this many addresses; beyond it upstream truncates and says so in an
# annotation (consumers needing them all read EndpointSlices).
MAX_CAPACITY = 1000
OVER_CAPACITY_ANNOTATION = "endpoints.kubernetes.io/over-capacity"


# ---------------------------------------------------------------------------------- pure helpers
def _service_family(svc: Mapping[str, Any], pod: Mapping[str, Any]) -> str:
    """The family of the service's addresses: its first ipFamily, else its clusterIP's, else (a
    headless service without families) the pod's primary IP's (upstream
    podToEndpointAddressForService)."""
    families = spec(svc).get("ipFamilies") or []
    if families:
        return str(families[0])
    cluster_ip = str(spec(svc).get("clusterIP") or "")
    if cluster_ip and cluster_ip != "None":
        return ip_family(cluster_ip) or "IPv4"
    ips = pod_ips(pod)
    return (ip_family(ips[0]) if ips else None) or "IPv4"


def endpoint_address(svc: Mapping[str, Any], pod: Mapping[str, Any]) -> Obj | None:
    """The pod's EndpointAddress for this service, or None when it has no IP of the service's family."""
    family = _service_family(svc, pod)
    ip = next((ip for ip in pod_ips(pod) if ip_family(ip) == family), None)
    if ip is None:
        return None
    address: Obj = {"ip": ip, "targetRef": target_ref(pod)}
    if spec(pod).get("nodeName"):
        address["nodeName"] = spec(pod)["nodeName"]
    hostname = hostname_for(pod, svc)
    if hostname:
        address["hostname"] = hostname
    return address


def endpoint_ports(svc: Mapping[str, Any], pod: Mapping[str, Any]) -> list[Obj]:
    """One EndpointPort per service port this pod resolves, sorted (name, port, protocol)."""
    ports: list[Obj] = []
    for service_port in spec(svc).get("ports") or []:
        number = find_port(pod, service_port)
        if number is None:
            continue  # upstream logs and skips the pod for this port only
        port: Obj = {"port": number, "protocol": service_port.get("protocol") or "TCP"}
        if service_port.get("name"):
            port["name"] = service_port["name"]
        if service_port.get("appProtocol"):
            port["appProtocol"] = service_port["appProtocol"]
        ports.append(port)
    return sorted(ports, key=lambda p: (str(p.get("name", "")), int(p["port"]), str(p["protocol"])))


def _address_order(address: Mapping[str, Any]) -> tuple[tuple[int, int, str], str]:
    return ip_sort_key(str(address.get("ip", ""))), str((address.get("targetRef") or {}).get("name", ""))


def desired_endpoints(svc: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]) -> list[Obj]:
    """The subsets the service's Endpoints should hold, sorted deterministically."""
    publish = bool(spec(svc).get("publishNotReadyAddresses"))
    has_ports = bool(spec(svc).get("ports"))
    groups: dict[str, tuple[list[Obj], list[Obj], list[Obj]]] = {}
    for pod in pods_for_service(svc, pods):
        if not should_pod_be_in_endpoints(pod, include_terminating=publish):
            continue
        address = endpoint_address(svc, pod)
        ports = endpoint_ports(svc, pod)
        if address is None or (has_ports and not ports) or (not has_ports and not is_headless(svc)):
            continue  # only a headless service may have addresses without ports
        key = json.dumps(ports, sort_keys=True)
        _, ready, not_ready = groups.setdefault(key, (ports, [], []))
        (ready if publish or is_pod_ready(pod) else not_ready).append(address)
    subsets: list[Obj] = []
    for key in sorted(groups):
        ports, ready, not_ready = groups[key]
        subset: Obj = {}
        if ready:
            subset["addresses"] = sorted(ready, key=_address_order)
        if not_ready:
            subset["notReadyAddresses"] = sorted(not_ready, key=_address_order)
        if ports:
            subset["ports"] = ports
        subsets.append(subset)
    return subsets


def truncate_subsets(subsets: list[Obj], limit: int = MAX_CAPACITY) -> tuple[list[Obj], bool]:
    """(subsets, truncated): over `limit` addresses, ready ones are kept first; the truncated kind
    (not-ready ones, or the ready ones when those alone overflow and every not-ready one goes) is
    shared among subsets in proportion, rounded up, as upstream truncateEndpoints."""
    ready = sum(len(s.get("addresses") or []) for s in subsets)
    not_ready = sum(len(s.get("notReadyAddresses") or []) for s in subsets)
    if ready + not_ready <= limit:
        return subsets, False
    field, budget, total = (("addresses", limit, ready) if ready > limit
                            else ("notReadyAddresses", limit - ready, not_ready))
    left = budget
    out: list[Obj] = []
    for subset in subsets:
        kept = dict(subset)
        if field == "addresses":
            kept.pop("notReadyAddresses", None)
        members = list(kept.pop(field, None) or [])
        share = min(left, math.ceil(len(members) * budget / total))
        left -= share
        if share:
            kept[field] = members[:share]
        if kept.get("addresses") or kept.get("notReadyAddresses"):
            out.append(kept)
    return out, True


def _canonical_subsets(subsets: Iterable[Mapping[str, Any]]) -> list[Any]:
    """Subsets as stored, in our order: someone else's ordering is not a difference."""
    out = []
    for subset in subsets:
        s = prune(dict(subset))
        for field in ("addresses", "notReadyAddresses"):
            if field in s:
                s[field] = sorted(s[field], key=_address_order)
        if "ports" in s:
            s["ports"] = sorted(s["ports"], key=lambda p: (str(p.get("name", "")), int(p.get("port", 0)),
                                                           str(p.get("protocol", "TCP"))))
        out.append(s)
    return sorted(out, key=lambda s: json.dumps(s.get("ports", []), sort_keys=True))


def endpoints_unchanged(current: Mapping[str, Any], subsets: list[Obj], labels: Mapping[str, str],
                        truncated: bool = False) -> bool:
    """Semantic equality: server-omitted empty fields and ordering do not count."""
    over = (meta(current).get("annotations") or {}).get(OVER_CAPACITY_ANNOTATION)
    return (dict(meta(current).get("labels") or {}) == dict(labels)
            and over == ("truncated" if truncated else None)
            and _canonical_subsets(current.get("subsets") or []) == _canonical_subsets(subsets))


def endpoints_object(svc: Mapping[str, Any], subsets: list[Obj], current: Mapping[str, Any] | None,
                     truncated: bool = False) -> Obj:
    """The Endpoints to write: the current object (its other annotations, resourceVersion) with the
    new labels, subsets and over-capacity annotation, or a new one named after the service."""
    new = {"name": meta(svc)["name"], "namespace": meta(svc)["namespace"]}
    m = meta(current) if current is not None else new
    annotations = {k: v for k, v in (m.get("annotations") or {}).items() if k != OVER_CAPACITY_ANNOTATION}
    if truncated:
        annotations[OVER_CAPACITY_ANNOTATION] = "truncated"
    obj: Obj = {"apiVersion": "v1", "kind": "Endpoints", **(current or {})}
    obj["metadata"] = {**m, "labels": service_labels(svc)}
    if annotations:
        obj["metadata"]["annotations"] = annotations
    else:
        obj["metadata"].pop("annotations", None)
    obj["subsets"] = subsets
    return obj


# ---------------------------------------------------------------------------------- the controller
class EndpointsController(ServicePodController):
    name = "endpoint"

    def __init__(self, api: Api, services: Cache, pods: Cache, endpoints: Cache, *,
                 resync_period: float = 30.0, retry_delay: float = 1.0, max_capacity: int = MAX_CAPACITY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(api, services, pods, resync_period=resync_period, retry_delay=retry_delay,
                         clock=clock)
        self.endpoints, self.max_capacity = endpoints, max_capacity

    def endpoints_changed(self, key: str) -> None:
        """Ours changed or vanished: the service's sync restores it (or sees its own write land)."""
        if self.services.get(key) is not None:
            self.mark(key)

    def leftover_keys(self) -> list[str]:
        return [object_key(ep) for ep in self.endpoints.list()
                if self.services.get(object_key(ep)) is None
                and LEADER_ANNOTATION not in (meta(ep).get("annotations") or {})]

    def sync(self, key: str) -> None:
        svc = self.services.get(key)
        if svc is None:
            self._delete(key)
            return
        if service_selector(svc) is None or self.cache_lags(key, self.endpoints):
            return
        subsets, truncated = truncate_subsets(desired_endpoints(svc, self.pods.list()), self.max_capacity)
        current = self.endpoints.get(key)
        if current is not None and endpoints_unchanged(current, subsets, service_labels(svc), truncated):
            return
        obj = endpoints_object(svc, subsets, current, truncated)
        ns = str(meta(svc)["namespace"])
        try:
            written = (self.api.create(ENDPOINTS, obj, ns) if current is None
                       else self.api.update(ENDPOINTS, obj, ns))
        except ApiError as e:
            if not quiet_write_error(e):
                raise
            log.info("%s: %s; retrying", key, e)
            self.requeue_after(key, self.retry_delay)
            return
        self.written.wrote(key, key, str(meta(written).get("resourceVersion", "")))
        log.info("%s endpoints %s (%d subsets)", "created" if current is None else "updated", key,
                 len(subsets))

    def _delete(self, key: str) -> None:
        """The service is gone: so is its Endpoints (upstream deletes unconditionally)."""
        self.written.forget(key)
        ns, name = split_key(key)
        try:
            self.api.delete(ENDPOINTS, name, ns)
        except ApiError as e:
            if not e.not_found:
                raise
            return
        log.info("deleted endpoints %s", key)


def build(ctx: ControllerContext) -> EndpointsController:
    """The catalog's entry: informers on services, pods and endpoints."""
    services, pods = ctx.informers.get(SERVICES), ctx.informers.get(PODS)
    endpoints = ctx.informers.get(ENDPOINTS)
    controller = EndpointsController(ctx.client, services, pods, endpoints,
                                     resync_period=ctx.options.resync_period)
    services.add_handlers(Handlers(on_change=controller.service_changed))
    pods.add_handlers(Handlers(on_add=controller.pod_added, on_update=controller.pod_updated,
                               on_delete=controller.pod_deleted))
    endpoints.add_handlers(Handlers(on_change=controller.endpoints_changed))
    return controller
