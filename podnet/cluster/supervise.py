"""Daemons started inside a namespace, detached from `podnet up`, stopped only by recorded PID."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from podnet import netns as netns_mod
from podnet.cluster.manifest import Manifest, ProcRecord, is_alive, start_ticks


def component(script: str, module: str) -> list[str]:
    """The installed console script next to this interpreter, else `python -m module`."""
    path = Path(sys.executable).parent / script
    return [str(path)] if path.exists() else [sys.executable, "-m", module]


def spawn(manifest: Manifest, name: str, argv: list[str], log: Path, *, netns: str | None = None,
          env: dict[str, str] | None = None, cwd: str | None = None) -> ProcRecord:
    """Start `argv` in `netns` (nsenter without --fork execs the daemon, so the PID recorded is the
    daemon's own), in its own session so it outlives `podnet up` and a terminal's ^C."""
    log.parent.mkdir(parents=True, exist_ok=True)
    full = ["nsenter", f"--net={netns_mod.path_of(netns)}", "--", *argv] if netns else argv
    with open(log, "ab") as out:
        proc = subprocess.Popen(full, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=cwd,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    ticks = start_ticks(proc.pid)
    rec = ProcRecord(name=name, pid=proc.pid, start_ticks=ticks or 0, argv=full, log=str(log),
                     netns=netns)
    manifest.add_process(rec)
    return rec


def stop(rec: ProcRecord, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace`; only while the PID is still the process we started."""
    if not is_alive(rec):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(rec.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap(rec.pid)
        if not is_alive(rec):
            return
        time.sleep(0.05)
    if is_alive(rec):
        with contextlib.suppress(ProcessLookupError):
            os.kill(rec.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while is_alive(rec) and time.monotonic() < deadline:
        _reap(rec.pid)
        time.sleep(0.05)


def _reap(pid: int) -> None:
    """Collect the exit status when the daemon is our child (same `podnet up` process)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
