"""Objects the API server keeps in place itself: the `default/kubernetes` Service and Endpoints.

Upstream's master controller (pkg/controlplane/controller/kubernetesservice) creates the service
with the first address of --service-cluster-ip-range, port 443 named `https` to the secure port, and
points its endpoints at the advertised address; in-cluster clients (and kube-proxy's rules for it)
rely on both.  Idempotent: existing objects are left alone, endpoints follow the current address.
"""

from __future__ import annotations

from typing import Any

from controlplane.apiserver import errors, resources
from controlplane.apiserver.resources import Resource

LABELS = {"component": "apiserver", "provider": "kubernetes"}


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
