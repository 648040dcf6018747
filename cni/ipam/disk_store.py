"""The on-disk Store, file-for-file compatible with the reference host-local plugin.

Layout (reference plugins/ipam/host-local/backend/disk): `<dataDir>/<network>/` holds
  - `<ip>`: one file per reservation, created O_EXCL, content `<containerID>\\r\\n<ifname>`
    (files from before CNI 0.7 hold the container ID only);
  - `last_reserved_ip.<rangeSetIndex>`: the last address handed out of that set (round robin);
  - `lock`: flock(2)ed exclusively around every operation, by us and by the Go plugin alike.
A reference host-local can therefore release what we allocated and vice versa, and both may run
concurrently on one node.  We add no index file: the Go plugin walks the directory and reads
every file, so anything extra in it would be matched against its release keys.

Errors are CniError(IO_FAILURE) naming the path.  The flock is released by the kernel when the
descriptor closes, so a plugin killed with SIGKILL never leaves the network locked.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from cni import skel
from cni.ipam.allocator import Owner
from cni.ipam.config import IP

LAST_RESERVED_PREFIX = "last_reserved_ip."
LOCK_FILE = "lock"
LINE_BREAK = "\r\n"  # the reference's separator between container ID and ifname


def _io_error(exc: OSError, what: str) -> skel.CniError:
    return skel.CniError(skel.IO_FAILURE, f"host-local: {what}: {exc.strerror or exc}")


def encode_owner(owner: Owner) -> bytes:
    if owner.ifname is None:
        return owner.container_id.strip().encode()
    return (owner.container_id.strip() + LINE_BREAK + owner.ifname).encode()


def decode_owner(data: bytes) -> Owner:
    """File content -> Owner; whitespace is trimmed as Go's strings.TrimSpace does."""
    text = data.decode(errors="replace").strip()
    container_id, sep, ifname = text.partition(LINE_BREAK)
    return Owner(container_id, ifname if sep else None)


def _ip_of(name: str) -> IP | None:
    if name == LOCK_FILE or name.startswith(LAST_RESERVED_PREFIX):
        return None
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


class DiskStore:
    """Reservations of network `network` under `data_dir`."""

    def __init__(self, data_dir: str, network: str) -> None:
        self.dir = os.path.join(data_dir, network)

    def exists(self) -> bool:
        return os.path.isdir(self.dir)

    def ensure_dir(self) -> None:
        try:
            os.makedirs(self.dir, mode=0o755, exist_ok=True)
        except OSError as exc:
            raise _io_error(exc, f"creating {self.dir}") from None

    def ensure_writable(self) -> None:
        """For STATUS: the directory exists, is writable and not on a read-only mount."""
        self.ensure_dir()
        try:
            read_only = os.statvfs(self.dir).f_flag & os.ST_RDONLY
        except OSError as exc:
            raise _io_error(exc, f"statvfs {self.dir}") from None
        if read_only or not os.access(self.dir, os.W_OK):
            raise _io_error(OSError(errno.EROFS if read_only else errno.EACCES,
                                    "read-only file system" if read_only else "permission denied"),
                            f"{self.dir} is not writable")

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Exclusive flock on `<dir>/lock`, the reference's lock (go-filemutex is flock too).
        A new descriptor per hold, so threads of one process exclude each other as well."""
        self.ensure_dir()
        path = os.path.join(self.dir, LOCK_FILE)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise _io_error(exc, f"opening {path}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # drops the flock

    def held(self) -> dict[IP, Owner]:
        out: dict[IP, Owner] = {}
        try:
            with os.scandir(self.dir) as entries:
                for entry in entries:
                    ip = _ip_of(entry.name)
                    if ip is not None and entry.is_file(follow_symlinks=False):
                        owner = self._read_owner(entry.path)
                        if owner is not None:
                            out[ip] = owner
        except OSError as exc:
            raise _io_error(exc, f"listing {self.dir}") from None
        return out

    def _read_owner(self, path: str) -> Owner | None:
        try:
            with open(path, "rb") as f:
                return decode_owner(f.read())
        except FileNotFoundError:
            return None  # released by a writer that does not lock (none known); not held
        except OSError as exc:
            raise _io_error(exc, f"reading {path}") from None

    def reserve(self, ip: IP, owner: Owner, set_index: int) -> bool:
        path = os.path.join(self.dir, str(ip))
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            return False
        except OSError as exc:
            raise _io_error(exc, f"creating {path}") from None
        try:
            _write_all(fd, encode_owner(owner))
        except OSError as exc:
            os.close(fd)
            _unlink(path)
            raise _io_error(exc, f"writing {path}") from None
        os.close(fd)
        self._remember_last(ip, set_index)
        return True

    def _remember_last(self, ip: IP, set_index: int) -> None:
        path = os.path.join(self.dir, f"{LAST_RESERVED_PREFIX}{set_index}")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                _write_all(fd, str(ip).encode())
            finally:
                os.close(fd)
        except OSError as exc:
            raise _io_error(exc, f"writing {path}") from None

    def release(self, ip: IP) -> None:
        path = os.path.join(self.dir, str(ip))
        try:
            _unlink(path)
        except OSError as exc:
            raise _io_error(exc, f"removing {path}") from None

    def last_reserved(self, set_index: int) -> IP | None:
        """A missing or torn file (writer killed mid-write) only costs round robin once."""
        path = os.path.join(self.dir, f"{LAST_RESERVED_PREFIX}{set_index}")
        try:
            with open(path, "rb") as f:
                return ipaddress.ip_address(f.read().decode(errors="replace").strip())
        except (OSError, ValueError):
            return None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _unlink(path: str) -> None:
    with suppress(FileNotFoundError):  # already gone is released
        os.unlink(path)
