"""The per-node CNI daemon: same answers as the in-process path, robust against bad clients,
one owner per socket.  No root needed: host-local and protocol errors touch no kernel state."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cni import daemon, entry, plugins, skel

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- a test plugin
def _fake_add(req: skel.Request) -> dict[str, Any]:
    if req.config.get("crash"):
        raise RuntimeError("boom")
    if req.config.get("exit"):
        raise SystemExit(3)
    if req.config.get("sleep"):
        time.sleep(float(req.config["sleep"]))
    return {"cniVersion": "1.1.0", "ips": [{"address": "10.0.0.2/24"}]}


PLUGIN = skel.Plugin(name="fake", add=_fake_add, delete=lambda r: None, check=lambda r: None)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="cnid", dir="/tmp") as d:
        yield Path(d)


@pytest.fixture
def served(short_dir, monkeypatch) -> Iterator[daemon.Daemon]:
    """A daemon on a temp socket, in this process (no pyroute2 warm-up), with `fake` registered."""
    monkeypatch.setitem(plugins.MODULES, "fake", __name__)
    d = daemon.Daemon(str(short_dir / "cni.sock"), preload=False, log_requests=False)
    d.start()
    yield d
    d.stop()


def env_for(command: str, cid: str = "c1", **extra: str) -> dict[str, str]:
    return {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": "/run/netns/unused",
            "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent", **extra}


def host_local(data_dir: Path, version: str = "1.0.0") -> bytes:
    return json.dumps({"cniVersion": version, "name": "podnet", "ipam": {
        "type": "host-local", "dataDir": str(data_dir), "ranges": [[{"subnet": "10.9.0.0/24"}]]}}).encode()


def both_paths(d: daemon.Daemon, plugin: str, env: dict[str, str], stdin: bytes) -> tuple[Any, Any]:
    return entry.forward(plugin, env, stdin, d.socket_path), entry.run_local(plugin, env, stdin)


def raw_exchange(path: str, payload: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(path)
        s.sendall(payload)
        return s.makefile("rb").readline()


# ----------------------------------------------------------------- equivalence
def test_host_local_verbs_answer_identically(served, tmp_path):
    # Each path gets its own fresh dataDir, so even the allocated address must be identical.
    for command in ("ADD", "CHECK", "DEL", "DEL"):
        via_daemon = entry.forward("host-local", env_for(command), host_local(tmp_path / "a"),
                                   served.socket_path)
        local = entry.run_local("host-local", env_for(command), host_local(tmp_path / "b"))
        assert via_daemon == local, command
        assert via_daemon[0] == 0, via_daemon


@pytest.mark.parametrize("plugin", ["host-local", "loopback"])
@pytest.mark.parametrize(("env", "stdin", "code"), [
    (env_for("ADD"), b"{not json", skel.DECODE_FAILURE),
    ({"CNI_COMMAND": "ADD", "CNI_PATH": "/x"}, b'{"cniVersion":"1.0.0","name":"n"}', skel.INVALID_ENV),
    (env_for("ADD"), b'{"cniVersion":"7.7.7","name":"n"}', skel.INCOMPATIBLE_VERSION),
    (env_for("NOPE"), b"{}", skel.INVALID_ENV),
])
def test_malformed_requests_get_the_same_error_json(served, plugin, env, stdin, code):
    via_daemon, local = both_paths(served, plugin, env, stdin)
    assert via_daemon == local
    assert via_daemon[0] == 1 and json.loads(via_daemon[1])["code"] == code


def test_version_through_the_daemon_matches_the_local_answer(served):
    env = env_for("VERSION")
    via_daemon = entry.forward("bridge", env, b'{"cniVersion":"0.3.1"}', served.socket_path)
    assert via_daemon == (0, entry.version_output("bridge", b'{"cniVersion":"0.3.1"}'))


def test_concurrent_requests_are_served_in_parallel_threads(served, tmp_path):
    conf = host_local(tmp_path)
    results: list[tuple[int, bytes]] = []
    lock = threading.Lock()

    def add(i: int) -> None:
        r = entry.forward("host-local", env_for("ADD", cid=f"c{i}"), conf, served.socket_path)
        with lock:
            results.append(r)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(code == 0 for code, _ in results)
    addresses = {json.loads(out)["ips"][0]["address"] for _, out in results}
    assert len(addresses) == 20


def test_a_slow_request_does_not_block_others(served):
    slow = threading.Thread(target=entry.forward, args=(
        "fake", env_for("ADD"), b'{"cniVersion":"1.0.0","name":"n","sleep":0.8}', served.socket_path))
    slow.start()
    started = time.monotonic()
    code, _ = entry.forward("fake", env_for("ADD", cid="c2"), b'{"cniVersion":"1.0.0","name":"n"}',
                            served.socket_path)
    assert code == 0 and time.monotonic() - started < 0.6
    slow.join()


# ---------------------------------------------------------------- robustness
@pytest.mark.parametrize("conf", [{"crash": 1}, {"exit": 1}])
def test_a_crashing_handler_is_error_999_and_the_daemon_lives_on(served, conf):
    stdin = json.dumps({"cniVersion": "1.0.0", "name": "n", **conf}).encode()
    code, out = entry.forward("fake", env_for("ADD"), stdin, served.socket_path)
    assert code == 1 and json.loads(out)["code"] == skel.INTERNAL
    assert entry.forward("fake", env_for("ADD"), b'{"cniVersion":"1.0.0","name":"n"}',
                         served.socket_path)[0] == 0


@pytest.mark.parametrize(("payload", "code"), [
    (b"this is not json\n", skel.DECODE_FAILURE),
    (b"[1, 2]\n", skel.DECODE_FAILURE),
    (b'{"plugin":"nope","env":{},"stdin":""}\n', skel.INVALID_CONFIG),
    (b'{"plugin":"fake","env":{"A":1},"stdin":""}\n', skel.DECODE_FAILURE),
    (b'{"plugin":"fake","env":{}}\n', skel.DECODE_FAILURE),
    (b'{"plugin":"fake","env":{},"stdin_b64":"!!"}\n', skel.DECODE_FAILURE),
])
def test_bad_frames_get_error_json(served, payload, code):
    got, out = entry.decode_reply(raw_exchange(served.socket_path, payload))
    assert got == 1 and json.loads(out)["code"] == code


def test_stdin_may_come_base64_encoded(served):
    import base64

    stdin = base64.b64encode(b'{"cniVersion":"1.0.0","name":"n"}').decode()
    frame = json.dumps({"plugin": "fake", "env": env_for("ADD"), "stdin_b64": stdin}) + "\n"
    code, out = entry.decode_reply(raw_exchange(served.socket_path, frame.encode()))
    assert code == 0 and json.loads(out)["ips"][0]["address"] == "10.0.0.2/24"


def test_oversized_request_is_refused(served, monkeypatch):
    monkeypatch.setattr(daemon, "MAX_REQUEST", 1000)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(served.socket_path)
        with pytest.raises(OSError):  # the daemon answers and hangs up while we still send
            s.sendall(b"x" * (1 << 22))
        reply = s.makefile("rb").readline()
    assert json.loads(entry.decode_reply(reply)[1])["code"] == skel.IO_FAILURE


def test_a_stalled_client_is_dropped_and_does_not_block_others(served, monkeypatch):
    monkeypatch.setattr(daemon, "READ_TIMEOUT", 0.3)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(served.socket_path)
        assert entry.forward("fake", env_for("ADD"), b'{"cniVersion":"1.0.0","name":"n"}',
                             served.socket_path)[0] == 0
        s.settimeout(5)
        assert s.recv(10) == b""  # dropped after READ_TIMEOUT, without an answer


def request_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("cni-request-")]


def test_request_threads_are_reused_and_end_with_the_daemon(short_dir, monkeypatch):
    monkeypatch.setitem(plugins.MODULES, "fake", __name__)
    before = len(request_threads())
    d = daemon.Daemon(str(short_dir / "cni.sock"), preload=False, log_requests=False)
    d.start()
    for i in range(5):
        assert entry.forward("fake", env_for("ADD", cid=f"c{i}"), b'{"cniVersion":"1.0.0","name":"n"}',
                             d.socket_path)[0] == 0
    assert d._handlers is not None and d._handlers._count <= 2  # 2: a reply can beat the idle mark
    d.stop()
    assert wait_until(lambda: len(request_threads()) == before)


def test_concurrency_beyond_the_thread_limit_queues(short_dir, monkeypatch):
    monkeypatch.setitem(plugins.MODULES, "fake", __name__)
    monkeypatch.setattr(daemon, "MAX_THREADS", 2)
    d = daemon.Daemon(str(short_dir / "cni.sock"), preload=False, log_requests=False)
    d.start()
    try:
        stdin = b'{"cniVersion":"1.0.0","name":"n","sleep":0.3}'
        out: list[int] = []
        clients = [threading.Thread(target=lambda i=i: out.append(entry.forward(
            "fake", env_for("ADD", cid=f"c{i}"), stdin, d.socket_path)[0])) for i in range(5)]
        started = time.monotonic()
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        assert out == [0] * 5
        assert time.monotonic() - started >= 0.85  # 5 jobs of 0.3 s on 2 threads: 3 waves
        assert d._handlers is not None and d._handlers._count == 2
    finally:
        d.stop()


def test_a_thread_left_in_a_foreign_netns_ends_the_process(served, monkeypatch):
    exits: list[int] = []
    monkeypatch.setattr(daemon.os, "_exit", exits.append)
    monkeypatch.setattr(daemon, "_thread_netns", lambda: (0, 0))  # "not home" after the request
    entry.forward("fake", env_for("ADD"), b'{"cniVersion":"1.0.0","name":"n"}', served.socket_path)
    assert wait_until(lambda: exits == [70], timeout=5)


def test_a_request_from_another_netns_is_refused_and_run_by_the_caller(served, tmp_path, monkeypatch):
    monkeypatch.setattr(entry, "netns_id", lambda *a: "0:12345")  # "the caller lives elsewhere"
    env = {**env_for("ADD"), entry.SOCKET_ENV: served.socket_path}
    with pytest.raises(entry.DaemonUnavailable, match="another network namespace"):
        entry.forward("host-local", env, host_local(tmp_path / "d"), served.socket_path)
    code, out = entry.serve("host-local", env, host_local(tmp_path / "l"))
    assert code == 0 and json.loads(out)["ips"]
    assert served.served == 0  # nothing ran in the daemon
    assert (tmp_path / "l").exists() and not (tmp_path / "d").exists()


# ------------------------------------------------------------------ lifecycle
def test_socket_is_private_and_pid_file_names_us(served):
    assert stat.S_IMODE(os.stat(served.socket_path).st_mode) == 0o600
    assert Path(served.pid_path).read_text().strip() == str(os.getpid())


def test_second_daemon_on_the_same_socket_refuses(served):
    with pytest.raises(daemon.AlreadyRunning):
        daemon.Daemon(served.socket_path, preload=False).start()
    assert entry.forward("fake", env_for("ADD"), b'{"cniVersion":"1.0.0","name":"n"}',
                         served.socket_path)[0] == 0


def test_stale_socket_is_replaced(short_dir):
    path = str(short_dir / "cni.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)  # a crashed daemon's leftover: exists, nobody listening
    stale.close()
    d = daemon.Daemon(path, preload=False, log_requests=False)
    d.start()
    try:
        code, _ = entry.forward("host-local", env_for("DEL"), host_local(short_dir), path)
        assert code == 0
    finally:
        d.stop()
    assert not os.path.exists(path) and not os.path.exists(d.pid_path)


def test_live_foreign_listener_and_non_socket_are_never_removed(short_dir):
    path = str(short_dir / "cni.sock")
    Path(path).write_text("not a socket")
    with pytest.raises(daemon.AlreadyRunning):
        daemon.Daemon(path, preload=False).start()
    assert Path(path).read_text() == "not a socket"
    os.unlink(path)
    foreign = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    foreign.bind(path)
    foreign.listen(1)
    try:
        with pytest.raises(daemon.AlreadyRunning):
            daemon.Daemon(path, preload=False).start()
        assert os.path.exists(path)
    finally:
        foreign.close()


def test_stop_waits_for_in_flight_requests(served):
    out: list[tuple[int, bytes]] = []
    t = threading.Thread(target=lambda: out.append(entry.forward(
        "fake", env_for("ADD"), b'{"cniVersion":"1.0.0","name":"n","sleep":0.5}', served.socket_path)))
    t.start()
    time.sleep(0.2)
    served.stop()
    t.join()
    assert out and out[0][0] == 0
    assert not os.path.exists(served.socket_path)


# ------------------------------------------------------ the real process + exec
def accepting(socket_path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(socket_path)
        except OSError:
            return False
        return True


def start_daemon_process(socket_path: str, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "cni.daemon", "--socket", socket_path, *extra],
                            cwd=REPO, stdout=log.open("ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not accepting(socket_path):  # not just "exists": a stale socket may be lying there
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "daemon did not come up"
        time.sleep(0.02)
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bin")
    subprocess.run([sys.executable, "-m", "cni.install", "--dir", str(d)], check=True, cwd=REPO,
                   capture_output=True)
    return d


def exec_plugin(executable: Path, env: dict[str, str], stdin: bytes) -> tuple[int, bytes]:
    proc = subprocess.run([str(executable)], input=stdin, env=env, capture_output=True, timeout=60)
    return proc.returncode, proc.stdout


def test_daemon_process_serves_the_executables_and_stops_cleanly(installed, short_dir, tmp_path):
    sock = str(short_dir / "cni.sock")
    log = tmp_path / "daemon.log"
    proc = start_daemon_process(sock, log)  # with the real warm-up (pyroute2, every plugin)
    try:
        second = subprocess.run([sys.executable, "-m", "cni.daemon", "--socket", sock, "--no-preload"],
                                cwd=REPO, capture_output=True, timeout=60)
        assert second.returncode == 1 and b"refusing to start" in second.stderr
        results = {}
        for name, socket_env in (("daemon", sock), ("local", "")):
            env = {**env_for("ADD", cid=f"exec-{name}"), entry.SOCKET_ENV: socket_env}
            results[name] = exec_plugin(installed / "host-local", env, host_local(tmp_path / name))
        assert results["daemon"] == results["local"]
        assert results["daemon"][0] == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    text = log.read_text()
    assert "host-local ADD container=exec-daemon" in text, text
    assert "exec-local" not in text
    assert not os.path.exists(sock) and not os.path.exists(daemon.pid_file_of(sock))


def test_executable_falls_back_when_the_daemon_is_killed(installed, short_dir, tmp_path):
    sock = str(short_dir / "cni.sock")
    proc = start_daemon_process(sock, tmp_path / "daemon.log", "--no-preload")
    env = {**env_for("ADD"), entry.SOCKET_ENV: sock}
    assert exec_plugin(installed / "host-local", env, host_local(tmp_path))[0] == 0
    proc.kill()  # SIGKILL: the socket file stays behind, stale
    proc.wait(timeout=10)
    assert os.path.exists(sock)
    env["CNI_COMMAND"] = "DEL"
    assert exec_plugin(installed / "host-local", env, host_local(tmp_path)) == (0, b"")
    leases = [p for p in (tmp_path / "podnet").iterdir() if p.name[0].isdigit()]
    assert leases == []  # the DEL ran in-process and released the address


# -------------------------------------------------------------------- workers
def worker_pids(log: Path) -> list[int]:
    for line in reversed(log.read_text().splitlines()):
        if "worker(s): [" in line:
            return [int(p) for p in line.split("[")[-1].rstrip("]").split(",")]
    raise AssertionError(log.read_text())


def serving_pids(log: Path) -> set[int]:
    return {int(p) for p in re.findall(r"podnet-cni-daemon\[(\d+)\]: serving", log.read_text())}


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # exited, not yet reaped
    except FileNotFoundError:
        return True


def wait_until(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_dead_worker_is_replaced_and_sigterm_stops_every_worker(short_dir, tmp_path):
    sock, log = str(short_dir / "cni.sock"), tmp_path / "daemon.log"
    proc = start_daemon_process(sock, log, "--no-preload", "--workers", "2")
    try:
        assert wait_until(lambda: "worker(s): [" in log.read_text())
        first, second = worker_pids(log)
        os.kill(first, signal.SIGKILL)
        assert wait_until(lambda: f"worker {first} exited" in log.read_text())
        for i in range(6):  # served whichever worker accepts
            env = env_for("ADD", cid=f"w{i}")
            assert entry.forward("host-local", env, host_local(tmp_path), sock)[0] == 0
        assert wait_until(lambda: len(serving_pids(log)) >= 3)  # the replacement announced itself
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    workers = serving_pids(log) - {proc.pid}
    assert second in workers
    assert all(wait_until(lambda p=p: gone(p)) for p in workers)
    assert not os.path.exists(sock) and not os.path.exists(daemon.pid_file_of(sock))


def test_workers_exit_when_the_parent_is_killed(short_dir, tmp_path):
    sock, log = str(short_dir / "cni.sock"), tmp_path / "daemon.log"
    proc = start_daemon_process(sock, log, "--no-preload", "--workers", "2")
    assert wait_until(lambda: "worker(s): [" in log.read_text())
    pids = worker_pids(log)
    proc.kill()
    proc.wait(timeout=10)
    assert all(wait_until(lambda p=p: gone(p), timeout=15) for p in pids)
    # Their socket is stale now; the executables fall back and a new daemon takes over.
    assert entry.serve("host-local", {**env_for("DEL"), entry.SOCKET_ENV: sock}, host_local(tmp_path))[0] == 0
    again = start_daemon_process(sock, log, "--no-preload", "--workers", "1")
    again.send_signal(signal.SIGTERM)
    assert again.wait(timeout=30) == 0
