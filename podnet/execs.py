"""The one place podnet runs helper programs (nft, iptables-restore, ipset, conntrack, ...)."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence

from podnet.errors import ExecError


def run(
    argv: Sequence[str],
    *,
    input: str | bytes | None = None,
    netns: str | None = None,
    timeout: float = 30.0,
    check: bool = True,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run argv (inside the netns at path/name `netns` if given) and return its text output.

    Raises ExecError carrying stderr when the program exits non-zero and `check` is set.
    """
    full = list(argv)
    if netns:
        full = ["nsenter", f"--net={netns_path(netns)}", "--", *full]
    data = input.decode() if isinstance(input, bytes) else input
    proc = subprocess.run(
        full, input=data, capture_output=True, text=True, timeout=timeout, check=False,
        env=dict(env) if env is not None else None,
    )
    if check and proc.returncode != 0:
        raise ExecError(full, proc.returncode, proc.stderr)
    return proc


def run_bytes(
    argv: Sequence[str], *, input: bytes, env: Mapping[str, str], timeout: float = 60.0
) -> subprocess.CompletedProcess[bytes]:
    """Run argv with binary stdin/stdout and an exact environment; never raises on exit codes.

    Used to exec third-party CNI plugins, whose stdout carries the result or error JSON.
    """
    return subprocess.run(
        list(argv), input=input, capture_output=True, timeout=timeout, check=False, env=dict(env)
    )


def netns_path(netns: str) -> str:
    """A netns given by name (as `ip netns` knows it) or by path, as a path."""
    return netns if "/" in netns else f"/run/netns/{netns}"
