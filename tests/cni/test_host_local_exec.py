"""host-local as real executables (`cni.install.install`): concurrency between processes,
SIGKILL mid-ADD followed by GC, and interoperability with the reference Go plugin on one
data dir.  No root needed: host-local never enters CNI_NETNS."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from cni import install

REFERENCE = "/usr/lib/cni/host-local"
NETNS = "/var/run/netns/host-local-ignores-this"


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> str:
    directory = tmp_path_factory.mktemp("cni-bin")
    install.install(str(directory))
    return str(directory / "host-local")


@pytest.fixture
def reference() -> str:
    if not os.access(REFERENCE, os.X_OK):
        pytest.skip("reference host-local missing: apt-get install containernetworking-plugins")
    return REFERENCE


def netconf(data_dir: Path, subnet: str = "10.5.0.0/24", version: str = "1.0.0") -> bytes:
    # 1.0.0: the highest version the reference plugins (v1.1.1) accept.
    return json.dumps({"cniVersion": version, "name": "execnet",
                       "ipam": {"type": "host-local", "dataDir": str(data_dir),
                                "ranges": [[{"subnet": subnet}]]}}).encode()


def env(command: str, cid: str, ifname: str = "eth0", netns: str = NETNS) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command,
            "CNI_CONTAINERID": cid, "CNI_NETNS": netns, "CNI_IFNAME": ifname, "CNI_PATH": "/nonexistent"}


def start(exe: str, command: str, conf: bytes, cid: str, **kw: Any) -> subprocess.Popen[bytes]:
    # stdin is a pipe filled up front (a netconf fits in the pipe buffer), so many processes can
    # start at once and communicate() only reads.
    read_end, write_end = os.pipe()
    os.write(write_end, conf)
    os.close(write_end)
    try:
        return subprocess.Popen([exe], stdin=read_end, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env(command, cid, **kw))
    finally:
        os.close(read_end)


def run(exe: str, command: str, conf: bytes, cid: str, **kw: Any) -> tuple[int, Any]:
    proc = start(exe, command, conf, cid, **kw)
    out, _ = proc.communicate(timeout=30)
    return proc.returncode, json.loads(out) if out.strip() else None


def ok(exe: str, command: str, conf: bytes, cid: str, **kw: Any) -> Any:
    code, out = run(exe, command, conf, cid, **kw)
    assert code == 0, out
    return out


def address(result: dict) -> str:
    return result["ips"][0]["address"].split("/")[0]


def reservations(data_dir: Path) -> dict[str, str]:
    net = data_dir / "execnet"
    return {p.name: p.read_bytes().decode() for p in net.iterdir()
            if p.name != "lock" and not p.name.startswith("last_reserved_ip.")}


def test_twenty_concurrent_adds_get_distinct_addresses(plugin, tmp_path):
    conf = netconf(tmp_path)
    procs = [start(plugin, "ADD", conf, f"par{i}") for i in range(20)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, (out, err)
        results.append(json.loads(out))
    ips = [address(r) for r in results]
    assert len(set(ips)) == 20
    assert set(reservations(tmp_path)) == set(ips)
    assert "10.5.0.1" not in ips


def test_sigkill_mid_add_then_gc_leaves_no_leak_and_no_stuck_lock(plugin, tmp_path):
    conf = netconf(tmp_path)
    procs = [start(plugin, "ADD", conf, f"k{i}") for i in range(20)]
    victims = procs[::2]
    for proc in victims:  # 20 ms apart: spread over start-up, the lock wait and the ADD itself
        time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    survivors = {}
    for i, proc in enumerate(procs):
        out, _ = proc.communicate(timeout=60)
        # A victim that finished before its signal still counts as killed: the runtime never
        # saw its result, so its address is a leak GC has to reclaim.
        if proc.returncode == 0 and proc not in victims:
            survivors[f"k{i}"] = address(json.loads(out))
    assert len(survivors) == 10
    gc_conf = json.loads(netconf(tmp_path, version="1.1.0"))
    gc_conf["cni.dev/valid-attachments"] = [{"containerID": c, "ifname": "eth0"} for c in survivors]
    code, out = run(plugin, "GC", json.dumps(gc_conf).encode(), "")
    assert code == 0, out
    assert reservations(tmp_path) == {ip: f"{cid}\r\neth0" for cid, ip in survivors.items()}
    started = time.monotonic()
    fresh = ok(plugin, "ADD", conf, "after")
    assert time.monotonic() - started < 10, "the lock was stuck"
    assert address(fresh) not in survivors.values()


def test_reference_releases_ours_and_we_release_theirs(plugin, reference, tmp_path):
    conf = netconf(tmp_path)
    ours = ok(plugin, "ADD", conf, "ours")
    ok(reference, "CHECK", conf, "ours")
    ok(reference, "DEL", conf, "ours", netns="")
    assert reservations(tmp_path) == {}
    theirs = ok(reference, "ADD", conf, "theirs")
    assert address(theirs) == "10.5.0.3"  # round robin continues from our last_reserved_ip.0
    assert address(ours) == "10.5.0.2"
    ok(plugin, "CHECK", conf, "theirs")
    code, out = run(plugin, "ADD", conf, "theirs")  # duplicate across implementations
    assert (code, out["code"]) == (1, 100)
    ok(plugin, "DEL", conf, "theirs", netns="")
    assert reservations(tmp_path) == {}


def test_reference_legacy_and_gc_interop(plugin, reference, tmp_path):
    conf = netconf(tmp_path)
    ok(reference, "ADD", conf, "stale")
    ok(reference, "ADD", conf, "live")
    gc_conf = json.loads(netconf(tmp_path, version="1.1.0"))
    gc_conf["cni.dev/valid-attachments"] = [{"containerID": "live", "ifname": "eth0"}]
    code, out = run(plugin, "GC", json.dumps(gc_conf).encode(), "")
    assert code == 0, out
    assert reservations(tmp_path) == {"10.5.0.3": "live\r\neth0"}


def test_concurrent_adds_mixed_with_the_reference_share_the_lock(plugin, reference, tmp_path):
    conf = netconf(tmp_path)
    procs = [start(plugin if i % 2 else reference, "ADD", conf, f"mix{i}") for i in range(16)]
    ips = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, (out, err)
        ips.append(address(json.loads(out)))
    assert len(set(ips)) == 16 and set(reservations(tmp_path)) == set(ips)
    for i in range(len(procs)):
        ok(reference if i % 2 else plugin, "DEL", conf, f"mix{i}")
    assert reservations(tmp_path) == {}
