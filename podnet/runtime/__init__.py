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

__all__ = ["DEFAULT_ROOT", "ContainerInfo", "ContainerRuntime", "ContainerSpec", "Mount",
           "RuntimeFailure", "container_id"]
