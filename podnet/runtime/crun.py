"""CrunRuntime: OCI containers run by crun, state under `<root>/crun`.

The bundle is the container's state dir: config.json asks for new pid/mount/uts/ipc namespaces,
joins the pod's network namespace by path, and uses the host's filesystem read-only as the
rootfs (an overlay of "/" built at `<state>/rootfs/root` inside a private mount namespace of the
launcher: pivot_root cannot pivot onto "/" itself, and mount points land in the overlay).  The
shim runs `crun run` in the foreground, so crun's exit code is the container's and it reaches
exit.json.

Hybrid cgroup hosts: crun refuses a unified hierarchy with controllers enabled, so every crun
call runs in a private mount namespace with an empty tmpfs over /sys/fs/cgroup/unified; crun then
manages the v1 controllers under `/podnet/<id>`.  Nothing changes in the host's mount table.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

from podnet import execs
from podnet.runtime import cgroups
from podnet.runtime.base import (
    DEFAULT_ROOT,
    ContainerSpec,
    RuntimeFailure,
    StateDir,
    pid_alive,
    pid_record,
    root_layer_script,
)
from podnet.runtime.common import LOG, ShimmedRuntime, exec_result, timed
from podnet.runtime.process import container_env

SYSFS = {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]}
# sysfs can only be mounted by the owner of the network namespace: a host-network container
# gets the host's /sys bound read-only instead, as runc/containerd do for hostNetwork pods.
HOST_SYS = {"destination": "/sys", "type": "bind", "source": "/sys",
            "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]}
# Docker's/containerd's default capability set for a non-privileged container.
DEFAULT_CAPS = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
                "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
                "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]
BASE_MOUNTS: list[dict[str, Any]] = [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
     "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
     "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
     "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
     "options": ["nosuid", "noexec", "nodev"]},
    # The rootfs is read-only; an image's writable layer would give /tmp, a tmpfs does here.
    {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
     "options": ["nosuid", "nodev", "mode=1777"]},
]


def available() -> bool:
    return shutil.which("crun") is not None


def oci_config(spec: ContainerSpec, rootfs: str, cgroup_path: str | None) -> dict[str, Any]:
    """The OCI runtime config for `spec` (pure: table-testable)."""
    namespaces: list[dict[str, str]] = [{"type": t} for t in ("pid", "ipc", "uts", "mount")]
    if spec.netns_path:
        namespaces.append({"type": "network", "path": spec.netns_path})
    caps = list(DEFAULT_CAPS)
    linux: dict[str, Any] = {
        "namespaces": namespaces,
        "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
        "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
    }
    if cgroup_path:
        linux["cgroupsPath"] = cgroup_path
        linux["resources"] = resources(spec)
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": False, "user": {"uid": 0, "gid": 0}, "args": list(spec.argv),
            "env": [f"{k}={v}" for k, v in container_env(spec).items()],
            "cwd": spec.working_dir or "/",
            "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
        },
        "root": {"path": rootfs, "readonly": True},
        "hostname": spec.hostname or spec.pod_name,
        "mounts": [*BASE_MOUNTS, SYSFS if spec.netns_path else HOST_SYS, *(
            {"destination": m.container_path, "type": "bind", "source": m.host_path,
             "options": ["rbind", "ro" if m.read_only else "rw"]} for m in spec.mounts)],
        "linux": linux,
    }


def resources(spec: ContainerSpec) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if spec.memory_limit_bytes:
        out["memory"] = {"limit": spec.memory_limit_bytes}
    if spec.cpu_limit_millis:
        out["cpu"] = {"quota": spec.cpu_limit_millis * cgroups.CFS_PERIOD_US // 1000,
                      "period": cgroups.CFS_PERIOD_US}
    return out


class CrunRuntime(ShimmedRuntime):
    def __init__(self, root: str = DEFAULT_ROOT, crun: str = "crun") -> None:
        super().__init__(root)
        self.crun = crun
        self.crun_root = f"{root}/crun"
        self.hide_unified = cgroups.hybrid_with_controllers()
        self.use_cgroups = cgroups.writable()
        if not self.use_cgroups:
            LOG.info("cgroup fs not writable: crun runs containers without resource limits")

    def _wrap(self, argv: list[str], setup: str = "") -> list[str]:
        """argv in a private mount namespace prepared by `setup` (sh) if anything needs one."""
        steps = [s for s in ("mount -t tmpfs podnet-nocg /sys/fs/cgroup/unified"
                             if self.hide_unified else "", setup) if s]
        if not steps:
            return argv
        script = " && ".join([*steps, 'exec "$@"'])
        return ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script,
                "sh", *argv]

    def _crun_argv(self, *args: str) -> list[str]:
        manager = "cgroupfs" if self.use_cgroups else "disabled"
        return [self.crun, "--root", self.crun_root, f"--cgroup-manager={manager}", *args]

    def _crun(self, *args: str) -> list[str]:
        return self._wrap(self._crun_argv(*args))

    def _launcher(self, state: StateDir, spec: ContainerSpec) -> list[str]:
        layer = state.file("rootfs")
        os.makedirs(layer, exist_ok=True)
        cg = f"/{cgroups.PARENT}/{spec.id}" if self.use_cgroups else None
        state.write_json("config.json", oci_config(spec, f"{layer}/root", cg))
        # The wrapper's private mount namespace is where the root layer lives: the host never
        # sees anything mounted under the state dir.
        setup = " && ".join(root_layer_script(layer))
        return self._wrap(self._crun_argv("run", "--bundle", state.path, spec.id), setup)

    def _pid(self, state: StateDir) -> int | None:
        """The container's init PID; asked of crun once, then pinned by its start time."""
        rec = state.read_json("init.pid")
        if rec:
            return int(rec["pid"]) if pid_alive(rec) else None
        proc = execs.run(self._crun("state", state.id), check=False, timeout=10)
        if proc.returncode != 0:
            return None
        data = json.loads(proc.stdout)
        if data.get("status") != "running" or not data.get("pid"):
            return None
        state.write_json("init.pid", pid_record(int(data["pid"])))
        return int(data["pid"])

    def _signal(self, state: StateDir, sig: int) -> None:
        execs.run(self._crun("kill", state.id, str(sig)), check=False, timeout=10)

    def _cleanup(self, state: StateDir) -> None:
        execs.run(self._crun("delete", "--force", state.id), check=False, timeout=10)
        super()._cleanup(state)

    def exec(self, container_id: str, argv: list[str], timeout: float) -> tuple[int, str]:
        state = StateDir(self.root, container_id)
        spec = state.spec()
        if self._pid(state) is None:
            raise RuntimeFailure(f"container {container_id} is not running")
        env = [a for k, v in container_env(spec).items() for a in ("--env", f"{k}={v}")]
        cmd = self._crun("exec", "--cwd", spec.working_dir or "/", *env, container_id,
                         *timed(argv, timeout))
        return exec_result(container_id, lambda t: execs.run(cmd, check=False, timeout=t),
                           timeout)
