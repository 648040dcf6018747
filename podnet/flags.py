"""Command-line values shared by the daemons: Go-style durations as upstream flags take them."""

from __future__ import annotations

import argparse
import re

__all__ = ["duration"]

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def duration(text: str) -> float:
    """Seconds from "40s", "5m0s", "1h30m", "250ms" (Go's time.ParseDuration) or a bare number
    of seconds; raises argparse.ArgumentTypeError so argparse reports it as a usage error."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    pos, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (want e.g. 40s, 5m0s, 1h)")
    return total
