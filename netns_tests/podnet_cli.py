"""Running the `podnet` CLI from netns tests, and what `podnet down` must give back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from podnet import execs

PODNET = str(Path(sys.executable).parent / "podnet")


def podnet(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PODNET, *args], capture_output=True, text=True, timeout=timeout)


def root_snapshot(prefix: str) -> dict[str, object]:
    """The root namespace as `podnet up` must leave it alone (links, nft tables), plus the
    namespaces carrying the cluster's prefix."""
    links = execs.run(["ip", "-br", "link"]).stdout.splitlines()
    names = execs.run(["ip", "netns", "list"]).stdout.split()
    return {"links": sorted(line.split()[0] for line in links),
            "nft": execs.run(["nft", "list", "tables"]).stdout,
            "netns": sorted(n for n in names if n.startswith(prefix))}
