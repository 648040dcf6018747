"""Resource limits through a podnet-owned cgroup subtree (`podnet/<container id>`).

cgroup v2 (unified at /sys/fs/cgroup): one directory, memory.max and cpu.max.  cgroup v1 or
hybrid hosts: a directory per controller (memory.limit_in_bytes, cpu.cfs_quota_us), the limits
upstream's kubelet sets for a container's memory and CPU limits.  When the cgroup fs is read-only
or lacks the controller, limits are skipped with one log line: a container still runs.
"""

from __future__ import annotations

import errno
import os

from podnet.log import get_logger

LOG = get_logger("runtime.cgroups")
BASE = "/sys/fs/cgroup"
PARENT = "podnet"
CFS_PERIOD_US = 100_000  # upstream's default CFS period; quota = millicores * period / 1000


def mode(base: str = BASE) -> str | None:
    """"v2" (unified), "hybrid" (v1 controllers plus a unified mount), "v1", or None."""
    if os.path.exists(os.path.join(base, "cgroup.controllers")):
        return "v2"
    if not os.path.isdir(os.path.join(base, "memory")):
        return None
    unified = os.path.join(base, "unified", "cgroup.controllers")
    return "hybrid" if os.path.exists(unified) else "v1"


def hybrid_with_controllers(base: str = BASE) -> bool:
    """crun refuses hybrid hosts whose unified hierarchy has controllers enabled."""
    try:
        with open(os.path.join(base, "unified", "cgroup.controllers")) as f:
            return bool(f.read().split())
    except OSError:
        return False


def _limit_files(cid: str, memory: int | None, cpu_millis: int | None,
                 base: str) -> dict[str, dict[str, str]]:
    """{cgroup dir: {file: value}} for the host's cgroup version (pure apart from mode())."""
    quota = cpu_millis * CFS_PERIOD_US // 1000 if cpu_millis else None
    if mode(base) == "v2":
        files: dict[str, str] = {}
        if memory:
            files["memory.max"] = str(memory)
        if quota:
            files["cpu.max"] = f"{quota} {CFS_PERIOD_US}"
        return {os.path.join(base, PARENT, cid): files} if files else {}
    out: dict[str, dict[str, str]] = {}
    if memory:
        out[os.path.join(base, "memory", PARENT, cid)] = {"memory.limit_in_bytes": str(memory)}
    if quota:
        out[os.path.join(base, "cpu", PARENT, cid)] = {
            "cpu.cfs_period_us": str(CFS_PERIOD_US), "cpu.cfs_quota_us": str(quota)}
    return out


def writable(base: str = BASE) -> bool:
    """Whether we may create our subtree (probing by creating the `podnet` parent itself)."""
    m = mode(base)
    if m is None:
        return False
    parent = os.path.join(base, PARENT) if m == "v2" else os.path.join(base, "memory", PARENT)
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError:
        return False
    return True


def create(cid: str, memory: int | None, cpu_millis: int | None,
           base: str = BASE) -> list[str]:
    """Create the container's cgroups with limits; the dirs whose cgroup.procs it must join."""
    plan = _limit_files(cid, memory, cpu_millis, base)
    if not plan:
        return []
    if not writable(base):
        LOG.info("cgroup fs at %s not writable: limits of %s skipped", base, cid)
        return []
    joined: list[str] = []
    for path, files in plan.items():
        try:
            if mode(base) == "v2":
                _enable_v2_controllers(base)
            os.makedirs(path, exist_ok=True)
            for name, value in files.items():
                with open(os.path.join(path, name), "w") as f:
                    f.write(value)
            joined.append(path)
        except OSError as exc:
            LOG.info("cgroup limit %s for %s skipped: %s", path, cid, exc)
    return joined


def _enable_v2_controllers(base: str) -> None:
    """Delegate memory and cpu to our children (the root must already offer them)."""
    with open(os.path.join(base, PARENT, "cgroup.subtree_control"), "w") as f:
        f.write("+memory +cpu")


def remove(cid: str, base: str = BASE) -> None:
    """Remove the container's cgroups (empty once its processes are gone); missing is fine."""
    for sub in ("", "memory", "cpu"):
        path = os.path.join(base, sub, PARENT, cid) if sub else os.path.join(base, PARENT, cid)
        try:
            os.rmdir(path)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                LOG.info("cgroup %s not removed: %s", path, exc)
