"""podnet.cniruntime against a recording fake plugin (a real executable: exec, env, stdin, stdout)."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from podnet.cniruntime import Attachment, CniConfig, CniError, CniRuntime, NoCniConfig, k8s_args

# A plugin that appends {command, env, conf} to $LOG, fails when the conf says so, and on ADD
# prints prevResult with one more interface (so chaining is visible).
FAKE = """#!{python}
import json, os, sys
conf = json.load(sys.stdin)
cmd = os.environ["CNI_COMMAND"]
with open(os.environ.get("FAKE_LOG", "{log}"), "a") as f:
    f.write(json.dumps({{"cmd": cmd, "type": conf["type"], "conf": conf,
                        "env": {{k: v for k, v in os.environ.items() if k.startswith("CNI_")}}}}) + "\\n")
if conf.get("fail") == cmd:
    print(json.dumps({{"code": 11, "msg": "boom", "details": conf["type"]}}))
    sys.exit(1)
if cmd == "ADD":
    prev = conf.get("prevResult") or {{"cniVersion": conf["cniVersion"], "interfaces": [],
                                        "ips": [{{"address": "10.1.0.5/24", "gateway": "10.1.0.1"}}]}}
    prev["interfaces"] = prev.get("interfaces", []) + [{{"name": conf["type"]}}]
    print(json.dumps(prev))
"""


@pytest.fixture
def env(tmp_path: Path) -> tuple[CniRuntime, Path, Path]:
    bin_dir, conf_dir, log = tmp_path / "bin", tmp_path / "net.d", tmp_path / "log"
    bin_dir.mkdir()
    conf_dir.mkdir()
    for name in ("first", "second"):
        p = bin_dir / name
        p.write_text(FAKE.format(python=sys.executable, log=log))
        p.chmod(p.stat().st_mode | stat.S_IEXEC)
    return CniRuntime([str(bin_dir)], cache_dir=str(tmp_path / "cache")), conf_dir, log


def calls(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def write(conf_dir: Path, name: str, conf: dict[str, Any]) -> None:
    (conf_dir / name).write_text(json.dumps(conf))


def net(conf_dir: Path, version: str = "1.1.0", **extra: Any) -> CniConfig:
    write(conf_dir, "10-test.conflist", {"cniVersion": version, "name": "testnet", **extra, "plugins": [
        {"type": "first"}, {"type": "second", "capabilities": {"portMappings": True}}]})
    return CniConfig.load(str(conf_dir))


def test_load_picks_lowest_sorted_and_wraps_a_conf(tmp_path: Path) -> None:
    write(tmp_path, "20-b.conflist", {"cniVersion": "1.0.0", "name": "b", "plugins": [{"type": "x"}]})
    write(tmp_path, "10-a.conf", {"cniVersion": "0.4.0", "name": "a", "type": "bridge", "bridge": "cni0"})
    (tmp_path / "05-ignored.txt").write_text("not a config")
    net = CniConfig.load(str(tmp_path))
    assert (net.name, net.cni_version, net.plugins) == ("a", "0.4.0", ({"type": "bridge", "bridge": "cni0"},))


def test_load_skips_empty_lists_and_picks_highest_known_version(tmp_path: Path) -> None:
    write(tmp_path, "00-empty.conflist", {"cniVersion": "1.0.0", "name": "e", "plugins": []})
    write(tmp_path, "10-v.conflist", {"cniVersion": "1.0.0", "cniVersions": ["0.4.0", "1.1.0", "9.9.9"],
                                      "name": "v", "plugins": [{"type": "x"}]})
    net = CniConfig.load(str(tmp_path))
    assert (net.name, net.cni_version) == ("v", "1.1.0")


def test_load_without_config_raises_no_cni_config(tmp_path: Path) -> None:
    with pytest.raises(NoCniConfig):
        CniConfig.load(str(tmp_path / "missing"))


def test_add_chains_caches_and_passes_k8s_args(env: tuple[CniRuntime, Path, Path]) -> None:
    rt, conf_dir, log = env
    n = net(conf_dir)
    att = Attachment("cid1", "/run/netns/x", args=k8s_args("ns", "p", "cid1", "u1"),
                     capability_args={"portMappings": [{"hostPort": 80}], "bandwidth": {}})
    result = rt.add(n, att)
    assert [i["name"] for i in result["interfaces"]] == ["first", "second"]
    first, second = calls(log)
    assert first["env"]["CNI_ARGS"] == ("IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;"
                                        "K8S_POD_INFRA_CONTAINER_ID=cid1;K8S_POD_UID=u1")
    assert "runtimeConfig" not in first["conf"] and "prevResult" not in first["conf"]
    assert second["conf"]["runtimeConfig"] == {"portMappings": [{"hostPort": 80}]}
    assert second["conf"]["prevResult"]["interfaces"] == [{"name": "first"}]
    assert (second["conf"]["name"], second["conf"]["cniVersion"]) == ("testnet", "1.1.0")
    entry = rt.cached("testnet", "cid1", "eth0")
    assert entry is not None and entry["kind"] == "cniCacheV1" and entry["result"] == result
    assert os.path.exists(Path(rt.cache_dir) / "results" / "testnet-cid1-eth0")


def test_del_reverse_with_cached_result_then_uncached(env: tuple[CniRuntime, Path, Path]) -> None:
    rt, conf_dir, log = env
    n = net(conf_dir)
    att = Attachment("cid2", "/run/netns/x")
    result = rt.add(n, att)
    rt.delete(n, att)
    dels = [c for c in calls(log) if c["cmd"] == "DEL"]
    assert [c["type"] for c in dels] == ["second", "first"]
    assert all(c["conf"]["prevResult"] == result for c in dels)
    assert rt.cached("testnet", "cid2", "eth0") is None
    rt.delete(n, att)  # repeated DEL still runs, without prevResult
    assert "prevResult" not in calls(log)[-1]["conf"]


def test_plugin_error_is_cni_error_and_nothing_cached(env: tuple[CniRuntime, Path, Path]) -> None:
    rt, conf_dir, _ = env
    write(conf_dir, "10-test.conflist", {"cniVersion": "1.0.0", "name": "testnet", "plugins": [
        {"type": "first"}, {"type": "second", "fail": "ADD"}]})
    with pytest.raises(CniError) as info:
        rt.add(CniConfig.load(str(conf_dir)), Attachment("cid3", "/run/netns/x"))
    assert (info.value.code, info.value.msg, info.value.details) == (11, "boom", "second")
    assert rt.cached("testnet", "cid3", "eth0") is None


def test_missing_plugin_is_cni_error(env: tuple[CniRuntime, Path, Path]) -> None:
    rt, conf_dir, _ = env
    write(conf_dir, "10-x.conflist", {"cniVersion": "1.0.0", "name": "x", "plugins": [{"type": "nope"}]})
    with pytest.raises(CniError, match="failed to find plugin"):
        rt.add(CniConfig.load(str(conf_dir)), Attachment("cid", "/run/netns/x"))


def test_check_uses_cache_and_version_gates(env: tuple[CniRuntime, Path, Path]) -> None:
    rt, conf_dir, log = env
    n = net(conf_dir)
    att = Attachment("cid4", "/run/netns/x")
    with pytest.raises(CniError, match="no cached result"):
        rt.check(n, att)
    result = rt.add(n, att)
    rt.check(n, att)
    assert [c["conf"]["prevResult"] for c in calls(log) if c["cmd"] == "CHECK"] == [result, result]
    with pytest.raises(CniError, match="does not support CHECK"):
        rt.check(net(conf_dir, "0.3.1"), att)


def test_gc_dels_stale_cached_and_sends_valid_list(env: tuple[CniRuntime, Path, Path]) -> None:
    rt, conf_dir, log = env
    n = net(conf_dir)
    keep, stale = Attachment("keep", "/run/netns/a"), Attachment("stale", "/run/netns/b")
    rt.add(n, keep)
    rt.add(n, stale)
    rt.gc(n, [keep])
    dels = [c for c in calls(log) if c["cmd"] == "DEL"]
    assert {c["env"]["CNI_CONTAINERID"] for c in dels} == {"stale"}
    gcs = [c for c in calls(log) if c["cmd"] == "GC"]
    assert [c["type"] for c in gcs] == ["first", "second"]
    assert gcs[0]["conf"]["cni.dev/valid-attachments"] == [{"containerID": "keep", "ifname": "eth0"}]
    assert [a.container_id for a in rt.cached_attachments("testnet")] == ["keep"]


def test_gc_and_status_skipped_below_1_1_0(env: tuple[CniRuntime, Path, Path]) -> None:
    rt, conf_dir, log = env
    n = net(conf_dir, "1.0.0")
    rt.gc(n, [])
    rt.status(n)
    assert calls(log) == []
    rt.status(net(conf_dir, "1.1.0"))
    assert [c["cmd"] for c in calls(log)] == ["STATUS", "STATUS"]
