"""Per-attachment state: what an ADD did, so DEL, CHECK and GC never depend on the pod's netns.

One JSON file per (network, containerID, ifname) under `<stateDir>/<network>/`.  The record is
written *before* the first resource is acquired (a write-ahead record, `complete` false) and
updated as resources are acquired, so an ADD killed half-way (kill -9, node crash) leaves a
record that the runtime's DEL or a later GC can undo: the reference bridge derives what to undo
from the netns and leaks its ipMasq rules when the netns is gone (plugins#810).

Writes are atomic (temporary file + rename) but not fsync'd: the things recorded (veths, pod
addresses) do not survive a power loss either, and a torn or empty file still names its
attachment through the file name, which is all DEL and GC need to find the deterministic names.

Also here: `Undo`, the compensation stack of one ADD.  Stdlib only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Any

DEFAULT_STATE_DIR = "/var/lib/cni/podnet"
_SUFFIX = ".json"
_SEP = ":"  # neither a container ID nor an interface name may contain ':'


@dataclass
class Attachment:
    """What one (containerID, ifname) attachment owns."""

    container_id: str
    ifname: str
    netns: str = ""
    host_iface: str = ""  # host-side interface (deterministic, see podnet.names)
    ips: list[str] = field(default_factory=list)  # container CIDRs from IPAM
    complete: bool = False  # ADD finished; False = a write-ahead record of an ADD in progress
    result: dict[str, Any] | None = None  # the ADD result (1.1.0 shape)
    extra: dict[str, Any] = field(default_factory=dict)  # plugin-specific (bridge name, masq, ...)

    @property
    def key(self) -> tuple[str, str]:
        return (self.container_id, self.ifname)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Attachment:
        return cls(
            container_id=str(data["container_id"]),
            ifname=str(data["ifname"]),
            netns=str(data.get("netns") or ""),
            host_iface=str(data.get("host_iface") or ""),
            ips=[str(ip) for ip in data.get("ips") or []],
            complete=bool(data.get("complete")),
            result=data.get("result") if isinstance(data.get("result"), dict) else None,
            extra=dict(data.get("extra") or {}),
        )


def file_name(container_id: str, ifname: str) -> str:
    return f"{container_id}{_SEP}{ifname}{_SUFFIX}"


def parse_file_name(name: str) -> tuple[str, str] | None:
    """(containerID, ifname) from a record's file name; None for anything else (temp files)."""
    if name.startswith(".") or not name.endswith(_SUFFIX):
        return None
    cid, sep, ifname = name[: -len(_SUFFIX)].partition(_SEP)
    return (cid, ifname) if sep and cid and ifname else None


class Store:
    """The records of one network.  Operations on one key are not concurrent (CNI lifecycle:
    no parallel operations for one container; GC is exclusive with ADD and DEL)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    @classmethod
    def for_network(cls, state_dir: str | None, network: str) -> Store:
        return cls(os.path.join(state_dir or DEFAULT_STATE_DIR, network))

    def path(self, container_id: str, ifname: str) -> str:
        return os.path.join(self.directory, file_name(container_id, ifname))

    def get(self, container_id: str, ifname: str) -> Attachment | None:
        """The record, None when absent; a record whose file is unreadable comes back with only
        its key (DEL/GC can still recompute every deterministic name from it)."""
        path = self.path(container_id, ifname)
        try:
            with open(path) as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        return _decode(raw, container_id, ifname)

    def exists(self, container_id: str, ifname: str) -> bool:
        return os.path.exists(self.path(container_id, ifname))

    def put(self, att: Attachment) -> None:
        """Write the record atomically: a reader sees the old or the new record, never half."""
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        target = self.path(att.container_id, att.ifname)
        tmp = os.path.join(self.directory, f".{os.path.basename(target)}.tmp.{os.getpid()}")
        with open(tmp, "w") as f:
            json.dump(att.to_json(), f, separators=(",", ":"))
        os.replace(tmp, target)

    def remove(self, container_id: str, ifname: str) -> bool:
        """Drop the record; False (not an error) when it is already gone."""
        try:
            os.unlink(self.path(container_id, ifname))
        except FileNotFoundError:
            return False
        return True

    def records(self) -> list[Attachment]:
        """Every record of the network (complete or not), sorted by key."""
        out = []
        for name in self._names():
            key = parse_file_name(name)
            if key is None:
                continue
            att = self.get(*key)
            if att is not None:
                out.append(att)
        return sorted(out, key=lambda a: a.key)

    def remove_stale_temp_files(self) -> int:
        """Temp files left by a writer killed between write and rename (GC only: it is
        exclusive with ADD and DEL, so no writer is active)."""
        removed = 0
        for name in self._names():
            if name.startswith(".") and ".tmp." in name:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.directory, name))
                    removed += 1
        return removed

    def _names(self) -> list[str]:
        try:
            return sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return []


def _decode(raw: str, container_id: str, ifname: str) -> Attachment:
    try:
        data = json.loads(raw)
        att = Attachment.from_json(data)
    except (ValueError, KeyError, TypeError, AttributeError):
        return Attachment(container_id=container_id, ifname=ifname)
    if att.key != (container_id, ifname):  # a record copied under another name: trust the name
        return Attachment(container_id=container_id, ifname=ifname)
    return att


UndoFn = Callable[[], object]


class Undo:
    """The compensation stack of one ADD (house rule 6; the Go plugins' `success` flag).

    Push an undo right after each resource is acquired.  If the `with` block raises, the undos run
    newest first; each is best effort (a failing one does not stop the rest), and steps pushed
    with `needs_clean=True` (dropping the state record) are skipped once an undo has failed, so
    DEL or GC can still find what was left.  Nothing runs when the block succeeds.
    """

    def __init__(self) -> None:
        self._steps: list[tuple[str, UndoFn, bool]] = []
        self.errors: list[str] = []

    def push(self, what: str, fn: UndoFn, *, needs_clean: bool = False) -> None:
        self._steps.append((what, fn, needs_clean))

    def __len__(self) -> int:
        return len(self._steps)

    def rollback(self) -> list[str]:
        """Run every undo, newest first; returns the failures as "<what>: <error>"."""
        while self._steps:
            what, fn, needs_clean = self._steps.pop()
            if needs_clean and self.errors:
                continue
            try:
                fn()
            except Exception as exc:
                self.errors.append(f"{what}: {exc}")
        return self.errors

    def __enter__(self) -> Undo:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None:
            self._steps.clear()
            return
        errors = self.rollback()
        if errors:
            exc.add_note("rollback incomplete: " + "; ".join(errors))


@contextlib.contextmanager
def locked(path: str) -> Iterator[None]:
    """An exclusive flock on `path` (created if missing) for the block.

    flock locks belong to the open file description, so threads of one process exclude each
    other too; the kernel drops the lock when a killed holder's fd is closed.
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
