"""The EndpointSlice controller: discovery.k8s.io/v1 EndpointSlices for every service with a selector.

Endpoints are grouped by address type (the service's ipFamilies) and by the pod's resolved port set
(a named targetPort can have a different number in each pod); each group is cut into slices of at
most --max-endpoints-per-slice endpoints.  Unlike Endpoints, terminating pods stay, with
conditions terminating=true, serving=<pod Ready> and ready=false (ready only when serving and not
terminating, or always with publishNotReadyAddresses: upstream's compatibility rule).

Slices carry kubernetes.io/service-name, endpointslice.kubernetes.io/managed-by and a controller
ownerReference to the service.  The reconcile works on existing slices in place, as upstream's
reconciler does, to keep writes (and kube-proxy's work) small: an endpoint stays in the slice it is
in; new endpoints go first into slices that are written anyway, then into new full slices, and a
last partial batch into the fullest slice with room; emptied slices are deleted; unchanged slices
are not written.  Slices other controllers manage are never touched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
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
    target_ref,
)
from podnet.api.client import ENDPOINTSLICES, NODES, PODS, SERVICES, ApiError
from podnet.api.informer import Handlers, object_key

__all__ = ["CONTROLLER_NAME", "MANAGED_BY_LABEL", "SERVICE_NAME_LABEL", "EndpointSliceController",
           "SlicePlan", "address_types", "build", "desired_groups", "desired_slices", "pod_endpoint",
           "slice_labels"]

log = logging.getLogger("podnet.controllers.endpointslice")

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
ZONE_LABEL = "topology.kubernetes.io/zone"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
CONTROLLER_NAME = "endpointslice-controller.k8s.io"
MAX_ENDPOINTS_PER_SLICE = 100  # upstream --max-endpoints-per-slice default

PortsKey = tuple[tuple[str, int, str, str], ...]  # (name, port, protocol, appProtocol), sorted
Group = tuple[str, PortsKey]  # (addressType, ports)


# ---------------------------------------------------------------------------------- pure helpers
def address_types(svc: Mapping[str, Any]) -> list[str]:
    """The service's ipFamilies (the API server defaults them), else its clusterIP's family."""
    families = [str(f) for f in spec(svc).get("ipFamilies") or [] if f in ("IPv4", "IPv6")]
    if families:
        return families
    return [ip_family(str(spec(svc).get("clusterIP") or "")) or "IPv4"]


def slice_labels(svc: Mapping[str, Any]) -> dict[str, str]:
    """The service's labels plus ours; a service cannot override the two the controller relies on."""
    labels = service_labels(svc, reserved=(SERVICE_NAME_LABEL, MANAGED_BY_LABEL))
    labels[SERVICE_NAME_LABEL] = str(meta(svc)["name"])
    labels[MANAGED_BY_LABEL] = CONTROLLER_NAME
    return labels


def owner_reference(svc: Mapping[str, Any]) -> Obj:
    m = meta(svc)
    return {"apiVersion": "v1", "kind": "Service", "name": m["name"], "uid": m.get("uid"),
            "controller": True, "blockOwnerDeletion": True}


def ports_key(ports: Iterable[Mapping[str, Any]]) -> PortsKey:
    return tuple(sorted((str(p.get("name") or ""), int(p.get("port") or 0), str(p.get("protocol") or "TCP"),
                         str(p.get("appProtocol") or "")) for p in ports))


def ports_from_key(key: PortsKey) -> list[Obj]:
    ports: list[Obj] = []
    for name, port, protocol, app_protocol in key:
        entry: Obj = {"name": name, "port": port, "protocol": protocol}
        if app_protocol:
            entry["appProtocol"] = app_protocol
        ports.append(entry)
    return ports


def pod_ports_key(svc: Mapping[str, Any], pod: Mapping[str, Any]) -> PortsKey:
    """The service ports this pod resolves.  A pod resolving none still gets an endpoint, in a
    group without ports (upstream's reconciler does not drop it, unlike the Endpoints controller)."""
    ports = []
    for service_port in spec(svc).get("ports") or []:
        number = find_port(pod, service_port)
        if number is not None:
            ports.append({**service_port, "port": number})
    return ports_key(ports)


def pod_endpoint(svc: Mapping[str, Any], pod: Mapping[str, Any], address_type: str,
                 zones: Mapping[str, str] | None = None) -> Obj | None:
    """The pod's Endpoint in a slice of `address_type` (None without an IP of that family); `zones`
    maps node names to their topology.kubernetes.io/zone label."""
    addresses = [ip for ip in pod_ips(pod) if ip_family(ip) == address_type]
    if not addresses:
        return None
    serving = is_pod_ready(pod)
    terminating = bool(meta(pod).get("deletionTimestamp"))
    ready = bool(spec(svc).get("publishNotReadyAddresses")) or (serving and not terminating)
    endpoint: Obj = {"addresses": addresses,
                     "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
                     "targetRef": target_ref(pod)}
    node = spec(pod).get("nodeName")
    if node:
        endpoint["nodeName"] = node
        if (zones or {}).get(node):
            endpoint["zone"] = (zones or {})[node]
    hostname = hostname_for(pod, svc)
    if hostname:
        endpoint["hostname"] = hostname
    return endpoint


def endpoint_key(endpoint: Mapping[str, Any]) -> str:
    ref = endpoint.get("targetRef") or {}
    if ref.get("name"):
        return f"{ref.get('namespace', '')}/{ref['name']}"
    return ",".join(str(a) for a in endpoint.get("addresses") or [])


def desired_groups(svc: Mapping[str, Any], pods: Iterable[Mapping[str, Any]],
                   zones: Mapping[str, str] | None = None) -> dict[Group, dict[str, Obj]]:
    """(addressType, ports) -> endpoint key -> Endpoint, for every non-empty group."""
    groups: dict[Group, dict[str, Obj]] = {}
    candidates = [p for p in pods_for_service(svc, pods) if should_pod_be_in_endpoints(p, True)]
    for address_type in address_types(svc):
        for pod in candidates:
            endpoint = pod_endpoint(svc, pod, address_type, zones)
            if endpoint is not None:
                group = groups.setdefault((address_type, pod_ports_key(svc, pod)), {})
                group[endpoint_key(endpoint)] = endpoint
    return groups


def _sorted_endpoints(endpoints: Iterable[Mapping[str, Any]]) -> list[Obj]:
    return sorted((dict(e) for e in endpoints),
                  key=lambda e: ([ip_sort_key(str(a)) for a in e.get("addresses") or []], endpoint_key(e)))


def _group_of(slice_: Mapping[str, Any]) -> Group:
    return str(slice_.get("addressType", "")), ports_key(slice_.get("ports") or [])


def _owned_by(slice_: Mapping[str, Any], svc: Mapping[str, Any]) -> bool:
    return any(r.get("controller") and r.get("uid") == meta(svc).get("uid")
               for r in meta(slice_).get("ownerReferences") or [])


# ---------------------------------------------------------------------------------- the plan
@dataclass
class SlicePlan:
    """What one sync writes: new slices (generateName), updated slices (from the cached ones, with
    their resourceVersion) and slices to delete."""
    create: list[Obj] = field(default_factory=list)
    update: list[Obj] = field(default_factory=list)
    delete: list[Obj] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.create or self.update or self.delete)


@dataclass
class _Slot:
    """An existing slice and the endpoints it will hold."""
    slice: Obj
    endpoints: list[Obj]
    changed: bool = False


def _new_slice(svc: Mapping[str, Any], group: Group, endpoints: list[Obj]) -> Obj:
    m = meta(svc)
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"generateName": f"{m['name']}-", "namespace": m["namespace"],
                         "labels": slice_labels(svc), "ownerReferences": [owner_reference(svc)]},
            "addressType": group[0], "endpoints": _sorted_endpoints(endpoints),
            "ports": ports_from_key(group[1])}


def _updated_slice(svc: Mapping[str, Any], slot: _Slot, group: Group) -> Obj:
    obj = dict(slot.slice)
    obj["metadata"] = {**meta(slot.slice), "labels": slice_labels(svc)}
    obj["endpoints"] = _sorted_endpoints(slot.endpoints)
    obj["ports"] = ports_from_key(group[1])
    return obj


def _differs(svc: Mapping[str, Any], slot: _Slot) -> bool:
    """Labels or endpoints differ, ignoring order and what the server omits.  Desired endpoints
    carry no empty field (pod_endpoint), so only the stored side needs pruning."""
    current = slot.slice
    if dict(meta(current).get("labels") or {}) != slice_labels(svc):
        return True
    stored = current.get("endpoints") or []
    if len(stored) != len(slot.endpoints):
        return True
    return {endpoint_key(e): prune(e) for e in stored} != {endpoint_key(e): e for e in slot.endpoints}


def _keep_in_place(svc: Mapping[str, Any], existing: list[Obj], remaining: dict[str, Obj],
                   max_per_slice: int) -> list[_Slot]:
    """Each still-wanted endpoint stays in the slice that holds it (its desired form; a duplicate
    in a second slice is dropped); `remaining` keeps the endpoints no slice holds."""
    slots = []
    for slice_ in sorted(existing, key=lambda s: str(meta(s).get("name", ""))):
        kept: list[Obj] = []
        for endpoint in slice_.get("endpoints") or []:
            key = endpoint_key(endpoint)
            if key in remaining and len(kept) < max_per_slice:
                kept.append(remaining.pop(key))
        slot = _Slot(slice_, kept)
        slot.changed = _differs(svc, slot)
        slots.append(slot)
    return slots


def _fill(slots: Iterable[_Slot], remaining: list[Obj], max_per_slice: int) -> None:
    """Move endpoints from the front of `remaining` into `slots` up to their room."""
    for slot in slots:
        room = min(max_per_slice - len(slot.endpoints), len(remaining))
        if room > 0:
            slot.endpoints.extend(remaining[:room])
            del remaining[:room]
            slot.changed = True


def _plan_group(svc: Mapping[str, Any], group: Group, desired: dict[str, Obj], existing: list[Obj],
                max_per_slice: int, plan: SlicePlan) -> None:
    remaining = dict(desired)
    slots = _keep_in_place(svc, existing, remaining, max_per_slice)
    left = _sorted_endpoints(remaining.values())
    _fill([s for s in slots if s.changed], left, max_per_slice)  # written anyway: no extra write
    while len(left) >= max_per_slice:
        plan.create.append(_new_slice(svc, group, left[:max_per_slice]))
        del left[:max_per_slice]
    if left:
        room = [s for s in slots if not s.changed and s.endpoints
                and len(s.endpoints) + len(left) <= max_per_slice]
        room.sort(key=lambda s: -len(s.endpoints))  # the fullest: slices stay few and packed
        if room:
            _fill(room[:1], left, max_per_slice)
        else:
            plan.create.append(_new_slice(svc, group, left))
    for slot in slots:
        if not slot.endpoints:
            plan.delete.append(slot.slice)
        elif slot.changed:
            plan.update.append(_updated_slice(svc, slot, group))


def _plan_placeholder(svc: Mapping[str, Any], owned: list[Obj], plan: SlicePlan) -> None:
    """No endpoints at all: one empty slice of the first address type remains, so consumers can
    tell "a service with no endpoints" from "not synced yet" (upstream's placeholder slice)."""
    group: Group = (address_types(svc)[0], ())
    reusable = [s for s in sorted(owned, key=lambda s: str(meta(s).get("name", "")))
                if not s.get("endpoints") and s.get("addressType") == group[0]]
    if reusable:
        slot = _Slot(reusable[0], [])
        if _differs(svc, slot) or _group_of(reusable[0]) != group:
            plan.update.append(_updated_slice(svc, slot, group))
    else:
        plan.create.append(_new_slice(svc, group, []))
    plan.delete.extend(s for s in owned if not reusable or s is not reusable[0])


def desired_slices(svc: Mapping[str, Any], pods: Iterable[Mapping[str, Any]], existing: Iterable[Obj],
                   max_per_slice: int = MAX_ENDPOINTS_PER_SLICE,
                   zones: Mapping[str, str] | None = None) -> SlicePlan:
    """Reconcile the service's managed slices (`existing`) with its pods.  Slices owned by another
    object (a deleted-and-recreated service of the same name) or of a group no longer wanted are
    deleted."""
    plan = SlicePlan()
    owned: list[Obj] = []
    for slice_ in existing:
        (owned if _owned_by(slice_, svc) else plan.delete).append(slice_)
    groups = desired_groups(svc, pods, zones)
    if not groups:
        _plan_placeholder(svc, owned, plan)
        return plan
    by_group: dict[Group, list[Obj]] = {}
    for slice_ in owned:
        by_group.setdefault(_group_of(slice_), []).append(slice_)
    for group in sorted(set(groups) | set(by_group)):
        _plan_group(svc, group, groups.get(group, {}), by_group.get(group, []), max_per_slice, plan)
    return plan


# ---------------------------------------------------------------------------------- the controller
def _service_key_of(slice_: Mapping[str, Any]) -> str | None:
    labels = meta(slice_).get("labels") or {}
    if labels.get(MANAGED_BY_LABEL) != CONTROLLER_NAME or not labels.get(SERVICE_NAME_LABEL):
        return None
    return f"{meta(slice_).get('namespace')}/{labels[SERVICE_NAME_LABEL]}"


class EndpointSliceController(ServicePodController):
    name = "endpointslice"

    def __init__(self, api: Api, services: Cache, pods: Cache, slices: Cache, nodes: Cache | None = None, *,
                 max_endpoints_per_slice: int = MAX_ENDPOINTS_PER_SLICE, resync_period: float = 30.0,
                 retry_delay: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(api, services, pods, resync_period=resync_period, retry_delay=retry_delay,
                         clock=clock)
        self.slices, self.nodes, self.max_per_slice = slices, nodes, max_endpoints_per_slice

    # ------------------------------------------------------------------ informer handlers
    def slice_changed(self, slice_: Obj) -> None:
        key = _service_key_of(slice_)
        if key is not None:
            self.mark(key)

    def slice_updated(self, old: Obj, new: Obj) -> None:
        self.slice_changed(old)
        self.slice_changed(new)

    def managed_slices(self, key: str) -> list[Obj]:
        return [s for s in self.slices.list() if _service_key_of(s) == key]

    def leftover_keys(self) -> set[str]:
        keys = {_service_key_of(s) for s in self.slices.list()}
        return {k for k in keys if k is not None and self.services.get(k) is None}

    # ------------------------------------------------------------------ sync
    def sync(self, key: str) -> None:
        svc = self.services.get(key)
        if svc is None or service_selector(svc) is None:
            # gone (the ownerReference would let a garbage collector do it, if one runs), or no longer
            # ours to fill: a selector removed, or turned into ExternalName
            self._apply(key, SlicePlan(delete=self.managed_slices(key)))
            self.written.forget(key)
            return
        if self.cache_lags(key, self.slices):
            return
        plan = desired_slices(svc, self.pods.list(), self.managed_slices(key), self.max_per_slice,
                              self.zones())
        if meta(svc).get("deletionTimestamp"):
            # a service waiting on finalizers (foreground deletion): the garbage collector is deleting
            # its slices, and recreating them would race it forever (upstream creates none then)
            plan.create = []
        self._apply(key, plan)

    def zones(self) -> dict[str, str]:
        """Node name -> zone label.  Node events are not watched for this: zones are set when a node
        registers, before pods land on it; a later relabel shows at the next resync."""
        if self.nodes is None:
            return {}
        zones = {}
        for node in self.nodes.list():
            zone = (meta(node).get("labels") or {}).get(ZONE_LABEL)
            if zone:
                zones[str(meta(node)["name"])] = str(zone)
        return zones

    def _apply(self, key: str, plan: SlicePlan) -> None:
        """Create, then update, then delete (upstream's order: a consumer never sees fewer endpoints
        than before or after).  A quiet error (a cache behind, a closing namespace) retries later."""
        try:
            for obj in plan.create:
                made = self.api.create(ENDPOINTSLICES, obj, meta(obj)["namespace"])
                self._wrote(key, made)
            for obj in plan.update:
                self._wrote(key, self.api.update(ENDPOINTSLICES, obj, meta(obj)["namespace"]))
            for obj in plan.delete:
                self._delete(key, obj)
        except ApiError as e:
            if not quiet_write_error(e):
                raise
            log.info("%s: %s; retrying", key, e)
            self.requeue_after(key, self.retry_delay)
        if not plan.empty:
            log.info("%s: %d slices created, %d updated, %d deleted", key, len(plan.create),
                     len(plan.update), len(plan.delete))

    def _wrote(self, key: str, obj: Obj) -> None:
        self.written.wrote(key, object_key(obj), str(meta(obj).get("resourceVersion", "")))

    def _delete(self, key: str, obj: Obj) -> None:
        m = meta(obj)
        try:
            self.api.delete(ENDPOINTSLICES, str(m["name"]), m.get("namespace"),
                            preconditions={"uid": str(m.get("uid"))} if m.get("uid") else None)
        except ApiError as e:
            if not e.not_found:
                raise
        self.written.wrote(key, object_key(obj), "")


def build(ctx: ControllerContext) -> EndpointSliceController:
    """The catalog's entry: informers on services, pods, endpointslices and nodes (zones)."""
    services, pods = ctx.informers.get(SERVICES), ctx.informers.get(PODS)
    slices = ctx.informers.get(ENDPOINTSLICES)
    controller = EndpointSliceController(
        ctx.client, services, pods, slices, ctx.informers.get(NODES), resync_period=ctx.options.resync_period,
        max_endpoints_per_slice=getattr(ctx.options, "max_endpoints_per_slice", MAX_ENDPOINTS_PER_SLICE))
    services.add_handlers(Handlers(on_change=controller.service_changed))
    pods.add_handlers(Handlers(on_add=controller.pod_added, on_update=controller.pod_updated,
                               on_delete=controller.pod_deleted))
    slices.add_handlers(Handlers(on_add=controller.slice_changed, on_update=controller.slice_updated,
                                 on_delete=controller.slice_changed))
    return controller
