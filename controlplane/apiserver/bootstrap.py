"""What the API server keeps in place itself: the `default/kubernetes` Service and Endpoints, and
the Service IP/port reservations (repair loop).

Upstream's master controller (pkg/controlplane/controller/kubernetesservice) creates the service
with the first address of --service-cluster-ip-range, port 443 named `https` to the secure port, and
points its endpoints at the advertised address; in-cluster clients (and kube-proxy's rules for it)
rely on both.  Idempotent: existing objects are left alone, endpoints follow the current address.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from controlplane.apiserver import errors, resources
from controlplane.apiserver.allocators import AllocationRepair, ServiceAllocators
from controlplane.apiserver.resources import Resource

log = logging.getLogger(__name__)

LABELS = {"component": "apiserver", "provider": "kubernetes"}
# upstream runs its ClusterIP / NodePort repair controllers every 3 minutes
REPAIR_INTERVAL = 180.0


def _res(plural: str) -> Resource:
    res = resources.find("", "v1", plural)
    assert res is not None
    return res


def kubernetes_service(cluster_ip: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": dict(LABELS)},
        "spec": {"type": "ClusterIP", "clusterIP": cluster_ip, "sessionAffinity": "None",
                 "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 0}]},
    }


def kubernetes_endpoints(address: str, port: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kubernetes", "namespace": "default", "labels": {
            "endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": [{"addresses": [{"ip": address}],
                     "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}],
    }


async def ensure_kubernetes_service(registry: Any, cluster_ip: str, address: str, port: int) -> None:
    """Create the service (if absent) and make its endpoints point at address:port."""
    services = _res("services")
    try:
        await registry.get(services, "default", "kubernetes")
    except errors.ApiError as e:
        if e.code != 404:
            raise
        svc = kubernetes_service(cluster_ip)
        svc["spec"]["ports"][0]["targetPort"] = port
        await registry.create(services, "default", svc)
    wanted = kubernetes_endpoints(address, port)
    endpoints = _res("endpoints")
    try:
        current = await registry.get(endpoints, "default", "kubernetes")
    except errors.ApiError as e:
        if e.code != 404:
            raise
        await registry.create(endpoints, "default", wanted)
        return
    if current.get("subsets") != wanted["subsets"]:
        current["subsets"] = wanted["subsets"]
        await registry.update(endpoints, "default", "kubernetes", current)


async def repair_allocations_once(registry: Any, services: ServiceAllocators,
                                  repair: AllocationRepair) -> tuple[list[str], list[int]]:
    """One repair pass: reservations are read before the listing, so a create that lands in
    between is never taken for a leak (AllocationRepair.run_with)."""
    ips = await asyncio.to_thread(services.ips.allocated)
    ports = await asyncio.to_thread(services.ports.allocated_ports)
    listed = await registry.list(_res("services"), "")
    return await asyncio.to_thread(repair.run_with, ips, ports, listed.get("items", []))


async def repair_allocations_forever(registry: Any, services: ServiceAllocators,
                                     interval: float = REPAIR_INTERVAL) -> None:
    """Release reservations no Service holds (e.g. after a kill -9 between reserving and storing)
    and re-reserve values Services hold without one; store errors wait for the next round."""
    repair = AllocationRepair(services)
    while True:
        await asyncio.sleep(interval)
        try:
            ips, ports = await repair_allocations_once(registry, services, repair)
        except Exception as e:
            log.warning("service allocation repair failed: %s", e)
            continue
        if ips or ports:
            log.info("repair released leaked ClusterIPs %s and NodePorts %s", ips, ports)
