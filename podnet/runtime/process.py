"""ProcessRuntime: containers as plain processes, for hosts without crun.

The shim makes a new pid namespace and forks the launcher as its PID 1:
`nsenter --net=<pod netns> unshare --mount --uts --ipc` execs a short sh prelude that, inside the
new namespaces, sets the hostname, joins the container's cgroups, builds the root (an overlay of
the host's "/" with a tmpfs upper layer) with its own /proc, a private /tmp and the volumes
mounted into it, makes it read-only and chroots there, then execs the command with exactly the
spec's environment.
"""

from __future__ import annotations

import contextlib
import os
import shlex

from podnet import execs
from podnet.runtime import cgroups
from podnet.runtime.base import (
    ContainerSpec,
    RuntimeFailure,
    StateDir,
    pid_alive,
    root_layer_script,
)
from podnet.runtime.common import ShimmedRuntime, exec_result, timed

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def container_env(spec: ContainerSpec) -> dict[str, str]:
    """The spec's environment, with a PATH and HOSTNAME as an image's config would give them."""
    return {"PATH": DEFAULT_PATH, "HOSTNAME": spec.hostname or spec.pod_name, **spec.env}


def prelude(spec: ContainerSpec, rootfs: str, cgroup_dirs: list[str]) -> str:
    """The sh script run as the new pid namespace's init before it execs the command ("$@").

    The root is built at `<rootfs>/root` inside the container's private mount namespace (see
    root_layer_script), so volume sources stay reachable at their host paths while the
    container's own /dev, /proc, /sys, /tmp and volumes are mounted into the new root; then it
    is made read-only and chrooted into.
    """
    q = shlex.quote
    r = rootfs.rstrip("/") + "/root"
    lines = ["set -e", f"hostname {q(spec.hostname or spec.pod_name)}"]
    lines += [f"echo $$ > {q(os.path.join(d, 'cgroup.procs'))}" for d in cgroup_dirs]
    lines += root_layer_script(rootfs.rstrip("/"))
    lines += [f"mount --rbind /dev {q(r + '/dev')}", f"mount -t proc proc {q(r + '/proc')}",
              f"mount --rbind /sys {q(r + '/sys')}", f"mount -o remount,bind,ro {q(r + '/sys')}",
              f"mount -t tmpfs -o mode=1777,nosuid podnet-tmp {q(r + '/tmp')}"]
    for m in spec.mounts:
        target = q(r + "/" + m.container_path.lstrip("/"))
        if os.path.isdir(m.host_path) or not os.path.exists(m.host_path):
            lines.append(f"mkdir -p {target}")
        else:  # a file (resolv.conf, a hostPath File): bind it onto a file
            lines.append(f"mkdir -p {q(os.path.dirname(r + '/' + m.container_path.lstrip('/')))}")
            lines.append(f"[ -e {target} ] || touch {target}")
        lines.append(f"mount --rbind {q(m.host_path)} {target}")
        if m.read_only:
            lines.append(f"mount -o remount,bind,ro {target}")
    lines.append(f"mount -o remount,bind,ro {q(r)}")
    env = " ".join(q(f"{k}={v}") for k, v in container_env(spec).items())
    inner = f'cd {q(spec.working_dir or "/")} && exec env -i {env} "$@"'
    lines.append(f'exec chroot {q(r)} /bin/sh -c {q(inner)} sh "$@"')
    return "\n".join(lines)


def launcher(spec: ContainerSpec, rootfs: str, cgroup_dirs: list[str]) -> list[str]:
    net = ["nsenter", f"--net={spec.netns_path}", "--"] if spec.netns_path else []
    return [*net, "unshare", "--mount", "--uts", "--ipc", "--",
            "/bin/sh", "-c", prelude(spec, rootfs, cgroup_dirs), "sh", *spec.argv]


class ProcessRuntime(ShimmedRuntime):
    shim_makes_pid_namespace = True

    def _launcher(self, state: StateDir, spec: ContainerSpec) -> list[str]:
        dirs = cgroups.create(spec.id, spec.memory_limit_bytes, spec.cpu_limit_millis)
        os.makedirs(state.file("rootfs"), exist_ok=True)
        return launcher(spec, state.file("rootfs"), dirs)

    def _pid(self, state: StateDir) -> int | None:
        """The container's init: the shim's child, PID 1 of its own pid namespace."""
        child = state.read_json("child.pid")
        return int(child["pid"]) if child and pid_alive(child) else None

    def _signal(self, state: StateDir, sig: int) -> None:
        """Signal the recorded init PID only after checking it is still the same process."""
        pid = self._pid(state)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def exec(self, container_id: str, argv: list[str], timeout: float) -> tuple[int, str]:
        """Run argv in all of the container's namespaces, root and cwd (an exec probe)."""
        state = StateDir(self.root, container_id)
        spec = state.spec()
        pid = self._pid(state)
        if pid is None:
            raise RuntimeFailure(f"container {container_id} is not running")
        env = [f"{k}={v}" for k, v in container_env(spec).items()]
        full = ["nsenter", "-t", str(pid), "--net", "--pid", "--mount", "--uts", "--ipc",
                "--root", "--wd", "--", "env", "-i", *env, *timed(argv, timeout)]
        return exec_result(container_id, lambda t: execs.run(full, check=False, timeout=t),
                           timeout)
