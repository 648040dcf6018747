"""Discovery documents as kube-apiserver serves them (reference proxy_apiserver.md B1)."""

from __future__ import annotations

from typing import Any

from controlplane.apiserver import discovery
from controlplane.apiserver.resources import STANDARD_VERBS

KUBECTL_132_ACCEPT = (
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,"
    "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"
)
KUBECTL_127_ACCEPT = (
    "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"
)


def _entries(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in doc["resources"]}


def test_version_info_reports_131_with_every_field() -> None:
    info = discovery.version_info()
    assert info["major"] == "1" and info["minor"] == "31"
    assert info["gitVersion"].startswith("v1.31.")
    for field in ("gitCommit", "gitTreeState", "buildDate", "goVersion", "compiler", "platform"):
        assert info[field]


def test_api_versions() -> None:
    doc = discovery.api_versions("127.0.0.1:6443")
    assert doc["kind"] == "APIVersions" and doc["versions"] == ["v1"]
    assert doc["serverAddressByClientCIDRs"] == [
        {"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}
    ]


def test_api_group_list_has_preferred_versions() -> None:
    doc = discovery.api_group_list()
    assert doc["kind"] == "APIGroupList" and doc["apiVersion"] == "v1"
    groups = {g["name"]: g for g in doc["groups"]}
    assert set(groups) >= {"apps", "networking.k8s.io", "discovery.k8s.io", "coordination.k8s.io",
                           "rbac.authorization.k8s.io", "authorization.k8s.io"}
    assert "" not in groups
    apps = groups["apps"]
    assert apps["versions"] == [{"groupVersion": "apps/v1", "version": "v1"}]
    assert apps["preferredVersion"] == {"groupVersion": "apps/v1", "version": "v1"}
    group = discovery.api_group("apps")
    assert group is not None and group["kind"] == "APIGroup" and group["name"] == "apps"
    assert discovery.api_group("nope.example.com") is None


def test_core_resource_list() -> None:
    doc = discovery.api_resource_list("", "v1")
    assert doc is not None
    assert doc["kind"] == "APIResourceList" and doc["groupVersion"] == "v1"
    entries = _entries(doc)
    pods = entries["pods"]
    assert pods["namespaced"] is True and pods["kind"] == "Pod" and pods["singularName"] == "pod"
    assert pods["shortNames"] == ["po"] and pods["categories"] == ["all"]
    assert pods["verbs"] == list(STANDARD_VERBS)
    assert entries["namespaces"]["namespaced"] is False
    assert entries["pods/binding"]["verbs"] == ["create"]
    assert entries["pods/binding"]["kind"] == "Binding"
    assert entries["pods/status"]["verbs"] == ["get", "patch", "update"]
    assert entries["pods/log"]["verbs"] == ["get"]
    scale = entries["replicationcontrollers/scale"]
    assert (scale["group"], scale["version"], scale["kind"]) == ("autoscaling", "v1", "Scale")
    assert "group" not in entries["pods/status"]


def test_group_resource_list_and_unknown() -> None:
    doc = discovery.api_resource_list("apps", "v1")
    assert doc is not None and doc["groupVersion"] == "apps/v1" and doc["apiVersion"] == "v1"
    entries = _entries(doc)
    assert entries["deployments"]["shortNames"] == ["deploy"]
    assert entries["deployments/scale"]["group"] == "autoscaling"
    assert discovery.api_resource_list("apps", "v2") is None
    assert discovery.api_resource_list("", "v2") is None


def test_negotiate_aggregated() -> None:
    assert discovery.negotiate_aggregated(KUBECTL_132_ACCEPT) == "v2"
    assert discovery.negotiate_aggregated(KUBECTL_127_ACCEPT) == "v2beta1"
    assert discovery.negotiate_aggregated("application/json, */*") is None
    assert discovery.negotiate_aggregated("") is None


def test_aggregated_core_document() -> None:
    doc = discovery.aggregated_discovery(legacy=True)
    assert doc["kind"] == "APIGroupDiscoveryList" and doc["apiVersion"] == "apidiscovery.k8s.io/v2"
    [core] = doc["items"]
    assert "name" not in core["metadata"]
    [v1] = core["versions"]
    assert v1["version"] == "v1" and v1["freshness"] == "Current"
    res = {r["resource"]: r for r in v1["resources"]}
    pods = res["pods"]
    assert pods["responseKind"] == {"group": "", "version": "v1", "kind": "Pod"}
    assert pods["scope"] == "Namespaced" and pods["singularResource"] == "pod"
    subs = {s["subresource"]: s for s in pods["subresources"]}
    assert subs["binding"]["verbs"] == ["create"]
    assert res["nodes"]["scope"] == "Cluster"
    rc_scale = {s["subresource"]: s for s in res["replicationcontrollers"]["subresources"]}["scale"]
    assert rc_scale["responseKind"] == {"group": "autoscaling", "version": "v1", "kind": "Scale"}


def test_aggregated_groups_document() -> None:
    doc = discovery.aggregated_discovery(legacy=False, version="v2beta1")
    assert doc["apiVersion"] == "apidiscovery.k8s.io/v2beta1"
    names = [item["metadata"]["name"] for item in doc["items"]]
    assert "apps" in names and "" not in names
    assert discovery.AGGREGATED_CONTENT_TYPES["v2"] == (
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    )
