"""Pure parts of the real runtimes: OCI config, the process prelude, cgroup limit files, the
shim's CRI line splitting and exit codes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from podnet.runtime import cgroups
from podnet.runtime.base import MAX_LOG_LINE, ContainerSpec, Mount, parse_cri_line
from podnet.runtime.common import timed
from podnet.runtime.crun import oci_config
from podnet.runtime.process import container_env, launcher, prelude
from podnet.runtime.shim import LineSplitter, exit_code_of


def spec(**kw: object) -> ContainerSpec:
    base: dict[str, object] = dict(
        pod_uid="u1", pod_namespace="ns", pod_name="web", name="app", attempt=2,
        argv=["/bin/echo", "a b"], env={"A": "1"}, working_dir="/srv", netns_path="/run/netns/p",
        mounts=[Mount("/var/lib/kubelet/pods/u1/volumes/cache", "/cache"),
                Mount("/etc/ssl", "/etc/ssl", read_only=True)])
    base.update(kw)
    return ContainerSpec(**base)  # type: ignore[arg-type]


def test_oci_config_namespaces_rootfs_mounts_env() -> None:
    cfg = oci_config(spec(memory_limit_bytes=1 << 26, cpu_limit_millis=250), "/st/rootfs",
                     "/podnet/x")
    ns = cfg["linux"]["namespaces"]
    assert [n["type"] for n in ns] == ["pid", "ipc", "uts", "mount", "network"]
    assert ns[-1]["path"] == "/run/netns/p"
    assert cfg["root"] == {"path": "/st/rootfs", "readonly": True}
    assert cfg["hostname"] == "web"
    assert cfg["process"]["args"] == ["/bin/echo", "a b"] and cfg["process"]["cwd"] == "/srv"
    assert "A=1" in cfg["process"]["env"] and any(e.startswith("PATH=") for e in
                                                   cfg["process"]["env"])
    binds = [m for m in cfg["mounts"] if m["type"] == "bind"]
    assert [(m["destination"], m["options"][-1]) for m in binds] == [
        ("/cache", "rw"), ("/etc/ssl", "ro")]
    assert cfg["linux"]["cgroupsPath"] == "/podnet/x"
    assert cfg["linux"]["resources"] == {"memory": {"limit": 1 << 26},
                                         "cpu": {"quota": 25000, "period": 100000}}


def test_oci_config_without_netns_or_cgroups() -> None:
    cfg = oci_config(spec(netns_path="", hostname="h"), "/r", None)
    assert "network" not in [n["type"] for n in cfg["linux"]["namespaces"]]
    assert "cgroupsPath" not in cfg["linux"] and cfg["hostname"] == "h"


def test_container_env_spec_overrides_defaults() -> None:
    assert container_env(spec(env={"PATH": "/x"}))["PATH"] == "/x"


def test_process_launcher_and_prelude_order() -> None:
    argv = launcher(spec(), "/st/rootfs", ["/sys/fs/cgroup/memory/podnet/x"])
    assert argv[:3] == ["nsenter", "--net=/run/netns/p", "--"]
    assert argv[-2:] == ["/bin/echo", "a b"]
    script = prelude(spec(), "/st/rootfs", ["/sys/fs/cgroup/memory/podnet/x"])
    lines = script.splitlines()
    assert lines[1] == "hostname web"
    assert "echo $$ > /sys/fs/cgroup/memory/podnet/x/cgroup.procs" in lines
    # the root layer first, volumes into it, read-only remount of the volume and the root
    order = [lines.index(x) for x in (
        "mount -t tmpfs -o mode=755 podnet-layer /st/rootfs",
        "mount -t proc proc /st/rootfs/root/proc",
        "mount --rbind /var/lib/kubelet/pods/u1/volumes/cache /st/rootfs/root/cache",
        "mount -o remount,bind,ro /st/rootfs/root/etc/ssl",
        "mount -o remount,bind,ro /st/rootfs/root")]
    assert order == sorted(order)
    assert "mount -t overlay -o lowerdir=/,upperdir=/st/rootfs/upper," in script
    assert lines[-1].startswith("exec chroot /st/rootfs/root /bin/sh -c 'cd /srv && exec env -i")


def fake_cgroup_base(tmp_path: Path, version: str) -> str:
    base = tmp_path / "cg"
    if version == "v2":
        base.mkdir()
        (base / "cgroup.controllers").write_text("cpu memory\n")
    else:
        (base / "memory").mkdir(parents=True)
        (base / "cpu").mkdir()
        (base / "unified").mkdir()
        (base / "unified" / "cgroup.controllers").write_text("hugetlb\n")
    return str(base)


def test_cgroup_limits_v1_hybrid(tmp_path: Path) -> None:
    base = fake_cgroup_base(tmp_path, "hybrid")
    assert cgroups.mode(base) == "hybrid" and cgroups.hybrid_with_controllers(base)
    dirs = cgroups.create("podnet-x-app-0", 64 << 20, 500, base)
    assert dirs == [f"{base}/memory/podnet/podnet-x-app-0", f"{base}/cpu/podnet/podnet-x-app-0"]
    assert Path(f"{dirs[0]}/memory.limit_in_bytes").read_text() == str(64 << 20)
    assert Path(f"{dirs[1]}/cpu.cfs_quota_us").read_text() == "50000"
    assert cgroups.create("podnet-y-app-0", None, None, base) == []


def test_cgroup_limits_v2(tmp_path: Path) -> None:
    base = fake_cgroup_base(tmp_path, "v2")
    [d] = cgroups.create("podnet-x-app-0", 1000, 100, base)
    assert Path(f"{d}/memory.max").read_text() == "1000"
    assert Path(f"{d}/cpu.max").read_text() == "10000 100000"
    assert Path(f"{base}/podnet/cgroup.subtree_control").read_text() == "+memory +cpu"


def test_cgroup_limits_skipped_without_cgroup_fs(tmp_path: Path) -> None:
    assert cgroups.mode(str(tmp_path)) is None
    assert cgroups.create("podnet-x-app-0", 1000, None, str(tmp_path)) == []
    assert os.listdir(tmp_path) == []


def test_line_splitter_full_partial_and_flush() -> None:
    sp = LineSplitter("stdout")
    assert sp.feed(b"ab") == b""
    recs = sp.feed(b"c\nde\n" + b"x" * (MAX_LOG_LINE + 3)).decode().splitlines()
    assert [parse_cri_line(r)[1:] for r in recs] == [
        ("stdout", "F", "abc"), ("stdout", "F", "de"), ("stdout", "P", "x" * MAX_LOG_LINE)]
    assert parse_cri_line(sp.flush().decode())[1:] == ("stdout", "F", "xxx")
    assert sp.flush() == b""


@pytest.mark.parametrize(("rc", "want"), [(0, 0), (3, 3), (-9, 137), (-15, 143)])
def test_exit_code_of(rc: int, want: int) -> None:
    assert exit_code_of(rc) == want


def test_exec_runs_under_an_in_container_timeout() -> None:
    assert timed(["cat", "/ready"], 1.5) == ["timeout", "--kill-after=0.5", "1.500", "cat", "/ready"]
