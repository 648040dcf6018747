"""sysctl through /proc/sys, in the calling thread's network namespace.

/proc/sys/net/* files resolve the network namespace of the thread that opens them, so calling
these inside `podnet.netns.enter()` sets the value in that namespace.
"""

from __future__ import annotations

from podnet.errors import NotFound


def _path(key: str) -> str:
    """`net.ipv4.ip_forward` style keys, or '/'-separated ones (needed when a part has a dot)."""
    return "/proc/sys/" + (key if "/" in key else key.replace(".", "/"))


def read(key: str) -> str:
    try:
        with open(_path(key)) as f:
            return f.read().strip()
    except FileNotFoundError as exc:
        raise NotFound(f"sysctl {key}") from exc


def write(key: str, value: str | int) -> None:
    """Set a sysctl; skips the write when the value is already there (idempotent, no churn)."""
    want = str(value)
    if read(key) == want:
        return
    with open(_path(key), "w") as f:
        f.write(want)


def iface_key(family: str, ifname: str, knob: str) -> str:
    """Per-interface key; interface names may contain dots, which sysctl paths write as '/'."""
    return f"net/{family}/conf/{ifname}/{knob}"
