"""Container runtimes for the kubelet: crun (OCI) when installed, plain namespaced processes
otherwise, and an in-memory fake for unit tests.  See base.py for the seam."""

from __future__ import annotations

from podnet.runtime.base import (
    DEFAULT_ROOT,
    ContainerInfo,
    ContainerRuntime,
    ContainerSpec,
    Mount,
    RuntimeFailure,
    container_id,
)


def new_runtime(kind: str = "auto", root: str = DEFAULT_ROOT) -> ContainerRuntime:
    """"crun", "process", or "auto" (crun when installed, else plain processes)."""
    from podnet.runtime import crun, process

    if kind == "crun" or (kind == "auto" and crun.available()):
        return crun.CrunRuntime(root)
    if kind in ("process", "auto"):
        return process.ProcessRuntime(root)
    raise ValueError(f"unknown container runtime {kind!r} (crun, process, auto)")


__all__ = ["DEFAULT_ROOT", "ContainerInfo", "ContainerRuntime", "ContainerSpec", "Mount",
           "RuntimeFailure", "container_id", "new_runtime"]
