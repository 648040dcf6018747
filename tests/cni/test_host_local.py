"""host-local driven through skel.dispatch with injected env and stdin: every verb, every
version rendering, every error path with its code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cni import host_local, skel


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return tmp_path / "networks"


def netconf(data_dir: Path, ranges: list | None = None, version: str = "1.1.0", **ipam: Any) -> dict:
    return {"cniVersion": version, "name": "podnet",
            "ipam": {"type": "host-local", "dataDir": str(data_dir),
                     "ranges": ranges if ranges is not None else [[{"subnet": "10.1.0.0/24"}]], **ipam}}


def run(command: str, conf: dict, cid: str = "c1", ifname: str = "eth0", args: str = "",
        netns: str = "/var/run/netns/not-used") -> tuple[int, Any]:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": netns, "CNI_IFNAME": ifname,
           "CNI_PATH": "/nonexistent", "CNI_ARGS": args}
    code, out = skel.dispatch(host_local.PLUGIN, env, json.dumps(conf).encode())
    return code, json.loads(out) if out else None


def ok(command: str, conf: dict, **kw: Any) -> Any:
    code, out = run(command, conf, **kw)
    assert code == 0, out
    return out


def fails(command: str, conf: dict, code: int, match: str = "", **kw: Any) -> dict:
    got, out = run(command, conf, **kw)
    assert (got, out["code"]) == (1, code), out
    assert match in out["msg"], out
    return out


def files(data_dir: Path) -> dict[str, str]:
    net = data_dir / "podnet"
    return {p.name: p.read_bytes().decode() for p in net.iterdir()
            if p.name != "lock" and not p.name.startswith("last_reserved_ip.")} if net.exists() else {}


# --- ADD ---------------------------------------------------------------------------------------

def test_add_result_is_an_ipam_result(data_dir):
    conf = netconf(data_dir, [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00:1::/64"}]],
                   routes=[{"dst": "0.0.0.0/0"}, {"dst": "::/0", "gw": "fd00:1::1"}])
    assert ok("ADD", conf) == {
        "cniVersion": "1.1.0",
        "ips": [{"address": "10.1.0.2/24", "gateway": "10.1.0.1"},
                {"address": "fd00:1::2/64", "gateway": "fd00:1::1"}],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0", "gw": "fd00:1::1"}]}
    assert files(data_dir) == {"10.1.0.2": "c1\r\neth0", "fd00:1::2": "c1\r\neth0"}


@pytest.mark.parametrize(("version", "expected"), [
    ("1.0.0", {"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.2/24", "gateway": "10.1.0.1"}]}),
    ("0.4.0", {"cniVersion": "0.4.0", "ips": [{"version": "4", "address": "10.1.0.2/24",
                                               "gateway": "10.1.0.1"}]}),
    ("0.3.1", {"cniVersion": "0.3.1", "ips": [{"version": "4", "address": "10.1.0.2/24",
                                               "gateway": "10.1.0.1"}]}),
    ("0.2.0", {"cniVersion": "0.2.0", "ip4": {"ip": "10.1.0.2/24", "gateway": "10.1.0.1"}}),
])
def test_add_answers_in_the_requested_version(data_dir, version, expected):
    assert ok("ADD", netconf(data_dir, version=version)) == expected


def test_add_dns_from_resolv_conf(data_dir, tmp_path):
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 10.0.0.10\nsearch svc.cluster.local\noptions ndots:5\n")
    out = ok("ADD", netconf(data_dir, resolvConf=str(resolv)))
    assert out["dns"] == {"nameservers": ["10.0.0.10"], "search": ["svc.cluster.local"],
                          "options": ["ndots:5"]}


def test_add_missing_resolv_conf_is_a_config_error_and_reserves_nothing(data_dir, tmp_path):
    fails("ADD", netconf(data_dir, resolvConf=str(tmp_path / "nope")), skel.INVALID_CONFIG, "resolvConf")
    assert files(data_dir) == {}


def test_duplicate_add_is_already_attached(data_dir):
    conf = netconf(data_dir)
    ok("ADD", conf)
    fails("ADD", conf, skel.ALREADY_ATTACHED, "duplicate allocation")
    assert files(data_dir) == {"10.1.0.2": "c1\r\neth0"}
    ok("ADD", conf, ifname="eth1")


def test_pool_exhausted(data_dir):
    conf = netconf(data_dir, [[{"subnet": "10.1.0.0/29"}]])
    for i in range(5):
        ok("ADD", conf, cid=f"c{i}")
    fails("ADD", conf, skel.POOL_EXHAUSTED, "no IP addresses available", cid="c9")


def test_second_set_exhausted_rolls_back_the_first(data_dir):
    conf = netconf(data_dir, [[{"subnet": "10.1.0.0/24"}], [{"subnet": "10.2.0.0/30"}]])
    ok("ADD", conf, cid="hog")
    fails("ADD", conf, skel.POOL_EXHAUSTED, "range set 1", cid="c2")
    assert set(files(data_dir)) == {"10.1.0.2", "10.2.0.2"}


@pytest.mark.parametrize(("kw", "top"), [
    ({"args": "IP=10.1.0.42"}, {}),
    ({"args": "IgnoreUnknown=1;K8S_POD_NAME=p;IP=10.1.0.42,fd00:1::42"}, {}),
    ({}, {"args": {"cni": {"ips": ["10.1.0.42"]}}}),
    ({}, {"runtimeConfig": {"ips": ["10.1.0.42/24"]}}),
])
def test_requested_ip_channels(data_dir, kw, top):
    conf = {**netconf(data_dir, [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00:1::/64"}]]), **top}
    out = ok("ADD", conf, **kw)
    assert out["ips"][0]["address"] == "10.1.0.42/24"


def test_requested_ip_errors(data_dir):
    conf = netconf(data_dir)
    ok("ADD", conf, cid="a", args="IP=10.1.0.42")
    fails("ADD", conf, skel.INTERNAL, "10.1.0.42 is already allocated", cid="b", args="IP=10.1.0.42")
    fails("ADD", conf, skel.INVALID_CONFIG, "not in any range set", cid="b", args="IP=10.9.0.1")
    fails("ADD", conf, skel.INVALID_CONFIG, "gateway", cid="b", args="IP=10.1.0.1")
    fails("ADD", conf, skel.INVALID_CONFIG, "cannot understand IP", cid="b", args="IP=banana")
    assert files(data_dir) == {"10.1.0.42": "a\r\neth0"}


def test_ip_ranges_capability(data_dir):
    conf = {**netconf(data_dir), "runtimeConfig": {"ipRanges": [[{"subnet": "10.7.0.0/24"}]]}}
    assert ok("ADD", conf)["ips"] == [{"address": "10.7.0.2/24", "gateway": "10.7.0.1"}]


def test_legacy_single_range_config(data_dir):
    conf = {"cniVersion": "0.3.1", "name": "podnet",
            "ipam": {"type": "host-local", "dataDir": str(data_dir), "subnet": "10.4.0.0/16",
                     "rangeStart": "10.4.1.0", "gateway": "10.4.0.1"}}
    assert ok("ADD", conf)["ips"] == [{"version": "4", "address": "10.4.1.0/16", "gateway": "10.4.0.1"}]


@pytest.mark.parametrize("ranges", [[], [[{"subnet": "10.1.0.0/31"}]], [[{"subnet": "fd00::/128"}]],
                                    [[{"subnet": "nonsense"}]]])
def test_invalid_config_is_code_7(data_dir, ranges):
    fails("ADD", netconf(data_dir, ranges), skel.INVALID_CONFIG)


def test_missing_ipam_is_code_7(data_dir):
    for command in ("ADD", "DEL", "CHECK", "GC", "STATUS"):
        fails(command, {"cniVersion": "1.1.0", "name": "podnet"}, skel.INVALID_CONFIG, "ipam")


def test_unwritable_data_dir_is_an_io_failure(tmp_path):
    (tmp_path / "file").write_text("")
    fails("ADD", netconf(tmp_path / "file"), skel.IO_FAILURE, "creating")


def test_env_errors_come_from_skel(data_dir):
    conf = netconf(data_dir)
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_PATH": "/x"}
    code, out = skel.dispatch(host_local.PLUGIN, env, json.dumps(conf).encode())
    assert (code, json.loads(out)["code"]) == (1, skel.INVALID_ENV)
    fails("ADD", conf, skel.INVALID_ENV, "CNI_ARGS", args="FOO=1")
    code, out = skel.dispatch(host_local.PLUGIN, {**env, "CNI_NETNS": "/x"}, b"{not json")
    assert json.loads(out)["code"] == skel.DECODE_FAILURE


# --- DEL ---------------------------------------------------------------------------------------

def test_del_releases_the_attachment_only_and_is_idempotent(data_dir):
    conf = netconf(data_dir, [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00:1::/64"}]])
    ok("ADD", conf, cid="a")
    ok("ADD", conf, cid="b")
    ok("DEL", conf, cid="a", netns="")
    assert files(data_dir) == {"10.1.0.3": "b\r\neth0", "fd00:1::3": "b\r\neth0"}
    ok("DEL", conf, cid="a")
    ok("DEL", conf, cid="never-added")


def test_del_without_state_creates_nothing(data_dir):
    ok("DEL", netconf(data_dir))
    assert not data_dir.exists()


def test_del_works_when_ranges_changed_into_garbage(data_dir):
    conf = netconf(data_dir)
    ok("ADD", conf)
    ok("DEL", netconf(data_dir, [[{"subnet": "10.1.0.0/32"}]]))
    assert files(data_dir) == {}


def test_del_releases_legacy_id_only_files(data_dir):
    net = data_dir / "podnet"
    net.mkdir(parents=True)
    (net / "10.1.0.9").write_text("c1")
    ok("DEL", netconf(data_dir))
    assert files(data_dir) == {}


# --- CHECK -------------------------------------------------------------------------------------

def test_check(data_dir):
    conf = netconf(data_dir)
    fails("CHECK", conf, skel.INTERNAL, "failed to find address added by container c1")
    out = ok("ADD", conf)
    ok("CHECK", {**conf, "prevResult": out})
    ok("CHECK", conf)
    fails("CHECK", conf, skel.INTERNAL, "failed to find", ifname="eth1")


def test_check_prev_result_addresses_must_be_ours(data_dir):
    conf = netconf(data_dir)
    ok("ADD", conf)
    prev = {"cniVersion": "1.1.0", "ips": [{"address": "10.1.0.77/24"}]}
    fails("CHECK", {**conf, "prevResult": prev}, skel.INTERNAL, "10.1.0.77 of prevResult is not reserved")
    elsewhere = {"cniVersion": "1.1.0", "ips": [{"address": "192.168.9.9/24"}, {"address": "10.1.0.2/24"}]}
    ok("CHECK", {**conf, "prevResult": elsewhere})


def test_check_needs_cni_0_4_0(data_dir):
    fails("CHECK", netconf(data_dir, version="0.3.1"), skel.INCOMPATIBLE_VERSION)


# --- GC ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["cni.dev/valid-attachments", "cni.dev/attachments"])
def test_gc_releases_everything_not_valid(data_dir, key):
    conf = netconf(data_dir, [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00:1::/64"}]])
    for cid in ("keep", "gone"):
        ok("ADD", conf, cid=cid)
    ok("ADD", conf, cid="keep", ifname="eth1")
    ok("GC", {**conf, key: [{"containerID": "keep", "ifname": "eth0"}]}, cid="")
    assert files(data_dir) == {"10.1.0.2": "keep\r\neth0", "fd00:1::2": "keep\r\neth0"}
    ok("GC", conf, cid="")
    assert files(data_dir) == {}


def test_gc_keeps_legacy_files_of_valid_containers(data_dir):
    net = data_dir / "podnet"
    net.mkdir(parents=True)
    (net / "10.1.0.9").write_text("live")
    (net / "10.1.0.8").write_text("dead")
    (net / "10.1.0.7").write_text("")
    ok("GC", {**netconf(data_dir), "cni.dev/valid-attachments": [{"containerID": "live", "ifname": "eth0"}]})
    assert files(data_dir) == {"10.1.0.9": "live"}


def test_gc_without_state_creates_nothing_and_needs_1_1_0(data_dir):
    ok("GC", netconf(data_dir))
    assert not data_dir.exists()
    fails("GC", netconf(data_dir, version="1.0.0"), skel.INCOMPATIBLE_VERSION)


# --- STATUS ------------------------------------------------------------------------------------

def test_status_ready_and_exhausted(data_dir):
    conf = netconf(data_dir, [[{"subnet": "10.1.0.0/24"}], [{"subnet": "10.2.0.0/30"}]])
    ok("STATUS", conf)
    ok("ADD", conf)
    fails("STATUS", conf, skel.NOT_AVAILABLE, "no free address in range set 1 (10.2.0.1-10.2.0.2)")
    ok("DEL", conf)
    ok("STATUS", conf)


def test_status_unwritable_store(tmp_path):
    (tmp_path / "file").write_text("")
    fails("STATUS", netconf(tmp_path / "file"), skel.NOT_AVAILABLE, "creating")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_status_read_only_directory(data_dir):
    (data_dir / "podnet").mkdir(parents=True)
    (data_dir / "podnet" / "lock").write_text("")
    (data_dir / "podnet").chmod(0o555)
    try:
        fails("STATUS", netconf(data_dir), skel.NOT_AVAILABLE, "not writable")
    finally:
        (data_dir / "podnet").chmod(0o755)


def test_status_invalid_config_and_old_version(data_dir):
    fails("STATUS", netconf(data_dir, [[{"subnet": "10.1.0.0/32"}]]), skel.INVALID_CONFIG)
    fails("STATUS", netconf(data_dir, version="1.0.0"), skel.INCOMPATIBLE_VERSION)


# --- the exec path stays stdlib-only ---------------------------------------------------------------

NO_HEAVY_IMPORTS = """
import json, sys
sys.path.insert(0, sys.argv[2])
from cni import host_local, skel
env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_NETNS": "/x", "CNI_IFNAME": "eth0",
       "CNI_PATH": "/x"}
conf = {"cniVersion": "1.1.0", "name": "n",
        "ipam": {"type": "host-local", "dataDir": sys.argv[1], "ranges": [[{"subnet": "10.0.0.0/24"}]]}}
code, out = skel.dispatch(host_local.PLUGIN, env, json.dumps(conf).encode())
assert code == 0, out
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("pyroute2", "podnet", "subprocess", "click",
                                                              "scapy", "etcd3", "asyncio"))
print(json.dumps(heavy))
"""


def test_add_imports_nothing_heavy(data_dir):
    repo = str(Path(__file__).resolve().parents[2])
    out = subprocess.run([sys.executable, "-I", "-S", "-c", NO_HEAVY_IMPORTS, str(data_dir), repo],
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
