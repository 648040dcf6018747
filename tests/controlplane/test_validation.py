"""Validation causes with upstream fields, reasons and messages."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from controlplane.apiserver import validation, validation_syntax
from controlplane.apiserver.defaults import apply_defaults
from controlplane.apiserver.resources import Resource, by_kind

Obj = dict[str, Any]

SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and "
    "must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    r"'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start "
    "and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
DNS1035_MSG = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic "
    "character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for "
    "validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
)


def _res(group: str, kind: str) -> Resource:
    res = by_kind(group, kind)
    assert res is not None
    return res


def _check(group: str, kind: str, obj: Obj, old: Obj | None = None) -> list[tuple[str, str, str]]:
    res = _res(group, kind)
    apply_defaults(res, obj)
    return [(c["field"], c["reason"], c["message"]) for c in validation.validate(res, obj, old)]


def _pod(name: str = "p", **spec: Any) -> Obj:
    return {
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}], **spec},
    }


def _svc(name: str = "s", **spec: Any) -> Obj:
    return {"metadata": {"name": name, "namespace": "default"}, "spec": {"ports": [{"port": 80}], **spec}}


def test_valid_objects_have_no_causes() -> None:
    assert _check("", "Pod", _pod()) == []
    assert _check("", "Service", _svc()) == []
    assert _check("", "Namespace", {"metadata": {"name": "team-a"}}) == []
    assert _check("", "ConfigMap", {"metadata": {"name": "c", "namespace": "d"}, "data": {"a.b": "x"}}) == []


def test_regex_error_wording() -> None:
    assert validation_syntax.is_dns1123_subdomain("Foo") == [SUBDOMAIN_MSG]
    assert validation_syntax.is_dns1123_label("a_b") == [LABEL_MSG]
    assert validation_syntax.is_dns1123_label("a.b") == ["must not contain dots"]
    assert validation_syntax.is_dns1035_label("1abc") == [DNS1035_MSG]
    assert validation_syntax.is_dns1123_label("a" * 64) == ["must be no more than 63 characters"]


def test_names_per_kind() -> None:
    assert _check("", "Pod", _pod("Foo")) == [
        ("metadata.name", "FieldValueInvalid", f'Invalid value: "Foo": {SUBDOMAIN_MSG}')
    ]
    assert _check("", "Pod", _pod("a.b")) == []
    assert _check("", "Service", _svc("1svc")) == [
        ("metadata.name", "FieldValueInvalid", f'Invalid value: "1svc": {DNS1035_MSG}')
    ]
    assert _check("", "Namespace", {"metadata": {"name": "a.b"}})[0][2] == (
        'Invalid value: "a.b": must not contain dots'
    )
    missing = _check("", "Pod", {"metadata": {}, "spec": {"containers": [{"name": "c", "image": "i"}]}})
    assert missing == [
        ("metadata.name", "FieldValueRequired", "Required value: name or generateName is required")
    ]
    generated = {"metadata": {"generateName": "web-"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}
    assert _check("", "Pod", generated) == []
    role = {"metadata": {"name": "system:controller:x"}, "rules": []}
    assert _check("rbac.authorization.k8s.io", "ClusterRole", role) == []


def test_labels_and_annotations() -> None:
    pod = _pod()
    pod["metadata"]["labels"] = {"app": "ok", "bad key!": "v", "k": "-bad"}
    pod["metadata"]["annotations"] = {"example.com/Fine": "x", "a/b/c": "y"}
    causes = _check("", "Pod", pod)
    fields = [(f, r) for f, r, _ in causes]
    assert fields == [("metadata.labels", "FieldValueInvalid")] * 2 + [
        ("metadata.annotations", "FieldValueInvalid")
    ]
    assert causes[0][2].startswith('Invalid value: "bad key!": name part must consist of alphanumeric')
    assert causes[1][2].startswith('Invalid value: "-bad": a valid label must be an empty string')
    assert "with an optional DNS subdomain prefix and '/'" in causes[2][2]
    huge = _pod()
    huge["metadata"]["annotations"] = {"big": "x" * (256 * 1024)}
    assert _check("", "Pod", huge) == [
        ("metadata.annotations", "FieldValueTooLong", "Too long: must have at most 262144 bytes")
    ]


def test_pod_spec_errors() -> None:
    assert _check("", "Pod", {"metadata": {"name": "p"}, "spec": {}}) == [
        ("spec.containers", "FieldValueRequired", "Required value")
    ]
    pod = _pod(restartPolicy="Sometimes")
    pod["spec"]["containers"].append({"name": "c", "ports": [{"containerPort": 70000, "protocol": "TCPX"}]})
    assert _check("", "Pod", pod) == [
        ("spec.containers[1].name", "FieldValueDuplicate", 'Duplicate value: "c"'),
        ("spec.containers[1].image", "FieldValueRequired", "Required value"),
        (
            "spec.containers[1].ports[0].containerPort",
            "FieldValueInvalid",
            "Invalid value: 70000: must be between 1 and 65535, inclusive",
        ),
        (
            "spec.containers[1].ports[0].protocol",
            "FieldValueNotSupported",
            'Unsupported value: "TCPX": supported values: "SCTP", "TCP", "UDP"',
        ),
        (
            "spec.restartPolicy",
            "FieldValueNotSupported",
            'Unsupported value: "Sometimes": supported values: "Always", "OnFailure", "Never"',
        ),
    ]


def test_pod_update_rules() -> None:
    old = _pod()
    apply_defaults(_res("", "Pod"), old)
    new_image = copy.deepcopy(old)
    new_image["spec"]["containers"][0]["image"] = "busybox:1.36"
    assert _check("", "Pod", new_image, old) == []
    bound = copy.deepcopy(old)
    bound["spec"]["nodeName"] = "node-1"  # pods/binding
    assert _check("", "Pod", bound, old) == []
    rebound = copy.deepcopy(bound)
    rebound["spec"]["nodeName"] = "node-2"
    changed = copy.deepcopy(old)
    changed["spec"]["containers"][0]["command"] = ["sleep", "1"]
    for new, base in ((changed, old), (rebound, bound)):
        [(field, reason, message)] = _check("", "Pod", new, base)
        assert (field, reason) == ("spec", "FieldValueForbidden")
        assert message.startswith(
            "Forbidden: pod updates may not change fields other than `spec.containers[*].image`"
        )
    tolerated = copy.deepcopy(old)
    tolerated["spec"]["tolerations"] = [{"key": "k", "operator": "Exists"}]
    assert _check("", "Pod", tolerated, old) == []


def test_service_errors() -> None:
    svc = _svc(type="Foo", ports=[{"port": 80, "targetPort": 70000}, {"port": 80, "targetPort": "http--x"}])
    assert _check("", "Service", svc) == [
        (
            "spec.type",
            "FieldValueNotSupported",
            'Unsupported value: "Foo": supported values: '
            '"ClusterIP", "ExternalName", "LoadBalancer", "NodePort"',
        ),
        ("spec.ports[0].name", "FieldValueRequired", "Required value"),
        (
            "spec.ports[0].targetPort",
            "FieldValueInvalid",
            "Invalid value: 70000: must be between 1 and 65535, inclusive",
        ),
        ("spec.ports[1].name", "FieldValueRequired", "Required value"),
        (
            "spec.ports[1].targetPort",
            "FieldValueInvalid",
            'Invalid value: "http--x": must not contain consecutive hyphens',
        ),
        ("spec.ports[1]", "FieldValueDuplicate", 'Duplicate value: {"port":80,"protocol":"TCP"}'),
    ]
    assert _check("", "Service", _svc(ports=[{"port": 80, "nodePort": 30001}])) == [
        (
            "spec.ports[0].nodePort",
            "FieldValueForbidden",
            "Forbidden: may not be used when `type` is 'ClusterIP'",
        )
    ]
    assert _check("", "Service", _svc(ports=[])) == [("spec.ports", "FieldValueRequired", "Required value")]
    assert _check("", "Service", _svc(ports=[], clusterIP="None")) == []
    assert _check("", "Service", _svc(type="ExternalName", ports=[])) == [
        ("spec.externalName", "FieldValueRequired", "Required value")
    ]
    assert _check("", "Service", _svc(clusterIP="10.0.0.300"))[0][:2] == (
        "spec.clusterIPs[0]",
        "FieldValueInvalid",
    )


def test_service_cluster_ip_is_immutable() -> None:
    old = _svc(clusterIP="10.96.0.10", clusterIPs=["10.96.0.10"])
    new = _svc(clusterIP="10.96.0.11", clusterIPs=["10.96.0.11"])
    assert _check("", "Service", new, old) == [
        ("spec.clusterIPs[0]", "FieldValueInvalid",
         'Invalid value: []string{"10.96.0.11"}: may not change once set')
    ]
    # clusterIP changed alone: upstream normalizes clusterIPs to [clusterIP] first
    alone = _svc(clusterIP="10.96.0.12", clusterIPs=["10.96.0.10"])
    assert _check("", "Service", alone, old)[0][2] == (
        'Invalid value: []string{"10.96.0.12"}: may not change once set')
    assert _check("", "Service", _svc(clusterIP="10.96.0.10"), old) == []


def _template(labels: dict[str, str], **spec: Any) -> Obj:
    return {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "c", "image": "i"}], **spec}}


def test_replication_controller() -> None:
    rc = {
        "metadata": {"name": "rc"},
        "spec": {
            "replicas": -1,
            "selector": {"app": "a"},
            "template": _template({"app": "b"}, restartPolicy="Never"),
        },
    }
    assert _check("", "ReplicationController", rc) == [
        ("spec.replicas", "FieldValueInvalid", "Invalid value: -1: must be greater than or equal to 0"),
        (
            "spec.template.spec.restartPolicy",
            "FieldValueNotSupported",
            'Unsupported value: "Never": supported values: "Always"',
        ),
        (
            "spec.template.metadata.labels",
            "FieldValueInvalid",
            'Invalid value: map[string]string{"app":"b"}: `selector` does not match template `labels`',
        ),
    ]
    defaulted = {"metadata": {"name": "rc"}, "spec": {"template": _template({"app": "a"})}}
    assert _check("", "ReplicationController", defaulted) == []


def test_deployment_and_replicaset() -> None:
    deploy = {
        "metadata": {"name": "d"},
        "spec": {"selector": {"matchLabels": {"app": "a"}}, "template": _template({"app": "a"})},
    }
    assert _check("apps", "Deployment", deploy) == []
    changed = copy.deepcopy(deploy)
    changed["spec"]["selector"] = {"matchLabels": {"app": "b"}}
    changed["spec"]["template"]["metadata"]["labels"] = {"app": "b"}
    assert _check("apps", "Deployment", changed, deploy) == [
        (
            "spec.selector",
            "FieldValueInvalid",
            'Invalid value: v1.LabelSelector{MatchLabels:map[string]string{"app":"b"}, '
            'MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable',
        )
    ]
    empty = {"metadata": {"name": "d"}, "spec": {"selector": {}, "template": _template({"app": "a"})}}
    assert _check("apps", "Deployment", empty)[0][2].endswith("empty selector is invalid for deployment")
    rs = {"metadata": {"name": "r"}, "spec": {"template": _template({"app": "a"})}}
    assert _check("apps", "ReplicaSet", rs) == [("spec.selector", "FieldValueRequired", "Required value")]
    mismatch = {
        "metadata": {"name": "r"},
        "spec": {
            "selector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["x"]}]},
            "template": _template({"app": "a"}),
        },
    }
    assert _check("apps", "ReplicaSet", mismatch)[0][0] == "spec.template.metadata.labels"


def test_network_policy() -> None:
    np = {
        "metadata": {"name": "np"},
        "spec": {
            "podSelector": {},
            "ingress": [
                {
                    "ports": [
                        {"protocol": "ICMP", "port": 80},
                        {"port": "http", "endPort": 90},
                        {"port": 100, "endPort": 90},
                    ],
                    "from": [{}],
                }
            ],
            "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["192.168.0.0/16"]}}]}],
            "policyTypes": ["Ingress", "Egress", "Sideways"],
        },
    }
    assert _check("networking.k8s.io", "NetworkPolicy", np) == [
        (
            "spec.ingress[0].ports[0].protocol",
            "FieldValueNotSupported",
            'Unsupported value: "ICMP": supported values: "SCTP", "TCP", "UDP"',
        ),
        (
            "spec.ingress[0].ports[1].endPort",
            "FieldValueForbidden",
            "Forbidden: may not be specified when `port` is non-numeric",
        ),
        (
            "spec.ingress[0].ports[2].endPort",
            "FieldValueInvalid",
            "Invalid value: 90: must be greater than or equal to `port`",
        ),
        ("spec.ingress[0].from[0]", "FieldValueRequired", "Required value: must specify a peer"),
        (
            "spec.egress[0].to[0].ipBlock.except[0]",
            "FieldValueInvalid",
            'Invalid value: "192.168.0.0/16": must be a strict subset of `cidr`',
        ),
        (
            "spec.policyTypes[2]",
            "FieldValueNotSupported",
            'Unsupported value: "Sideways": supported values: "Ingress", "Egress"',
        ),
        (
            "spec.policyTypes",
            "FieldValueInvalid",
            'Invalid value: []networking.PolicyType{"Ingress", "Egress", "Sideways"}: '
            "may not specify more than two policyTypes",
        ),
    ]
    ok = {
        "metadata": {"name": "np"},
        "spec": {
            "podSelector": {"matchLabels": {"role": "db"}},
            "ingress": [{"from": [{"namespaceSelector": {}}]}],
        },
    }
    assert _check("networking.k8s.io", "NetworkPolicy", ok) == []


def test_endpoints_slices_configmaps_secrets() -> None:
    ep = {
        "metadata": {"name": "e"},
        "subsets": [{"addresses": [{"ip": "10.0.0.300"}], "ports": [{"port": 0}]}],
    }
    assert [f for f, _, _ in _check("", "Endpoints", ep)] == [
        "subsets[0].addresses[0].ip",
        "subsets[0].ports[0].port",
    ]
    eps = {"metadata": {"name": "e"}, "endpoints": [{"addresses": ["10.0.0.1"]}]}
    assert _check("discovery.k8s.io", "EndpointSlice", eps) == [
        ("addressType", "FieldValueRequired", "Required value")
    ]
    cm = {"metadata": {"name": "c"}, "data": {"bad key": "x"}}
    assert _check("", "ConfigMap", cm)[0][:2] == ("data[bad key]", "FieldValueInvalid")
    frozen = {"metadata": {"name": "c"}, "immutable": True, "data": {"a": "1"}}
    thawed = {"metadata": {"name": "c"}, "immutable": True, "data": {"a": "2"}}
    assert _check("", "ConfigMap", thawed, frozen) == [
        ("data", "FieldValueForbidden", "Forbidden: field is immutable when `immutable` is set")
    ]
    secret = {"metadata": {"name": "s"}, "data": {"k": "not base64!"}}
    assert _check("", "Secret", secret)[0][:2] == ("data[k]", "FieldValueInvalid")
    old_secret = {"metadata": {"name": "s"}, "type": "Opaque"}
    retyped = {"metadata": {"name": "s"}, "type": "kubernetes.io/tls"}
    assert _check("", "Secret", retyped, old_secret) == [
        ("type", "FieldValueInvalid", 'Invalid value: "kubernetes.io/tls": field is immutable')
    ]


def test_rbac() -> None:
    role = {
        "metadata": {"name": "r", "namespace": "d"},
        "rules": [{"apiGroups": [""], "resources": ["pods"]}],
    }
    assert _check("rbac.authorization.k8s.io", "Role", role) == [
        ("rules[0].verbs", "FieldValueRequired", "Required value: verbs must contain at least one value")
    ]
    binding = {
        "metadata": {"name": "b"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
        "subjects": [{"kind": "ServiceAccount", "name": "sa"}, {"kind": "Robot", "name": "x"}],
    }
    assert _check("rbac.authorization.k8s.io", "ClusterRoleBinding", binding) == [
        (
            "roleRef.kind",
            "FieldValueNotSupported",
            'Unsupported value: "Role": supported values: "ClusterRole"',
        ),
        ("subjects[0].namespace", "FieldValueRequired", "Required value"),
        (
            "subjects[1].kind",
            "FieldValueNotSupported",
            'Unsupported value: "Robot": supported values: "ServiceAccount", "User", "Group"',
        ),
    ]
    good: Obj = {
        "metadata": {"name": "b", "namespace": "d"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
        "subjects": [{"kind": "User", "name": "alice"}],
    }
    assert _check("rbac.authorization.k8s.io", "RoleBinding", good) == []
    moved = copy.deepcopy(good)
    moved["roleRef"]["name"] = "other"
    assert _check("rbac.authorization.k8s.io", "RoleBinding", moved, good)[0][:2] == (
        "roleRef",
        "FieldValueInvalid",
    )


@pytest.mark.parametrize(
    "obj",
    [
        {"metadata": "x"},
        {"metadata": {"name": "p"}, "spec": "x"},
        {"metadata": {"name": "p"}, "spec": {"containers": ["x", 3]}},
        {"metadata": {"name": "p", "labels": ["a"]}, "spec": {"containers": [{"name": 5, "image": 7}]}},
    ],
)
def test_malformed_objects_give_causes_not_exceptions(obj: Obj) -> None:
    for group, kind in (
        ("", "Pod"),
        ("", "Service"),
        ("apps", "Deployment"),
        ("networking.k8s.io", "NetworkPolicy"),
        ("", "ReplicationController"),
    ):
        res = _res(group, kind)
        candidate = copy.deepcopy(obj)
        apply_defaults(res, candidate)
        causes = validation.validate(res, candidate, copy.deepcopy(obj))
        assert causes or kind == "NetworkPolicy"  # unknown fields (containers) are not its business


def test_self_subject_access_review_needs_no_name() -> None:
    sar = _res("authorization.k8s.io", "SelfSubjectAccessReview")
    assert validation.validate(sar, {"spec": {"resourceAttributes": {"verb": "get"}}}) == []


def test_tolerations_and_node_selector() -> None:
    pod = _pod(tolerations=[{"operator": "Exists"}, {"key": "k", "operator": "Exists", "value": "v"},
                            {"key": "k", "effect": "Sometimes"}], nodeSelector={"bad key": "x"})
    assert [(f, r) for f, r, _ in _check("", "Pod", pod)] == [
        ("spec.nodeSelector", "FieldValueInvalid"),
        ("spec.tolerations[1].operator", "FieldValueInvalid"),
        ("spec.tolerations[2].effect", "FieldValueNotSupported"),
    ]


def test_node_and_lease() -> None:
    node: Obj = {"metadata": {"name": "n1"}, "spec": {"podCIDR": "10.244.1.0/24",
                                                     "taints": [{"key": "k", "effect": "NoSchedule"}]}}
    assert _check("", "Node", node) == []
    moved = copy.deepcopy(node)
    moved["spec"]["podCIDR"] = "10.244.2.0/24"
    assert _check("", "Node", moved, node)[0][:2] == ("spec.podCIDR", "FieldValueForbidden")
    fresh: Obj = {"metadata": {"name": "n1"}, "spec": {}}
    assert _check("", "Node", copy.deepcopy(node), fresh) == []  # "" -> assigned is fine
    bad = {"metadata": {"name": "n2"}, "spec": {"podCIDR": "10.244.1.0/33", "taints": [{"effect": "X"}]}}
    fields = [f for f, _, _ in _check("", "Node", bad)]
    assert fields == ["spec.podCIDR", "spec.taints[0].key", "spec.taints[0].effect"]
    lease = {"metadata": {"name": "l", "namespace": "kube-node-lease"},
             "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 0}}
    assert _check("coordination.k8s.io", "Lease", lease) == [
        ("spec.leaseDurationSeconds", "FieldValueInvalid", "Invalid value: 0: must be greater than 0")]


def test_data_size_limits() -> None:
    big = {"metadata": {"name": "c"}, "data": {"a": "x" * (1024 * 1024)}}
    assert _check("", "ConfigMap", big) == [
        ("", "FieldValueTooLong", "Too long: must have at most 1048576 bytes")]
    secret = {"metadata": {"name": "s"}, "data": {"a": "QUFB" * (400 * 1024)}}
    assert _check("", "Secret", secret) == [
        ("data", "FieldValueTooLong", "Too long: must have at most 1048576 bytes")]


def test_owner_references() -> None:
    owner = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u1", "controller": True}
    pod = _pod()
    pod["metadata"]["ownerReferences"] = [owner]
    assert _check("", "Pod", pod) == []
    pod["metadata"]["ownerReferences"] = [owner, {**owner, "name": "rs2", "uid": "u2"}, {"kind": "X"}]
    causes = _check("", "Pod", pod)
    refs = "metadata.ownerReferences"
    assert [f for f, _, _ in causes] == [refs, f"{refs}.apiVersion", f"{refs}.name", f"{refs}.uid"]
    assert causes[0][2].endswith('Found "true" in references for ReplicaSet/rs and ReplicaSet/rs2')
    assert causes[3][2] == 'Invalid value: "": uid must not be empty'
