"""Both container runtimes (crun and plain processes) against the real kernel.

Each test runs containers in a fresh pod network namespace of the harness, with the runtime's
root under tmp_path; a finalizer registered first removes every container the test started.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from podnet import execs
from podnet.runtime import cgroups
from podnet.runtime.base import ContainerSpec, Mount, RuntimeFailure, parse_cri_line, pid_alive
from podnet.runtime.common import ExecTimeout, ShimmedRuntime
from podnet.runtime.crun import CrunRuntime, available
from podnet.runtime.process import ProcessRuntime
from podnet.testing.harness import Topology
from podnet.testing.wait import wait_until

UID = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"


@pytest.fixture(params=["process", "crun"])
def runtime(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ShimmedRuntime]:
    if request.param == "crun" and not available():
        pytest.skip("crun missing: apt-get install crun")
    root = str(tmp_path / "runtime")
    started: list[ShimmedRuntime] = []

    def cleanup() -> None:
        for rt in started:
            for info in rt.list():
                rt.remove(info.id)

    request.addfinalizer(cleanup)
    rt: ShimmedRuntime = CrunRuntime(root) if request.param == "crun" else ProcessRuntime(root)
    started.append(rt)
    yield rt


@pytest.fixture
def pod_netns(topo: Topology) -> str:
    """An empty pod namespace plus one distinctive link, so the test can tell it from others."""
    path = topo.add_pod_netns("rtpod")
    name = topo.namespaces[-1]
    execs.run(["ip", "-n", name, "link", "add", "podnetbr0", "type", "bridge"])
    return path


def spec(tmp_path: Path, netns: str, name: str, argv: list[str], **kw: object) -> ContainerSpec:
    return ContainerSpec(pod_uid=UID, pod_namespace="default", pod_name="web", name=name,
                         attempt=0, argv=argv, netns_path=netns,
                         log_path=str(tmp_path / f"{name}.log"), **kw)  # type: ignore[arg-type]


def log_lines(s: ContainerSpec) -> list[tuple[str, str, str, str]]:
    with open(s.log_path) as f:
        return [parse_cri_line(line) for line in f]


def test_container_namespaces_env_cwd_and_cri_log(runtime: ShimmedRuntime, pod_netns: str,
                                                   tmp_path: Path) -> None:
    script = ("ip -o link | cut -d: -f2 | tr -d ' ' | sort | tr '\\n' ,; echo; "
              "ps -e -o pid= | wc -l; hostname; pwd; echo $GREETING; echo to-stderr >&2")
    s = spec(tmp_path, pod_netns, "app", ["/bin/sh", "-c", script], env={"GREETING": "hi there"},
             working_dir="/usr/share", hostname="web-0")
    info = runtime.create_and_start(s)
    assert info.labels["io.kubernetes.container.name"] == "app"
    wait_until(lambda: runtime.status(s.id).state == "exited", 10, "container exit")
    assert runtime.status(s.id).exit_code == 0
    lines = log_lines(s)
    out = [m for _, stream, _, m in lines if stream == "stdout"]
    assert out[0] == "lo,podnetbr0,"  # only the pod's netns links
    assert int(out[1]) <= 3  # own pid namespace: sh, ps (and wc) only
    assert out[2:5] == ["web-0", "/usr/share", "hi there"]
    assert [m for _, stream, _, m in lines if stream == "stderr"] == ["to-stderr"]
    stamp, _, tag, _ = lines[0]
    assert tag == "F" and stamp.endswith("Z") and len(stamp.split(".")[1]) == 10


def test_empty_dir_shared_host_path_read_only(runtime: ShimmedRuntime, pod_netns: str,
                                              tmp_path: Path) -> None:
    empty, host = tmp_path / "empty-dir", tmp_path / "host-path"
    empty.mkdir()
    host.mkdir()
    (host / "config").write_text("from-host\n")
    (tmp_path / "app.conf").write_text("file-mount\n")
    vols = [Mount(str(empty), "/tmp/cache"), Mount(str(host), "/tmp/etc-app", read_only=True),
            Mount(str(tmp_path / "app.conf"), "/tmp/conf/app.conf", read_only=True)]
    writer = spec(tmp_path, pod_netns, "writer", ["/bin/sh", "-c",
                  "echo shared > /tmp/cache/x; touch /tmp/etc-app/y || echo ro-refused; "
                  "touch /should-fail || echo rootfs-ro"], mounts=vols)
    runtime.create_and_start(writer)
    wait_until(lambda: runtime.status(writer.id).state == "exited", 10, "writer exit")
    reader = spec(tmp_path, pod_netns, "reader", ["/bin/sh", "-c",
                  "cat /tmp/cache/x /tmp/etc-app/config /tmp/conf/app.conf"], mounts=vols)
    runtime.create_and_start(reader)
    wait_until(lambda: runtime.status(reader.id).state == "exited", 10, "reader exit")
    assert [m for *_, m in log_lines(writer) if not m.startswith("touch")] == [
        "ro-refused", "rootfs-ro"]
    assert [m for *_, m in log_lines(reader)] == ["shared", "from-host", "file-mount"]
    assert (empty / "x").read_text() == "shared\n"
    assert not (host / "y").exists() and not os.path.exists("/should-fail")


def test_mount_point_missing_on_host_stays_in_the_container(
        runtime: ShimmedRuntime, pod_netns: str, tmp_path: Path) -> None:
    """The image is an overlay of the host's "/": a volume at a path the host lacks gets its
    mount point in the container's own layer, and the host's filesystem is never written."""
    (tmp_path / "vol").mkdir()
    where = f"/podnet-test-{os.getpid()}-{tmp_path.name}/data"
    s = spec(tmp_path, pod_netns, "newpath", ["/bin/sh", "-c", f"echo made > {where}/f"],
             mounts=[Mount(str(tmp_path / "vol"), where)])
    runtime.create_and_start(s)
    wait_until(lambda: runtime.status(s.id).state == "exited", 10, "container exit")
    assert runtime.status(s.id).exit_code == 0
    assert (tmp_path / "vol" / "f").read_text() == "made\n"
    assert not os.path.exists(os.path.dirname(where))


def test_missing_netns_is_a_create_error(runtime: ShimmedRuntime, tmp_path: Path) -> None:
    s = spec(tmp_path, "/run/netns/podnet-test-no-such-ns", "lost", ["true"])
    with pytest.raises(RuntimeFailure, match="does not exist"):
        runtime.create_and_start(s)
    assert runtime.list() == []


def test_exit_code_and_stop_grace(runtime: ShimmedRuntime, pod_netns: str,
                                  tmp_path: Path) -> None:
    failing = spec(tmp_path, pod_netns, "failing", ["/bin/sh", "-c", "exit 3"])
    runtime.create_and_start(failing)
    wait_until(lambda: runtime.status(failing.id).state == "exited", 10, "exit 3")
    assert runtime.status(failing.id).exit_code == 3
    polite = spec(tmp_path, pod_netns, "polite", ["/bin/sh", "-c",
                  "trap 'echo got-term; exit 7' TERM; echo up; while :; do sleep 0.05; done"])
    runtime.create_and_start(polite)
    wait_until(lambda: [m for *_, m in log_lines(polite)] == ["up"], 10, "trap installed")
    runtime.stop(polite.id, 10)
    assert runtime.status(polite.id).exit_code == 7
    assert [m for *_, m in log_lines(polite)] == ["up", "got-term"]
    stubborn = spec(tmp_path, pod_netns, "stubborn", ["/bin/sh", "-c",
                    "trap '' TERM; echo up; while :; do sleep 0.05; done"])
    runtime.create_and_start(stubborn)
    wait_until(lambda: bool(log_lines(stubborn)), 10, "trap installed")
    began = time.monotonic()
    runtime.stop(stubborn.id, 0.5)
    assert time.monotonic() - began >= 0.5
    info = runtime.status(stubborn.id)
    assert info.exit_code == 137 and info.pid is None and info.finished_at


def test_exec_and_exec_timeout(runtime: ShimmedRuntime, pod_netns: str, tmp_path: Path) -> None:
    s = spec(tmp_path, pod_netns, "svc", ["/bin/sh", "-c", "echo ready > /tmp/health; sleep 60"],
             env={"MODE": "probe"}, working_dir="/etc", hostname="svc-0")
    runtime.create_and_start(s)
    wait_until(lambda: runtime.exec(s.id, ["cat", "/tmp/health"], 5)[0] == 0, 10, "health file")
    code, out = runtime.exec(s.id, ["/bin/sh", "-c", "echo $MODE $(pwd) $(hostname); exit 4"], 5)
    assert (code, out) == (4, "probe /etc svc-0\n")
    assert runtime.exec(s.id, ["busybox", "echo", "from-busybox"], 5) == (0, "from-busybox\n")
    began = time.monotonic()
    with pytest.raises(ExecTimeout):
        runtime.exec(s.id, ["sleep", "30"], 0.3)
    assert time.monotonic() - began < 3
    # the overrunning command was killed inside the container, not left behind
    assert runtime.exec(s.id, ["/bin/sh", "-c", "ps -e -o comm= | grep -c sleep"], 5) == (0, "1\n")
    runtime.stop(s.id, 0)
    with pytest.raises(RuntimeFailure):
        runtime.exec(s.id, ["true"], 1)


def test_list_adopts_after_runtime_restart(runtime: ShimmedRuntime, pod_netns: str,
                                           tmp_path: Path) -> None:
    s = spec(tmp_path, pod_netns, "long", ["sleep", "60"])
    first = runtime.create_and_start(s)
    os.makedirs(os.path.join(runtime.root, "someone-else"))  # not ours: never listed
    again = type(runtime)(runtime.root)  # a restarted kubelet's fresh runtime object
    [adopted] = again.list()
    assert (adopted.id, adopted.state, adopted.pid) == (s.id, "running", first.pid)
    assert adopted.labels["io.kubernetes.pod.uid"] == UID
    again.stop(s.id, 0)
    assert runtime.status(s.id).state == "exited"
    again.remove(s.id)
    assert runtime.list() == []
    assert set(os.listdir(runtime.root)) <= {"someone-else", "crun"}  # the foreign dir stays


def test_memory_limit_enforced(runtime: ShimmedRuntime, pod_netns: str, tmp_path: Path) -> None:
    if not cgroups.writable():
        pytest.skip("cgroup fs not writable here: limits are skipped (logged) by design")
    hog = "b = bytearray(200 * 1024 * 1024); print('survived')"
    s = spec(tmp_path, pod_netns, "hog", ["/usr/bin/python3", "-c", hog],
             memory_limit_bytes=64 * 1024 * 1024)
    runtime.create_and_start(s)
    wait_until(lambda: runtime.status(s.id).state == "exited", 20, "hog exit")
    assert runtime.status(s.id).exit_code == 137  # OOM-killed
    ok = spec(tmp_path, pod_netns, "fits", ["/usr/bin/python3", "-c", hog.replace(
        "print('survived')", "print('survived', flush=True); __import__('time').sleep(60)")],
              memory_limit_bytes=512 * 1024 * 1024, cpu_limit_millis=250)
    runtime.create_and_start(ok)
    wait_until(lambda: [m for *_, m in log_lines(ok)] == ["survived"], 20, "200 MiB under 512")
    assert runtime.status(ok.id).state == "running"
    # the CPU limit as a CFS quota: 250 millicores = 25 ms per 100 ms period
    cpu = (f"{cgroups.BASE}/{cgroups.PARENT}/{ok.id}/cpu.max" if cgroups.mode() == "v2"
           else f"{cgroups.BASE}/cpu/{cgroups.PARENT}/{ok.id}/cpu.cfs_quota_us")
    assert Path(cpu).read_text().split()[0] == "25000"


def test_host_network_container(runtime: ShimmedRuntime, tmp_path: Path) -> None:
    """No netns path: the container shares the runtime's network namespace (hostNetwork) and
    gets /sys bound read-only, since sysfs cannot be mounted without owning the netns."""
    s = spec(tmp_path, "", "hostnet", ["/bin/sh", "-c", "cat /sys/class/net/lo/operstate; "
                                       "readlink /proc/1/ns/net"])
    runtime.create_and_start(s)
    wait_until(lambda: runtime.status(s.id).state == "exited", 10, "hostnet exit")
    assert runtime.status(s.id).exit_code == 0
    assert [m for *_, m in log_lines(s)] == ["unknown", os.readlink("/proc/self/ns/net")]


def test_container_outlives_its_shim(runtime: ShimmedRuntime, pod_netns: str,
                                     tmp_path: Path) -> None:
    """A killed shim loses the exit status (255, containerd's "unknown"), not the container."""
    s = spec(tmp_path, pod_netns, "orphan", ["sleep", "60"])
    runtime.create_and_start(s)
    with open(os.path.join(runtime.root, s.id, "shim.pid")) as f:
        shim = json.load(f)
    assert pid_alive(shim)
    os.kill(shim["pid"], signal.SIGKILL)  # the shim this test's runtime started, by its record
    wait_until(lambda: not pid_alive(shim), 5, "shim gone")
    assert runtime.status(s.id).state == "running"
    runtime.stop(s.id, 0)
    info = runtime.status(s.id)
    assert (info.state, info.exit_code) == ("exited", 255)


def test_parallel_stops_of_one_pod(runtime: ShimmedRuntime, pod_netns: str,
                                   tmp_path: Path) -> None:
    """The kubelet stops a pod's containers in parallel threads with one runtime object."""
    specs = [spec(tmp_path, pod_netns, f"c{i}", ["sleep", "60"]) for i in range(4)]
    for s in specs:
        runtime.create_and_start(s)
    threads = [threading.Thread(target=runtime.stop, args=(s.id, 0)) for s in specs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert [(i.state, i.exit_code) for i in runtime.list()] == [("exited", 137)] * 4
