from __future__ import annotations

import json
from pathlib import Path

import pytest

from controlplane.apiserver.protobuf import (
    MAGIC,
    ProtobufError,
    decode_object,
    encode_varint,
    supported_kinds,
)

DATA = Path(__file__).parent / "data" / "protobuf"
INDEX = json.loads((DATA / "index.json").read_text())


@pytest.mark.parametrize("name", sorted(INDEX["vectors"]))
def test_kubectl_132_body_decodes_to_what_kubectl_131_sends_as_json(name: str) -> None:
    # Bodies captured from real kubectl (data/capture_protobuf.py): the protobuf that 1.32 posts must
    # decode to exactly the JSON 1.31 posts for the same command line.
    body = (DATA / f"{name}.bin").read_bytes()
    expected = json.loads((DATA / f"{name}.json").read_text())
    assert decode_object(body) == expected


def test_every_kubectl_create_kind_is_covered() -> None:
    kinds = {kind for _, kind in supported_kinds()}
    assert {"Namespace", "ConfigMap", "Secret", "Service", "Deployment", "ServiceAccount",
            "SelfSubjectAccessReview"} <= kinds
    captured = {decode_object((DATA / f"{n}.bin").read_bytes())["kind"] for n in INDEX["vectors"]}
    assert captured == kinds


# ------------------------------------------------------------------------------------------------
# Hand-built bodies for what kubectl create never sends


_varint = encode_varint


def _msg(*fields: tuple[int, object]) -> bytes:
    out = bytearray()
    for number, value in fields:
        if isinstance(value, bool | int):
            out += _varint(number << 3) + _varint(int(value))
        else:
            raw = value.encode() if isinstance(value, str) else value
            assert isinstance(raw, bytes)
            out += _varint(number << 3 | 2) + _varint(len(raw)) + raw
    return bytes(out)


def _envelope(api_version: str, kind: str, raw: bytes, encoding: str = "") -> bytes:
    fields: list[tuple[int, object]] = [(1, _msg((1, api_version), (2, kind))), (2, raw)]
    if encoding:
        fields.append((3, encoding))
    return MAGIC + _msg(*fields)


def _entry(key: str, value: str | bytes) -> bytes:
    return _msg((1, key), (2, value))


def test_metadata_fields_maps_owner_references_and_time() -> None:
    meta = _msg((1, ""), (2, "gen-"), (3, "ns"), (7, 0), (8, _msg((1, 1700000000), (2, 5))),
                (10, 30), (11, _entry("a", "b")), (12, _entry("note", "")), (14, "f1"), (14, "f2"),
                (13, _msg((1, "ReplicaSet"), (3, "rs"), (4, "u1"), (5, "apps/v1"), (6, 1), (7, 0))))
    raw = _msg((1, meta), (3, _entry("bin", b"\x00\xff")), (4, 0))
    obj = decode_object(_envelope("v1", "ConfigMap", raw))
    assert obj == {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {
            "generateName": "gen-", "namespace": "ns", "creationTimestamp": "2023-11-14T22:13:20Z",
            "deletionGracePeriodSeconds": 30, "labels": {"a": "b"}, "annotations": {"note": ""},
            "finalizers": ["f1", "f2"],
            "ownerReferences": [{"kind": "ReplicaSet", "name": "rs", "uid": "u1", "apiVersion": "apps/v1",
                                 "controller": True, "blockOwnerDeletion": False}],
        },
        "binaryData": {"bin": "AP8="},
        "immutable": False,  # a Go pointer: present on the wire means set, even to false
    }


def test_pod_template_details_env_resources_negative_ints() -> None:
    env = _msg((1, "CM"), (3, _msg((3, _msg((1, _msg((1, "cfg"))), (2, "k"))))))
    env_field = _msg((1, "NODE"), (3, _msg((1, _msg((2, "spec.nodeName"))))))
    resources = _msg((2, _entry("cpu", _msg((1, "100m")))))
    container = _msg((1, "c"), (2, "img"), (4, "--flag"), (7, env), (7, env_field), (8, resources),
                     (6, _msg((3, 8080), (4, "UDP"))))
    spec = _msg((2, container), (4, 0), (22, _msg((1, "k"), (2, "Exists"), (5, -1))))
    strategy = _msg((1, "RollingUpdate"), (2, _msg((1, _msg((1, 1), (3, "25%"))), (2, _msg((1, 0), (2, 2))))))
    deployment = _msg((2, _msg((1, 0), (3, _msg((2, spec))), (4, strategy), (6, 10))))
    obj = decode_object(_envelope("apps/v1", "Deployment", deployment))
    assert obj["spec"]["replicas"] == 0
    assert obj["spec"]["revisionHistoryLimit"] == 10
    assert obj["spec"]["strategy"] == {"type": "RollingUpdate",
                                       "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": 2}}
    pod = obj["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 0
    assert pod["tolerations"] == [{"key": "k", "operator": "Exists", "tolerationSeconds": -1}]
    (c,) = pod["containers"]
    assert c["args"] == ["--flag"]
    assert c["ports"] == [{"containerPort": 8080, "protocol": "UDP"}]
    assert c["resources"] == {"requests": {"cpu": "100m"}}
    assert c["env"] == [{"name": "CM", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "k"}}},
                        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]


def test_secret_bytes_are_base64_and_string_data_is_text() -> None:
    raw = _msg((2, _entry("k", b"\x01\x02")), (4, _entry("plain", "text")), (3, "Opaque"))
    assert decode_object(_envelope("v1", "Secret", raw)) == {
        "apiVersion": "v1", "kind": "Secret", "data": {"k": "AQI="}, "stringData": {"plain": "text"},
        "type": "Opaque"}


def test_empty_unknown_fields_are_accepted() -> None:
    # A future kubectl may write new fields empty; an empty unknown field carries nothing.
    raw = _msg((1, _msg((1, "x"), (99, ""), (98, 0), (97, _msg((1, ""))))))
    assert decode_object(_envelope("v1", "ServiceAccount", raw))["metadata"] == {"name": "x"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"kind":"Namespace"}', "magic"),
        (_envelope("v1", "Pod", b""), "application/json"),
        (_envelope("example.com/v1", "Widget", b""), "Widget"),
        (_envelope("v1", "Namespace", b"", encoding="gzip"), "encoding"),
        (MAGIC + b"\x0a\x05v1", "truncated"),
        (_envelope("v1", "Namespace", _msg((1, _msg((42, "set")))))[:-2], "truncated"),
        (_envelope("v1", "Namespace", _msg((1, _msg((42, "lost data"))))), "field 42"),
        (_envelope("v1", "Namespace", _msg((1, 7))), "wire type"),
        (_envelope("v1", "Namespace", _msg((1, _msg((1, b"\xff\xfe"))))), "UTF-8"),
        (MAGIC + b"\x0b", "wire type"),
        (MAGIC + b"\x08" + b"\xff" * 11, "varint"),
    ],
)
def test_undecodable_bodies(body: bytes, message: str) -> None:
    with pytest.raises(ProtobufError, match=message):
        decode_object(body)
