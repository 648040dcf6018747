"""Discovery documents: /api, /apis, /api/v1, /apis/<g>/<v>, aggregated discovery and /version.

Pure functions from the resource table to the JSON documents kube-apiserver serves (reference
proxy_apiserver.md B1). kubectl caches them on disk, so they must be stable for a given table.
"""

from __future__ import annotations

from typing import Any

from controlplane.apiserver import resources
from controlplane.apiserver.resources import Resource

# The exact Content-Type kubectl checks before trusting an aggregated answer; anything else (e.g.
# plain application/json) makes it fall back to the per-group-version documents (reference B1).
AGGREGATED_CONTENT_TYPE_V2 = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
AGGREGATED_CONTENT_TYPE_V2BETA1 = (
    "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList"
)
AGGREGATED_CONTENT_TYPES = {"v2": AGGREGATED_CONTENT_TYPE_V2, "v2beta1": AGGREGATED_CONTENT_TYPE_V2BETA1}

SERVER_MAJOR = "1"
SERVER_MINOR = "31"
SERVER_GIT_VERSION = "v1.31.0-podnet"


def version_info() -> dict[str, str]:
    """version.Info for /version: the gcloud kubectl dispatcher picks kubectl.1.<minor> from it.

    Every field is present because the python client's VersionInfo model rejects missing ones.
    """
    return {
        "major": SERVER_MAJOR,
        "minor": SERVER_MINOR,
        "gitVersion": SERVER_GIT_VERSION,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.22.5",
        "compiler": "gc",
        "platform": "linux/amd64",
    }


def api_versions(server_address: str) -> dict[str, Any]:
    """GET /api (APIVersions)."""
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


def _group_versions(group: str) -> list[dict[str, str]]:
    return [
        {"groupVersion": f"{group}/{v}", "version": v}
        for g, v in resources.group_versions() if g == group
    ]


def _api_group_body(group: str) -> dict[str, Any]:
    versions = _group_versions(group)
    return {"name": group, "versions": versions, "preferredVersion": versions[0]}


def api_group_list() -> dict[str, Any]:
    """GET /apis (APIGroupList); must be 200 even if empty or kubectl retries 5x and fails."""
    return {
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [_api_group_body(g) for g in resources.groups()],
    }


def api_group(group: str) -> dict[str, Any] | None:
    """GET /apis/<group> (APIGroup), or None for an unknown group (-> 404)."""
    if group not in resources.groups():
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_api_group_body(group)}


def _resource_entry(res: Resource) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": res.plural,
        "singularName": res.singular,
        "namespaced": res.namespaced,
        "kind": res.kind,
        "verbs": list(res.verbs),
    }
    if res.short_names:
        entry["shortNames"] = list(res.short_names)
    if res.categories:
        entry["categories"] = list(res.categories)
    return entry


def _subresource_entry(res: Resource, sub: str) -> dict[str, Any]:
    group, version, kind = res.subresource_kind(sub)
    entry: dict[str, Any] = {
        "name": f"{res.plural}/{sub}",
        "singularName": "",
        "namespaced": res.namespaced,
        "kind": kind,
        "verbs": list(res.subresource_verbs(sub)),
    }
    # Upstream only spells out group/version when they differ from the parent's (*/scale).
    if (group, version) != (res.group, res.version):
        entry["group"] = group
        entry["version"] = version
    return entry


def api_resource_list(group: str, version: str) -> dict[str, Any] | None:
    """GET /api/v1 or /apis/<g>/<v> (APIResourceList), or None when not served (-> 404)."""
    served = resources.resources_in(group, version)
    if not served:
        return None
    entries: list[dict[str, Any]] = []
    for res in served:
        entries.append(_resource_entry(res))
        entries.extend(_subresource_entry(res, sub) for sub in res.subresources)
    doc: dict[str, Any] = {"kind": "APIResourceList", "groupVersion": served[0].group_version}
    if group:
        doc["apiVersion"] = "v1"
    doc["resources"] = entries
    return doc


def negotiate_aggregated(accept: str) -> str | None:
    """The aggregated-discovery version ("v2", "v2beta1") the Accept header asks for, or None.

    kubectl 1.30+ lists v2 first, 1.27-1.29 only v2beta1; the two formats are identical apart from
    apiVersion. A client that only accepts application/json gets the legacy documents.
    """
    for part in accept.split(","):
        params: dict[str, str] = {}
        for item in part.split(";")[1:]:
            key, _, value = item.strip().partition("=")
            params[key] = value
        wanted = params.get("g") == "apidiscovery.k8s.io" and params.get("as") == "APIGroupDiscoveryList"
        if wanted and params.get("v") in AGGREGATED_CONTENT_TYPES:
            return params["v"]
    return None


def _discovery_resource(res: Resource) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "resource": res.plural,
        "responseKind": {"group": res.group, "version": res.version, "kind": res.kind},
        "scope": res.scope,
        "singularResource": res.singular,
        "verbs": list(res.verbs),
    }
    if res.short_names:
        entry["shortNames"] = list(res.short_names)
    if res.categories:
        entry["categories"] = list(res.categories)
    subs = []
    for sub in res.subresources:
        group, version, kind = res.subresource_kind(sub)
        subs.append({
            "subresource": sub,
            "responseKind": {"group": group, "version": version, "kind": kind},
            "verbs": list(res.subresource_verbs(sub)),
        })
    if subs:
        entry["subresources"] = subs
    return entry


def _discovery_group(group: str) -> dict[str, Any]:
    versions = [
        {
            "version": v,
            "resources": [_discovery_resource(r) for r in resources.resources_in(group, v)],
            "freshness": "Current",
        }
        for g, v in resources.group_versions() if g == group
    ]
    metadata: dict[str, Any] = {"creationTimestamp": None}
    if group:
        metadata["name"] = group
    return {"metadata": metadata, "versions": versions}


def aggregated_discovery(legacy: bool, version: str = "v2") -> dict[str, Any]:
    """APIGroupDiscoveryList for /api (legacy=True: the core group) or /apis (every named group).

    Serve it with AGGREGATED_CONTENT_TYPES[version] as the Content-Type.
    """
    groups = [""] if legacy else resources.groups()
    return {
        "kind": "APIGroupDiscoveryList",
        "apiVersion": f"apidiscovery.k8s.io/{version}",
        "metadata": {},
        "items": [_discovery_group(g) for g in groups],
    }
