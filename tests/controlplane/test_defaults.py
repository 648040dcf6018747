"""Defaulting as upstream's SetDefaults_* functions do it."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.apiserver.defaults import apply_defaults, image_pull_policy, qos_class
from controlplane.apiserver.resources import Resource, by_kind

Obj = dict[str, Any]


def _res(group: str, kind: str) -> Resource:
    res = by_kind(group, kind)
    assert res is not None
    return res


def _pod(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}], **spec}}


@pytest.mark.parametrize(("image", "policy"), [
    ("busybox", "Always"), ("busybox:latest", "Always"), ("busybox:1.36", "IfNotPresent"),
    ("registry:5000/team/app", "Always"), ("registry:5000/team/app:v1", "IfNotPresent"),
    ("busybox@sha256:abcd", "IfNotPresent"),
])
def test_image_pull_policy(image: str, policy: str) -> None:
    assert image_pull_policy(image) == policy


def test_pod_defaults() -> None:
    pod = _pod()
    pod["spec"]["containers"][0]["ports"] = [{"containerPort": 80}]
    out = apply_defaults(_res("", "Pod"), pod)
    assert out is pod
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Always" and spec["dnsPolicy"] == "ClusterFirst"
    assert spec["terminationGracePeriodSeconds"] == 30 and spec["schedulerName"] == "default-scheduler"
    assert spec["enableServiceLinks"] is True and spec["priority"] == 0
    container = spec["containers"][0]
    assert container["imagePullPolicy"] == "Always"
    assert container["terminationMessagePath"] == "/dev/termination-log"
    assert container["terminationMessagePolicy"] == "File"
    assert container["ports"] == [{"containerPort": 80, "protocol": "TCP"}]
    assert pod["status"] == {"phase": "Pending", "qosClass": "BestEffort"}


def test_pod_defaults_keep_given_values_and_are_idempotent() -> None:
    pod = _pod(restartPolicy="Never", hostNetwork=True)
    pod["spec"]["containers"][0].update(imagePullPolicy="Never",
                                        ports=[{"containerPort": 53, "protocol": "UDP"}],
                                        readinessProbe={"httpGet": {"port": 80}})
    apply_defaults(_res("", "Pod"), pod)
    once = repr(pod)
    apply_defaults(_res("", "Pod"), pod)
    assert repr(pod) == once
    container = pod["spec"]["containers"][0]
    assert pod["spec"]["restartPolicy"] == "Never" and container["imagePullPolicy"] == "Never"
    assert container["ports"] == [{"containerPort": 53, "protocol": "UDP", "hostPort": 53}]
    probe = container["readinessProbe"]
    assert probe["httpGet"] == {"port": 80, "path": "/", "scheme": "HTTP"}
    assert (probe["timeoutSeconds"], probe["periodSeconds"], probe["failureThreshold"]) == (1, 10, 3)


def test_pod_volumes_and_requests_from_limits() -> None:
    pod = _pod(volumes=[{"name": "scratch"}, {"name": "cfg", "configMap": {"name": "x"}}])
    pod["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "1", "memory": "1Gi"}}
    apply_defaults(_res("", "Pod"), pod)
    assert pod["spec"]["volumes"][0] == {"name": "scratch", "emptyDir": {}}
    assert pod["spec"]["volumes"][1]["configMap"]["defaultMode"] == 420
    assert pod["spec"]["containers"][0]["resources"]["requests"] == {"cpu": "1", "memory": "1Gi"}
    assert pod["status"]["qosClass"] == "Guaranteed"


def test_qos_burstable() -> None:
    assert qos_class({"containers": [{"resources": {"requests": {"cpu": "100m"}}}]}) == "Burstable"


def test_service_defaults() -> None:
    svc: Obj = {"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}, {"port": 53, "protocol": "UDP",
                                                                         "targetPort": "dns"}]}}
    apply_defaults(_res("", "Service"), svc)
    spec = svc["spec"]
    assert spec["type"] == "ClusterIP" and spec["sessionAffinity"] == "None"
    assert spec["ports"][0] == {"port": 80, "protocol": "TCP", "targetPort": 80}
    assert spec["ports"][1]["targetPort"] == "dns"
    assert spec["ipFamilies"] == ["IPv4"] and spec["ipFamilyPolicy"] == "SingleStack"
    assert spec["internalTrafficPolicy"] == "Cluster" and "externalTrafficPolicy" not in spec
    assert "clusterIP" not in spec  # the allocator assigns it


def test_service_type_specific_defaults() -> None:
    lb: Obj = {"spec": {"type": "LoadBalancer", "sessionAffinity": "ClientIP", "clusterIP": "fd00::10"}}
    apply_defaults(_res("", "Service"), lb)
    assert lb["spec"]["externalTrafficPolicy"] == "Cluster"
    assert lb["spec"]["allocateLoadBalancerNodePorts"] is True
    assert lb["spec"]["sessionAffinityConfig"] == {"clientIP": {"timeoutSeconds": 10800}}
    assert lb["spec"]["ipFamilies"] == ["IPv6"]
    ext: Obj = {"spec": {"type": "ExternalName", "externalName": "example.com"}}
    apply_defaults(_res("", "Service"), ext)
    assert "ipFamilies" not in ext["spec"] and "internalTrafficPolicy" not in ext["spec"]


def test_replication_controller_selector_and_labels_from_template() -> None:
    rc: Obj = {"metadata": {"name": "rc"}, "spec": {"template": {
        "metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}}}}
    apply_defaults(_res("", "ReplicationController"), rc)
    assert rc["spec"]["selector"] == {"app": "x"} and rc["metadata"]["labels"] == {"app": "x"}
    assert rc["spec"]["replicas"] == 1
    tspec = rc["spec"]["template"]["spec"]
    assert tspec["restartPolicy"] == "Always" and tspec["containers"][0]["imagePullPolicy"] == "IfNotPresent"
    assert "priority" not in tspec  # admission-set, pods only


def test_deployment_and_replicaset_defaults() -> None:
    template: Obj = {"spec": {"containers": []}}
    deploy: Obj = {"spec": {"selector": {"matchLabels": {"a": "b"}}, "template": template}}
    apply_defaults(_res("apps", "Deployment"), deploy)
    spec = deploy["spec"]
    assert spec["replicas"] == 1 and spec["revisionHistoryLimit"] == 10
    assert spec["progressDeadlineSeconds"] == 600
    assert spec["strategy"] == {"type": "RollingUpdate",
                                "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}}
    recreate: Obj = {"spec": {"strategy": {"type": "Recreate"}}}
    apply_defaults(_res("apps", "Deployment"), recreate)
    assert recreate["spec"]["strategy"] == {"type": "Recreate"}
    rs: Obj = {"spec": {"replicas": 0}}
    apply_defaults(_res("apps", "ReplicaSet"), rs)
    assert rs["spec"]["replicas"] == 0


def test_network_policy_policy_types() -> None:
    ingress_only: Obj = {"spec": {"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}}
    apply_defaults(_res("networking.k8s.io", "NetworkPolicy"), ingress_only)
    assert ingress_only["spec"]["policyTypes"] == ["Ingress"]
    assert ingress_only["spec"]["ingress"][0]["ports"] == [{"port": 80, "protocol": "TCP"}]
    both: Obj = {"spec": {"egress": [{}]}}
    apply_defaults(_res("networking.k8s.io", "NetworkPolicy"), both)
    assert both["spec"]["policyTypes"] == ["Ingress", "Egress"] and both["spec"]["podSelector"] == {}
    explicit: Obj = {"spec": {"podSelector": {}, "policyTypes": ["Egress"]}}
    apply_defaults(_res("networking.k8s.io", "NetworkPolicy"), explicit)
    assert explicit["spec"]["policyTypes"] == ["Egress"]


def test_namespace_defaults() -> None:
    ns: Obj = {"metadata": {"name": "team", "labels": {"kubernetes.io/metadata.name": "other"}}}
    apply_defaults(_res("", "Namespace"), ns)
    assert ns["spec"] == {"finalizers": ["kubernetes"]} and ns["status"] == {"phase": "Active"}
    assert ns["metadata"]["labels"] == {"kubernetes.io/metadata.name": "team"}
    terminating: Obj = {"metadata": {"name": "t"}, "spec": {"finalizers": []},
                        "status": {"phase": "Terminating"}}
    apply_defaults(_res("", "Namespace"), terminating)
    assert terminating["spec"]["finalizers"] == [] and terminating["status"]["phase"] == "Terminating"


def test_small_kinds() -> None:
    secret: Obj = {"metadata": {"name": "s"}}
    apply_defaults(_res("", "Secret"), secret)
    assert secret["type"] == "Opaque"
    node: Obj = {"status": {"capacity": {"cpu": "2"}}}
    apply_defaults(_res("", "Node"), node)
    assert node["status"]["allocatable"] == {"cpu": "2"}
    eps: Obj = {"addressType": "IPv4", "ports": [{"port": 80}]}
    apply_defaults(_res("discovery.k8s.io", "EndpointSlice"), eps)
    assert eps["ports"] == [{"port": 80, "protocol": "TCP", "name": ""}]
    rb: Obj = {"subjects": [{"kind": "User", "name": "u"}, {"kind": "ServiceAccount", "name": "sa"}]}
    apply_defaults(_res("rbac.authorization.k8s.io", "RoleBinding"), rb)
    assert [s["apiGroup"] for s in rb["subjects"]] == ["rbac.authorization.k8s.io", ""]
    cm: Obj = {"data": {}}
    apply_defaults(_res("", "ConfigMap"), cm)
    assert cm == {"data": {}}


def test_malformed_objects_do_not_raise() -> None:
    for obj in ({"spec": "nonsense"}, {"spec": {"strategy": "x"}}, {"spec": {"containers": "x"}}):
        apply_defaults(_res("apps", "Deployment"), obj)
        apply_defaults(_res("", "Pod"), dict(obj))
    weird = {"spec": "nonsense"}
    apply_defaults(_res("", "Service"), weird)
    assert weird["spec"] == "nonsense"
