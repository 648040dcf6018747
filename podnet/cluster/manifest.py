"""The record of everything one `podnet up` created, written *before* each thing is created.

`down` undoes exactly what is listed here (and a failed `up` runs the same undo), so nothing this
cluster did not make is ever removed.  Saved atomically (temp file + rename) after every change:
a crash of `podnet up` mid-way still leaves a manifest naming everything made so far.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class ProcRecord:
    name: str
    pid: int
    start_ticks: int  # /proc/<pid>/stat field 22: tells our process from a later one reusing the PID
    argv: list[str]
    log: str
    netns: str | None = None


@dataclass
class Manifest:
    path: Path
    prefix: str = ""
    namespaces: list[str] = field(default_factory=list)
    processes: list[ProcRecord] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)  # removed recursively by `down`
    info: dict[str, Any] = field(default_factory=dict)  # api port, nodes, kubeconfig, ...

    @classmethod
    def load(cls, path: Path) -> Manifest:
        data = json.loads(path.read_text())
        return cls(path=path, prefix=data.get("prefix", ""), namespaces=list(data.get("namespaces", [])),
                   processes=[ProcRecord(**p) for p in data.get("processes", [])],
                   dirs=list(data.get("dirs", [])), info=dict(data.get("info", {})))

    def save(self) -> None:
        data = {"prefix": self.prefix, "namespaces": self.namespaces,
                "processes": [asdict(p) for p in self.processes], "dirs": self.dirs, "info": self.info}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.path)

    def add_namespace(self, name: str) -> None:
        if name not in self.namespaces:
            self.namespaces.append(name)
            self.save()

    def add_dir(self, path: Path) -> None:
        if str(path) not in self.dirs:
            self.dirs.append(str(path))
            self.save()

    def add_process(self, rec: ProcRecord) -> None:
        self.processes.append(rec)
        self.save()

    def process(self, name: str) -> ProcRecord | None:
        return next((p for p in self.processes if p.name == name), None)


def start_ticks(pid: int) -> int | None:
    """The process start time in clock ticks since boot, or None when no such process exists."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after its closing parenthesis
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[19])  # field 22 overall; fields[0] is field 3 (state)


def is_alive(rec: ProcRecord) -> bool:
    """Our recorded process still runs (same PID *and* start time; a zombie counts as gone)."""
    if start_ticks(rec.pid) != rec.start_ticks:
        return False
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{rec.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return False
