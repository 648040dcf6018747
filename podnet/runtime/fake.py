"""FakeRuntime: an in-memory ContainerRuntime for unit tests of the kubelet (no processes).

Tests drive it: `exit(id, code)` makes a running container exit, `exec_results` scripts exec
probe answers, `fail_start` makes create_and_start raise for a container name.  Every call is
recorded in `calls` so a test can assert on what the kubelet asked for.
"""

from __future__ import annotations

import builtins
import time
from dataclasses import replace

from podnet.runtime.base import ContainerInfo, ContainerSpec, RuntimeFailure


class FakeRuntime:
    def __init__(self) -> None:
        self.specs: dict[str, ContainerSpec] = {}
        self.infos: dict[str, ContainerInfo] = {}
        self.calls: list[tuple[str, str]] = []
        self.exec_results: dict[tuple[str, tuple[str, ...]], tuple[int, str]] = {}
        self.fail_start: set[str] = set()
        self.stop_graces: dict[str, float] = {}
        self._next_pid = 1000

    def create_and_start(self, spec: ContainerSpec) -> ContainerInfo:
        self.calls.append(("create_and_start", spec.id))
        if spec.name in self.fail_start:
            raise RuntimeFailure(f"fake: start of {spec.name} fails")
        if spec.id in self.infos:
            raise RuntimeFailure(f"container {spec.id} already exists")
        self._next_pid += 1
        info = ContainerInfo(id=spec.id, state="running", pid=self._next_pid,
                             started_at=time.time(), labels=spec.labels())
        self.specs[spec.id] = spec
        self.infos[spec.id] = info
        return replace(info)

    def exit(self, container_id: str, code: int) -> None:
        """Test hook: the container's process ends with `code`."""
        info = self._get(container_id)
        if info.state == "running":
            info.state, info.exit_code, info.pid = "exited", code, None
            info.finished_at = time.time()

    def stop(self, container_id: str, grace_seconds: float) -> None:
        self.calls.append(("stop", container_id))
        self.stop_graces[container_id] = grace_seconds
        self.exit(container_id, 143)  # SIGTERM honoured: 128 + 15

    def remove(self, container_id: str) -> None:
        self.calls.append(("remove", container_id))
        self.infos.pop(container_id, None)
        self.specs.pop(container_id, None)

    def status(self, container_id: str) -> ContainerInfo:
        return replace(self._get(container_id))

    def list(self) -> list[ContainerInfo]:
        return [replace(i) for _, i in sorted(self.infos.items())]

    def exec(self, container_id: str, argv: builtins.list[str], timeout: float) -> tuple[int, str]:
        self.calls.append(("exec", container_id))
        if self._get(container_id).state != "running":
            raise RuntimeFailure(f"container {container_id} is not running")
        return self.exec_results.get((container_id, tuple(argv)), (0, ""))

    def _get(self, container_id: str) -> ContainerInfo:
        try:
            return self.infos[container_id]
        except KeyError:
            raise RuntimeFailure(f"container {container_id} not found") from None
