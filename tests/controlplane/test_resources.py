"""The resource table: lookups and the upstream names kubectl depends on."""

from __future__ import annotations

from controlplane.apiserver import resources
from controlplane.apiserver.resources import by_api_version, by_kind, find


def test_find_core_and_group_resources() -> None:
    pods = find("", "v1", "pods")
    assert pods is not None and pods.kind == "Pod" and pods.namespaced
    assert pods.api_version == "v1" and pods.url_prefix == "/api/v1"
    deploy = find("apps", "v1", "deployments")
    assert deploy is not None and deploy.api_version == "apps/v1"
    assert deploy.url_prefix == "/apis/apps/v1" and deploy.list_kind == "DeploymentList"
    assert find("apps", "v1", "pods") is None
    assert find("", "v2", "pods") is None


def test_by_kind_and_api_version() -> None:
    assert by_kind("", "Namespace") is find("", "v1", "namespaces")
    assert by_kind("networking.k8s.io", "NetworkPolicy") is find("networking.k8s.io", "v1", "networkpolicies")
    assert by_api_version("apps/v1", "ReplicaSet") is find("apps", "v1", "replicasets")
    assert by_api_version("apps/v2", "ReplicaSet") is None
    assert by_kind("", "Deployment") is None


def test_short_names_kubectl_needs() -> None:
    # kubectl has no fallback for shortNames (reference finding 0.4).
    want = {"namespaces": "ns", "nodes": "no", "pods": "po", "services": "svc", "endpoints": "ep",
            "replicationcontrollers": "rc", "events": "ev", "configmaps": "cm", "serviceaccounts": "sa",
            "networkpolicies": "netpol", "deployments": "deploy", "replicasets": "rs"}
    by_plural = {r.plural: r for r in resources.RESOURCES}
    for plural, short in want.items():
        assert short in by_plural[plural].short_names


def test_subresources_and_scale_kind() -> None:
    rc = find("", "v1", "replicationcontrollers")
    assert rc is not None and rc.has_subresource("scale")
    assert rc.subresource_kind("scale") == ("autoscaling", "v1", "Scale")
    assert rc.subresource_kind("status") == ("", "v1", "ReplicationController")
    pods = find("", "v1", "pods")
    assert pods is not None and pods.subresource_verbs("binding") == ("create",)
    assert pods.subresource_kind("binding") == ("", "v1", "Binding")


def test_field_selectors() -> None:
    pods = find("", "v1", "pods")
    events = find("", "v1", "events")
    assert pods is not None and events is not None
    assert {"metadata.name", "metadata.namespace", "spec.nodeName", "status.phase"} <= pods.field_selectors
    assert "involvedObject.uid" in events.field_selectors
    assert "spec.nodeName" not in events.field_selectors


def test_group_versions_core_first_and_unique() -> None:
    gvs = resources.group_versions()
    assert gvs[0] == ("", "v1")
    assert len(gvs) == len(set(gvs))
    assert "apps" in resources.groups() and "" not in resources.groups()
    sar = find("authorization.k8s.io", "v1", "selfsubjectaccessreviews")
    assert sar is not None and sar.verbs == ("create",)
