"""Token authentication, request attributes, RBAC evaluation and SelfSubjectAccessReview."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.apiserver import auth
from controlplane.apiserver.auth import Attributes, Authorizer, User

TOKENS = """\
admintoken,admin,1,"system:masters"
bobtoken, bob, 2
carol-token,carol,3,"devs,qa"

,empty,4
"""


def test_token_file_parses_upstream_csv() -> None:
    tokens = auth.parse_token_file(TOKENS)
    assert tokens["admintoken"] == User("admin", "1", ("system:masters",))
    assert tokens["bobtoken"] == User("bob", "2", ())
    assert tokens["carol-token"].groups == ("devs", "qa")
    assert "" not in tokens


def test_token_file_with_two_columns_is_refused(tmp_path: Any) -> None:
    path = tmp_path / "tokens.csv"
    path.write_text("tok,user\n")
    with pytest.raises(auth.TokenFileError, match="must have at least 3 columns"):
        auth.load_token_file(str(path))


def test_duplicate_token_keeps_the_last_line() -> None:
    assert auth.parse_token_file("t,a,1\nt,b,2\n")["t"].name == "b"


@pytest.mark.parametrize(("header", "expected"), [
    ("Bearer admintoken", "admin"), ("bearer admintoken", "admin"), ("Bearer  bobtoken ", "bob"),
    ("Bearer nope", None), ("Basic admintoken", None), ("Bearer", None), ("", None)])
def test_authenticate_bearer_header(header: str, expected: str | None) -> None:
    tokens = auth.parse_token_file(TOKENS)
    user = auth.authenticate({"Authorization": header} if header else {}, tokens)
    assert (user.name if user else None) == expected
    if user:
        assert auth.AUTHENTICATED_GROUP in user.groups


def test_token_authenticator_reads_file(tmp_path: Any) -> None:
    path = tmp_path / "tokens.csv"
    path.write_text(TOKENS)
    authn = auth.TokenAuthenticator.from_file(str(path))
    user = authn.authenticate({"authorization": "Bearer carol-token"})
    assert user is not None
    assert user.groups == ("devs", "qa", "system:authenticated")


# ------------------------------------------------------------------------------ request attributes


@pytest.mark.parametrize(("method", "path", "query", "expected"), [
    ("GET", "/api/v1/namespaces/default/pods", {}, ("list", "", "pods", "", "default", "")),
    ("GET", "/api/v1/namespaces/default/pods", {"watch": "True"},
     ("watch", "", "pods", "", "default", "")),
    ("GET", "/api/v1/namespaces/default/pods", {"watch": "1", "fieldSelector": "metadata.name=pf"},
     ("watch", "", "pods", "", "default", "pf")),
    ("GET", "/api/v1/namespaces/default/pods/p", {}, ("get", "", "pods", "", "default", "p")),
    ("POST", "/api/v1/namespaces/default/pods/p/binding", {},
     ("create", "", "pods", "binding", "default", "p")),
    ("PATCH", "/apis/apps/v1/namespaces/ns1/deployments/d/scale", {},
     ("patch", "apps", "deployments", "scale", "ns1", "d")),
    ("PUT", "/api/v1/namespaces/x/status", {}, ("update", "", "namespaces", "status", "x", "x")),
    ("GET", "/api/v1/namespaces/x", {}, ("get", "", "namespaces", "", "x", "x")),
    ("GET", "/api/v1/namespaces", {}, ("list", "", "namespaces", "", "", "")),
    ("DELETE", "/api/v1/namespaces/default/pods", {}, ("deletecollection", "", "pods", "", "default", "")),
    ("DELETE", "/api/v1/nodes/n1", {}, ("delete", "", "nodes", "", "", "n1")),
    ("GET", "/api/v1/pods", {}, ("list", "", "pods", "", "", "")),
    ("GET", "/api/v1/watch/namespaces/default/pods", {}, ("watch", "", "pods", "", "default", "")),
    ("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", {},
     ("create", "authorization.k8s.io", "selfsubjectaccessreviews", "", "", "")),
])
def test_request_attributes(method: str, path: str, query: dict[str, str],
                            expected: tuple[str, ...]) -> None:
    a = auth.request_attributes(method, path, query)
    assert a.resource_request
    assert (a.verb, a.group, a.resource, a.subresource, a.namespace, a.name) == expected


@pytest.mark.parametrize("path", ["/healthz", "/version", "/api", "/apis", "/api/v1", "/apis/apps",
                                  "/apis/apps/v1", "/openapi/v3/api/v1"])
def test_non_resource_requests(path: str) -> None:
    a = auth.request_attributes("GET", path, {})
    assert not a.resource_request
    assert (a.verb, a.path) == ("get", path)


# ---------------------------------------------------------------------------------------- RBAC


def role(name: str, namespace: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    kind = "Role" if namespace else "ClusterRole"
    meta = {"name": name, "namespace": namespace} if namespace else {"name": name}
    return {"kind": kind, "metadata": meta, "rules": rules}


def binding(name: str, namespace: str, role_kind: str, role_name: str,
            subjects: list[dict[str, Any]]) -> dict[str, Any]:
    kind = "RoleBinding" if namespace else "ClusterRoleBinding"
    meta = {"name": name, "namespace": namespace} if namespace else {"name": name}
    return {"kind": kind, "metadata": meta, "subjects": subjects,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role_name}}


POD_READER = {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
OBJECTS = [
    role("pod-reader", "team", [POD_READER]),
    role("binder", "", [{"apiGroups": [""], "resources": ["pods/binding"], "verbs": ["create"]}]),
    role("cm-one", "", [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["*"],
                         "resourceNames": ["only"]}]),
    role("all-status", "", [{"apiGroups": ["*"], "resources": ["*/status"], "verbs": ["update"]}]),
    role("metrics", "", [{"verbs": ["get"], "nonResourceURLs": ["/metrics", "/logs/*"]}]),
    binding("bob-reads", "team", "Role", "pod-reader", [{"kind": "User", "name": "bob"}]),
    binding("devs-cm", "team", "ClusterRole", "cm-one", [{"kind": "Group", "name": "devs"}]),
    binding("scheduler", "", "ClusterRole", "binder",
            [{"kind": "ServiceAccount", "name": "sched", "namespace": "kube-system"}]),
    binding("sa-status", "team", "ClusterRole", "all-status", [{"kind": "ServiceAccount", "name": "ctl"}]),
    binding("metrics", "", "ClusterRole", "metrics", [{"kind": "Group", "name": "devs"}]),
]
BOB = User("bob", "2", ("system:authenticated",))
CAROL = User("carol", "3", ("devs", "system:authenticated"))
SCHED = User("system:serviceaccount:kube-system:sched", "", ("system:authenticated",))
CTL = User("system:serviceaccount:team:ctl", "", ("system:authenticated",))
ADMIN = User("admin", "1", ("system:masters",))


@pytest.fixture
def authorizer() -> Authorizer:
    return Authorizer(auth.static_source(OBJECTS))


@pytest.mark.parametrize(("user", "verb", "group", "resource", "ns", "name", "sub", "allowed"), [
    (BOB, "get", "", "pods", "team", "p", "", True),
    (BOB, "watch", "", "pods", "team", "", "", True),
    (BOB, "delete", "", "pods", "team", "p", "", False),
    (BOB, "get", "", "pods", "other", "p", "", False),
    (BOB, "get", "", "pods", "", "", "", False),
    (BOB, "get", "apps", "pods", "team", "p", "", False),
    (BOB, "get", "", "pods", "team", "p", "log", False),
    (CAROL, "delete", "", "configmaps", "team", "only", "", True),
    (CAROL, "delete", "", "configmaps", "team", "other", "", False),
    (CAROL, "list", "", "configmaps", "team", "", "", False),
    (SCHED, "create", "", "pods", "any", "p", "binding", True),
    (SCHED, "create", "", "pods", "any", "p", "", False),
    (CTL, "update", "apps", "deployments", "team", "d", "status", True),
    (CTL, "update", "apps", "deployments", "team", "d", "", False),
    (CTL, "update", "apps", "deployments", "other", "d", "status", False),
    (ADMIN, "deletecollection", "x.io", "anything", "", "", "", True),
])
def test_rbac(authorizer: Authorizer, user: User, verb: str, group: str, resource: str, ns: str,
              name: str, sub: str, allowed: bool) -> None:
    assert authorizer.authorize(user, verb, group, resource, ns, name, sub) is allowed


def test_non_resource_rules_and_bootstrap_discovery(authorizer: Authorizer) -> None:
    path = lambda p: Attributes(verb="get", resource_request=False, path=p)  # noqa: E731
    assert authorizer.decide(BOB, path("/api")).allowed
    assert authorizer.decide(BOB, path("/apis/apps/v1")).allowed
    assert authorizer.decide(BOB, path("/version")).allowed
    assert not authorizer.decide(BOB, path("/metrics")).allowed
    assert authorizer.decide(CAROL, path("/metrics")).allowed
    assert authorizer.decide(CAROL, path("/logs/kubelet.log")).allowed
    assert not authorizer.decide(CAROL, path("/logsx")).allowed


def test_every_user_may_review_itself(authorizer: Authorizer) -> None:
    assert authorizer.authorize(BOB, "create", "authorization.k8s.io", "selfsubjectaccessreviews")


def test_allowed_reason_names_the_binding(authorizer: Authorizer) -> None:
    decision = authorizer.decide(BOB, Attributes("get", resource="pods", namespace="team", name="p"))
    assert decision.reason == ('RBAC: allowed by RoleBinding "bob-reads" of Role "pod-reader" '
                               'in namespace "team" to User "bob"')


def test_binding_to_a_missing_role_grants_nothing() -> None:
    a = Authorizer(auth.static_source([binding("b", "", "ClusterRole", "gone",
                                               [{"kind": "User", "name": "bob"}])]))
    assert not a.authorize(BOB, "get", "", "pods", "x", "p")


def test_masters_never_read_the_source() -> None:
    def explode() -> auth.RbacObjects:
        raise AssertionError("source read for system:masters")

    assert Authorizer(explode).authorize(ADMIN, "delete", "", "nodes", name="n")


def test_forbidden_messages_match_upstream() -> None:
    get_pod = Attributes("get", resource="pods", namespace="default", name="p")
    assert auth.forbidden_message(BOB, get_pod) == (
        'pods "p" is forbidden: User "bob" cannot get resource "pods" in API group "" '
        'in the namespace "default"')
    list_deploy = Attributes("list", group="apps", resource="deployments")
    assert auth.forbidden_message(BOB, list_deploy) == (
        'deployments.apps is forbidden: User "bob" cannot list resource "deployments" in API group '
        '"apps" at the cluster scope')
    assert auth.forbidden_details(get_pod) == {"group": "", "kind": "pods", "name": "p"}
    bind = Attributes("create", resource="pods", subresource="binding", namespace="n", name="p")
    assert 'cannot create resource "pods/binding"' in auth.forbidden_message(BOB, bind)
    path = Attributes("get", resource_request=False, path="/metrics")
    assert auth.forbidden_message(BOB, path) == 'forbidden: User "bob" cannot get path "/metrics"'


# ------------------------------------------------------------------------- SelfSubjectAccessReview


def review(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "metadata": {}, "spec": spec}


def test_self_subject_access_review(authorizer: Authorizer) -> None:
    yes = auth.self_subject_access_review(BOB, review({"resourceAttributes": {
        "namespace": "team", "verb": "list", "resource": "pods"}}), authorizer.decide)
    assert yes["status"]["allowed"] is True
    assert yes["spec"]["resourceAttributes"]["resource"] == "pods"
    no = auth.self_subject_access_review(BOB, review({"resourceAttributes": {
        "namespace": "default", "verb": "list", "resource": "pods"}}), authorizer.decide)
    assert no["status"] == {"allowed": False}
    url = auth.self_subject_access_review(BOB, review({"nonResourceAttributes": {
        "path": "/version", "verb": "get"}}), authorizer.decide)
    assert url["status"]["allowed"] is True


@pytest.mark.parametrize("spec", [{}, {"resourceAttributes": {"verb": "get"},
                                       "nonResourceAttributes": {"path": "/x", "verb": "get"}}])
def test_review_needs_exactly_one_attribute_kind(authorizer: Authorizer, spec: dict[str, Any]) -> None:
    with pytest.raises(auth.ReviewInvalid) as err:
        auth.self_subject_access_review(BOB, review(spec), authorizer.decide)
    assert err.value.causes[0]["reason"] == "FieldValueInvalid"


def test_store_source_rereads_only_when_the_revision_moves() -> None:
    import json

    from podnet.store.memory import MemoryStore

    store = MemoryStore()
    source = auth.StoreRbacSource(store, "/registry")
    authorizer = Authorizer(source)
    assert not authorizer.authorize(BOB, "get", "", "pods", "team", "p")
    for obj in OBJECTS[:1] + OBJECTS[5:6]:
        meta = obj["metadata"]
        plural = obj["kind"].lower() + "s"
        store.create(f"/registry/{plural}/{meta['namespace']}/{meta['name']}", json.dumps(obj).encode())
    assert authorizer.authorize(BOB, "get", "", "pods", "team", "p")
    assert source() is source()
    store.delete("/registry/rolebindings/team/bob-reads")
    assert not authorizer.authorize(BOB, "get", "", "pods", "team", "p")


# ---------------------------------------------------------------------------------- impersonation

IMPERSONATOR_OBJECTS = [
    role("impersonate-nobody", "", [{"apiGroups": [""], "resources": ["users"], "verbs": ["impersonate"],
                                     "resourceNames": ["nobody"]},
                                    {"apiGroups": [""], "resources": ["groups"], "verbs": ["impersonate"],
                                     "resourceNames": ["devs"]}]),
    binding("bob-impersonates", "", "ClusterRole", "impersonate-nobody", [{"kind": "User", "name": "bob"}]),
]


def test_no_impersonation_headers_keep_the_user() -> None:
    assert auth.impersonate(BOB, {"Accept": "x"}, Authorizer().decide) is BOB


def test_masters_impersonate_anyone() -> None:
    user = auth.impersonate(ADMIN, {"Impersonate-User": "nobody"}, Authorizer().decide)
    assert user == User("nobody", "", ("system:authenticated",))
    sa = auth.impersonate(ADMIN, {"Impersonate-User": "system:serviceaccount:kube-system:sched"},
                          Authorizer().decide)
    assert sa.groups == ("system:serviceaccounts", "system:serviceaccounts:kube-system",
                         "system:authenticated")


def test_impersonation_needs_the_impersonate_verb() -> None:
    decide = Authorizer(auth.static_source(IMPERSONATOR_OBJECTS)).decide
    as_nobody = auth.impersonate(BOB, {"Impersonate-User": "nobody", "Impersonate-Group": "devs"}, decide)
    assert as_nobody == User("nobody", "", ("devs", "system:authenticated"))
    with pytest.raises(auth.ImpersonationDenied) as denied:
        auth.impersonate(BOB, {"Impersonate-User": "admin"}, decide)
    assert str(denied.value) == ('users "admin" is forbidden: User "bob" cannot impersonate resource '
                                 '"users" in API group "" at the cluster scope')
    with pytest.raises(auth.ImpersonationDenied):
        auth.impersonate(BOB, {"Impersonate-User": "nobody", "Impersonate-Group": "system:masters"}, decide)
    with pytest.raises(auth.ImpersonationDenied) as extra:
        auth.impersonate(BOB, {"Impersonate-User": "nobody", "Impersonate-Extra-Scopes": "x"}, decide)
    assert extra.value.attrs.resource == "userextras" and extra.value.attrs.subresource == "scopes"


def test_impersonating_groups_without_a_user_is_a_bad_request() -> None:
    with pytest.raises(auth.ImpersonationInvalid):
        auth.impersonate(ADMIN, {"Impersonate-Group": "devs"}, Authorizer().decide)


def test_repeated_group_headers_from_aiohttp() -> None:
    from multidict import CIMultiDict

    headers = CIMultiDict([("Impersonate-User", "nobody"), ("Impersonate-Group", "a"),
                           ("Impersonate-Group", "b")])
    assert auth.impersonate(ADMIN, headers, Authorizer().decide).groups == ("a", "b", "system:authenticated")


# ---------------------------------------------------------------------- whoami and can-i --list


def test_self_subject_review_is_the_user_info() -> None:
    review = auth.self_subject_review(CAROL)
    assert review["kind"] == "SelfSubjectReview"
    assert review["status"]["userInfo"] == {"username": "carol", "uid": "3",
                                            "groups": ["devs", "system:authenticated"]}


def test_rules_review_lists_what_the_namespace_grants(authorizer: Authorizer) -> None:
    review = {"spec": {"namespace": "team"}}
    bob = auth.self_subject_rules_review(BOB, review, authorizer.rbac())["status"]
    assert POD_READER in bob["resourceRules"]
    assert {"verbs": ["create"], "apiGroups": ["authorization.k8s.io"],
            "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"]} in bob["resourceRules"]
    assert any("/version" in r["nonResourceURLs"] for r in bob["nonResourceRules"])
    elsewhere = auth.self_subject_rules_review(BOB, {"spec": {"namespace": "other"}}, authorizer.rbac())
    assert POD_READER not in elsewhere["status"]["resourceRules"]
    carol = auth.self_subject_rules_review(CAROL, review, authorizer.rbac())["status"]
    assert {"verbs": ["*"], "apiGroups": [""], "resources": ["configmaps"],
            "resourceNames": ["only"]} in carol["resourceRules"]
    assert {"verbs": ["get"], "nonResourceURLs": ["/metrics", "/logs/*"]} in carol["nonResourceRules"]


def test_rules_review_of_masters_is_cluster_admin(authorizer: Authorizer) -> None:
    status = auth.self_subject_rules_review(ADMIN, {"spec": {"namespace": "x"}}, authorizer.rbac())["status"]
    assert status == {"resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
                      "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}], "incomplete": False}
