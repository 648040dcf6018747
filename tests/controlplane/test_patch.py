from __future__ import annotations

import copy
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlplane.apiserver.patch import (
    ApplyConflict,
    PatchError,
    json_patch,
    merge_patch,
    server_side_apply,
    strategic_merge_patch,
)

# ------------------------------------------------------------------------------------------------
# RFC 7386: the examples of its appendix A


@pytest.mark.parametrize(
    ("target", "patch", "result"),
    [
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ({"a": "foo"}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ],
)
def test_merge_patch_rfc7386_examples(target: dict, patch: dict, result: dict) -> None:
    before = copy.deepcopy(target)
    assert merge_patch(target, patch) == result
    assert target == before


def test_merge_patch_kubectl_label_and_scale() -> None:
    pod = {"metadata": {"name": "p", "labels": {"a": "1"}}, "spec": {"replicas": 1}}
    out = merge_patch(pod, {"metadata": {"labels": {"env": "prod", "a": None}}})
    assert out["metadata"]["labels"] == {"env": "prod"}
    assert merge_patch(pod, {"spec": {"replicas": 3}})["spec"] == {"replicas": 3}


def test_merge_patch_rejects_non_object() -> None:
    with pytest.raises(PatchError) as info:
        merge_patch({}, [1])
    assert info.value.code == 400


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=10,
)


@given(st.dictionaries(st.text(max_size=3), _json, max_size=4), st.dictionaries(st.text(max_size=3), _json))
def test_merge_patch_is_idempotent(target: dict, patch: dict) -> None:
    once = merge_patch(target, patch)
    assert merge_patch(once, patch) == once


# ------------------------------------------------------------------------------------------------
# RFC 6902


def test_json_patch_rfc6902_examples() -> None:
    assert json_patch({"foo": "bar"}, [{"op": "add", "path": "/baz", "value": "qux"}]) == {
        "foo": "bar", "baz": "qux"}
    assert json_patch({"foo": ["bar", "baz"]}, [{"op": "add", "path": "/foo/1", "value": "qux"}]) == {
        "foo": ["bar", "qux", "baz"]}
    assert json_patch({"baz": "qux", "foo": "bar"}, [{"op": "remove", "path": "/baz"}]) == {"foo": "bar"}
    assert json_patch({"foo": ["bar", "qux", "baz"]}, [{"op": "remove", "path": "/foo/1"}]) == {
        "foo": ["bar", "baz"]}
    assert json_patch({"baz": "qux", "foo": "bar"}, [{"op": "replace", "path": "/baz", "value": "boo"}]) == {
        "baz": "boo", "foo": "bar"}
    doc = {"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}}
    assert json_patch(doc, [{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}]) == {
        "foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}}
    assert json_patch({"foo": ["all", "grass", "cows", "eat"]},
                      [{"op": "move", "from": "/foo/1", "path": "/foo/3"}]) == {
        "foo": ["all", "cows", "eat", "grass"]}
    assert json_patch({"foo": ["bar"]}, [{"op": "add", "path": "/foo/-", "value": ["abc", "def"]}]) == {
        "foo": ["bar", ["abc", "def"]]}
    assert json_patch({"/": 1, "m~n": 2}, [{"op": "replace", "path": "/~1", "value": 3},
                                           {"op": "remove", "path": "/m~0n"}]) == {"/": 3}
    assert json_patch({"a": 1}, [{"op": "copy", "from": "/a", "path": "/b"}]) == {"a": 1, "b": 1}
    assert json_patch({"a": 1}, [{"op": "add", "path": "", "value": [1]}]) == [1]
    assert json_patch({"": 1}, [{"op": "test", "path": "/", "value": 1}]) == {"": 1}


def test_json_patch_test_op_and_atomicity() -> None:
    doc = {"baz": "qux", "foo": ["a", 2, "c"], "n": 1}
    ok = [{"op": "test", "path": "/baz", "value": "qux"}, {"op": "test", "path": "/foo/1", "value": 2}]
    assert json_patch(doc, ok) == doc
    for value in ("bar", True, [1]):
        with pytest.raises(PatchError, match="test failed"):
            json_patch(doc, [{"op": "remove", "path": "/baz"}, {"op": "test", "path": "/n", "value": value}])
    assert doc["baz"] == "qux"  # input untouched even after a failed patch
    with pytest.raises(PatchError):  # JSON distinguishes true from 1
        json_patch({"n": 1}, [{"op": "test", "path": "/n", "value": True}])
    assert json_patch({"n": 1}, [{"op": "test", "path": "/n", "value": 1.0}]) == {"n": 1}


@pytest.mark.parametrize(
    ("ops", "code"),
    [
        ([{"op": "add", "path": "/baz/bat", "value": "qux"}], 422),  # missing parent
        ([{"op": "remove", "path": "/missing"}], 422),
        ([{"op": "replace", "path": "/missing", "value": 1}], 422),
        ([{"op": "add", "path": "/list/5", "value": 1}], 422),
        ([{"op": "add", "path": "/list/01", "value": 1}], 422),
        ([{"op": "remove", "path": "/list/-"}], 422),
        ([{"op": "move", "from": "/obj", "path": "/obj/child"}], 422),
        ([{"op": "copy", "from": "/nope", "path": "/x"}], 422),
        ([{"op": "add", "path": "/x"}], 400),  # missing value
        ([{"op": "frobnicate", "path": "/x"}], 400),
        ([{"path": "/x"}], 400),
        ([{"op": "add", "path": "x", "value": 1}], 400),
        ({"op": "add"}, 400),
    ],
)
def test_json_patch_errors(ops: object, code: int) -> None:
    with pytest.raises(PatchError) as info:
        json_patch({"list": [1, 2], "obj": {"a": 1}}, ops)
    assert info.value.code == code


def test_json_patch_negative_indices_like_kube_apiserver() -> None:
    assert json_patch({"l": [1, 2, 3]}, [{"op": "remove", "path": "/l/-1"}]) == {"l": [1, 2]}
    assert json_patch({"l": [1, 2, 3]}, [{"op": "replace", "path": "/l/-3", "value": 0}]) == {"l": [0, 2, 3]}
    assert json_patch({"l": [1, 2]}, [{"op": "add", "path": "/l/-1", "value": 9}]) == {"l": [1, 9, 2]}
    with pytest.raises(PatchError):
        json_patch({"l": [1]}, [{"op": "remove", "path": "/l/-2"}])


def test_json_patch_null_value_is_a_value() -> None:
    assert json_patch({}, [{"op": "add", "path": "/a", "value": None}]) == {"a": None}


# ------------------------------------------------------------------------------------------------
# Strategic merge patch


def _pod(*containers: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"app": "web"}},
            "spec": {"containers": list(containers), "tolerations": [{"key": "a", "operator": "Exists"}]}}


def test_strategic_merges_containers_by_name() -> None:
    pod = _pod({"name": "a", "image": "nginx:1"}, {"name": "b", "image": "redis"})
    before = copy.deepcopy(pod)
    out = strategic_merge_patch(pod, {"spec": {"containers": [{"name": "a", "image": "nginx:2"},
                                                              {"name": "c", "image": "new"}]}}, "Pod")
    assert out["spec"]["containers"] == [{"name": "a", "image": "nginx:2"}, {"name": "b", "image": "redis"},
                                         {"name": "c", "image": "new"}]
    assert pod == before


def test_strategic_nested_lists_env_ports_mounts() -> None:
    pod = _pod({"name": "a", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}],
                "ports": [{"containerPort": 80, "name": "http"}],
                "volumeMounts": [{"mountPath": "/data", "name": "d"}]})
    env = [{"name": "Y", "value": "3"}, {"name": "Z", "value": "4"}]
    patch = {"spec": {"containers": [{"name": "a", "env": env,
                                      "ports": [{"containerPort": 80, "protocol": "TCP"},
                                                {"containerPort": 443}],
                                      "volumeMounts": [{"mountPath": "/data", "readOnly": True}]}]}}
    container = strategic_merge_patch(pod, patch, "Pod")["spec"]["containers"][0]
    assert container["env"] == [{"name": "X", "value": "1"}, {"name": "Y", "value": "3"},
                                {"name": "Z", "value": "4"}]
    assert container["ports"] == [{"containerPort": 80, "name": "http", "protocol": "TCP"},
                                  {"containerPort": 443}]
    assert container["volumeMounts"] == [{"mountPath": "/data", "name": "d", "readOnly": True}]


def test_strategic_atomic_lists_and_null_deletes() -> None:
    pod = _pod({"name": "a"})
    out = strategic_merge_patch(pod, {"metadata": {"labels": {"app": None, "x": "y"}, "gone": None},
                                      "spec": {"tolerations": [{"key": "b"}]}}, "Pod")
    assert out["spec"]["tolerations"] == [{"key": "b"}]
    assert out["metadata"] == {"name": "p", "labels": {"x": "y"}}


def test_strategic_patch_directives_in_lists() -> None:
    pod = _pod({"name": "a"}, {"name": "b"})
    out = strategic_merge_patch(pod, {"spec": {"containers": [{"name": "a", "$patch": "delete"}]}}, "Pod")
    assert out["spec"]["containers"] == [{"name": "b"}]
    out = strategic_merge_patch(pod, {"spec": {"containers": [{"name": "z", "image": "i"},
                                                              {"$patch": "replace"}]}}, "Pod")
    assert out["spec"]["containers"] == [{"name": "z", "image": "i"}]
    with pytest.raises(PatchError, match="merge key"):
        strategic_merge_patch(pod, {"spec": {"containers": [{"image": "x"}]}}, "Pod")
    with pytest.raises(PatchError, match="merge key"):
        strategic_merge_patch(pod, {"spec": {"containers": [{"$patch": "delete"}]}}, "Pod")
    with pytest.raises(PatchError) as info:
        strategic_merge_patch(pod, {"spec": {"containers": [{"name": "a", "$patch": "bogus"}]}}, "Pod")
    assert info.value.code == 400


def test_strategic_patch_directives_in_maps() -> None:
    pod = _pod({"name": "a"})
    out = strategic_merge_patch(pod, {"metadata": {"labels": {"$patch": "replace", "only": "this"}}}, "Pod")
    assert out["metadata"]["labels"] == {"only": "this"}
    out = strategic_merge_patch(pod, {"metadata": {"labels": {"$patch": "delete"}}}, "Pod")
    assert out["metadata"]["labels"] == {}
    with pytest.raises(PatchError):
        strategic_merge_patch(pod, {"metadata": {"$patch": "sideways"}}, "Pod")


def test_strategic_primitive_lists_merge_as_sets() -> None:
    obj = {"metadata": {"name": "n", "finalizers": ["a", "b"]}}
    out = strategic_merge_patch(obj, {"metadata": {"finalizers": ["b", "c"]}}, "ConfigMap")
    assert out["metadata"]["finalizers"] == ["a", "b", "c"]
    out = strategic_merge_patch(obj, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}}, "Pod")
    assert out["metadata"]["finalizers"] == ["b"]


def test_strategic_retain_keys_deployment_strategy() -> None:
    deploy = {"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}}
    patch = {"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}
    assert strategic_merge_patch(deploy, patch, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}
    with pytest.raises(PatchError):
        strategic_merge_patch(deploy, {"spec": {"strategy": {"$retainKeys": ["type"], "x": 1}}}, "Deployment")


def test_strategic_set_element_order() -> None:
    pod = _pod({"name": "a"}, {"name": "b"}, {"name": "c"})
    patch = {"spec": {"$setElementOrder/containers": [{"name": "c"}, {"name": "a"}],
                      "containers": [{"name": "c", "image": "x"}]}}
    names = [c["name"] for c in strategic_merge_patch(pod, patch, "Pod")["spec"]["containers"]]
    assert names == ["b", "c", "a"]  # server-only b keeps its place before c (mergeSortedSlice)
    patch = {"spec": {"$setElementOrder/containers": [{"name": "n"}, {"name": "a"}],
                      "containers": [{"name": "n", "image": "x"}]}}
    out = strategic_merge_patch(_pod({"name": "a"}), patch, "Pod")
    names = [c["name"] for c in out["spec"]["containers"]]
    assert names == ["n", "a"]


def test_strategic_kubectl_apply_patch_on_deployment() -> None:
    # The shape kubectl client-side apply sends (reference B5.3) for a changed image and label.
    deploy = {"apiVersion": "apps/v1", "kind": "Deployment",
              "metadata": {"name": "d", "labels": {"app": "web"}, "annotations": {"x": "1"}},
              "spec": {"replicas": 2, "template": {"metadata": {"labels": {"app": "web"}},
                       "spec": {"containers": [{"name": "web", "image": "nginx:1", "ports": [
                           {"containerPort": 80, "protocol": "TCP"}]}]}}}}
    patch = {"metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
                          "labels": {"tier": "fe"}},
             "spec": {"template": {"spec": {"$setElementOrder/containers": [{"name": "web"}],
                                            "containers": [{"image": "nginx:2", "name": "web"}]}}}}
    out = strategic_merge_patch(deploy, patch, "Deployment")
    assert out["metadata"]["labels"] == {"app": "web", "tier": "fe"}
    assert out["spec"]["template"]["spec"]["containers"] == [
        {"name": "web", "image": "nginx:2", "ports": [{"containerPort": 80, "protocol": "TCP"}]}]
    assert out["spec"]["replicas"] == 2


def test_strategic_service_ports_by_port_and_unknown_kind_replaces_lists() -> None:
    svc = {"spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443}], "selector": {"a": "b"}}}
    out = strategic_merge_patch(svc, {"spec": {"ports": [{"port": 80, "targetPort": 9090}]}}, "Service")
    assert out["spec"]["ports"] == [{"port": 80, "targetPort": 9090}, {"port": 443}]
    out = strategic_merge_patch(svc, {"spec": {"ports": [{"port": 80}]}}, "Widget")
    assert out["spec"]["ports"] == [{"port": 80}]
    slice_ = {"endpoints": [{"addresses": ["10.0.0.1"]}]}
    out = strategic_merge_patch(slice_, {"endpoints": [{"addresses": ["10.0.0.2"]}]}, "EndpointSlice")
    assert out["endpoints"] == [{"addresses": ["10.0.0.2"]}]


def test_strategic_new_fields_are_cleaned_of_directives_and_nulls() -> None:
    out = strategic_merge_patch({}, {"spec": {"containers": [{"name": "a", "x": None}],
                                              "nodeSelector": {"k": None, "l": "v"}}}, "Pod")
    assert out == {"spec": {"containers": [{"name": "a"}], "nodeSelector": {"l": "v"}}}


def test_strategic_type_change_replaces_and_bad_patch() -> None:
    assert strategic_merge_patch({"a": [1]}, {"a": {"b": 1}}, "Pod") == {"a": {"b": 1}}
    with pytest.raises(PatchError) as info:
        strategic_merge_patch({}, ["x"], "Pod")
    assert info.value.code == 400


def test_strategic_owner_references_by_uid() -> None:
    obj = {"metadata": {"ownerReferences": [{"uid": "1", "name": "a"}, {"uid": "2", "name": "b"}]}}
    out = strategic_merge_patch(obj, {"metadata": {"ownerReferences": [{"uid": "2", "controller": True}]}},
                                "ReplicaSet")
    assert out["metadata"]["ownerReferences"][1] == {"uid": "2", "name": "b", "controller": True}


# ------------------------------------------------------------------------------------------------
# Server-side apply

CM = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "default"},
      "data": {"a": "1", "b": "2"}}


def test_apply_creates_with_managed_fields() -> None:
    out = server_side_apply(None, CM, "ConfigMap", "kubectl", now="2026-01-01T00:00:00Z")
    assert out["data"] == {"a": "1", "b": "2"}
    (entry,) = out["metadata"]["managedFields"]
    assert entry == {"manager": "kubectl", "operation": "Apply", "apiVersion": "v1",
                     "time": "2026-01-01T00:00:00Z", "fieldsType": "FieldsV1",
                     "fieldsV1": {"f:data": {"f:a": {}, "f:b": {}}}}


def test_apply_again_removes_fields_dropped_from_the_config() -> None:
    live = server_side_apply(None, CM, "ConfigMap", "kubectl")
    live["data"]["other"] = "kept"  # written by someone else, not owned by the applier
    changed = copy.deepcopy(CM)
    changed["data"] = {"a": "10"}
    out = server_side_apply(live, changed, "ConfigMap", "kubectl")
    assert out["data"] == {"a": "10", "other": "kept"}
    assert out["metadata"]["managedFields"][0]["fieldsV1"] == {"f:data": {"f:a": {}}}
    same = server_side_apply(out, changed, "ConfigMap", "kubectl", now="t")
    assert same["data"] == out["data"]


def test_apply_list_items_by_merge_key() -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
           "spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "y"}]}}
    live = server_side_apply(None, pod, "Pod", "mgr")
    fields = live["metadata"]["managedFields"][0]["fieldsV1"]
    assert fields["f:spec"]["f:containers"]['k:{"name":"a"}'] == {".": {}, "f:image": {}, "f:name": {}}
    smaller = copy.deepcopy(pod)
    smaller["spec"]["containers"] = [{"name": "a", "image": "x2"}]
    out = server_side_apply(live, smaller, "Pod", "mgr")
    assert out["spec"]["containers"] == [{"name": "a", "image": "x2"}]


def test_apply_conflicts_between_managers_and_force() -> None:
    live = server_side_apply(None, CM, "ConfigMap", "alice")
    bob = copy.deepcopy(CM)
    bob["data"] = {"a": "bob"}
    with pytest.raises(ApplyConflict) as info:
        server_side_apply(live, bob, "ConfigMap", "bob")
    assert info.value.code == 409
    assert info.value.conflicts == [("alice", ".data.a")]
    assert str(info.value) == 'Apply failed with 1 conflict: conflict with "alice" using v1: .data.a'
    both = copy.deepcopy(CM)
    both["data"] = {"a": "x", "b": "y"}
    with pytest.raises(ApplyConflict) as info:
        server_side_apply(live, both, "ConfigMap", "bob")
    assert str(info.value) == ('Apply failed with 2 conflicts: conflicts with "alice" using v1:\n'
                               "- .data.a\n- .data.b")
    agreeing = copy.deepcopy(CM)
    agreeing["data"] = {"a": "1"}
    shared = server_side_apply(live, agreeing, "ConfigMap", "bob")  # same value: shared ownership
    assert shared["data"] == {"a": "1", "b": "2"}
    forced = server_side_apply(live, bob, "ConfigMap", "bob", force=True)
    assert forced["data"] == {"a": "bob", "b": "2"}
    owners = {e["manager"]: e["fieldsV1"] for e in forced["metadata"]["managedFields"]}
    assert owners == {"alice": {"f:data": {"f:b": {}}}, "bob": {"f:data": {"f:a": {}}}}
    json.dumps(forced)  # stays JSON-serialisable


def test_apply_rejects_non_object() -> None:
    with pytest.raises(PatchError):
        server_side_apply(None, "x", "ConfigMap", "m")


_no_lists = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda inner: st.dictionaries(st.text(alphabet="abc", max_size=2), inner, max_size=3),
    max_leaves=12,
)
_maps = st.dictionaries(st.text(alphabet="abc", max_size=2), _no_lists, max_size=4)


@given(_maps, _maps)
def test_strategic_without_lists_or_directives_equals_merge_patch(obj: dict, patch: dict) -> None:
    assert strategic_merge_patch(obj, patch, "ConfigMap") == merge_patch(obj, patch)
