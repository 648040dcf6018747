"""What the Endpoints and EndpointSlice controllers share.

Pure helpers: which services are managed (a selector, not ExternalName), which pods back a service
and how a pod's address, port, hostname and readiness are read (upstream endpointutil/podutil).
Plumbing: `ServicePodController` turns service and pod events into dirty service keys, and
`WrittenVersions` remembers what this controller wrote so a sync never acts on a cache that has not
caught up with its own last write (upstream's stale-cache checks).
"""

from __future__ import annotations

import functools
import ipaddress
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from controlplane.controllers.base import KeyedController
from podnet.api.client import ApiError, Resource
from podnet.api.informer import object_key
from podnet.api.selectors import LabelSelector, SelectorError, selector_from_set

__all__ = ["HEADLESS_LABEL", "Api", "Cache", "Obj", "ServicePodController", "WrittenVersions",
           "find_port", "hostname_for", "ip_family", "ip_sort_key", "is_pod_ready", "pod_ips",
           "pods_for_service", "prune", "quiet_write_error", "service_labels", "service_selector",
           "should_pod_be_in_endpoints", "target_ref"]

Obj = dict[str, Any]
HEADLESS_LABEL = "service.kubernetes.io/headless"  # upstream v1.IsHeadlessService


class Api(Protocol):
    """The part of podnet.api.client.Client these controllers write with (unit tests fake it)."""

    def create(self, res: Resource, obj: Mapping[str, Any], namespace: str | None = None,
               **query: Any) -> Obj: ...

    def update(self, res: Resource, obj: Mapping[str, Any], namespace: str | None = None,
               subresource: str | None = None, **query: Any) -> Obj: ...

    def delete(self, res: Resource, name: str, namespace: str | None = None, *,
               propagation_policy: str | None = None, grace_period_seconds: int | None = None,
               preconditions: Mapping[str, str] | None = None) -> Obj: ...


class Cache(Protocol):
    """The part of podnet.api.informer.Informer they read."""

    def get(self, key: str) -> Obj | None: ...

    def list(self) -> list[Obj]: ...


# ---------------------------------------------------------------------------------- pure helpers
def meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def spec(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("spec") or {}


def service_selector(svc: Mapping[str, Any]) -> LabelSelector | None:
    """The pods' selector, or None when the controllers must leave the service alone: without a
    selector its endpoints are user-managed, and an ExternalName service is a DNS alias with none.
    An empty map counts as no selector (it does not survive the API's protobuf round trip)."""
    if spec(svc).get("type") == "ExternalName" or not spec(svc).get("selector"):
        return None
    try:
        return selector_from_set(spec(svc)["selector"])
    except SelectorError:
        return None


def is_headless(svc: Mapping[str, Any]) -> bool:
    return spec(svc).get("clusterIP") == "None"


def is_pod_ready(pod: Mapping[str, Any]) -> bool:
    """podutil.IsPodReady: the Ready condition is True."""
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def pod_ips(pod: Mapping[str, Any]) -> list[str]:
    """status.podIPs (primary first), or the legacy single status.podIP."""
    status = pod.get("status") or {}
    ips = [str(p.get("ip")) for p in status.get("podIPs") or [] if p.get("ip")]
    return ips or ([str(status["podIP"])] if status.get("podIP") else [])


@functools.lru_cache(maxsize=65536)  # parsing dominates large syncs; pod IPs repeat every sync
def ip_family(ip: str) -> str | None:
    try:
        return "IPv6" if ipaddress.ip_address(ip).version == 6 else "IPv4"
    except ValueError:
        return None


@functools.lru_cache(maxsize=65536)
def ip_sort_key(ip: str) -> tuple[int, int, str]:
    """Numeric address order (10.0.0.9 before 10.0.0.10), IPv4 before IPv6; junk last, by text."""
    try:
        parsed = ipaddress.ip_address(ip)
    except ValueError:
        return (7, 0, ip)
    return (parsed.version, int(parsed), "")


def should_pod_be_in_endpoints(pod: Mapping[str, Any], include_terminating: bool) -> bool:
    """Upstream ShouldPodBeInEndpoints: finished pods (Succeeded/Failed) never, pods without an IP
    never, terminating pods (deletionTimestamp) only when asked for."""
    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return False
    if not pod_ips(pod):
        return False
    return include_terminating or not meta(pod).get("deletionTimestamp")


def pods_for_service(svc: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]) -> list[Obj]:
    """The pods of the service's namespace its selector matches, sorted by name."""
    selector = service_selector(svc)
    if selector is None:
        return []
    ns = meta(svc).get("namespace")
    found = [dict(p) for p in pods
             if meta(p).get("namespace") == ns and selector.matches(meta(p).get("labels") or {})]
    return sorted(found, key=lambda p: str(meta(p).get("name", "")))


def _container_ports(pod: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    """Ports of the containers and of restartable init containers (sidecars), as FindPort."""
    pod_spec = spec(pod)
    sidecars = [c for c in pod_spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"]
    for container in [*(pod_spec.get("containers") or []), *sidecars]:
        yield from container.get("ports") or []


def find_port(pod: Mapping[str, Any], service_port: Mapping[str, Any]) -> int | None:
    """podutil.FindPort: a numeric targetPort as it is; a named one is the containerPort of the
    same name AND protocol in this pod (None when the pod has no such port)."""
    target = service_port.get("targetPort")
    if target in (None, "", 0):
        target = service_port.get("port")
    if isinstance(target, int):
        return target
    if isinstance(target, str) and target.isdigit():
        return int(target)
    protocol = service_port.get("protocol") or "TCP"
    for port in _container_ports(pod):
        if port.get("name") == target and (port.get("protocol") or "TCP") == protocol:
            return int(port["containerPort"])
    return None


def hostname_for(pod: Mapping[str, Any], svc: Mapping[str, Any]) -> str | None:
    """ShouldSetHostname: spec.hostname, when spec.subdomain names this service (same namespace):
    that is what makes "<hostname>.<service>" resolve for a headless service."""
    hostname = spec(pod).get("hostname")
    if hostname and spec(pod).get("subdomain") == meta(svc).get("name") \
            and meta(pod).get("namespace") == meta(svc).get("namespace"):
        return str(hostname)
    return None


def target_ref(pod: Mapping[str, Any]) -> Obj:
    """An ObjectReference with no empty field, so it compares equal to what the server stores."""
    m = meta(pod)
    ref: Obj = {"kind": "Pod"}
    for field in ("namespace", "name", "uid"):
        if m.get(field):
            ref[field] = m[field]
    return ref


def service_labels(svc: Mapping[str, Any], reserved: Iterable[str] = ()) -> dict[str, str]:
    """The service's labels (minus `reserved` keys the controller sets itself), plus the headless
    label exactly when the service is headless (as both upstream controllers label theirs)."""
    skip = {HEADLESS_LABEL, *reserved}
    labels = {k: str(v) for k, v in (meta(svc).get("labels") or {}).items() if k not in skip}
    if is_headless(svc):
        labels[HEADLESS_LABEL] = ""
    return labels


def quiet_write_error(e: ApiError) -> bool:
    """Errors a sync answers by waiting, not by failing: 409 (our cache is behind a write), 404 (the
    object or its namespace vanished: a delete event follows) and 403 for a namespace being
    deleted (upstream skips those too; the namespace controller removes the service next)."""
    if e.conflict or e.not_found:
        return True
    causes = (e.status.get("details") or {}).get("causes") or []
    return e.code == 403 and ("being terminated" in e.message
                              or any(c.get("type") == "NamespaceTerminating" for c in causes))


def prune(value: Any) -> Any:
    """`value` without None, "", [] and {} members, recursively: what the server omits (omitempty)
    must not count as a difference between what is stored and what is wanted."""
    if isinstance(value, Mapping):
        out = {k: prune(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v not in (None, "", [], {})}
    if isinstance(value, list):
        return [prune(v) for v in value]
    return value


def pod_view(pod: Mapping[str, Any]) -> tuple[Any, ...]:
    """Everything about a pod that can change an endpoint; a pod update that leaves this (and the
    labels) alone concerns no service (upstream podEndpointsChanged)."""
    m, s = meta(pod), spec(pod)
    return (bool(m.get("deletionTimestamp")), tuple(pod_ips(pod)), (pod.get("status") or {}).get("phase"),
            is_pod_ready(pod), s.get("nodeName"), s.get("hostname"), s.get("subdomain"),
            repr(list(_container_ports(pod))))


# ---------------------------------------------------------------------------------- plumbing
def split_key(key: str) -> tuple[str, str]:
    ns, _, name = key.rpartition("/")
    return ns, name


def rv_at_least(cached: str, written: str) -> bool:
    """Has the cache caught up with a version we wrote?  Versions are etcd revisions (integers) in
    this API server; anything else only compares equal."""
    try:
        return int(cached) >= int(written)
    except ValueError:
        return cached == written


class WrittenVersions:
    """Per service key: object key -> resourceVersion we wrote ("" = we deleted it).  A sync whose
    cache shows an older state waits (a create would duplicate, an update would conflict).  An entry
    older than `ttl` is dropped: someone else may have deleted or rewritten the object since."""

    def __init__(self, ttl: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.clock = ttl, clock
        self._lock = threading.Lock()
        self._items: dict[str, dict[str, tuple[str, float]]] = {}

    def wrote(self, key: str, obj_key: str, resource_version: str) -> None:
        with self._lock:
            self._items.setdefault(key, {})[obj_key] = (resource_version, self.clock())

    def forget(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)

    def caught_up(self, key: str, cache: Cache) -> bool:
        """True when every write for `key` shows in `cache`; satisfied entries are dropped."""
        with self._lock:
            items = self._items.get(key, {})
            now = self.clock()
            for obj_key, (rv, stamp) in list(items.items()):
                cached = cache.get(obj_key)
                seen = cached is None if rv == "" else (
                    cached is not None and rv_at_least(str(meta(cached).get("resourceVersion", "")), rv))
                if seen or now - stamp > self.ttl:
                    del items[obj_key]
            if not items:
                self._items.pop(key, None)
            return not items


class ServicePodController(KeyedController):
    """Keys are services ("namespace/name"); service events mark their key, pod events mark every
    service of the pod's namespace whose selector matches the pod (before or after the change)."""

    STALE_RETRY = 0.05  # how soon to look again when the cache lags behind our own write

    def __init__(self, api: Api, services: Cache, pods: Cache, *, resync_period: float = 30.0,
                 retry_delay: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(resync_period=resync_period, retry_delay=retry_delay, clock=clock)
        self.api, self.services, self.pods = api, services, pods
        self.written = WrittenVersions()

    # ------------------------------------------------------------------ informer handlers (record only)
    def service_changed(self, key: str) -> None:
        self.mark(key)

    def pod_added(self, pod: Obj) -> None:
        self._mark_services_of(pod)

    def pod_updated(self, old: Obj, new: Obj) -> None:
        if old is new:  # an informer's periodic resync; the controller has its own
            return
        same_labels = (meta(old).get("labels") or {}) == (meta(new).get("labels") or {})
        if same_labels and pod_view(old) == pod_view(new):
            return
        self._mark_services_of(old)
        self._mark_services_of(new)

    def pod_deleted(self, pod: Obj) -> None:
        self._mark_services_of(pod)

    def _mark_services_of(self, pod: Mapping[str, Any]) -> None:
        ns, labels = meta(pod).get("namespace"), meta(pod).get("labels") or {}
        for svc in self.services.list():
            if meta(svc).get("namespace") != ns:
                continue
            selector = service_selector(svc)
            if selector is not None and selector.matches(labels):
                self.mark(object_key(svc))

    # ------------------------------------------------------------------ the loop
    def run(self, stop: threading.Event, poll: float = 0.5) -> None:
        """Sweep once for objects left behind by services deleted while no controller ran (upstream
        checkLeftoverEndpoints), then loop."""
        for key in self.leftover_keys():
            self.mark(key)
        super().run(stop, poll)

    def leftover_keys(self) -> Iterable[str]:
        return ()

    def resync_keys(self) -> list[str]:
        return [object_key(svc) for svc in self.services.list()]

    def cache_lags(self, key: str, cache: Cache) -> bool:
        """True (and `key` requeued shortly) while `cache` misses one of our own writes for it."""
        if self.written.caught_up(key, cache):
            return False
        self.requeue_after(key, self.STALE_RETRY)
        return True
