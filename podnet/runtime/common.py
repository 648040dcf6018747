"""What both real runtimes share: state dirs, the shim that owns stdio and exit codes, and the
start/stop/remove/status life cycle.  Subclasses say how to launch, find, signal and clean up."""

from __future__ import annotations

import builtins
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from podnet.log import get_logger
from podnet.runtime import cgroups
from podnet.runtime.base import (
    DEFAULT_ROOT,
    ContainerInfo,
    ContainerSpec,
    RuntimeFailure,
    StateDir,
    list_ids,
    pid_alive,
)

LOG = get_logger("runtime")
START_TIMEOUT = 15.0
KILL_TIMEOUT = 10.0
# A shim that died without writing exit.json (SIGKILLed, host crash) leaves the exit status
# unknown; containerd reports 255 in that case, and so do we.
UNKNOWN_EXIT = 255
STATE_FILES = ("spec.json", "shim.json", "shim.pid", "child.pid", "init.pid", "started.json",
               "exit.json", "config.json", "shim.log", "container.log")


class ExecTimeout(RuntimeFailure):
    """An exec (probe) did not finish within its timeout."""


# `timeout` exits 124 when it had to stop the command.
TIMED_OUT = 124
# Beyond the in-container deadline, how long we wait for the exec machinery itself.
EXEC_SLACK = 5.0


def timed(argv: list[str], timeout: float) -> list[str]:
    """argv under coreutils' timeout *inside* the container: a probe that overruns is killed
    there (TERM, KILL 0.5 s later) instead of lingering in the container's pid namespace."""
    return ["timeout", "--kill-after=0.5", f"{max(timeout, 0.001):.3f}", *argv]


def exec_result(cid: str, run: Callable[[float], subprocess.CompletedProcess[str]],
                timeout: float) -> tuple[int, str]:
    """Run an exec launcher (given the outer timeout); map a timeout either way to ExecTimeout."""
    try:
        proc = run(timeout + EXEC_SLACK)
    except subprocess.TimeoutExpired as exc:
        raise ExecTimeout(f"exec in {cid} timed out after {timeout}s") from exc
    if proc.returncode == TIMED_OUT:
        raise ExecTimeout(f"exec in {cid} timed out after {timeout}s")
    return proc.returncode, proc.stdout + proc.stderr


class ShimmedRuntime:
    """Container life cycle over `<root>/<id>/` state, one shim process per container."""

    # True when the shim itself must make the container's pid namespace (see shim.py).
    shim_makes_pid_namespace = False

    def __init__(self, root: str = DEFAULT_ROOT) -> None:
        self.root = root
        os.makedirs(root, exist_ok=True)
        self._shims: list[subprocess.Popen[bytes]] = []
        self._shims_lock = threading.Lock()  # stop()s of one pod run in parallel threads

    # ------------------------------------------------------------- subclass hooks
    def _launcher(self, state: StateDir, spec: ContainerSpec) -> list[str]:
        raise NotImplementedError

    def _pid(self, state: StateDir) -> int | None:
        raise NotImplementedError

    def _signal(self, state: StateDir, sig: int) -> None:
        raise NotImplementedError

    def _cleanup(self, state: StateDir) -> None:
        cgroups.remove(state.id)

    # ------------------------------------------------------------------ life cycle
    def create_and_start(self, spec: ContainerSpec) -> ContainerInfo:
        state = StateDir(self.root, spec.id)
        if state.exists():
            raise RuntimeFailure(f"container {spec.id} already exists")
        if spec.netns_path and not os.path.exists(spec.netns_path):
            # A create error (upstream's CreateContainerError), not a container that exits 1.
            raise RuntimeFailure(f"network namespace {spec.netns_path} does not exist")
        os.makedirs(state.path, exist_ok=True)
        if not spec.log_path:
            spec.log_path = state.file("container.log")
        state.write_json("spec.json", spec.to_json())
        state.write_json("shim.json", {"argv": self._launcher(state, spec),
                                       "log_path": spec.log_path,
                                       "new_pid_namespace": self.shim_makes_pid_namespace})
        self._spawn_shim(state)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            info = self.status(spec.id)
            if info.state != "created":
                return info
            time.sleep(0.01)
        raise RuntimeFailure(f"container {spec.id} did not start within {START_TIMEOUT}s")

    def _spawn_shim(self, state: StateDir) -> None:
        """The shim runs in its own session so it survives us (and our process group's signals)."""
        with open(state.file("shim.log"), "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "podnet.runtime.shim", state.path],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, close_fds=True, cwd="/")
        with self._shims_lock:
            self._shims.append(proc)

    def _reap(self) -> None:
        """Collect our exited shims (a long-lived kubelet must not accumulate zombies)."""
        with self._shims_lock:
            self._shims = [p for p in self._shims if p.poll() is None]

    def status(self, container_id: str) -> ContainerInfo:
        self._reap()
        state = StateDir(self.root, container_id)
        spec = state.spec()
        info = ContainerInfo(id=container_id, state="created", labels=spec.labels())
        started = state.read_json("started.json")
        info.started_at = started["started_at"] if started else None
        ended = state.read_json("exit.json")
        if ended:
            info.state, info.exit_code = "exited", ended["exit_code"]
            info.finished_at = ended["finished_at"]
            return info
        shim = state.read_json("shim.pid")
        if shim is None:
            return info  # the shim has not started yet
        info.pid = self._pid(state)
        if info.pid:
            # Running, even if the shim itself died (then nobody logs, but the container runs).
            info.state = "running"
        elif not pid_alive(shim):
            ended = state.read_json("exit.json")  # it may have finished since we looked
            info.state = "exited"
            info.exit_code = ended["exit_code"] if ended else UNKNOWN_EXIT
            info.finished_at = ended["finished_at"] if ended else time.time()
        return info

    def list(self) -> builtins.list[ContainerInfo]:
        out = []
        for cid in list_ids(self.root):
            try:
                out.append(self.status(cid))
            except (RuntimeFailure, FileNotFoundError):
                continue  # removed meanwhile
        return out

    def wait_exited(self, container_id: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.status(container_id).state != "exited":
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def stop(self, container_id: str, grace_seconds: float) -> None:
        """SIGTERM, then SIGKILL once the grace period is over (the kubelet's termination)."""
        state = StateDir(self.root, container_id)
        try:
            if self.status(container_id).state == "exited":
                return
        except RuntimeFailure:
            return  # removed meanwhile: nothing left to stop
        if grace_seconds > 0:
            self._signal(state, signal.SIGTERM)
            if self.wait_exited(container_id, grace_seconds):
                return
        self._signal(state, signal.SIGKILL)
        if not self.wait_exited(container_id, KILL_TIMEOUT):
            raise RuntimeFailure(f"container {container_id} survived SIGKILL")

    def remove(self, container_id: str) -> None:
        """Idempotent, and safe against a concurrent remove of the same container (the kubelet's
        orphan sweep and a pod worker may both get there): whoever loses finds files gone."""
        state = StateDir(self.root, container_id)
        if not os.path.isdir(state.path):
            return
        try:
            if state.exists() and self.status(container_id).state != "exited":
                self.stop(container_id, 0)
            self._cleanup(state)
            _remove_state(state)
        except (FileNotFoundError, RuntimeFailure):
            if os.path.isdir(state.path) and state.exists():
                raise  # not a concurrent removal: something is really wrong


def _remove_state(state: StateDir) -> None:
    """Delete only the files we write and empty dirs: never recurse (a mount could hide there)."""
    for name in (*STATE_FILES, *(n for n in os.listdir(state.path) if n.startswith("."))):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(state.file(name))
    for sub in ("rootfs",):
        if os.path.isdir(state.file(sub)) and not os.path.ismount(state.file(sub)):
            os.rmdir(state.file(sub))
    try:
        os.rmdir(state.path)
    except OSError as exc:
        LOG.warning("state dir %s not removed: %s", state.path, exc)
