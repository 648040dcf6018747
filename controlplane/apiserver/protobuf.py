"""Decoder for Kubernetes protobuf request bodies (the `k8s\\x00` envelope); work in progress."""

from __future__ import annotations

from typing import Any


class ProtobufError(ValueError):
    """The body is not a protobuf-encoded object of a kind this server can decode (-> 415)."""


def decode_object(body: bytes) -> dict[str, Any]:
    """The JSON-equivalent dict of a protobuf-encoded Kubernetes object."""
    raise ProtobufError("protobuf request bodies are not supported yet; send application/json")
