"""The kubelet's container-log endpoint: GET /containerLogs/{namespace}/{pod}/{container}.

Reads the CRI log files the runtime writes (`<RFC3339Nano> stdout|stderr F|P <content>` lines) under
the upstream layout `<root>/<namespace>_<pod>_<uid>/<container>/<attempt>.log` (root defaults to
/var/log/pods; attempt = the container's restart count) and answers plain text, as upstream's kubelet
does, honouring the PodLogOptions the API server forwards: follow, tailLines, previous, timestamps,
limitBytes, sinceSeconds, sinceTime.  HTTP itself is served by podnet.httpserve.

A follow streams new lines as they are appended and ends once the container is no longer running
(the `running` callback), or a newer attempt's file appears (the container restarted), or the client
goes away.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from podnet.httpserve import Handler, HttpServer, Reply, Request

DEFAULT_ROOT = Path("/var/log/pods")
FOLLOW_POLL = 0.1  # seconds between looks at a followed file

PodUidLookup = Callable[[str, str], str | None]
RunningCheck = Callable[[str, str, str], bool]


class LogError(Exception):
    """An answer other than the log: an HTTP status and upstream's message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class LogOptions:
    follow: bool = False
    tail_lines: int | None = None
    previous: bool = False
    timestamps: bool = False
    limit_bytes: int | None = None
    since: float | None = None  # epoch seconds; records before it are skipped


@dataclass(frozen=True)
class Record:
    """One CRI log line: its timestamp text, stream, whether it is a partial line, and content."""

    timestamp: str
    stream: str
    partial: bool
    content: bytes


def container_log_path(root: Path, namespace: str, pod: str, uid: str, container: str,
                       attempt: int) -> Path:
    """Where the runtime writes a container attempt's output (upstream BuildContainerLogsDirectory)."""
    return root / f"{namespace}_{pod}_{uid}" / container / f"{attempt}.log"


def parse_time(text: str) -> float:
    """RFC 3339 with any number of fractional digits (Go's RFC3339Nano) -> epoch seconds."""
    head, dot, rest = text.partition(".")
    if dot:  # datetime keeps microseconds: cut the fraction to 6 digits, keep the zone
        digits = "".join(c for c in rest if c.isdigit())
        text = f"{head}.{digits[:6]}{rest[len(digits):]}"
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def parse_record(line: bytes) -> Record | None:
    """A CRI log line -> Record; None for a malformed line (skipped, as upstream's parser warns)."""
    parts = line.rstrip(b"\n").split(b" ", 3)
    if len(parts) < 3 or parts[1] not in (b"stdout", b"stderr") or parts[2] not in (b"F", b"P"):
        return None
    content = parts[3] if len(parts) == 4 else b""
    return Record(parts[0].decode(errors="replace"), parts[1].decode(), parts[2] == b"P", content)


def _int_param(query: dict[str, str], key: str, minimum: int) -> int | None:
    raw = query.get(key)
    if raw in (None, ""):
        return None
    try:
        value = int(raw)
    except ValueError:
        raise LogError(400, f'invalid value for {key}: "{raw}"') from None
    if value < minimum:
        raise LogError(400, f"{key}: Invalid value: {value}: must be greater than or equal to {minimum}")
    return value


def parse_options(query: dict[str, str], now: float) -> LogOptions:
    """The PodLogOptions of a request's query (booleans as Go's strconv.ParseBool accepts them)."""
    def flag(key: str) -> bool:
        return query.get(key, "").lower() in ("1", "t", "true")

    since: float | None = None
    since_seconds = _int_param(query, "sinceSeconds", 1)
    if since_seconds is not None:
        since = now - since_seconds
    elif query.get("sinceTime"):
        try:
            since = parse_time(query["sinceTime"])
        except ValueError:
            raise LogError(400, f'invalid value for sinceTime: "{query["sinceTime"]}"') from None
    return LogOptions(follow=flag("follow"), tail_lines=_int_param(query, "tailLines", 0),
                      previous=flag("previous"), timestamps=flag("timestamps"),
                      limit_bytes=_int_param(query, "limitBytes", 1), since=since)


def attempt_files(container_dir: Path) -> list[tuple[int, Path]]:
    """The container's log files by attempt, oldest first (names other than <n>.log ignored)."""
    found: list[tuple[int, Path]] = []
    if container_dir.is_dir():
        for path in container_dir.iterdir():
            if path.suffix == ".log" and path.stem.isdigit():
                found.append((int(path.stem), path))
    return sorted(found)


class LineRenderer:
    """Records -> output bytes: partial records joined into one line, an optional timestamp at the
    start of each line, records older than `since` dropped, at most `limit` bytes in total."""

    def __init__(self, opts: LogOptions) -> None:
        self.opts = opts
        self.at_line_start = True
        self.remaining = opts.limit_bytes
        self.skipping = False  # inside a line whose first record was before `since`

    def render(self, record: Record) -> bytes:
        if self.at_line_start:
            self.skipping = self.opts.since is not None and _before(record.timestamp, self.opts.since)
        out = b""
        if not self.skipping:
            if self.at_line_start and self.opts.timestamps:
                out = record.timestamp.encode() + b" "
            out += record.content + (b"" if record.partial else b"\n")
        self.at_line_start = not record.partial
        if self.remaining is not None:
            out = out[:self.remaining]
            self.remaining -= len(out)
        return out

    @property
    def exhausted(self) -> bool:
        return self.remaining is not None and self.remaining <= 0


def _before(timestamp: str, since: float) -> bool:
    try:
        return parse_time(timestamp) < since
    except ValueError:
        return False


def tail_records(records: list[Record], lines: int | None) -> list[Record]:
    """The records of the last `lines` lines (a line = partial records up to a full one)."""
    if lines is None:
        return records
    if lines == 0:
        return []
    starts = [0] + [i + 1 for i, r in enumerate(records[:-1]) if not r.partial]
    return records[starts[-lines]:] if lines < len(starts) else records


def _records(data: bytes) -> list[Record]:
    return [r for r in (parse_record(line) for line in data.splitlines()) if r is not None]


def read_complete(path: Path, offset: int) -> tuple[list[Record], int]:
    """The records of the complete (newline-terminated) lines from `offset`, and the offset after
    them; a file shorter than `offset` was truncated and is read from its start."""
    with open(path, "rb") as f:
        if f.seek(0, 2) < offset:
            offset = 0
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1
    return _records(data[:end]), offset + end


def read_tail(path: Path, lines: int, block: int = 64 * 1024) -> tuple[list[Record], int]:
    """The records of the last `lines` lines without reading the whole file: blocks from the end,
    growing until they hold more than `lines` full records (so the first kept line is whole)."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        start = size
        while True:
            start = max(0, start - block)
            f.seek(start)
            data = f.read(size - start)
            end = data.rfind(b"\n") + 1
            body = data[:end] if start == 0 else data[data.find(b"\n") + 1:end]  # the first line may be cut
            records = _records(body)
            if start == 0 or sum(1 for r in records if not r.partial) > lines:
                return tail_records(records, lines), start + end
            block *= 2


class ContainerLogs:
    """The /containerLogs handler over a log root.  `pod_uid(ns, name)` names the current pod's uid
    (default: the newest `<ns>_<name>_*` directory); `running(ns, pod, container)` tells a follow
    when the container has stopped (default: never, the follow ends with the client)."""

    def __init__(self, root: Path = DEFAULT_ROOT, *, pod_uid: PodUidLookup | None = None,
                 running: RunningCheck | None = None, poll: float = FOLLOW_POLL,
                 clock: Callable[[], float] = time.time) -> None:
        self.root = root
        self.pod_uid = pod_uid
        self.running = running
        self.poll = poll
        self.clock = clock

    def __call__(self, request: Request) -> Reply:
        parts = [p for p in request.path.split("/") if p]
        if len(parts) != 4 or parts[0] != "containerLogs":
            return Reply(404, b"404 page not found\n")
        _, namespace, pod, container = parts
        try:
            opts = parse_options(dict(request.query), self.clock())
            path = self.log_file(namespace, pod, container, opts.previous)
            return Reply(200, self.stream(path, namespace, pod, container, opts))
        except LogError as e:
            return Reply(e.status, (e.message + "\n").encode())

    def pod_dir(self, namespace: str, pod: str) -> Path | None:
        if self.pod_uid is not None:
            uid = self.pod_uid(namespace, pod)
            return self.root / f"{namespace}_{pod}_{uid}" if uid else None
        # names and namespaces are DNS labels/subdomains: no "_", so the prefix is unambiguous
        candidates = [p for p in self.root.glob(f"{namespace}_{pod}_*") if p.is_dir()]
        return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None

    def log_file(self, namespace: str, pod: str, container: str, previous: bool) -> Path:
        """The current attempt's file, or the one before it for `previous` (upstream's messages)."""
        pod_dir = self.pod_dir(namespace, pod)
        if pod_dir is None:
            raise LogError(404, f'pod "{pod}" does not exist')
        files = attempt_files(pod_dir / container)
        if previous:
            if len(files) < 2:
                raise LogError(400, f'previous terminated container "{container}" in pod "{pod}" not found')
            return files[-2][1]
        if not files:
            raise LogError(400, f'container "{container}" in pod "{pod}" is waiting to start: '
                                "ContainerCreating")
        return files[-1][1]

    def stream(self, path: Path, namespace: str, pod: str, container: str,
               opts: LogOptions) -> Iterator[bytes]:
        """The file's (tailed) lines, then - when following - what is appended, until the container
        stops or restarts; an empty chunk between polls lets the server notice a departed client."""
        renderer = LineRenderer(opts)
        if opts.tail_lines is None:
            records, offset = read_complete(path, 0)
        else:
            records, offset = read_tail(path, opts.tail_lines)
        for record in tail_records(records, opts.tail_lines):
            yield renderer.render(record)
            if renderer.exhausted:
                return
        if not opts.follow or opts.previous:
            return
        while True:
            records, offset = read_complete(path, offset)
            for record in records:
                yield renderer.render(record)
                if renderer.exhausted:
                    return
            if not records and self._follow_over(path, namespace, pod, container):
                # lines written just before the container exited are still shown
                for record in read_complete(path, offset)[0]:
                    yield renderer.render(record)
                return
            yield b""
            time.sleep(self.poll)

    def _follow_over(self, path: Path, namespace: str, pod: str, container: str) -> bool:
        """Drained, and the container exited or a newer attempt started (a follow ends there)."""
        if self.running is not None and not self.running(namespace, pod, container):
            return True
        files = attempt_files(path.parent)
        return bool(files) and files[-1][1] != path


def routes(logs: ContainerLogs) -> dict[str, Handler]:
    """The kubelet server's routes for logs (compose with other routes into podnet.httpserve)."""
    return {"/containerLogs": logs}


def start_server(host: str, port: int, root: Path | str, *, pod_uid: PodUidLookup | None = None,
                 running: RunningCheck | None = None) -> HttpServer:
    """The kubelet's HTTP server on --port (plain HTTP, like upstream's read-only port): /healthz and
    /containerLogs, which the API server's pods/log proxies to.  Stop it with `.stop()`."""
    logs = ContainerLogs(Path(root), pod_uid=pod_uid, running=running)
    table: dict[str, Handler] = {**routes(logs), "/healthz": lambda _request: Reply(200, b"ok")}
    return HttpServer(host, port, table, name="kubelet-server").start()
