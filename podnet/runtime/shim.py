"""The per-container shim (`python -m podnet.runtime.shim <state dir>`), like containerd's shim.

It runs in its own session so it outlives the kubelet that started it: it owns the container's
stdout/stderr pipes and writes them to the log file in the CRI format, and it is the parent that
reaps the container's launcher (`crun run` or nsenter+unshare), so the exit code survives in
exit.json after the kubelet restarts.  Reads shim.json
{"argv", "log_path", "new_pid_namespace"} from the state dir.
"""

from __future__ import annotations

import ctypes
import os
import selectors
import subprocess
import sys
import time
from typing import IO

from podnet.runtime.base import MAX_LOG_LINE, StateDir, cri_records, pid_record

# Writers of a still-open pipe (a daemon the container left behind) must not keep exit.json
# from being written forever once the main process is gone.
DRAIN_SECONDS = 2.0
CLONE_NEWPID = 0x20000000


def exit_code_of(returncode: int) -> int:
    """A signal death as shells and container runtimes report it: 128 + signal number."""
    return 128 - returncode if returncode < 0 else returncode


class LineSplitter:
    """Bytes of one stream in, CRI records out: whole lines, or MAX_LOG_LINE-sized partials."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.buf = b""

    def feed(self, data: bytes) -> bytes:
        self.buf += data
        out: list[bytes] = []
        while True:
            nl = self.buf.find(b"\n", 0, MAX_LOG_LINE)
            if nl < 0 and len(self.buf) < MAX_LOG_LINE:
                return b"".join(out)
            cut = nl + 1 if nl >= 0 else MAX_LOG_LINE
            out.append(cri_records(self.stream, self.buf[:cut]))
            self.buf = self.buf[cut:]

    def flush(self) -> bytes:
        rest, self.buf = self.buf, b""
        return cri_records(self.stream, rest) if rest else b""


def pump(proc: subprocess.Popen[bytes], log: IO[bytes]) -> int:
    """Copy the child's stdout/stderr into `log` until both close (or DRAIN_SECONDS after it
    exited); one thread only, since a process that unshared its pid namespace cannot clone
    threads.  Returns the child's return code."""
    assert proc.stdout is not None and proc.stderr is not None
    sel = selectors.DefaultSelector()
    for name, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr)):
        sel.register(pipe, selectors.EVENT_READ, LineSplitter(name))
    drain_until: float | None = None
    while sel.get_map() and (drain_until is None or time.monotonic() < drain_until):
        for key, _ in sel.select(timeout=0.2):
            data = os.read(key.fd, 65536)
            splitter: LineSplitter = key.data
            if not data:
                log.write(splitter.flush())
                sel.unregister(key.fileobj)
            else:
                log.write(splitter.feed(data))
            log.flush()
        if drain_until is None and proc.poll() is not None:
            drain_until = time.monotonic() + DRAIN_SECONDS
    return proc.wait()


def unshare_pid_namespace() -> None:
    """Make our next child PID 1 of a new pid namespace (the ProcessRuntime's containers).

    We fork the container's init ourselves instead of `unshare --fork`, so its real wait status
    reaches us: util-linux 2.38's unshare turns a signal death of its child into exit code 1.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWPID) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWPID)")


def run(state_path: str) -> int:
    root, cid = os.path.split(state_path.rstrip("/"))
    state = StateDir(root, cid)
    conf = state.read_json("shim.json")
    state.write_json("shim.pid", pid_record(os.getpid()))
    if conf.get("new_pid_namespace"):
        unshare_pid_namespace()  # before any thread exists
    with open(conf["log_path"], "ab") as log:
        proc = subprocess.Popen(conf["argv"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        state.write_json("child.pid", pid_record(proc.pid))
        state.write_json("started.json", {"started_at": time.time()})
        returncode = pump(proc, log)
    state.write_json("exit.json", {"exit_code": exit_code_of(returncode),
                                   "finished_at": time.time()})
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1]))
