"""`python -m cni.daemon --socket PATH`: the per-node CNI daemon (started by `podnet cni daemon`).

Why: every plugin exec pays the interpreter start plus the plugin's imports (~60-70 ms for
bridge in-process, and it was ~0.2-0.3 s while the netlink seam used pyroute2, cni.md 5); a warm
process pays them once.  The installed executables forward each request here over a unix
socket (`cni.entry.forward`) and fall back to running in-process when the daemon is absent.

Every request is served by `cni.entry.run_local`, the same function the in-process path runs, in
a thread of its own while it runs: the network namespace is per thread (`podnet.netns.enter` uses
setns on the calling thread), so pods are served concurrently without touching each other's
namespace.  Threads are reused (`_Handlers`) and checked to be back home after each request.
`--workers N` forks N copies after the warm-up, all accepting on the one socket (`WorkerPool`).
A request from another network namespace than the daemon's is refused: the executable then runs
it itself, where it was started (see `cni.entry`).

Wire protocol: see `cni.entry`.  The daemon also accepts `"stdin_b64"` instead of `"stdin"`; a
connection closed without a byte is a liveness probe.  Lifecycle: the socket is created 0600
(root's runtime is the only legitimate client), the PID file `<socket>.pid` is flock'ed for the
daemon's life (a second daemon refuses to start), and SIGTERM/SIGINT stop accepting, let
in-flight requests finish (bounded) and remove both files.
"""

from __future__ import annotations

import argparse
import binascii
import contextlib
import fcntl
import gc
import json
import os
import queue
import signal
import socket
import socketserver
import stat
import sys
import threading
import time
from typing import Any, NamedTuple, TextIO

from cni import entry, plugins, skel

MAX_REQUEST = 4 << 20  # a config with a large prevResult is a few KiB; this bounds memory per client
READ_TIMEOUT = 10.0  # a client that connects and stalls must not pin a thread forever
SHUTDOWN_GRACE = 30.0  # in-flight ADD/DEL get this long to finish after SIGTERM
MAX_THREADS = 64  # per process: concurrent requests beyond this wait for a free thread


class AlreadyRunning(Exception):
    """Another live daemon owns the socket (or its PID file lock)."""


class BadRequest(Exception):
    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code = code


def pid_file_of(socket_path: str) -> str:
    return socket_path + ".pid"


# ------------------------------------------------------------------- requests
def read_request(sock: socket.socket, limit: int | None = None) -> bytes:
    """One request line (without framing validation); BadRequest if too big or truncated.

    b"" when the client hung up without sending anything: a liveness probe (connect and close),
    which gets no answer and no log line.
    """
    limit = MAX_REQUEST if limit is None else limit
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = sock.recv(1 << 16)
        if not chunk and not chunks:
            return b""
        if not chunk:
            raise BadRequest(skel.IO_FAILURE, "connection closed before a complete request line")
        chunks.append(chunk)
        size += len(chunk)
        if b"\n" in chunk:
            return b"".join(chunks)
        if size > limit:
            raise BadRequest(skel.IO_FAILURE, f"request larger than {limit} bytes")


class Request(NamedTuple):
    plugin: str
    env: dict[str, str]
    stdin: bytes
    netns: str | None = None  # the caller's network namespace (cni.entry.netns_id), if sent


def decode_request(line: bytes) -> Request:
    """A request line, validated; BadRequest with a CNI code otherwise."""
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(skel.DECODE_FAILURE, f"daemon request is not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise BadRequest(skel.DECODE_FAILURE, "daemon request must be a JSON object")
    plugin, env = obj.get("plugin"), obj.get("env")
    if not isinstance(plugin, str) or plugin not in plugins.MODULES:
        raise BadRequest(skel.INVALID_CONFIG, f"daemon request names no known plugin: {plugin!r}")
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise BadRequest(skel.DECODE_FAILURE, "daemon request env must map names to strings")
    if isinstance(obj.get("stdin"), str):
        stdin = obj["stdin"].encode("utf-8", "surrogateescape")
    elif isinstance(obj.get("stdin_b64"), str):
        try:
            stdin = binascii.a2b_base64(obj["stdin_b64"], strict_mode=True)
        except binascii.Error as exc:
            raise BadRequest(skel.DECODE_FAILURE, f"daemon request stdin_b64: {exc}") from exc
    else:
        raise BadRequest(skel.DECODE_FAILURE, "daemon request has neither stdin nor stdin_b64")
    netns = obj.get("netns")
    return Request(plugin, env, stdin, netns if isinstance(netns, str) else None)


def run_request(plugin: str, env: dict[str, str], stdin: bytes) -> tuple[int, bytes]:
    """run_local, but a crashing handler becomes error JSON code 999 instead of a dead thread."""
    try:
        return entry.run_local(plugin, env, stdin)
    except BaseException as exc:  # SystemExit from a plugin included: never kill the daemon
        if isinstance(exc, KeyboardInterrupt):
            raise
        return 1, entry.error_output(skel.INTERNAL, f"{plugin}: {type(exc).__name__}: {exc}", stdin,
                                     "daemon handler crashed")


# --------------------------------------------------------------------- server
class _Server(socketserver.UnixStreamServer):
    request_queue_size = 128  # 20+ pods can start at once; a full backlog would stall connects
    owner: Daemon

    def process_request(self, request: Any, client_address: Any) -> None:
        self.owner.dispatch(request)


class _Handlers:
    """Long-lived request threads, created on demand up to `limit`, then reused.

    Why not a thread per request (socketserver.ThreadingMixIn): a fresh thread makes a bridge DEL
    ~2.5 ms slower (measured, interleaved N=90: 24.9 vs 22.2 ms in-daemon, with the pyroute2-based
    seam of the time: per-thread setup in its asyncio core).  Not concurrent.futures either: its
    threads are joined at interpreter exit, so one hung plugin would hang the daemon's shutdown;
    these are daemon threads, bounded by Daemon.stop's grace period.  Idle accounting follows
    ThreadPoolExecutor.
    """

    def __init__(self, run: Any, limit: int) -> None:
        self._run = run
        self._limit = limit
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._count = 0
        self._lock = threading.Lock()

    def submit(self, job: Any) -> None:
        self._jobs.put(job)
        if self._idle.acquire(timeout=0):
            return  # an idle thread takes it
        with self._lock:
            if self._count < self._limit:
                self._count += 1
                threading.Thread(target=self._loop, name=f"cni-request-{self._count}",
                                 daemon=True).start()

    def close(self) -> None:
        """Let idle threads end (busy ones end after their request)."""
        with self._lock:
            for _ in range(self._count):
                self._jobs.put(None)

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            self._run(job)
            self._idle.release()


class Daemon:
    """The socket, PID file and server of one per-node daemon."""

    def __init__(self, socket_path: str, *, preload: bool = True, log: TextIO | None = None,
                 log_requests: bool = True, grace: float = SHUTDOWN_GRACE) -> None:
        self.socket_path = socket_path
        self.pid_path = pid_file_of(socket_path)
        self.preload = preload
        self.log_stream = log if log is not None else sys.stderr
        self.log_requests = log_requests
        self.grace = grace
        self.served = 0
        self._active = 0
        self._idle = threading.Condition()
        self._pid_fd: int | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._handlers: _Handlers | None = None
        self._home_netns: tuple[int, int] | None = None
        self._netns_id: str | None = None

    def log(self, message: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.log_stream.write(f"podnet-cni-daemon[{os.getpid()}]: {message}\n")
            self.log_stream.flush()

    # ------------------------------------------------------------- lifecycle
    def start(self) -> None:
        """Prepare and serve in a background thread of this process (see also `run`)."""
        self.prepare()
        self.serve_in_background()

    def prepare(self) -> None:
        """Take the PID lock, warm up and bind; connections queue until someone serves."""
        self._take_pid_lock()
        try:
            if self.preload:
                self._warm_up()
            self._bind()
        except BaseException:
            self._release_pid_lock()
            raise

    def serve_in_background(self) -> None:
        assert self._server is not None
        # Created here, in the process that serves: threads do not survive fork().
        self._handlers = _Handlers(self._run_connection, MAX_THREADS)
        self._home_netns = _thread_netns()
        self._netns_id = entry.netns_id()
        self._thread = threading.Thread(target=self._server.serve_forever, name="cni-daemon-accept",
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        self.log(f"serving on {self.socket_path}")

    def stop(self, *, owner: bool = True) -> None:
        """Stop accepting, wait (bounded) for in-flight requests; the owner (the process that
        bound the socket) also removes the socket and the PID file."""
        self.close_listener(unlink=owner)
        with self._idle:
            finished = self._idle.wait_for(lambda: self._active == 0, timeout=self.grace)
        if not finished:
            self.log(f"stopping with {self._active} request(s) still running after {self.grace:g} s")
        if self._handlers is not None:
            self._handlers.close()
            self._handlers = None
        if owner:
            self._release_pid_lock()
        self.log(f"stopped after {self.served} request(s)")

    def close_listener(self, *, unlink: bool = True) -> None:
        """No new connections from here on: new execs find no socket and run in-process."""
        if self._server is None:
            return
        if self._thread is not None:
            self._server.shutdown()
            self._thread = None
        self._server.server_close()
        self._server = None
        if unlink:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)

    def _take_pid_lock(self) -> None:
        directory = os.path.dirname(self.socket_path) or "."
        os.makedirs(directory, mode=0o755, exist_ok=True)
        fd = os.open(self.pid_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise AlreadyRunning(f"another daemon (pid {holder}) holds {self.pid_path}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._pid_fd = fd

    def _release_pid_lock(self) -> None:
        if self._pid_fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.pid_path)  # unlinked while still locked: no window for a stale read
        os.close(self._pid_fd)
        self._pid_fd = None

    def _bind(self) -> None:
        _remove_stale_socket(self.socket_path)
        old_umask = os.umask(0o177)  # no window in which the socket is connectable by others
        try:
            server = _Server(self.socket_path, socketserver.BaseRequestHandler)
        finally:
            os.umask(old_umask)
        os.chmod(self.socket_path, 0o600)
        # Several worker processes may wait on this socket: the ones that lose the race for a
        # connection must get EAGAIN from accept(), not block in it (and miss their shutdown).
        server.socket.setblocking(False)
        server.owner = self
        self._server = server

    def _warm_up(self) -> None:
        """Import the netlink seam and every plugin module now, not per pod."""
        started = time.perf_counter()
        from podnet import netlink

        with netlink.Netlink.open() as nl:
            nl.list_links()
        for plugin_type in sorted(plugins.MODULES):
            try:
                plugins.load(plugin_type)
            except Exception as exc:  # served as error 999 per request, like the exec path
                self.log(f"cannot load plugin {plugin_type}: {type(exc).__name__}: {exc}")
        self.log(f"warmed up in {(time.perf_counter() - started) * 1000:.0f} ms")

    # -------------------------------------------------------------- requests
    def dispatch(self, sock: socket.socket) -> None:
        """Hand an accepted connection to a request thread (counted in flight from now on)."""
        with self._idle:
            self._active += 1
        assert self._handlers is not None
        self._handlers.submit(sock)

    def _run_connection(self, sock: socket.socket) -> None:
        try:
            self._serve(sock)
        finally:
            with contextlib.suppress(OSError):
                sock.close()
            with self._idle:
                self._active -= 1
                self._idle.notify_all()
            self._check_thread_netns()

    def _check_thread_netns(self) -> None:
        """This thread serves the next request too: it must be back in the daemon's namespace.
        podnet.netns.enter always switches back, so a mismatch is a bug that could configure a
        later pod in a wrong namespace; crash-only (house rule 8) beats limping on."""
        if self._home_netns is not None and _thread_netns() != self._home_netns:
            self.log("BUG: a request thread was left in a foreign network namespace; exiting")
            sys.stderr.flush()
            os._exit(70)

    def _serve(self, sock: socket.socket) -> None:
        started = time.perf_counter()
        sock.settimeout(READ_TIMEOUT)  # read at call time: tests shorten it
        try:
            line = read_request(sock)
            if not line:
                return  # a probe
            req = decode_request(line)
        except BadRequest as exc:
            self.log(f"bad request: {exc}")
            _reply(sock, 1, entry.error_output(exc.code, str(exc)))
            return
        except OSError as exc:  # includes the read timeout: the client is gone or stalled
            self.log(f"dropped a request: {exc}")
            return
        if req.netns is not None and req.netns != self._netns_id:
            # The caller's "host" namespace is not ours: running the request here would set up
            # the pod against the wrong host (bridge, NAT rules).  The executable runs it itself.
            self.log(f"refused {req.plugin} {req.env.get('CNI_COMMAND', '?')} from netns {req.netns}"
                     f" (serving {self._netns_id})")
            _reply(sock, entry.REFUSED, b"")
            return
        code, out = run_request(req.plugin, req.env, req.stdin)
        _reply(sock, code, out)
        with self._idle:
            self.served += 1
        if self.log_requests:
            self._log_request(req.plugin, req.env, code, started)

    def _log_request(self, plugin: str, env: dict[str, Any], code: int, started: float) -> None:
        ms = (time.perf_counter() - started) * 1000
        self.log(f"{plugin} {env.get('CNI_COMMAND', '?')} container={env.get('CNI_CONTAINERID', '')} "
                 f"ifname={env.get('CNI_IFNAME', '')} exit={code} {ms:.1f} ms")


def _thread_netns() -> tuple[int, int]:
    st = os.stat("/proc/thread-self/ns/net")
    return st.st_dev, st.st_ino


def _reply(sock: socket.socket, code: int, out: bytes) -> None:
    with contextlib.suppress(OSError):  # the client may have given up; nothing to tell it
        sock.sendall(entry.encode_reply(code, out))


def _remove_stale_socket(path: str) -> None:
    """Remove a socket nobody listens on (a crashed daemon's); refuse if one is alive."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise AlreadyRunning(f"{path} exists and is not a socket; not touching it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError:
        os.unlink(path)  # ECONNREFUSED: stale
        return
    finally:
        probe.close()
    raise AlreadyRunning(f"another daemon is listening on {path}")


# -------------------------------------------------------------------- workers
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


class WorkerPool:
    """Forked copies of a prepared (warm, bound) daemon, all accepting on the same socket.

    Why processes: the GIL serialises the CPU-heavy part of every request (encoding and parsing
    netlink messages, JSON), so one process serves N concurrent ADDs in about N times one
    ADD while the exec'd reference plugins use every core.  Forking after the warm-up shares the
    imported modules copy-on-write.  Each worker still serves each request in a thread of its own.
    A worker that dies is replaced (its in-flight requests fail over as cni.entry describes);
    workers exit on their own when the parent disappears.
    """

    def __init__(self, daemon: Daemon, size: int) -> None:
        self.daemon = daemon
        self.size = size
        self.pids: dict[int, int] = {}  # pid -> slot
        self._last_spawn: dict[int, float] = {}

    def spawn(self, slot: int) -> None:
        # Stop signals stay blocked across fork until the child has its own handlers, so a
        # SIGTERM in between is delivered late rather than lost.
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        # The parent's PID is taken before fork: a child asking getppid() after a kill -9 of the
        # parent would get its new reaper's PID and never notice it was orphaned.
        parent = os.getpid()
        try:
            pid = os.fork()
            if pid == 0:
                _worker_main(self.daemon, parent)  # never returns
            self.pids[pid] = slot
            self._last_spawn[slot] = time.monotonic()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)

    def start(self) -> None:
        # Objects from the warm-up are never collected: keeping the collector off them keeps their
        # pages shared with the workers instead of dirtied copy-on-write by every GC pass.
        gc.freeze()
        for slot in range(self.size):
            self.spawn(slot)
        self.daemon.log(f"{self.size} worker(s): {sorted(self.pids)}")

    def reap(self, *, respawn: bool) -> None:
        """Collect exited workers (by recorded PID only); replace them if asked, at most once a
        second per slot so a worker that crashes at start cannot fork-bomb the node."""
        for pid, slot in list(self.pids.items()):
            with contextlib.suppress(ChildProcessError):
                done, status = os.waitpid(pid, os.WNOHANG)
                if not done:
                    continue
                self.daemon.log(f"worker {pid} exited (status {status})")
            del self.pids[pid]
            if respawn:
                time.sleep(max(0.0, 1.0 - (time.monotonic() - self._last_spawn.get(slot, 0.0))))
                self.spawn(slot)

    def terminate(self, grace: float) -> None:
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while self.pids and time.monotonic() < deadline:
            self.reap(respawn=False)
            time.sleep(0.02)
        for pid in list(self.pids):
            self.daemon.log(f"worker {pid} did not stop within {grace:g} s; killing it")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            del self.pids[pid]


def _die_with_parent() -> None:
    """Ask the kernel for SIGTERM when the parent dies (prctl PR_SET_PDEATHSIG), so a worker
    leaves at once after a kill -9 of the daemon; the getppid() poll below stays as the fallback
    for a parent that died before this call.  The signal follows the *thread* that forked: workers
    are only spawned from `run`'s main thread, which lives as long as the daemon."""
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)


def _worker_main(daemon: Daemon, parent: int) -> None:
    code = 0
    try:
        _die_with_parent()
        if os.getppid() != parent:  # died before PR_SET_PDEATHSIG took effect: no signal will come
            return  # (the finally clause exits)
        stop = _stop_event()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        daemon.serve_in_background()
        while not stop.wait(1.0):
            if os.getppid() != parent:  # the parent was killed: do not linger as an orphan
                break
        daemon.stop(owner=False)
    except BaseException as exc:
        daemon.log(f"worker failed: {type(exc).__name__}: {exc}")
        code = 1
    finally:
        sys.stderr.flush()
        os._exit(code)  # never return into the parent's code (or run its atexit handlers)


def _stop_event() -> threading.Event:
    stop = threading.Event()
    for signum in _STOP_SIGNALS:
        signal.signal(signum, lambda *_: stop.set())
    return stop


def run(daemon: Daemon, workers: int) -> None:
    """Serve until SIGTERM/SIGINT, in this process (workers=1) or in forked workers."""
    stop = _stop_event()
    daemon.prepare()
    if workers <= 1:
        try:
            daemon.serve_in_background()
            while not stop.wait(1.0):
                pass
        finally:
            daemon.stop()
        return
    pool = WorkerPool(daemon, workers)
    try:
        pool.start()
        daemon.log(f"serving on {daemon.socket_path}")
        while not stop.wait(0.2):
            pool.reap(respawn=True)
    finally:
        daemon.close_listener()  # first: new execs fall back to in-process at once
        pool.terminate(daemon.grace + 5)
        daemon.stop()


def default_workers() -> int:
    # More workers than cores buys nothing for CPU-bound work; the kernel's RTNL lock serialises
    # the rest anyway.
    return max(1, min(os.cpu_count() or 1, 4))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cni.daemon", description=__doc__.split("\n")[0])
    parser.add_argument("--socket", default=entry.DEFAULT_SOCKET, help="unix socket to listen on")
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help="worker processes (default: CPUs, at most 4; 1 = no fork)")
    parser.add_argument("--no-preload", action="store_true",
                        help="skip pre-importing the netlink seam and plugins")
    parser.add_argument("--quiet", action="store_true", help="no per-request log lines")
    args = parser.parse_args(argv)
    daemon = Daemon(args.socket, preload=not args.no_preload, log_requests=not args.quiet)
    try:
        run(daemon, args.workers)
    except AlreadyRunning as exc:
        daemon.log(f"refusing to start: {exc}")
        sys.exit(1)


if __name__ == "__main__":
    main()
