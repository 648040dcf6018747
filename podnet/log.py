"""Logging conventions: one logger per component under "podnet.", configured only by main().

Importing this module configures nothing (library code must not, unlike neutron's global
oslo.log setup); a daemon's `__main__` calls `setup()` once.  Lines look like

    2026-11-27T12:56:27.123Z INFO reconcile: sync failed (attempt 1), retrying in 1.0s

or, with json=True, one JSON object per line with ts, level, component, msg (and exc).
CNI plugins never call setup(): their stdout is reserved for the result JSON.
"""

from __future__ import annotations

import json as jsonlib
import logging
import sys
import time
from typing import IO

ROOT = "podnet"


def get_logger(component: str) -> logging.Logger:
    """The logger of `component` (e.g. "reconcile", "flanneld.lease")."""
    return logging.getLogger(f"{ROOT}.{component}")


def component_of(record: logging.LogRecord) -> str:
    name = record.name
    return name[len(ROOT) + 1:] if name.startswith(ROOT + ".") else name


def _timestamp(record: logging.LogRecord) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{stamp}.{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname} {component_of(record)}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {"ts": _timestamp(record), "level": record.levelname,
                "component": component_of(record), "msg": record.getMessage()}
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return jsonlib.dumps(data, sort_keys=False)


class _PodnetHandler(logging.StreamHandler):
    """Marker class so setup() can replace its own handler without touching others."""


def setup(level: int | str = "INFO", json: bool = False, stream: IO[str] | None = None) -> logging.Logger:
    """Configure the "podnet" logger tree (idempotent: calling again replaces our handler)."""
    root = logging.getLogger(ROOT)
    for handler in [h for h in root.handlers if isinstance(h, _PodnetHandler)]:
        root.removeHandler(handler)
    handler = _PodnetHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    root.propagate = False
    return root
