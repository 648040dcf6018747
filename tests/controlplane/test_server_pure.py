"""Pure parts of the HTTP layer: errors, negotiation, routing, flags, TLS generation."""

from __future__ import annotations

import ssl
import subprocess

import pytest

from controlplane.apiserver import config, errors, negotiation, routing

KUBECTL_TABLE_ACCEPT = ("application/json;as=Table;v=v1;g=meta.k8s.io,"
                        "application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json")


# ------------------------------------------------------------------------------------ errors


def test_status_object_shape() -> None:
    st = errors.not_found("pods", "web").status()
    assert st == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                  "message": 'pods "web" not found', "reason": "NotFound", "code": 404,
                  "details": {"name": "web", "kind": "pods"}}


def test_group_qualified_messages() -> None:
    e = errors.already_exists("deployments", "d", "apps")
    assert (e.code, e.reason) == (409, "AlreadyExists")
    assert e.message == 'deployments.apps "d" already exists'
    assert e.details == {"name": "d", "kind": "deployments", "group": "apps"}


def test_conflict_wording_is_upstream() -> None:
    e = errors.stale_update("pods", "p")
    assert e.message == ('Operation cannot be fulfilled on pods "p": the object has been modified; '
                         "please apply your changes to the latest version and try again")
    assert (e.code, e.reason) == (409, "Conflict")


def test_invalid_joins_causes() -> None:
    one = errors.invalid("Pod", "p", [{"reason": "FieldValueRequired", "field": "spec.containers",
                                       "message": "Required value"}])
    assert one.code == 422 and one.reason == "Invalid"
    assert one.message == 'Pod "p" is invalid: spec.containers: Required value'
    assert one.status()["details"]["causes"][0]["field"] == "spec.containers"
    two = errors.invalid("Service", "s", [{"field": "a", "message": "x"}, {"field": "b", "message": "y"}])
    assert two.message == 'Service "s" is invalid: [a: x, b: y]'


def test_forbidden_and_other_codes() -> None:
    f = errors.forbidden("bob", "list", "pods", "", "default")
    assert f.message == ('pods is forbidden: User "bob" cannot list resource "pods" in API group "" '
                         'in the namespace "default"')
    assert errors.forbidden("bob", "get", "nodes", "", "", "n1").message.startswith('nodes "n1" is forbidden')
    assert [e.code for e in (errors.unauthorized(), errors.bad_request("x"), errors.expired("x"),
                             errors.method_not_allowed("PUT"), errors.unsupported_media_type("a/b"),
                             errors.service_unavailable(), errors.timeout(), errors.internal("x"))] == \
        [401, 400, 410, 405, 415, 503, 504, 500]
    assert errors.timeout().reason == "Timeout" and errors.expired("x").reason == "Expired"
    assert errors.success_status()["status"] == "Success"


# ------------------------------------------------------------------------------------ negotiation


def test_table_negotiation() -> None:
    assert negotiation.wants_table(KUBECTL_TABLE_ACCEPT)
    assert negotiation.table_version(KUBECTL_TABLE_ACCEPT) == "v1"
    assert not negotiation.wants_table("application/json")
    assert not negotiation.wants_table("application/vnd.kubernetes.protobuf,application/json")
    assert not negotiation.wants_table(None)


@pytest.mark.parametrize("value,expected", [("1", True), ("true", True), ("True", True), ("TRUE", True),
                                            ("0", False), ("false", False), ("False", False),
                                            (None, False), ("", False)])
def test_booleans_are_case_insensitive(value: str | None, expected: bool) -> None:
    assert negotiation.parse_bool(value) is expected


def test_bad_boolean_and_int_are_400() -> None:
    with pytest.raises(errors.ApiError) as e:
        negotiation.parse_bool("maybe")
    assert e.value.code == 400
    with pytest.raises(errors.ApiError) as e:
        negotiation.parse_int("limit", "ten")
    assert e.value.code == 400
    assert negotiation.parse_int("limit", "10") == 10 and negotiation.parse_int("limit", None) is None


def test_decode_json_yaml_and_errors() -> None:
    assert negotiation.decode_body("application/json", b'{"a": 1}') == {"a": 1}
    assert negotiation.decode_body(None, b'{"a": 1}') == {"a": 1}
    assert negotiation.decode_body("application/json; charset=utf-8", b"[1]") == [1]
    assert negotiation.decode_body("application/apply-patch+yaml", b"a: 1\nb: [x]\n") == {"a": 1, "b": ["x"]}
    assert negotiation.decode_body("application/yaml", b'{"a": 1}') == {"a": 1}
    for ct, body, code in [("application/json", b"{", 400), ("application/json", b"", 400),
                           ("application/apply-patch+yaml", b"a: [", 400), ("text/html", b"<p>", 415)]:
        with pytest.raises(errors.ApiError) as e:
            negotiation.decode_body(ct, body)
        assert e.value.code == code


def test_protobuf_errors_are_415() -> None:
    with pytest.raises(errors.ApiError) as e:
        negotiation.decode_body("application/vnd.kubernetes.protobuf", b"not a k8s envelope")
    assert e.value.code == 415 and e.value.reason == "UnsupportedMediaType"


def test_yaml_preference() -> None:
    assert negotiation.prefers_yaml("application/yaml")
    assert negotiation.prefers_yaml("application/yaml, application/json")
    assert not negotiation.prefers_yaml("application/json, application/yaml")
    assert not negotiation.prefers_yaml(None)


def test_accept_parsing_keeps_params() -> None:
    ranges = negotiation.parse_accept("application/json;as=Table;v=v1;g=meta.k8s.io, */*")
    assert ranges[0].mime == "application/json" and ranges[0].params["as"] == "Table"
    assert ranges[1].mime == "*/*"


# ------------------------------------------------------------------------------------ routing


@pytest.mark.parametrize("path,expected", [
    ("/api/v1/namespaces", ("namespaces", "", "", "")),
    ("/api/v1/namespaces/x", ("namespaces", "", "x", "")),
    ("/api/v1/nodes/n1/status", ("nodes", "", "n1", "status")),
    ("/api/v1/pods", ("pods", "", "", "")),
    ("/api/v1/namespaces/default/pods", ("pods", "default", "", "")),
    ("/api/v1/namespaces/default/pods/p", ("pods", "default", "p", "")),
    ("/api/v1/namespaces/default/pods/p/binding", ("pods", "default", "p", "binding")),
    ("/apis/apps/v1/namespaces/ns/deployments/d/scale", ("deployments", "ns", "d", "scale")),
    ("/apis/networking.k8s.io/v1/networkpolicies", ("networkpolicies", "", "", "")),
    ("/apis/rbac.authorization.k8s.io/v1/clusterroles/admin", ("clusterroles", "", "admin", "")),
])
def test_resolve(path: str, expected: tuple[str, str, str, str]) -> None:
    t = routing.resolve(path)
    assert (t.resource.plural, t.namespace, t.name, t.subresource) == expected


@pytest.mark.parametrize("path", [
    "/api/v1/widgets", "/apis/apps/v2/deployments", "/api/v1/namespaces/x/nodes",
    "/api/v1/namespaces/default/pods/p/exec", "/api/v1/namespaces/default/pods/p/status/extra",
    "/api/v1/namespaces/default/configmaps/c/scale",
])
def test_resolve_unknown_is_404(path: str) -> None:
    with pytest.raises(errors.ApiError) as e:
        routing.resolve(path)
    assert e.value.code == 404 and e.value.message == "the server could not find the requested resource"


def test_legacy_watch_paths() -> None:
    t = routing.resolve("/api/v1/watch/namespaces/default/pods")
    assert (t.resource.plural, t.namespace, t.name, t.watch_path) == ("pods", "default", "", True)
    t = routing.resolve("/apis/apps/v1/watch/deployments")
    assert (t.resource.plural, t.namespace, t.watch_path) == ("deployments", "", True)
    assert not routing.resolve("/api/v1/pods").watch_path
    with pytest.raises(errors.ApiError):
        routing.resolve("/apis/authorization.k8s.io/v1/watch/selfsubjectaccessreviews")


def test_namespace_subresource_is_not_a_namespaced_resource() -> None:
    parts = routing.split_path("/api/v1/namespaces/x/finalize")
    assert parts is not None
    assert (parts.plural, parts.name, parts.subresource) == ("namespaces", "x", "finalize")


def test_verbs() -> None:
    coll = routing.resolve("/api/v1/namespaces/default/pods")
    item = routing.resolve("/api/v1/namespaces/default/pods/p")
    assert routing.verb_for("GET", coll, False) == "list"
    assert routing.verb_for("GET", coll, True) == "watch"
    assert routing.verb_for("GET", item, False) == "get"
    assert routing.verb_for("POST", coll, False) == "create"
    assert routing.verb_for("DELETE", coll, False) == "deletecollection"
    assert routing.verb_for("DELETE", item, False) == "delete"
    assert routing.verb_for("PATCH", item, False) == "patch"
    assert routing.verb_for("PUT", item, False) == "update"


# ------------------------------------------------------------------------------------ flags


def test_flags_defaults_and_values() -> None:
    cfg = config.parse_args(["--etcd-servers=http://127.0.0.1:1,http://127.0.0.1:2", "--secure-port=0",
                             "--insecure-port=8080", "--etcd-prefix=/custom/"])
    assert cfg.etcd_servers == ("http://127.0.0.1:1", "http://127.0.0.1:2")
    assert cfg.etcd_prefix == "/custom"
    assert (cfg.secure_port, cfg.insecure_port) == (0, 8080)
    d = config.parse_args([])
    assert d.etcd_prefix == "/registry" and d.secure_port == 6443 and d.insecure_port == 0
    assert d.advertise_address == "127.0.0.1" and d.min_request_timeout == 1800
    assert (d.max_requests_inflight, d.max_mutating_requests_inflight) == (400, 200)
    assert config.parse_args(["--bind-address=10.0.0.5"]).advertise_address == "10.0.0.5"
    assert config.parse_args(["--advertise-address=10.0.0.6"]).advertise_address == "10.0.0.6"
    assert d.service_cluster_ip_range == "10.96.0.0/12" and d.service_node_port_range == "30000-32767"


@pytest.mark.parametrize("argv", [
    ["--tls-cert-file=a"], ["--secure-port=0"], ["--service-cluster-ip-range=10.0.0.1/8"],
    ["--service-node-port-range=3-2"], ["--secure-port=70000"], ["--advertise-address=host"],
    ["--min-request-timeout=0"], ["--max-requests-inflight=-1"],
])
def test_bad_flags_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as e:
        config.parse_args(argv)
    assert e.value.code == 2


def test_help_documents_every_flag() -> None:
    text = config.build_parser().format_help()
    for flag in ("--etcd-servers", "--etcd-prefix", "--secure-port", "--bind-address", "--tls-cert-file",
                 "--tls-private-key-file", "--cert-dir", "--token-auth-file", "--service-cluster-ip-range",
                 "--service-node-port-range", "--insecure-port", "--advertise-address",
                 "--min-request-timeout", "--max-requests-inflight", "--max-mutating-requests-inflight"):
        assert flag in text


# ------------------------------------------------------------------------------------ TLS


def test_tls_generation_is_idempotent_and_verifiable(tmp_path) -> None:
    from podnet import tls

    first = tls.ensure_serving_cert(str(tmp_path), ["127.0.0.1", "apiserver.local"])
    before = (tmp_path / "apiserver.crt").read_bytes()
    again = tls.ensure_serving_cert(str(tmp_path), ["127.0.0.1"])
    assert again == first and (tmp_path / "apiserver.crt").read_bytes() == before
    ok = subprocess.run(["openssl", "verify", "-CAfile", first.ca_file, first.cert_file],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert oct((tmp_path / "apiserver.key").stat().st_mode & 0o777) == "0o600"
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(first.cert_file, first.key_file)
    # a new name regenerates the serving cert under the same CA
    ca_before = (tmp_path / "ca.crt").read_bytes()
    tls.ensure_serving_cert(str(tmp_path), ["10.1.2.3"])
    assert (tmp_path / "apiserver.crt").read_bytes() != before
    assert (tmp_path / "ca.crt").read_bytes() == ca_before


def test_subject_alt_names() -> None:
    from podnet import tls

    assert tls.subject_alt_names(["0.0.0.0", "host", "::1"]) == ["DNS:host", "IP:::1", "IP:127.0.0.1",
                                                                 "DNS:localhost"]


# ------------------------------------------------------------------------------------ fieldValidation


def test_field_validation_modes() -> None:
    from controlplane.apiserver import fieldvalidation, resources

    pods = resources.find("", "v1", "pods")
    assert pods is not None
    good = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {}}, "spec": {}}
    bad = {**good, "sepc": {}, "metadata": {"name": "p", "lables": {}}}
    assert fieldvalidation.unknown_fields(pods, good) == []
    assert fieldvalidation.unknown_fields(pods, bad) == ["metadata.lables", "sepc"]
    assert fieldvalidation.check(pods, bad, "Ignore") == []
    assert fieldvalidation.check(pods, bad, None) == ['unknown field "metadata.lables"',
                                                      'unknown field "sepc"']
    with pytest.raises(errors.ApiError) as e:
        fieldvalidation.check(pods, bad, "Strict")
    assert e.value.code == 400
    assert e.value.message == ('Pod in version "v1" cannot be handled as a Pod: strict decoding error: '
                               'unknown field "metadata.lables", unknown field "sepc"')
    with pytest.raises(errors.ApiError):
        fieldvalidation.check(pods, good, "Loose")
    assert fieldvalidation.warning_header(['unknown field "x"']) == '299 - "unknown field \\"x\\""'


def test_every_served_kind_has_a_field_table() -> None:
    from controlplane.apiserver import fieldvalidation, resources

    assert {r.kind for r in resources.RESOURCES} <= set(fieldvalidation.TOP_LEVEL)


def test_watch_events_encoded_once_per_object() -> None:
    from controlplane.apiserver.watch_http import EncodedEvents

    cache = EncodedEvents(size=2)
    obj = {"metadata": {"name": "a", "resourceVersion": "5"}}
    first = cache.encode({"type": "ADDED", "object": obj})
    assert cache.encode({"type": "ADDED", "object": obj}) is first
    assert first == b'{"type":"ADDED","object":{"metadata":{"name":"a","resourceVersion":"5"}}}\n'
    assert cache.encode({"type": "DELETED", "object": obj}) != first
    other = {"metadata": {"name": "b"}}
    assert b'"b"' in cache.encode({"type": "ADDED", "object": other})
    assert len(cache._entries) == 2  # bounded
