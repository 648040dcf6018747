"""Spec conformance of the protocol layer (cni/skel.py), driven with injected env and stdin."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cni import skel, types

RESULT = {
    "cniVersion": "1.1.0",
    "interfaces": [{"name": "cni0", "mac": "aa:bb:cc:dd:ee:01"},
                   {"name": "eth0", "mac": "aa:bb:cc:dd:ee:02", "sandbox": "/run/netns/x", "mtu": 1400}],
    "ips": [{"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 1},
            {"address": "fd00::5/64", "gateway": "fd00::1", "interface": 1}],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1", "mtu": 1400}, {"dst": "::/0"}],
    "dns": {"nameservers": ["10.96.0.10"]},
}


class Recorder:
    def __init__(self) -> None:
        self.calls: list[skel.Request] = []

    def add(self, req: skel.Request) -> dict[str, Any]:
        self.calls.append(req)
        return RESULT

    def other(self, req: skel.Request) -> None:
        self.calls.append(req)


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def plugin(rec: Recorder) -> skel.Plugin:
    return skel.Plugin(name="dummy", add=rec.add, delete=rec.other, check=rec.other, gc=rec.other,
                       status=rec.other)


def env(command: str, **extra: str) -> dict[str, str]:
    base = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/x",
            "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}
    base.update(extra)
    return base


def conf(version: str | None = "1.1.0", **extra: Any) -> bytes:
    c: dict[str, Any] = {"name": "net1", "type": "dummy", **extra}
    if version is not None:
        c["cniVersion"] = version
    return json.dumps(c).encode()


def run(plugin: skel.Plugin, e: dict[str, str], stdin: bytes) -> tuple[int, dict[str, Any] | None]:
    code, out = skel.dispatch(plugin, e, stdin)
    return code, (json.loads(out) if out.strip() else None)


# ------------------------------------------------------------------ verbs
@pytest.mark.parametrize("command", ["DEL", "CHECK", "GC", "STATUS"])
def test_non_add_verbs_print_nothing(plugin: skel.Plugin, rec: Recorder, command: str) -> None:
    code, out = run(plugin, env(command), conf())
    assert (code, out) == (0, None)
    assert rec.calls[-1].command == command


def test_add_prints_result_in_requested_version(plugin: skel.Plugin) -> None:
    code, out = run(plugin, env("ADD"), conf("1.1.0"))
    assert code == 0 and out is not None
    assert out["cniVersion"] == "1.1.0"
    assert out["ips"][0] == {"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 1}


def test_version_answers_without_config(plugin: skel.Plugin, rec: Recorder) -> None:
    code, out = run(plugin, {"CNI_COMMAND": "VERSION"}, b"")
    assert code == 0 and out is not None
    assert out["supportedVersions"] == list(types.SUPPORTED)
    assert not rec.calls


def test_version_echoes_requested_version(plugin: skel.Plugin) -> None:
    _, out = run(plugin, {"CNI_COMMAND": "VERSION"}, b'{"cniVersion":"0.4.0"}')
    assert out is not None and out["cniVersion"] == "0.4.0"


def test_version_tolerates_junk_stdin(plugin: skel.Plugin) -> None:
    code, out = run(plugin, {"CNI_COMMAND": "VERSION"}, b"{not json")
    assert code == 0 and out is not None and "supportedVersions" in out


# ----------------------------------------------------------- error codes
def assert_error(result: tuple[int, dict[str, Any] | None], code: int) -> dict[str, Any]:
    exit_code, out = result
    assert exit_code == 1
    assert out is not None and out["code"] == code, out
    assert out["msg"]
    return out


@pytest.mark.parametrize("version", ["0.5.0", "2.0.0", "9.9.9"])
def test_unsupported_version_is_code_1(plugin: skel.Plugin, version: str) -> None:
    assert_error(run(plugin, env("ADD"), conf(version)), skel.INCOMPATIBLE_VERSION)


def test_malformed_version_is_code_1(plugin: skel.Plugin) -> None:
    assert_error(run(plugin, env("ADD"), conf("one.two")), skel.INCOMPATIBLE_VERSION)


@pytest.mark.parametrize("version", ["0.1.0", "0.2.0", "0.3.0", "0.3.1"])
def test_check_before_040_is_code_1(plugin: skel.Plugin, version: str) -> None:
    assert_error(run(plugin, env("CHECK"), conf(version)), skel.INCOMPATIBLE_VERSION)


@pytest.mark.parametrize("command", ["GC", "STATUS"])
@pytest.mark.parametrize("version", ["0.4.0", "1.0.0"])
def test_gc_status_before_110_is_code_1(plugin: skel.Plugin, command: str, version: str) -> None:
    assert_error(run(plugin, env(command), conf(version)), skel.INCOMPATIBLE_VERSION)


@pytest.mark.parametrize("command,missing", [
    ("ADD", "CNI_CONTAINERID"), ("ADD", "CNI_NETNS"), ("ADD", "CNI_IFNAME"), ("ADD", "CNI_PATH"),
    ("CHECK", "CNI_NETNS"), ("DEL", "CNI_CONTAINERID"), ("DEL", "CNI_IFNAME"), ("GC", "CNI_PATH"),
])
def test_missing_env_is_code_4_and_names_it(plugin: skel.Plugin, command: str, missing: str) -> None:
    e = env(command)
    del e[missing]
    out = assert_error(run(plugin, e, conf()), skel.INVALID_ENV)
    assert missing in out["msg"]


@pytest.mark.parametrize("e", [
    {"CNI_COMMAND": ""}, {"CNI_COMMAND": "BOGUS"}, {},
    env("ADD", CNI_CONTAINERID="-bad"), env("ADD", CNI_CONTAINERID="a b"),
    env("ADD", CNI_IFNAME="x" * 16), env("ADD", CNI_IFNAME="a/b"), env("ADD", CNI_IFNAME=".."),
    env("ADD", CNI_ARGS="novalue"), env("ADD", CNI_ARGS="UNKNOWN=1"),
])
def test_invalid_env_is_code_4(plugin: skel.Plugin, e: dict[str, str]) -> None:
    assert_error(run(plugin, e, conf()), skel.INVALID_ENV)


def test_unknown_args_accepted_with_ignore_unknown(plugin: skel.Plugin, rec: Recorder) -> None:
    args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;FOO=bar"
    code, _ = run(plugin, env("ADD", CNI_ARGS=args), conf())
    assert code == 0
    assert rec.calls[-1].args["K8S_POD_NAME"] == "p"


@pytest.mark.parametrize("stdin", [b"{bad json", b"", b"[1, 2]", b"\xff\xfe"])
def test_undecodable_config_is_code_6(plugin: skel.Plugin, stdin: bytes) -> None:
    assert_error(run(plugin, env("ADD"), stdin), skel.DECODE_FAILURE)


@pytest.mark.parametrize("name", [None, "", "-leading", "has space", 7])
def test_invalid_network_name_is_code_7(plugin: skel.Plugin, name: Any) -> None:
    c = {"cniVersion": "1.0.0", "type": "dummy"}
    if name is not None:
        c["name"] = name
    assert_error(run(plugin, env("ADD"), json.dumps(c).encode()), skel.INVALID_CONFIG)


def test_plugin_cni_error_passes_code_through() -> None:
    def fail(req: skel.Request) -> None:
        raise skel.CniError(skel.TRY_AGAIN, "daemon not ready", "retry")

    p = skel.Plugin(name="x", add=fail, delete=fail, check=fail)
    out = assert_error(run(p, env("ADD"), conf("0.4.0")), skel.TRY_AGAIN)
    assert out["details"] == "retry" and out["cniVersion"] == "0.4.0"


def test_unexpected_exception_is_reported_not_raised() -> None:
    def boom(req: skel.Request) -> None:
        raise RuntimeError("kaput")

    p = skel.Plugin(name="x", add=boom, delete=boom, check=boom)
    out = assert_error(run(p, env("DEL"), conf()), skel.INTERNAL)
    assert "kaput" in out["msg"]


# ------------------------------------------------------- DEL tolerance
def test_del_accepts_empty_netns(plugin: skel.Plugin, rec: Recorder) -> None:
    code, _ = run(plugin, env("DEL", CNI_NETNS=""), conf())
    assert code == 0 and rec.calls[-1].netns == ""


def test_del_without_prev_result(plugin: skel.Plugin, rec: Recorder) -> None:
    run(plugin, env("DEL"), conf("0.4.0"))
    assert rec.calls[-1].prev_result is None


def test_del_with_empty_prev_result(plugin: skel.Plugin, rec: Recorder) -> None:
    run(plugin, env("DEL"), conf("0.4.0", prevResult={}))
    assert rec.calls[-1].prev_result is None


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_prev_result_is_normalized(plugin: skel.Plugin, rec: Recorder, version: str) -> None:
    prev = types.to_version(RESULT, version)
    run(plugin, env("DEL"), conf(version, prevResult=prev))
    got = rec.calls[-1].prev_result
    assert got is not None
    assert [ip["address"] for ip in got["ips"]] == ["10.1.0.5/24", "fd00::5/64"]
    assert all("version" not in ip for ip in got["ips"])


# ---------------------------------------------------------------- GC keys
@pytest.mark.parametrize("key", ["cni.dev/valid-attachments", "cni.dev/attachments"])
def test_gc_reads_both_attachment_keys(plugin: skel.Plugin, rec: Recorder, key: str) -> None:
    keep = [{"containerID": "a", "ifname": "eth0"}, {"containerID": "b", "ifname": "net1"}]
    code, _ = run(plugin, {"CNI_COMMAND": "GC", "CNI_PATH": "/x"}, conf(**{key: keep}))
    assert code == 0
    assert rec.calls[-1].valid_attachments == [("a", "eth0"), ("b", "net1")]


def test_gc_default_is_a_no_op_for_plugins_without_gc() -> None:
    def never(req: skel.Request) -> None:
        raise AssertionError

    p = skel.Plugin(name="x", add=never, delete=never, check=never)
    assert skel.dispatch(p, {"CNI_COMMAND": "GC", "CNI_PATH": "/x"}, conf()) == (0, b"")
    assert skel.dispatch(p, {"CNI_COMMAND": "STATUS"}, conf()) == (0, b"")


def test_own_netns_is_code_8_unless_overridden(plugin: skel.Plugin) -> None:
    own = "/proc/self/ns/net"
    assert_error(run(plugin, env("ADD", CNI_NETNS=own), conf()), skel.INVALID_NETNS)
    assert run(plugin, env("ADD", CNI_NETNS=own, CNI_NETNS_OVERRIDE="1"), conf())[0] == 0
