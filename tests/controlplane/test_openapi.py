"""OpenAPI v3 documents in the form kubectl's field-validation verifier accepts (reference B5.3)."""

from __future__ import annotations

from typing import Any

from controlplane.apiserver import openapi, resources


def _patch_ops(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [item["patch"] for item in doc["paths"].values() if "patch" in item]


def test_root_lists_every_group_version_with_a_hash() -> None:
    root = openapi.openapi_v3_root()
    assert set(root["paths"]) == {openapi.gv_path(g, v) for g, v in resources.group_versions()}
    url = root["paths"]["api/v1"]["serverRelativeURL"]
    assert url.startswith("/openapi/v3/api/v1?hash=")
    assert root["paths"]["apis/apps/v1"]["serverRelativeURL"].startswith("/openapi/v3/apis/apps/v1?hash=")
    assert openapi.openapi_v3_root() == root  # stable: kubectl caches by URL


def test_every_patchable_kind_has_a_patch_op_with_field_validation() -> None:
    for group, version in resources.group_versions():
        doc = openapi.openapi_v3_document(group, version)
        assert doc is not None and doc["openapi"].startswith("3.")
        kinds = set()
        for op in _patch_ops(doc):
            gvk = op["x-kubernetes-group-version-kind"]
            assert (gvk["group"], gvk["version"]) == (group, version)
            names = {(p["name"], p["in"]) for p in op["parameters"]}
            assert ("fieldValidation", "query") in names
            # No requestBody: kubectl apply would otherwise build patches from our (absent) schemas.
            assert "requestBody" not in op
            kinds.add(gvk["kind"])
        want = {r.kind for r in resources.resources_in(group, version) if "patch" in r.verbs}
        assert kinds == want


def test_paths_use_upstream_urls() -> None:
    doc = openapi.openapi_v3_document("", "v1")
    assert doc is not None
    assert "/api/v1/namespaces/{name}" in doc["paths"]
    assert "/api/v1/namespaces/{namespace}/pods/{name}" in doc["paths"]
    assert "/api/v1/nodes/{name}" in doc["paths"]
    apps = openapi.openapi_v3_document("apps", "v1")
    assert apps is not None and "/apis/apps/v1/namespaces/{namespace}/deployments/{name}" in apps["paths"]
    sar = openapi.openapi_v3_document("authorization.k8s.io", "v1")
    assert sar is not None
    assert list(sar["paths"]) == ["/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                                  "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews"]


def test_document_for_path() -> None:
    assert openapi.document_for_path("api/v1") == openapi.openapi_v3_document("", "v1")
    assert openapi.document_for_path("/apis/apps/v1") == openapi.openapi_v3_document("apps", "v1")
    assert openapi.document_for_path("apis/apps/v9") is None
    assert openapi.document_for_path("nonsense") is None
    assert openapi.document_for_path("api/v1/extra") is None


def _decode(data: bytes) -> list[tuple[int, bytes]]:
    """Length-delimited fields of one protobuf message (all the v2 document uses)."""
    fields, pos = [], 0
    while pos < len(data):
        key, shift = 0, 0
        while True:
            byte = data[pos]
            pos += 1
            key |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        assert key & 7 == 2, "only length-delimited fields expected"
        length, shift = 0, 0
        while True:
            byte = data[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        fields.append((key >> 3, data[pos:pos + length]))
        pos += length
    return fields


def _field(data: bytes, number: int) -> bytes:
    return next(value for n, value in _decode(data) if n == number)


def test_openapi_v2_protobuf_has_patch_ops_with_gvk_and_field_validation() -> None:
    doc = openapi.openapi_v2_protobuf()
    assert _field(doc, 1) == b"2.0"
    paths = _field(doc, 8)
    found = {}
    for number, named in _decode(paths):
        assert number == 2  # Paths.path
        name = _field(named, 1).decode()
        operation = _field(_field(named, 2), 8)  # PathItem.patch
        params = [_field(_field(_field(_field(p, 1), 2), 3), 4).decode()
                  for n, p in _decode(operation) if n == 8]
        assert "fieldValidation" in params
        extension = _field(operation, 13)
        assert _field(extension, 1) == b"x-kubernetes-group-version-kind"
        found[name] = _field(_field(extension, 2), 2).decode()
    assert found["/api/v1/namespaces/{namespace}/pods/{name}"] == 'group: ""\nkind: Pod\nversion: v1\n'
    assert found["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"] == (
        'group: "apps"\nkind: Deployment\nversion: v1\n')
    assert "/api/v1/namespaces/{name}" in found
    assert len(found) == sum(1 for r in resources.RESOURCES if "patch" in r.verbs)
