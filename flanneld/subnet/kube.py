"""The Kubernetes subnet manager (`--kube-subnet-mgr`): leases are Node objects.

As upstream (flannel pkg/subnet/kube/{kube.go,annotations.go}):
- flanneld allocates nothing: our subnet is `node.spec.podCIDR`, set by the controller manager's
  node IPAM (--allocate-node-cidrs); empty is an error ("node %q pod cidr not assigned") and it
  must lie inside Network;
- our lease attributes are published as node annotations `<prefix>/backend-type`,
  `backend-data`, `public-ip` and `kube-subnet-manager: "true"` (patched only when they differ);
  an operator's `<prefix>/public-ip-overwrite` annotation replaces the detected public IP;
- the NetworkUnavailable=False condition ("FlannelIsUp") goes on nodes/status;
- other hosts' leases come from a node informer; only nodes marked kube-subnet-manager=true with
  a podCIDR count, and node updates that do not change a lease are not reported;
- there is no TTL: expiration is None and renew only re-publishes our annotations.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from ipaddress import IPv4Network, ip_network
from typing import Any, Protocol

from flanneld.config import NetworkConfig
from flanneld.lease import Lease
from flanneld.subnet.base import SubnetError
from podnet.api.client import NODES, ApiError, Resource
from podnet.api.informer import Handlers, Informer, ListWatcher
from podnet.log import get_logger

__all__ = ["ANNOTATION_PREFIX", "KubeApi", "KubeSubnetManager", "lease_from_node", "own_annotations"]

log = get_logger("flanneld.subnet")

ANNOTATION_PREFIX = "flannel.alpha.coreos.com"  # upstream --kube-annotation-prefix default
RESYNC_PERIOD = 300.0  # upstream node informer resync (5 min)

Obj = dict[str, Any]


class KubeApi(ListWatcher, Protocol):
    """The part of podnet.api.client.Client the manager uses (unit tests fake this seam)."""

    def get(self, res: Resource, name: str, namespace: str | None = None) -> Obj: ...

    def patch(self, res: Resource, name: str, patch: Any, namespace: str | None = None, *,
              patch_type: str = "merge", subresource: str | None = None, field_manager: str | None = None,
              force: bool | None = None) -> Obj: ...


def _annotations(node: Mapping[str, Any]) -> dict[str, str]:
    return dict((node.get("metadata") or {}).get("annotations") or {})


def _pod_cidr(node: Mapping[str, Any]) -> IPv4Network | None:
    raw = (node.get("spec") or {}).get("podCIDR")
    if not raw:
        return None
    try:
        net = ip_network(str(raw), strict=False)
    except ValueError:
        return None
    return net if isinstance(net, IPv4Network) else None


def lease_from_node(node: Mapping[str, Any], prefix: str = ANNOTATION_PREFIX) -> Lease | None:
    """The lease a node publishes, or None when it is not (yet) a complete flannel lease."""
    ann = _annotations(node)
    subnet = _pod_cidr(node)
    if ann.get(f"{prefix}/kube-subnet-manager") != "true" or subnet is None:
        return None
    public_ip, backend_type = ann.get(f"{prefix}/public-ip"), ann.get(f"{prefix}/backend-type")
    if not public_ip or not backend_type:
        return None
    try:
        data = json.loads(ann.get(f"{prefix}/backend-data") or "null") or {}
    except ValueError:
        log.warning("node %s: unreadable %s/backend-data; ignoring its lease",
                    (node.get("metadata") or {}).get("name"), prefix)
        return None
    return Lease(subnet, public_ip, backend_type, data if isinstance(data, dict) else {}, None)


def own_annotations(public_ip: str, backend_type: str, backend_data: Mapping[str, Any],
                    prefix: str = ANNOTATION_PREFIX) -> dict[str, str]:
    return {
        f"{prefix}/backend-data": json.dumps(dict(backend_data), separators=(",", ":")),
        f"{prefix}/backend-type": backend_type,
        f"{prefix}/kube-subnet-manager": "true",
        f"{prefix}/public-ip": public_ip,
    }


class KubeSubnetManager:
    def __init__(self, client: KubeApi, node_name: str, net_config: NetworkConfig, *,
                 annotation_prefix: str = ANNOTATION_PREFIX, set_node_network_unavailable: bool = True,
                 resync_period: float = RESYNC_PERIOD,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        if not node_name:
            raise SubnetError("kube subnet manager needs the node name (NODE_NAME)")
        self.client, self.node_name, self.config = client, node_name, net_config
        self.prefix, self.set_condition = annotation_prefix.rstrip("/"), set_node_network_unavailable
        self.clock = clock
        self.informer = Informer(client, NODES, resync_period=resync_period, name="flannel-nodes",
                                 handlers=Handlers(on_add=self._added, on_update=self._updated,
                                                   on_delete=self._deleted))
        self._lock = threading.Lock()
        self._on_change: Callable[[], None] | None = None
        self._own: Lease | None = None
        self._own_rv = 0  # resourceVersion of our node after our last write

    def network_config(self) -> NetworkConfig:
        return self.config

    # -- acquire / renew --------------------------------------------------------------------
    def acquire(self, public_ip: str, backend_type: str, backend_data: dict[str, Any],
                previous: IPv4Network | None) -> Lease:
        # `previous` has no say here: the controller manager decides the podCIDR.
        node = self._get_node()
        subnet = _pod_cidr(node)
        if subnet is None:
            raise SubnetError(f'node "{self.node_name}" pod cidr not assigned')
        if not subnet.subnet_of(self.config.network):
            raise SubnetError(f"node {self.node_name} podCIDR {subnet} is not inside Network "
                              f"{self.config.network}")
        public_ip = _annotations(node).get(f"{self.prefix}/public-ip-overwrite") or public_ip
        node = self._publish(node, own_annotations(public_ip, backend_type, backend_data, self.prefix))
        if self.set_condition:
            node = self._mark_network_available(node)
        lease = Lease(subnet, public_ip, backend_type, dict(backend_data), None)
        with self._lock:
            self._own, self._own_rv = lease, _rv_int(node)
        return lease

    def stored_backend_data(self, public_ip: str, backend_type: str) -> dict[str, Any]:
        """Our node's published backend-data (upstream GetStoredMacAddresses: a persistent VtepMAC,
        flannel PR #1946) when it is for the same backend; {} otherwise."""
        ann = _annotations(self._get_node())
        if ann.get(f"{self.prefix}/backend-type") != backend_type:
            return {}
        try:
            data = json.loads(ann.get(f"{self.prefix}/backend-data") or "null")
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    def renew(self, lease: Lease) -> Lease:
        """No TTL in this mode; re-assert our annotations in case someone edited them."""
        node = self._get_node()
        wanted = own_annotations(lease.public_ip, lease.backend_type, lease.backend_data, self.prefix)
        node = self._publish(node, wanted)
        with self._lock:
            self._own, self._own_rv = lease, _rv_int(node)
        return lease

    def _get_node(self) -> Obj:
        try:
            return self.client.get(NODES, self.node_name)
        except ApiError as err:
            raise SubnetError(f"node {self.node_name}: {err}") from err

    def _publish(self, node: Obj, wanted: dict[str, str]) -> Obj:
        current = _annotations(node)
        if all(current.get(k) == v for k, v in wanted.items()):
            return node
        patch = {"metadata": {"annotations": wanted}}
        return self.client.patch(NODES, self.node_name, patch, patch_type="strategic")

    def _mark_network_available(self, node: Obj) -> Obj:
        conditions = (node.get("status") or {}).get("conditions") or []
        if any(c.get("type") == "NetworkUnavailable" and c.get("status") == "False" for c in conditions):
            return node
        now = self.clock().strftime("%Y-%m-%dT%H:%M:%SZ")
        condition = {"type": "NetworkUnavailable", "status": "False", "reason": "FlannelIsUp",
                     "message": "Flannel is running on this node", "lastTransitionTime": now,
                     "lastHeartbeatTime": now}
        patch = {"status": {"conditions": [condition]}}
        return self.client.patch(NODES, self.node_name, patch, patch_type="strategic", subresource="status")

    # -- watch ------------------------------------------------------------------------------
    def leases(self) -> dict[IPv4Network, Lease]:
        out: dict[IPv4Network, Lease] = {}
        for node in self.informer.list():
            lease = lease_from_node(node, self.prefix)
            if lease is not None:
                out[lease.subnet] = lease
        return out

    def own_lease_lost(self) -> bool:
        with self._lock:
            own, own_rv = self._own, self._own_rv
        if own is None or not self.informer.has_synced():
            return False
        node = self.informer.get(self.node_name)
        if node is None:
            return True  # our Node was deleted
        if _rv_int(node) < own_rv:
            return False  # the cache has not caught up with our own write yet
        return lease_from_node(node, self.prefix) != own

    def run_watch(self, on_change: Callable[[], None], stop: threading.Event) -> None:
        with self._lock:
            self._on_change = on_change
        self.informer.start()
        try:
            # The first list may hold no lease at all (no handler fires): report it anyway, the
            # daemon waits for a first snapshot before it touches peers' routes.
            while not self.informer.wait_for_sync(0.5):
                if stop.is_set():
                    return
            on_change()
            stop.wait()
        finally:
            self.informer.stop()

    def _notify(self) -> None:
        with self._lock:
            callback = self._on_change
        if callback is not None:
            callback()

    def _added(self, node: Obj) -> None:
        if lease_from_node(node, self.prefix) is not None:
            self._notify()

    def _updated(self, old: Obj, new: Obj) -> None:
        # Heartbeats change nodes every few seconds; only lease-relevant changes matter.
        if lease_from_node(old, self.prefix) != lease_from_node(new, self.prefix):
            self._notify()

    def _deleted(self, node: Obj) -> None:
        if lease_from_node(node, self.prefix) is not None:
            self._notify()


def _rv_int(node: Mapping[str, Any]) -> int:
    """resourceVersion as a number (our API server's are etcd revisions); 0 when opaque."""
    try:
        return int((node.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0
