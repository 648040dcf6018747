"""A tiny /healthz + /readyz + Prometheus /metrics server for the daemons (stdlib http.server
on a thread; HTTP lives in the foundation so components share one implementation).

`Metrics` is a thread-safe registry of counters and gauges keyed by (name, labels), rendered in
the Prometheus text exposition format 0.0.4.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Labels = tuple[tuple[str, str], ...]


def _labels(labels: Mapping[str, str] | None) -> Labels:
    return tuple(sorted((labels or {}).items()))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, dict[Labels, float]] = {}
        self._meta: dict[str, tuple[str, str]] = {}  # name -> (type, help)

    def describe(self, name: str, kind: str, help_text: str, *, labelled: bool = False) -> None:
        """Declare a metric (kind: "counter", "gauge" or "summary"); an unlabelled one starts
        at 0, so scrapes see it before the first event."""
        with self._lock:
            self._meta[name] = (kind, help_text)
            series = self._values.setdefault(name, {})
            if not labelled and kind != "summary":
                series.setdefault((), 0.0)
            if kind == "summary":
                for part in ("_sum", "_count"):
                    self._values.setdefault(name + part, {}).setdefault((), 0.0)
                    self._meta[name + part] = ("", "")

    def observe(self, name: str, value: float) -> None:
        """One observation of a summary (rendered as <name>_sum and <name>_count)."""
        self.inc(name + "_sum", value)
        self.inc(name + "_count")

    def inc(self, name: str, by: float = 1.0, labels: Mapping[str, str] | None = None) -> None:
        with self._lock:
            series = self._values.setdefault(name, {})
            key = _labels(labels)
            series[key] = series.get(key, 0.0) + by

    def set(self, name: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        with self._lock:
            self._values.setdefault(name, {})[_labels(labels)] = value

    def get(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        with self._lock:
            return self._values.get(name, {}).get(_labels(labels), 0.0)

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            for name in sorted(self._values):
                kind, help_text = self._meta.get(name, ("untyped", ""))
                if help_text:
                    lines.append(f"# HELP {name} {help_text}")
                if kind:  # "" = a summary's _sum/_count, typed by the summary's line
                    lines.append(f"# TYPE {name} {kind}")
                for labels, value in sorted(self._values[name].items()):
                    text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                    lines.append(f"{name}{{{text}}} {value:g}" if text else f"{name} {value:g}")
        return "\n".join(lines) + "\n"


class MetricsServer:
    """GET /healthz (200 while the process serves), /readyz (200 once `ready()`), /metrics."""

    def __init__(self, host: str, port: int, metrics: Metrics,
                 ready: Callable[[], bool] = lambda: True) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner._handle(self)

            def log_message(self, format: str, *args: object) -> None:
                """Scrapes every few seconds would flood the daemon's log."""

        self.metrics = metrics
        self.ready = ready
        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        path = req.path.split("?", 1)[0]
        if path == "/healthz":
            status, body, ctype = 200, "ok\n", "text/plain"
        elif path == "/readyz":
            ok = self.ready()
            status, body, ctype = (200 if ok else 503), ("ok\n" if ok else "not ready\n"), "text/plain"
        elif path == "/metrics":
            status, body, ctype = 200, self.metrics.render(), "text/plain; version=0.0.4"
        else:
            status, body, ctype = 404, "not found\n", "text/plain"
        data = body.encode()
        req.send_response(status)
        req.send_header("Content-Type", ctype)
        req.send_header("Content-Length", str(len(data)))
        req.end_headers()
        req.wfile.write(data)

    def start(self) -> MetricsServer:
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
