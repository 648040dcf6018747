"""The flannel meta-plugin without a kernel: subnet.env parsing, delegate config tables, the
cache, and every verb through skel.dispatch with a fake delegate plugin (registered in the
plugin table and found in CNI_PATH like any podnet plugin, so it runs in-process)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cni import flannel, plugins, skel

REPO = Path(__file__).resolve().parents[2]
ENV_TEXT = ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\n"
            "FLANNEL_IPMASQ=true\n")
RESULT = {"cniVersion": "1.1.0",
          "interfaces": [{"name": "cni0", "mac": "0a:00:00:00:00:01"},
                         {"name": "eth0", "mac": "0a:00:00:00:00:02", "sandbox": "/x"}],
          "ips": [{"interface": 1, "address": "10.244.1.2/24", "gateway": "10.244.1.1"}]}


# ------------------------------------------------------------------ the fake delegate
CALLS: list[tuple[str, dict[str, Any], dict[str, str]]] = []
FAIL: dict[str, skel.CniError] = {}
SEEN_CACHE: list[bool] = []  # ADD: was the cache file already there when the delegate ran?


def _record(req: skel.Request) -> None:
    CALLS.append((req.command, req.config, req.env))
    if req.command in FAIL:
        raise FAIL[req.command]


def _fake_add(req: skel.Request) -> dict[str, Any]:
    _record(req)
    cache = req.env.get("TEST_CACHE_FILE")
    SEEN_CACHE.append(bool(cache) and os.path.exists(str(cache)))
    return dict(RESULT)


PLUGIN = skel.Plugin(name="fakebr", add=_fake_add, delete=_record, check=_record, gc=_record,
                     status=_record)


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A CNI_PATH holding the fake delegate as a podnet plugin executable."""
    monkeypatch.setitem(plugins.MODULES, "fakebr", __name__)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "fakebr"
    exe.write_text(f"#!/bin/false\n{plugins.MARKER.decode()}fakebr\n")
    exe.chmod(0o755)
    CALLS.clear()
    FAIL.clear()
    SEEN_CACHE.clear()
    yield bindir


@pytest.fixture
def subnet_env(tmp_path: Path) -> Path:
    path = tmp_path / "subnet.env"
    path.write_text(ENV_TEXT)
    return path


def netconf(tmp_path: Path, version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {"cniVersion": version, "name": "cbr0", "type": "flannel",
                            "subnetFile": str(tmp_path / "subnet.env"),
                            "dataDir": str(tmp_path / "data"), "delegate": {"type": "fakebr"}}
    conf.update(extra)
    return conf


def run(command: str, conf: dict[str, Any], bindir: Path, cid: str = "c1",
        **extra_env: str) -> tuple[int, dict[str, Any] | None]:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": "/run/netns/unused",
           "CNI_IFNAME": "eth0", "CNI_PATH": str(bindir), **extra_env}
    if command == "GC":
        env = {k: v for k, v in env.items() if k not in ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_NETNS")}
    code, out = skel.dispatch(flannel.PLUGIN, env, json.dumps(conf).encode())
    return code, (json.loads(out) if out.strip() else None)


def calls(command: str) -> list[dict[str, Any]]:
    return [conf for cmd, conf, _env in CALLS if cmd == command]


# ------------------------------------------------------------------ subnet.env
@pytest.mark.parametrize(("text", "want"), [
    (ENV_TEXT, flannel.SubnetEnv(networks=["10.244.0.0/16"], subnet="10.244.1.0/24", mtu=1450,
                                 ipmasq=True)),
    # The comma list is deduplicated in order; anything but "true" is false.
    ("FLANNEL_NETWORK=10.1.0.0/16,10.2.0.0/16,10.1.0.0/16\nFLANNEL_SUBNET=10.1.5.1/24\n"
     "FLANNEL_MTU=1500\nFLANNEL_IPMASQ=TRUE\n",
     flannel.SubnetEnv(networks=["10.1.0.0/16", "10.2.0.0/16"], subnet="10.1.5.0/24", mtu=1500,
                       ipmasq=False)),
    # IPv6 only satisfies the network and subnet requirements; unknown keys and junk are skipped.
    ("# comment\nFLANNEL_IPV6_NETWORK=fd00:10::/56\nFLANNEL_IPV6_SUBNET=fd00:10:0:1::1/64\n"
     "OTHER=1\nFLANNEL_MTU=1450\r\nFLANNEL_IPMASQ=false\r\n",
     flannel.SubnetEnv(networks=[], subnet=None, ip6_networks=["fd00:10::/56"],
                       ip6_subnet="fd00:10:0:1::/64", mtu=1450, ipmasq=False)),
])
def test_subnet_env_parses_as_the_reference(text: str, want: flannel.SubnetEnv) -> None:
    assert flannel.parse_subnet_env(text) == want


@pytest.mark.parametrize(("text", "msg"), [
    ("", "is missing FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK, FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, "
         "FLANNEL_MTU, FLANNEL_IPMASQ"),
    ("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.1.1/24\nFLANNEL_IPMASQ=true\n",
     "is missing FLANNEL_MTU"),
    ("FLANNEL_NETWORK=10.1.0.0/33\n", "FLANNEL_NETWORK: invalid CIDR '10.1.0.0/33'"),
    ("FLANNEL_SUBNET=nonsense\n", "FLANNEL_SUBNET: invalid CIDR 'nonsense'"),
    ("FLANNEL_MTU=-1\n", "FLANNEL_MTU: invalid number '-1'"),
    ("FLANNEL_MTU=4294967296\n", "FLANNEL_MTU: invalid number"),
])
def test_malformed_subnet_env_is_code_7_naming_the_key(text: str, msg: str) -> None:
    with pytest.raises(skel.CniError) as err:
        flannel.parse_subnet_env(text, "/run/flannel/subnet.env")
    assert err.value.code == skel.INVALID_CONFIG
    assert msg in err.value.msg and "/run/flannel/subnet.env" in err.value.msg


def test_missing_subnet_env_is_try_again_and_unreadable_is_io_failure(tmp_path: Path) -> None:
    with pytest.raises(skel.CniError) as err:
        flannel.load_subnet_env(str(tmp_path / "absent.env"))
    assert err.value.code == skel.TRY_AGAIN and "flanneld" in err.value.msg
    with pytest.raises(skel.CniError) as err:
        flannel.load_subnet_env(str(tmp_path))  # a directory
    assert err.value.code == skel.IO_FAILURE


# ------------------------------------------------------------------ delegate config
ENV = flannel.parse_subnet_env(ENV_TEXT)
BASE_IPAM = {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]],
             "routes": [{"dst": "10.244.0.0/16"}]}


@pytest.mark.parametrize(("config", "want"), [
    # The kube-flannel conflist entry.
    ({"cniVersion": "0.3.1", "name": "cbr0", "delegate": {"hairpinMode": True, "isDefaultGateway": True}},
     {"cniVersion": "0.3.1", "name": "cbr0", "type": "bridge", "hairpinMode": True,
      "isDefaultGateway": True, "ipMasq": False, "mtu": 1450, "isGateway": True, "ipam": BASE_IPAM}),
    # No delegate at all: every default; no cniVersion is not copied.
    ({"name": "n"},
     {"name": "n", "type": "bridge", "ipMasq": False, "mtu": 1450, "isGateway": True,
      "hairpinMode": True, "ipam": BASE_IPAM}),
    # The user's values win over the defaults; cniVersion and runtimeConfig are copied.
    ({"cniVersion": "1.0.0", "name": "n", "runtimeConfig": {"mac": "0a:58:00:00:00:01"},
      "delegate": {"ipMasq": True, "mtu": 1400, "isGateway": False, "hairpinMode": False,
                   "bridge": "br9", "cniVersion": "0.4.0"}},
     {"cniVersion": "1.0.0", "name": "n", "type": "bridge", "ipMasq": True, "mtu": 1400,
      "isGateway": False, "hairpinMode": False, "bridge": "br9",
      "runtimeConfig": {"mac": "0a:58:00:00:00:01"}, "ipam": BASE_IPAM}),
    # promiscMode excludes hairpinMode; another delegate type gets no bridge keys.
    ({"name": "n", "delegate": {"promiscMode": True}},
     {"name": "n", "type": "bridge", "promiscMode": True, "ipMasq": False, "mtu": 1450,
      "isGateway": True, "ipam": BASE_IPAM}),
    ({"name": "n", "delegate": {"type": "ipvlan", "master": "eth0"}},
     {"name": "n", "type": "ipvlan", "master": "eth0", "ipMasq": False, "mtu": 1450, "ipam": BASE_IPAM}),
    # The netconf's ipam seeds the delegate's: its type and routes are kept, ranges replaced.
    ({"name": "n", "ipam": {"type": "host-local", "dataDir": "/d", "routes": [{"dst": "0.0.0.0/0"}],
                            "ranges": [[{"subnet": "192.168.0.0/24"}]]}},
     {"name": "n", "type": "bridge", "ipMasq": False, "mtu": 1450, "isGateway": True,
      "hairpinMode": True, "ipam": {"type": "host-local", "dataDir": "/d",
                                    "ranges": [[{"subnet": "10.244.1.0/24"}]],
                                    "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.244.0.0/16"}]}}),
    ({"name": "n", "ipam": {"type": "static"}},
     {"name": "n", "type": "bridge", "ipMasq": False, "mtu": 1450, "isGateway": True,
      "hairpinMode": True, "ipam": {**BASE_IPAM, "type": "static"}}),
])
def test_delegate_config_table(config: dict[str, Any], want: dict[str, Any]) -> None:
    before = json.dumps(config, sort_keys=True)
    assert flannel.build_delegate(config, ENV) == want
    assert json.dumps(config, sort_keys=True) == before  # the request is never altered


def test_dual_stack_delegate_gets_one_range_set_and_route_per_family() -> None:
    env = flannel.parse_subnet_env(
        ENV_TEXT.replace("FLANNEL_IPMASQ=true", "FLANNEL_IPMASQ=false")
        + "FLANNEL_NETWORK=10.244.0.0/16,10.245.0.0/16\n"
        "FLANNEL_IPV6_NETWORK=fd00::/48\nFLANNEL_IPV6_SUBNET=fd00:0:0:1::/64\n")
    conf = flannel.build_delegate({"name": "n"}, env)
    assert conf["ipMasq"] is True
    assert conf["ipam"]["ranges"] == [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:0:0:1::/64"}]]
    assert conf["ipam"]["routes"] == [{"dst": "10.244.0.0/16"}, {"dst": "10.245.0.0/16"},
                                      {"dst": "fd00::/48"}]


@pytest.mark.parametrize(("config", "msg"), [
    ({"name": "n", "delegate": {"name": "x"}}, "must not have 'name'"),
    ({"name": "n", "delegate": {"ipam": {}}}, "must not have 'ipam'"),
    ({"name": "n", "delegate": {"type": 7}}, "must have (string) 'type'"),
    ({"name": "n", "delegate": []}, "'delegate' must be an object"),
    ({"name": "n", "ipam": []}, "ipam must be an object"),
    ({"name": "n", "ipam": {"routes": [{"gw": "1.2.3.4"}]}}, "failed to parse ipam.routes"),
    ({"name": "n", "ipam": {"routes": {}}}, "failed to parse ipam.routes"),
])
def test_bad_netconf_is_code_7(config: dict[str, Any], msg: str) -> None:
    with pytest.raises(skel.CniError) as err:
        flannel.build_delegate(config, ENV)
    assert err.value.code == skel.INVALID_CONFIG and msg in err.value.msg


# ------------------------------------------------------------------ ADD / DEL
def test_add_caches_the_delegate_config_before_delegating(tmp_path: Path, fake: Path,
                                                          subnet_env: Path) -> None:
    conf = netconf(tmp_path, runtimeConfig={"portMappings": []})
    cache = tmp_path / "data" / "c1"
    code, out = run("ADD", conf, fake, TEST_CACHE_FILE=str(cache))
    assert code == 0, out
    assert out == {**RESULT, "cniVersion": "1.0.0"}  # rendered in the request's version
    assert SEEN_CACHE == [True]
    [sent] = calls("ADD")
    assert json.loads(cache.read_text()) == sent  # the delegate got exactly what DEL will send
    assert sent["name"] == "cbr0" and sent["ipam"]["ranges"] == [[{"subnet": "10.244.1.0/24"}]]
    assert sent["runtimeConfig"] == {"portMappings": []}
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert stat.S_IMODE(cache.parent.stat().st_mode) == 0o700
    assert [p.name for p in cache.parent.iterdir()] == ["c1"]  # no temporary file left


def test_add_without_subnet_env_fails_with_11_and_caches_nothing(tmp_path: Path, fake: Path) -> None:
    code, out = run("ADD", netconf(tmp_path), fake)
    assert code == 1 and out is not None and out["code"] == skel.TRY_AGAIN
    assert not (tmp_path / "data").exists() and CALLS == []


def test_unwritable_data_dir_is_io_failure_before_any_delegation(tmp_path: Path, fake: Path,
                                                                  subnet_env: Path) -> None:
    (tmp_path / "data").write_text("a file, not a directory")
    code, out = run("ADD", netconf(tmp_path), fake)
    assert code == 1 and out is not None and out["code"] == skel.IO_FAILURE
    assert CALLS == []


def test_failed_delegate_add_passes_its_error_and_keeps_the_cache_for_del(
        tmp_path: Path, fake: Path, subnet_env: Path) -> None:
    FAIL["ADD"] = skel.CniError(skel.POOL_EXHAUSTED, "no free address")
    code, out = run("ADD", netconf(tmp_path), fake)
    assert code == 1 and out == {"cniVersion": "1.0.0", "code": skel.POOL_EXHAUSTED,
                                 "msg": "no free address"}
    assert (tmp_path / "data" / "c1").exists()
    del FAIL["ADD"]
    subnet_env.unlink()  # DEL works from the cache alone
    assert run("DEL", netconf(tmp_path), fake) == (0, None)
    assert calls("DEL") == calls("ADD")
    assert not (tmp_path / "data" / "c1").exists()


def test_del_uses_the_cached_config_and_is_idempotent(tmp_path: Path, fake: Path,
                                                      subnet_env: Path) -> None:
    assert run("ADD", netconf(tmp_path), fake)[0] == 0
    # flanneld moved to another subnet meanwhile: DEL still releases the address it gave.
    subnet_env.write_text(ENV_TEXT.replace("10.244.1.1/24", "10.244.7.1/24"))
    assert run("DEL", netconf(tmp_path), fake) == (0, None)
    [sent] = calls("DEL")
    assert sent["ipam"]["ranges"] == [[{"subnet": "10.244.1.0/24"}]]
    assert run("DEL", netconf(tmp_path), fake) == (0, None)
    assert len(calls("DEL")) == 1  # no cache file: nothing to delegate (reference)


def test_failed_delegate_del_keeps_the_cache_for_the_retry(tmp_path: Path, fake: Path,
                                                          subnet_env: Path) -> None:
    assert run("ADD", netconf(tmp_path), fake)[0] == 0
    FAIL["DEL"] = skel.CniError(skel.TRY_AGAIN, "busy")
    code, out = run("DEL", netconf(tmp_path), fake)
    assert code == 1 and out is not None and out["code"] == skel.TRY_AGAIN
    assert (tmp_path / "data" / "c1").exists()
    del FAIL["DEL"]
    assert run("DEL", netconf(tmp_path), fake) == (0, None)
    assert not (tmp_path / "data" / "c1").exists()


def test_unreadable_cache_makes_del_succeed_and_drops_the_file(tmp_path: Path, fake: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "c1").write_text("{torn")
    assert run("DEL", netconf(tmp_path), fake) == (0, None)
    assert CALLS == [] and not (data / "c1").exists()


# ------------------------------------------------------------------ CHECK / GC / STATUS
def test_check_delegates_with_the_cache_and_prev_result(tmp_path: Path, fake: Path,
                                                        subnet_env: Path) -> None:
    code, added = run("ADD", netconf(tmp_path), fake)
    assert code == 0
    assert run("CHECK", netconf(tmp_path, prevResult=added), fake) == (0, None)
    [sent] = calls("CHECK")
    assert sent["prevResult"] == added and sent["cniVersion"] == "1.0.0"
    assert sent["ipam"] == calls("ADD")[0]["ipam"]
    code, out = run("CHECK", netconf(tmp_path, prevResult=added), fake, cid="other")
    assert code == 1 and out is not None and out["code"] == skel.UNKNOWN_CONTAINER


def test_gc_passes_through_then_drops_caches_of_gone_containers(tmp_path: Path, fake: Path,
                                                                subnet_env: Path) -> None:
    for cid in ("keep1", "gone1", "gone2"):
        assert run("ADD", netconf(tmp_path, "1.1.0"), fake, cid=cid)[0] == 0
    (tmp_path / "data" / ".gone3.tmp.123").write_text("{")  # an ADD killed before its rename
    valid = [{"containerID": "keep1", "ifname": "eth0"}]
    conf = netconf(tmp_path, "1.1.0", **{"cni.dev/valid-attachments": valid})
    assert run("GC", conf, fake) == (0, None)
    [sent] = calls("GC")
    assert sent["cni.dev/valid-attachments"] == valid and "cni.dev/attachments" not in sent
    assert sent["ipam"]["ranges"] == [[{"subnet": "10.244.1.0/24"}]]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["keep1"]


def test_gc_without_subnet_env_uses_a_cached_config(tmp_path: Path, fake: Path,
                                                    subnet_env: Path) -> None:
    assert run("ADD", netconf(tmp_path, "1.1.0", runtimeConfig={"mac": "0a:58:00:00:00:01"}), fake,
               cid="gone")[0] == 0
    subnet_env.unlink()
    assert run("GC", netconf(tmp_path, "1.1.0", **{"cni.dev/valid-attachments": []}), fake) == (0, None)
    [sent] = calls("GC")
    assert "runtimeConfig" not in sent and sent["cni.dev/valid-attachments"] == []
    assert list((tmp_path / "data").iterdir()) == []
    CALLS.clear()
    assert run("GC", netconf(tmp_path, "1.1.0"), fake) == (0, None)  # nothing at all: no delegate
    assert CALLS == []


def test_failed_delegate_gc_keeps_every_cache(tmp_path: Path, fake: Path, subnet_env: Path) -> None:
    assert run("ADD", netconf(tmp_path, "1.1.0"), fake, cid="gone")[0] == 0
    FAIL["GC"] = skel.CniError(skel.INTERNAL, "GC incomplete")
    code, out = run("GC", netconf(tmp_path, "1.1.0", **{"cni.dev/valid-attachments": []}), fake)
    assert code == 1 and out is not None and out["msg"] == "GC incomplete"
    assert (tmp_path / "data" / "gone").exists()


def test_status_is_50_until_flanneld_wrote_subnet_env(tmp_path: Path, fake: Path) -> None:
    code, out = run("STATUS", netconf(tmp_path, "1.1.0"), fake)
    assert code == 1 and out is not None and out["code"] == skel.NOT_AVAILABLE
    assert "flanneld" in out["msg"] and CALLS == []
    (tmp_path / "subnet.env").write_text(ENV_TEXT)
    assert run("STATUS", netconf(tmp_path, "1.1.0"), fake) == (0, None)
    [sent] = calls("STATUS")
    assert sent["ipam"] == BASE_IPAM and sent["cniVersion"] == "1.1.0"


# ------------------------------------------------------------------ exec'd delegate, imports
EXEC_DELEGATE = """#!{python}
import json, os, sys
conf = json.load(sys.stdin)
with open({log!r}, "a") as f:
    f.write(json.dumps([os.environ["CNI_COMMAND"], conf]) + "\\n")
if os.environ["CNI_COMMAND"] == "ADD":
    print(json.dumps({{"cniVersion": conf["cniVersion"], "ips": [{{"address": "10.244.1.9/24"}}]}}))
"""


def test_a_foreign_delegate_is_execd_with_the_same_config(tmp_path: Path, subnet_env: Path) -> None:
    bindir, log = tmp_path / "bin", tmp_path / "delegate.log"
    bindir.mkdir()
    exe = bindir / "ipvlan"
    exe.write_text(EXEC_DELEGATE.format(python=sys.executable, log=str(log)))
    exe.chmod(0o755)
    conf = netconf(tmp_path, delegate={"type": "ipvlan", "master": "eth0"})
    code, out = run("ADD", conf, bindir)
    assert code == 0 and out == {"cniVersion": "1.0.0", "ips": [{"address": "10.244.1.9/24"}]}
    assert run("DEL", conf, bindir) == (0, None)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [cmd for cmd, _ in lines] == ["ADD", "DEL"]
    assert lines[0][1] == lines[1][1] and lines[0][1]["master"] == "eth0"


def test_module_imports_only_the_standard_library() -> None:
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); before = set(sys.modules); "
            "import cni.flannel; print(','.join(sorted(set(sys.modules) - before)))")
    out = subprocess.run([sys.executable, "-IS", "-c", code], capture_output=True, text=True,
                         check=True).stdout
    loaded = {m for m in out.strip().split(",") if m}
    ours = {m for m in loaded if m.split(".")[0] == "cni"}
    assert ours <= {"cni", "cni.flannel", "cni.delegate", "cni.plugins", "cni.skel", "cni.types"}
    assert {m.split(".")[0] for m in loaded - ours} <= set(sys.stdlib_module_names) | {"_distutils_hack"}
