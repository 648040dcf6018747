"""pods/<name>/log in the API server: option validation, container choice, the kubelet's location and
URL, and kubelet errors as Status (the proxying itself runs in netns_tests/test_pod_logs.py)."""

from __future__ import annotations

from typing import Any

import pytest

from controlplane.apiserver import errors
from controlplane.apiserver.podlog import (
    choose_container,
    kubelet_error,
    kubelet_location,
    kubelet_log_url,
    validate_options,
)


def pod(*containers: str, init: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"metadata": {"name": "p"}, "spec": {
        "initContainers": [{"name": c} for c in init], "containers": [{"name": c} for c in containers]}}


def test_the_only_container_is_chosen() -> None:
    assert choose_container(pod("web"), "") == "web"
    assert choose_container(pod("web", init=("setup",)), "setup") == "setup"


@pytest.mark.parametrize(("the_pod", "requested", "message"), [
    (pod("a", "b", init=("i",)), "", "a container name must be specified for pod p, choose one of: [i a b]"),
    (pod(), "", "a container name must be specified for pod p"),
    (pod("a"), "nope", "container nope is not valid for pod p"),
])
def test_container_errors_are_upstream_bad_requests(the_pod: dict[str, Any], requested: str,
                                                    message: str) -> None:
    with pytest.raises(errors.ApiError) as e:
        choose_container(the_pod, requested)
    assert (e.value.code, e.value.message) == (400, message)


@pytest.mark.parametrize(("query", "code", "fragment"), [
    ({"tailLines": "-1"}, 422, 'PodLogOptions "p" is invalid: tailLines: Invalid value: -1: must be '
                               "greater than or equal to 0"),
    ({"limitBytes": "0"}, 422, "limitBytes: Invalid value: 0: must be greater than 0"),
    ({"sinceSeconds": "0"}, 422, "sinceSeconds: Invalid value: 0: must be greater than 0"),
    ({"sinceSeconds": "5", "sinceTime": "2026-01-01T00:00:00Z"}, 422, "at most one of `sinceTime`"),
    ({"tailLines": "ten"}, 400, "invalid value for tailLines"),
    ({"follow": "maybe"}, 400, ""),
])
def test_bad_options(query: dict[str, str], code: int, fragment: str) -> None:
    with pytest.raises(errors.ApiError) as e:
        validate_options(query, "p")
    assert e.value.code == code
    assert fragment in e.value.message


def test_good_options_pass() -> None:
    validate_options({"follow": "true", "tailLines": "0", "limitBytes": "1", "sinceSeconds": "1"}, "p")


def node(addresses: list[tuple[str, str]], port: int | None) -> dict[str, Any]:
    status: dict[str, Any] = {"addresses": [{"type": t, "address": a} for t, a in addresses]}
    if port is not None:
        status["daemonEndpoints"] = {"kubeletEndpoint": {"Port": port}}
    return {"metadata": {"name": "n"}, "status": status}


def test_kubelet_location_prefers_internal_ip_and_defaults_the_port() -> None:
    both = node([("Hostname", "n1"), ("InternalIP", "10.0.0.5")], 12345)
    assert kubelet_location(both) == ("10.0.0.5", 12345)
    assert kubelet_location(node([("ExternalIP", "1.2.3.4"), ("Hostname", "n1")], None)) == ("1.2.3.4", 10250)
    with pytest.raises(errors.ApiError) as e:
        kubelet_location(node([], 10250))
    assert e.value.code == 500
    assert "no preferred addresses found" in e.value.message


def test_kubelet_log_url_forwards_only_log_options() -> None:
    url = kubelet_log_url("10.0.0.5", 10250, "ns", "p", "c",
                          {"container": "c", "follow": "true", "tailLines": "5", "pretty": "1",
                           "previous": ""})
    assert url == "http://10.0.0.5:10250/containerLogs/ns/p/c?follow=true&tailLines=5"
    assert kubelet_log_url("fd00::1", 1, "ns", "p", "c", {}) == "http://[fd00::1]:1/containerLogs/ns/p/c"


def test_kubelet_errors_become_statuses() -> None:
    bad = kubelet_error(400, 'previous terminated container "c" in pod "p" not found\n')
    assert (bad.code, bad.reason, bad.message) == (
        400, "BadRequest", 'previous terminated container "c" in pod "p" not found')
    assert kubelet_error(404, 'pod "p" does not exist').reason == "NotFound"
    assert kubelet_error(503, "").code == 500
