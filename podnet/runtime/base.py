"""The container runtime seam: what the kubelet asks of a runtime, and the shared on-disk state.

A container's identity is deterministic ("podnet-<pod uid[:12]>-<container>-<attempt>"), so a
restarted kubelet finds its containers again by listing the runtime root: every container we
start has a directory `<root>/<id>/` holding spec.json (the ContainerSpec, i.e. our labels),
shim.pid (the log shim that owns the container's stdio), child.pid, and exit.json once it ended.
Nothing outside that directory is considered ours.
"""

from __future__ import annotations

import builtins
import json
import os
import re
import shlex
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from podnet.errors import PodnetError

DEFAULT_ROOT = "/run/podnet/runtime"
ID_PREFIX = "podnet-"
# CRI log lines longer than this are split into partial ("P") records, as the CRI log format does
# (kubelet/containerd cap a record at 16 KiB).
MAX_LOG_LINE = 16 * 1024

State = Literal["created", "running", "exited"]


class RuntimeFailure(PodnetError):
    """A runtime operation failed (crun/unshare exited non-zero, bad state, unknown id)."""


@dataclass(frozen=True)
class Mount:
    host_path: str
    container_path: str
    read_only: bool = False


@dataclass
class ContainerSpec:
    pod_uid: str
    pod_namespace: str
    pod_name: str
    name: str
    attempt: int
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    working_dir: str = ""
    netns_path: str = ""
    mounts: list[Mount] = field(default_factory=list)
    cpu_limit_millis: int | None = None
    memory_limit_bytes: int | None = None
    log_path: str = ""
    hostname: str = ""

    @property
    def id(self) -> str:
        return container_id(self.pod_uid, self.name, self.attempt)

    def labels(self) -> dict[str, str]:
        """The CRI-style labels the kubelet uses to map a container back to its pod."""
        return {
            "io.kubernetes.pod.uid": self.pod_uid,
            "io.kubernetes.pod.namespace": self.pod_namespace,
            "io.kubernetes.pod.name": self.pod_name,
            "io.kubernetes.container.name": self.name,
            "io.kubernetes.container.attempt": str(self.attempt),
        }

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ContainerSpec:
        mounts = [Mount(**m) for m in data.get("mounts", [])]
        return cls(**{**data, "mounts": mounts})


@dataclass
class ContainerInfo:
    id: str
    state: State
    pid: int | None = None
    exit_code: int | None = None
    started_at: float | None = None  # epoch seconds
    finished_at: float | None = None
    labels: dict[str, str] = field(default_factory=dict)


class ContainerRuntime(Protocol):
    def create_and_start(self, spec: ContainerSpec) -> ContainerInfo: ...

    def stop(self, container_id: str, grace_seconds: float) -> None: ...

    def remove(self, container_id: str) -> None: ...

    def status(self, container_id: str) -> ContainerInfo: ...

    def list(self) -> list[ContainerInfo]: ...

    def exec(self, container_id: str, argv: builtins.list[str], timeout: float) -> tuple[int, str]: ...


_NAME_UNSAFE = re.compile(r"[^a-z0-9.-]")


def container_id(pod_uid: str, name: str, attempt: int) -> str:
    """Deterministic id: the same pod/container/attempt always maps to the same directory."""
    uid = _NAME_UNSAFE.sub("", pod_uid.lower())[:12]
    return f"{ID_PREFIX}{uid}-{_NAME_UNSAFE.sub('-', name.lower())}-{attempt}"


def cri_timestamp(ns: int | None = None) -> str:
    """RFC 3339 with nanoseconds in UTC, as CRI log records start."""
    ns = time.time_ns() if ns is None else ns
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


def cri_records(stream: str, chunk: bytes, ns: int | None = None) -> bytes:
    """CRI log records for one line read from `stream` ("stdout"/"stderr").

    A chunk ending in a newline is a full record (F); a chunk cut at MAX_LOG_LINE without one is
    partial (P) and the next chunk continues it.  A final unterminated line at EOF counts as full.
    """
    full = chunk.endswith(b"\n") or len(chunk) < MAX_LOG_LINE
    body = chunk[:-1] if chunk.endswith(b"\n") else chunk
    tag = b"F" if full else b"P"
    return cri_timestamp(ns).encode() + b" " + stream.encode() + b" " + tag + b" " + body + b"\n"


def root_layer_script(layer: str) -> list[str]:
    """sh steps (in a private mount namespace) that build the container root at `<layer>/root`.

    The image is the host's root filesystem: an overlay with "/" as its lower layer and a tmpfs
    upper, so mount points the spec names are created in the container's own layer, never on
    the host (as an image's writable layer would take them).  Without overlayfs, "/" is bound
    directly (mount points missing on the host are then created on the host).
    """
    q = shlex.quote
    up, work, root = (q(f"{layer}/{d}") for d in ("upper", "work", "root"))
    return [f"mount -t tmpfs -o mode=755 podnet-layer {q(layer)}",
            f"mkdir {up} {work} {root}",
            f"{{ mount -t overlay -o lowerdir=/,upperdir={up},workdir={work} podnet-root {root}"
            f" || mount --rbind / {root}; }}"]


def parse_cri_line(line: str) -> tuple[str, str, str, str]:
    """(timestamp, stream, tag, message) of one CRI log record (for readers and tests)."""
    parts = line.rstrip("\n").split(" ", 3)
    parts += [""] * (4 - len(parts))
    return parts[0], parts[1], parts[2], parts[3]


# ------------------------------------------------------------------------ state directory
class StateDir:
    """`<root>/<id>/`: everything a runtime knows about one of its containers."""

    def __init__(self, root: str, cid: str) -> None:
        if not cid.startswith(ID_PREFIX) or "/" in cid:
            raise RuntimeFailure(f"{cid!r} is not a podnet container id")
        self.path = os.path.join(root, cid)
        self.id = cid

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def exists(self) -> bool:
        return os.path.exists(self.file("spec.json"))

    def write_json(self, name: str, data: Any) -> None:
        """Write atomically (rename), so a reader never sees half a file."""
        # Per-thread temp name: the kubelet's workers may look at one container concurrently.
        tmp = self.file(f".{name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, self.file(name))

    def read_json(self, name: str) -> Any:
        try:
            with open(self.file(name)) as f:
                return json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def spec(self) -> ContainerSpec:
        data = self.read_json("spec.json")
        if data is None:
            raise RuntimeFailure(f"container {self.id} not found")
        return ContainerSpec.from_json(data)


def list_ids(root: str) -> list[str]:
    """Ids of the containers with state under `root` (only our prefix counts)."""
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if n.startswith(ID_PREFIX)
                  and os.path.exists(os.path.join(root, n, "spec.json")))


def proc_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks): pins a PID against reuse."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def pid_alive(record: dict[str, int] | None) -> bool:
    """True when the recorded {"pid", "start"} still names the same live (non-zombie) process."""
    if not record:
        return False
    start = proc_start_time(record["pid"])
    if start is None or start != record["start"]:
        return False
    try:
        with open(f"/proc/{record['pid']}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def pid_record(pid: int) -> dict[str, int]:
    return {"pid": pid, "start": proc_start_time(pid) or 0}
