"""Defaulting, validation and Table printing never raise on arbitrary JSON (a 4xx, never a 500)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.apiserver import resources, tables, validation
from controlplane.apiserver.defaults import apply_defaults

_KEYS = st.sampled_from([
    "metadata", "spec", "status", "name", "labels", "containers", "ports", "port", "selector", "template",
    "type", "subsets", "addresses", "ip", "data", "rules", "subjects", "roleRef", "ingress", "from",
    "creationTimestamp", "conditions", "containerStatuses", "state", "policyTypes", "replicas", "x",
])
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.text(max_size=8),
                     st.sampled_from(["2026-01-01T00:00:00Z", "TCP", "Always", "ClusterIP", "In"]))
_JSON = st.recursive(_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(_KEYS, inner, max_size=4)),
                     max_leaves=25)
_OBJECTS = st.dictionaries(_KEYS, _JSON, max_size=5)
NOW = datetime(2026, 1, 2, tzinfo=UTC)


@settings(max_examples=150, deadline=None)
@given(obj=_OBJECTS, old=st.one_of(st.none(), _OBJECTS))
def test_semantics_never_raise(obj: dict[str, Any], old: dict[str, Any] | None) -> None:
    for res in resources.RESOURCES:
        candidate = copy.deepcopy(obj)
        apply_defaults(res, candidate)
        causes = validation.validate(res, candidate, copy.deepcopy(old))
        assert all({"reason", "message", "field"} <= set(c) for c in causes)
        tables.to_table(res, [copy.deepcopy(obj), candidate], now=NOW)
