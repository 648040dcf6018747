"""Network namespaces: create/delete named ones, and enter one for the current thread.

`enter()` uses setns(2) on the calling thread only: the kernel keeps the network namespace per
thread, so a threaded daemon can serve several pods at once.  Netlink sockets opened inside the
`with` block stay bound to that namespace after it exits, which is how the netlink seam talks to a
pod's namespace without pyroute2's fork-per-netns mode (not thread-safe, and ~10 ms a fork).
Python 3.11 has no os.setns, hence ctypes.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager

from podnet import execs
from podnet.errors import NotFound, PodnetError

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = "/run/netns"

_libc: ctypes.CDLL | None = None


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise PodnetError(f"setns: {os.strerror(err)}")


def path_of(netns: str) -> str:
    """A namespace given by name or path, as a path."""
    return execs.netns_path(netns)


def exists(netns: str) -> bool:
    return os.path.exists(path_of(netns))


@contextmanager
def enter(netns: str | None) -> Iterator[None]:
    """Switch the calling thread into `netns` (name or path) for the block; None means stay."""
    if not netns:
        yield
        return
    try:
        target = os.open(path_of(netns), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise NotFound(f"network namespace {netns} does not exist") from exc
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(target)
        os.close(home)


def create(name: str) -> str:
    """Create the named netns (idempotent) with `lo` up; return its path."""
    path = path_of(name)
    if not os.path.exists(path):
        proc = execs.run(["ip", "netns", "add", name], check=False)
        if proc.returncode != 0 and not os.path.exists(path):
            raise PodnetError(f"ip netns add {name}: {proc.stderr.strip()}")
    execs.run(["ip", "-n", name, "link", "set", "lo", "up"])
    return path


def delete(name: str) -> None:
    """Delete the named netns; succeeds when it is already gone."""
    if not os.path.exists(path_of(name)):
        return
    proc = execs.run(["ip", "netns", "delete", name], check=False)
    if proc.returncode != 0 and os.path.exists(path_of(name)):
        raise PodnetError(f"ip netns delete {name}: {proc.stderr.strip()}")


def is_own_netns(netns: str) -> bool:
    """True when `netns` is the namespace this thread is in (skel's code-8 check)."""
    try:
        there = os.stat(path_of(netns))
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    here = os.stat("/proc/thread-self/ns/net")
    return (there.st_dev, there.st_ino) == (here.st_dev, here.st_ino)
