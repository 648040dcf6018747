"""cni.entry: the wire format, and when the executable forwards, falls back or gives up."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cni import daemon, entry, skel

ENV = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c1", "CNI_NETNS": "", "CNI_IFNAME": "eth0",
       "CNI_PATH": "/nonexistent"}


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """Unix socket paths are limited to 107 bytes; pytest's tmp_path can be longer."""
    with tempfile.TemporaryDirectory(prefix="cnient", dir="/tmp") as d:
        yield Path(d)


def host_local_conf(data_dir: Path, version: str = "1.0.0") -> bytes:
    return json.dumps({"cniVersion": version, "name": "podnet", "ipam": {
        "type": "host-local", "dataDir": str(data_dir), "ranges": [[{"subnet": "10.9.0.0/24"}]]}}).encode()


# ------------------------------------------------------------------ wire format
env_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)


@settings(max_examples=200, deadline=None)
@given(plugin=st.sampled_from(sorted(daemon.plugins.MODULES)),
       env=st.dictionaries(env_text, env_text, max_size=6), stdin=st.binary(max_size=200))
def test_request_round_trips_any_bytes(plugin, env, stdin):
    line = entry.encode_request(plugin, env, stdin)
    assert line.endswith(b"\n") and line.count(b"\n") == 1  # one line, ASCII only
    assert line.isascii()
    assert daemon.decode_request(line) == (plugin, env, stdin, None)
    with_netns = entry.encode_request(plugin, env, stdin, "4:4026531840")
    assert daemon.decode_request(with_netns).netns == "4:4026531840"


@settings(max_examples=200, deadline=None)
@given(code=st.integers(min_value=0, max_value=255), stdout=st.binary(max_size=300))
def test_reply_round_trips_any_bytes(code, stdout):
    line = entry.encode_reply(code, stdout)
    assert line.isascii() and line.count(b"\n") == 1
    assert entry.decode_reply(line) == (code, stdout)


def test_reply_in_another_layout_goes_through_json():
    line = json.dumps({"stdout": '{"a": 1}\n', "code": 1}, indent=1).encode()
    assert entry.decode_reply(line) == (1, b'{"a": 1}\n')


@pytest.mark.parametrize("line", [b"", b"garbage\n", b'{"code":"0","stdout":""}\n', b"[1]\n",
                                  b'{"code":0,"stdout":"x"} trailing\n'])
def test_what_is_not_a_reply_is_a_value_error(line):
    with pytest.raises(ValueError):
        entry.decode_reply(line)


def test_environ_is_exactly_os_environ():
    assert entry.environ() == dict(os.environ)


def test_error_output_matches_skel_format():
    out = entry.error_output(11, "later", b'{"cniVersion":"0.4.0"}')
    assert out == b'{"cniVersion":"0.4.0","code":11,"msg":"later"}\n'
    assert json.loads(entry.error_output(5, "x", b"\xff"))["cniVersion"] == "1.1.0"


# ------------------------------------------------------------- choosing a path
def test_version_is_answered_without_any_socket(monkeypatch):
    monkeypatch.setattr(entry, "forward", lambda *a, **k: pytest.fail("VERSION was forwarded"))
    code, out = entry.serve("bridge", {"CNI_COMMAND": "VERSION", entry.SOCKET_ENV: "/x"},
                            b'{"cniVersion":"0.4.0"}')
    assert code == 0 and json.loads(out)["cniVersion"] == "0.4.0"


def test_missing_socket_runs_in_process(tmp_path):
    env = {**ENV, entry.SOCKET_ENV: str(tmp_path / "absent.sock")}
    stdin = host_local_conf(tmp_path)
    assert entry.serve("host-local", env, stdin) == entry.run_local("host-local", env, stdin)


def test_empty_socket_setting_never_forwards(monkeypatch, tmp_path):
    monkeypatch.setattr(entry, "forward", lambda *a, **k: pytest.fail("forwarded"))
    code, _ = entry.serve("host-local", {**ENV, entry.SOCKET_ENV: ""}, host_local_conf(tmp_path))
    assert code == 0


def test_stale_socket_runs_in_process(short_dir):
    path = str(short_dir / "stale.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)  # bound, never listening: connect gets ECONNREFUSED, like a crashed daemon's
    try:
        code, out = entry.serve("host-local", {**ENV, entry.SOCKET_ENV: path}, host_local_conf(short_dir))
        assert (code, out) == (0, b"")
    finally:
        s.close()


class FakeDaemon:
    """A listener that takes the request line and then misbehaves in a chosen way."""

    def __init__(self, path: str, behaviour: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        self.behaviour = behaviour
        self.requests = 0
        self.release = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                daemon.read_request(conn)
                self.requests += 1
                if self.behaviour == "hang":
                    self.release.wait(10)
                elif self.behaviour == "garbage":
                    conn.sendall(b"not a reply\n")
                # "close": hang up without a reply, like a daemon killed mid-request

    def close(self) -> None:
        self.release.set()
        self.sock.close()


@pytest.fixture
def fake_daemon(short_dir) -> Iterator[callable]:
    made: list[FakeDaemon] = []

    def make(behaviour: str) -> tuple[FakeDaemon, str]:
        path = str(short_dir / f"{behaviour}.sock")
        made.append(FakeDaemon(path, behaviour))
        return made[-1], path

    yield make
    for d in made:
        d.close()


@pytest.mark.parametrize("behaviour", ["close", "garbage"])
def test_add_lost_by_the_daemon_is_try_again_not_rerun(fake_daemon, short_dir, behaviour, monkeypatch):
    fake, path = fake_daemon(behaviour)
    monkeypatch.setattr(entry, "run_local", lambda *a: pytest.fail("ADD re-run in process"))
    env = {**ENV, "CNI_COMMAND": "ADD", "CNI_NETNS": "/run/netns/x", entry.SOCKET_ENV: path}
    code, out = entry.serve("host-local", env, host_local_conf(short_dir, "0.4.0"))
    err = json.loads(out)
    assert (code, err["code"], err["cniVersion"]) == (1, skel.TRY_AGAIN, "0.4.0")
    assert fake.requests == 1


@pytest.mark.parametrize("behaviour", ["close", "garbage"])
def test_del_lost_by_the_daemon_is_rerun_in_process(fake_daemon, short_dir, behaviour):
    fake, path = fake_daemon(behaviour)
    code, out = entry.serve("host-local", {**ENV, entry.SOCKET_ENV: path}, host_local_conf(short_dir))
    assert (code, out, fake.requests) == (0, b"", 1)


def test_daemon_timeout_is_try_again_even_for_del(fake_daemon, short_dir, monkeypatch):
    _, path = fake_daemon("hang")
    monkeypatch.setattr(entry, "run_local", lambda *a: pytest.fail("DEL run while the daemon may be"))
    env = {**ENV, entry.SOCKET_ENV: path, entry.TIMEOUT_ENV: "0.3"}
    code, out = entry.serve("host-local", env, host_local_conf(short_dir))
    assert code == 1 and json.loads(out)["code"] == skel.TRY_AGAIN
    assert "0.3 s" in json.loads(out)["msg"]


def test_unloadable_plugin_is_error_json_not_a_traceback(monkeypatch):
    monkeypatch.setitem(daemon.plugins.MODULES, "broken", "tests.cni.no_such_module")
    code, out = entry.run_local("broken", ENV, b'{"cniVersion":"1.0.0","name":"n"}')
    err = json.loads(out)
    assert (code, err["code"], err["details"]) == (1, skel.INTERNAL, "ModuleNotFoundError")


def test_netns_id_names_this_threads_namespace():
    st = os.stat("/proc/thread-self/ns/net")
    assert entry.netns_id() == f"{st.st_dev}:{st.st_ino}"
    assert entry.netns_id("/nonexistent") is None
