from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podnet.api.selectors import (
    SelectorError,
    label_selector_from_spec,
    parse_field_selector,
    parse_label_selector,
    selector_from_set,
)

LABELS = {"app": "web", "tier": "fe", "version": "3", "example.com/owner": "team-a"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", True),
        ("   ", True),
        ("app=web", True),
        ("app==web", True),
        ("app = web", True),
        ("app!=web", False),
        ("app!=db", True),
        ("missing!=x", True),  # != matches objects without the label
        ("app in (web,db)", True),
        ("app in (db)", False),
        ("app notin (db, cache)", True),
        ("missing notin (a)", True),
        ("app", True),
        ("missing", False),
        ("!missing", True),
        ("!app", False),
        ("app=web,tier=fe", True),
        ("app=web,tier=be", False),
        ("app=web , tier in (fe,be) , !gone", True),
        ("example.com/owner=team-a", True),
        ("version>2", True),
        ("version<3", False),
        ("app>2", False),  # non-integer label value never matches gt/lt
        ("missing=", False),
        ("empty=", True),
    ],
)
def test_label_selector_matches(text: str, expected: bool) -> None:
    labels = dict(LABELS, empty="")
    assert parse_label_selector(text).matches(labels) is expected


@pytest.mark.parametrize(
    "text",
    [
        "app=web=x",
        "app in web",
        "app in (web",
        "app in ()",
        "app notin ()",
        "=web",
        "!",
        "!app=x",
        "app,",
        "app=(x)",
        "-bad=x",
        "app=-bad",
        "a/b/c=x",
        "Bad_Prefix/x=1",
        "/x=1",
        "x" * 64 + "=1",
        "app=" + "v" * 64,
        "app > x",
        "app in (a) b",
        "app foo",
    ],
)
def test_label_selector_syntax_errors(text: str) -> None:
    with pytest.raises(SelectorError):
        parse_label_selector(text)


def test_label_selector_empty_values_in_sets() -> None:
    selector = parse_label_selector("a in (x,)")
    assert selector.requirements[0].values == ("", "x")
    assert selector.matches({"a": ""}) and selector.matches({"a": "x"})
    assert parse_label_selector("a in (,x)").requirements[0].values == ("", "x")


def test_label_selector_canonical_string_sorted_by_key() -> None:
    selector = parse_label_selector("z=1, a in (c,b),!m,  k , n notin (x)")
    assert str(selector) == "a in (b,c),k,!m,n notin (x),z=1"
    assert parse_label_selector(str(selector)) == selector
    assert parse_label_selector("").empty
    assert not selector.empty


def test_label_key_limits() -> None:
    parse_label_selector("p" * 253 + "/" + "n" * 63 + "=v")
    with pytest.raises(SelectorError):
        parse_label_selector("p" * 254 + "/n=v")


def test_selector_from_set_and_spec() -> None:
    assert selector_from_set({"app": "web"}).matches(LABELS)
    assert not selector_from_set({"app": "db"}).matches(LABELS)
    assert selector_from_set({}).empty
    spec = {
        "matchLabels": {"app": "web"},
        "matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["fe", "be"]},
            {"key": "gone", "operator": "DoesNotExist"},
            {"key": "version", "operator": "Exists"},
            {"key": "example.com/owner", "operator": "NotIn", "values": ["x"]},
        ],
    }
    assert label_selector_from_spec(spec).matches(LABELS)
    assert not label_selector_from_spec(dict(spec, matchLabels={"app": "db"})).matches(LABELS)
    assert label_selector_from_spec({}).matches(LABELS)  # empty selector: everything
    assert not label_selector_from_spec(None).matches(LABELS)  # nil selector: nothing
    assert str(label_selector_from_spec(spec)).startswith("app=web,example.com/owner notin (x)")


@pytest.mark.parametrize(
    "expression",
    [
        {"key": "a", "operator": "Equals", "values": ["x"]},
        {"key": "a", "operator": "In", "values": []},
        {"key": "a", "operator": "Exists", "values": ["x"]},
        {"key": "bad key", "operator": "Exists"},
    ],
)
def test_selector_from_spec_errors(expression: dict) -> None:
    with pytest.raises(SelectorError):
        label_selector_from_spec({"matchExpressions": [expression]})


POD = {
    "metadata": {"name": "p1", "namespace": "default"},
    "spec": {"nodeName": "node1", "restartPolicy": "Always"},
    "status": {"phase": "Running"},
}
POD_FIELDS = {"metadata.name", "metadata.namespace", "spec.nodeName", "status.phase", "spec.hostNetwork"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", True),
        ("metadata.name=p1", True),
        ("metadata.name==p1", True),
        ("metadata.name!=p1", False),
        ("spec.nodeName=node1,metadata.namespace=default", True),
        ("status.phase!=Succeeded,status.phase!=Failed", True),
        ("status.phase!=Running", False),
        ("spec.nodeName=", False),
        ("spec.hostNetwork=false", True),  # upstream: strconv.FormatBool of the unset bool
    ],
)
def test_field_selector_matches(text: str, expected: bool) -> None:
    assert parse_field_selector(text, POD_FIELDS).matches(POD) is expected


def test_field_selector_unset_field_is_empty_string() -> None:
    pending = {"metadata": {"name": "p2"}, "spec": {}}
    assert parse_field_selector("spec.nodeName=", POD_FIELDS).matches(pending)
    assert not parse_field_selector("spec.nodeName!=", POD_FIELDS).matches(pending)


def test_field_selector_upstream_field_set_quirks() -> None:
    event = {"source": {"component": "kubelet", "host": "n1"}, "type": "Normal"}
    assert parse_field_selector("source=kubelet,type=Normal", {"source", "type"}).matches(event)
    assert parse_field_selector("status.replicas=0", {"status.replicas"}).matches({"status": {}})
    assert parse_field_selector("spec.unschedulable=true", {"spec.unschedulable"}).matches(
        {"spec": {"unschedulable": True}})
    assert parse_field_selector("spec.unschedulable!=true", {"spec.unschedulable"}).matches({"spec": {}})


def test_field_selector_values_and_escapes() -> None:
    selector = parse_field_selector(r"metadata.name=a\,b\=c", POD_FIELDS)
    assert selector.requirements == (("metadata.name", "=", "a,b=c"),)
    assert selector.matches({"metadata": {"name": "a,b=c"}})
    assert selector.value_for("metadata.name") == "a,b=c"
    assert str(selector) == r"metadata.name=a\,b\=c"
    event = {"involvedObject": {"name": "p", "uid": "u1"}}
    fields = {"involvedObject.name", "involvedObject.uid"}
    assert parse_field_selector("involvedObject.name=p,involvedObject.uid=u1", fields).matches(event)
    assert parse_field_selector("spec.replicas=3", {"spec.replicas"}).matches({"spec": {"replicas": 3}})


@pytest.mark.parametrize(
    "text", ["spec.unknown=x", "metadata.name", "metadata.name=a=b", r"metadata.name=a\x", "foo=bar"]
)
def test_field_selector_errors(text: str) -> None:
    with pytest.raises(SelectorError):
        parse_field_selector(text, POD_FIELDS)


def test_field_selector_unsupported_field_message() -> None:
    with pytest.raises(SelectorError, match=r"field label not supported: spec\.foo"):
        parse_field_selector("spec.foo=x", POD_FIELDS)


_label_part = st.from_regex(r"[a-z0-9]([a-z0-9._-]{0,10}[a-z0-9])?", fullmatch=True)


@given(st.dictionaries(_label_part, _label_part, max_size=5), st.dictionaries(_label_part, _label_part))
def test_set_selector_roundtrips_and_matches_superset(selected: dict, extra: dict) -> None:
    selector = selector_from_set(selected)
    assert parse_label_selector(str(selector)) == selector
    assert selector.matches({**extra, **selected})
