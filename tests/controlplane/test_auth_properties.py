"""Properties of request-attribute extraction and RBAC evaluation (hypothesis)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.apiserver import auth
from controlplane.apiserver.auth import Attributes, User

segment = st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True)
resource_name = segment.filter(lambda s: s not in ("namespaces", "watch"))
verbs = st.sampled_from(["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"])
users = st.builds(User, segment, st.just(""), st.lists(segment, max_size=3).map(tuple))


@st.composite
def attributes(draw: st.DrawFn) -> Attributes:
    return Attributes(verb=draw(verbs), group=draw(st.sampled_from(["", "apps", "x.io"])),
                      resource=draw(resource_name),
                      subresource=draw(st.sampled_from(["", "status", "scale"])),
                      namespace=draw(st.sampled_from(["", "a", "b"])),
                      name=draw(st.sampled_from(["", "n1"])))


@st.composite
def rbac_objects(draw: st.DrawFn) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = []
    for i in range(draw(st.integers(0, 4))):
        namespace = draw(st.sampled_from(["", "a", "b"]))
        rule = {"apiGroups": draw(st.lists(st.sampled_from(["", "apps", "*"]), min_size=1, max_size=2)),
                "resources": draw(st.lists(st.one_of(resource_name, st.just("*")), min_size=1, max_size=2)),
                "verbs": draw(st.lists(st.one_of(verbs, st.just("*")), min_size=1, max_size=2))}
        kind = "Role" if namespace else "ClusterRole"
        meta = {"name": f"r{i}", **({"namespace": namespace} if namespace else {})}
        objects.append({"kind": kind, "metadata": meta, "rules": [rule]})
        subject = draw(st.sampled_from([{"kind": "User", "name": draw(segment)},
                                        {"kind": "Group", "name": draw(segment)}]))
        binding_kind = "RoleBinding" if namespace else "ClusterRoleBinding"
        objects.append({"kind": binding_kind, "metadata": {**meta, "name": f"b{i}"}, "subjects": [subject],
                        "roleRef": {"kind": kind, "name": f"r{i}"}})
    return objects


@given(users, attributes(), rbac_objects())
def test_masters_are_always_allowed(user: User, attrs: Attributes, objects: list[dict[str, Any]]) -> None:
    admin = User(user.name, "", (*user.groups, auth.MASTERS_GROUP))
    assert auth.Authorizer(auth.static_source(objects)).decide(admin, attrs).allowed


@settings(max_examples=150)
@given(users, attributes(), rbac_objects(), rbac_objects())
def test_more_bindings_never_take_a_permission_away(user: User, attrs: Attributes,
                                                    base: list[dict[str, Any]],
                                                    extra: list[dict[str, Any]]) -> None:
    def prefixed(o: dict[str, Any]) -> dict[str, Any]:  # no name clash with `base`
        out = {**o, "metadata": {**o["metadata"], "name": "x" + o["metadata"]["name"]}}
        if "roleRef" in o:
            out["roleRef"] = {**o["roleRef"], "name": "x" + o["roleRef"]["name"]}
        return out

    renamed = [prefixed(o) for o in extra]
    before = auth.Authorizer(auth.static_source(base)).decide(user, attrs).allowed
    after = auth.Authorizer(auth.static_source(base + renamed)).decide(user, attrs).allowed
    assert after or not before


@given(users, attributes())
def test_a_wildcard_cluster_role_allows_every_resource_request(user: User, attrs: Attributes) -> None:
    objects = [{"kind": "ClusterRole", "metadata": {"name": "all"},
                "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]},
               {"kind": "ClusterRoleBinding", "metadata": {"name": "all"}, "roleRef": {"kind": "ClusterRole",
                                                                                        "name": "all"},
                "subjects": [{"kind": "User", "name": user.name}]}]
    assert auth.Authorizer(auth.static_source(objects)).decide(user, attrs).allowed
    stranger = User(user.name + "-other")
    assert not auth.Authorizer(auth.static_source(objects)).decide(stranger, attrs).allowed


@given(st.sampled_from(["", "apps"]), st.sampled_from(["", "ns1"]), resource_name,
       st.sampled_from(["", "n1"]), st.sampled_from(["", "status", "scale", "binding"]),
       st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]), st.booleans())
def test_request_attributes_recover_the_path(group: str, namespace: str, resource: str, name: str,
                                             subresource: str, method: str, watch: bool) -> None:
    if subresource and not name:
        subresource = ""
    prefix = f"/apis/{group}/v1" if group else "/api/v1"
    path = prefix + (f"/namespaces/{namespace}" if namespace else "") + f"/{resource}"
    path += (f"/{name}" if name else "") + (f"/{subresource}" if subresource else "")
    a = auth.request_attributes(method, path, {"watch": "true"} if watch else {})
    assert (a.group, a.version, a.namespace, a.resource, a.name, a.subresource) == \
        (group, "v1", namespace, resource, name, subresource)
    expected = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method)
    if method == "GET":
        expected = "watch" if watch else ("get" if name else "list")
    elif method == "DELETE" and not name:
        expected = "deletecollection"
    assert a.verb == expected
