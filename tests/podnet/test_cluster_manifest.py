"""podnet.cluster.manifest and supervise: the record of what `up` made; stop only by recorded PID."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from podnet.cluster.manifest import Manifest, ProcRecord, is_alive, start_ticks
from podnet.cluster.supervise import component, spawn, stop
from podnet.testing.wait import wait_until


def test_round_trip_and_each_change_is_saved(tmp_path: Path) -> None:
    m = Manifest(path=tmp_path / "manifest.json", prefix="pnx", info={"api_port": 1})
    m.save()
    m.add_namespace("pnx-fab")
    m.add_namespace("pnx-fab")  # recorded once
    m.add_dir(tmp_path / "run")
    m.add_process(ProcRecord(name="etcd", pid=1, start_ticks=2, argv=["etcd"], log="l", netns="pnx-cp"))
    back = Manifest.load(tmp_path / "manifest.json")
    assert back.prefix == "pnx" and back.namespaces == ["pnx-fab"]
    assert back.dirs == [str(tmp_path / "run")] and back.info == {"api_port": 1}
    assert back.process("etcd") == m.processes[0]
    assert back.process("nope") is None
    assert not (tmp_path / "manifest.tmp").exists()


def test_start_ticks_tells_a_reused_pid_from_ours() -> None:
    ticks = start_ticks(os.getpid())
    assert ticks is not None
    me = ProcRecord(name="me", pid=os.getpid(), start_ticks=ticks, argv=[], log="")
    assert is_alive(me)
    assert not is_alive(ProcRecord(name="other", pid=os.getpid(), start_ticks=ticks + 1, argv=[], log=""))
    assert start_ticks(2**22 + 12345) is None  # above pid_max: never a process


def test_spawn_records_the_pid_before_returning_and_stop_ends_it(tmp_path: Path) -> None:
    m = Manifest(path=tmp_path / "manifest.json")
    rec = spawn(m, "sleeper", [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
                tmp_path / "logs" / "sleeper.log")
    assert Manifest.load(m.path).process("sleeper") == rec
    assert is_alive(rec)
    stop(rec, grace=5)
    assert not is_alive(rec)
    stop(rec)  # already gone: no signal sent to whatever may reuse the PID


def test_stop_kills_a_process_that_ignores_sigterm(tmp_path: Path) -> None:
    m = Manifest(path=tmp_path / "manifest.json")
    code = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(60)")
    rec = spawn(m, "stubborn", [sys.executable, "-c", code], tmp_path / "stubborn.log")
    wait_until(lambda: "ready" in (tmp_path / "stubborn.log").read_text(), 10, "SIGTERM ignored")
    stop(rec, grace=0.3)
    assert not is_alive(rec)


def test_component_prefers_the_console_script() -> None:
    argv = component("podnet", "podnet.cli")
    assert argv == [str(Path(sys.executable).parent / "podnet")]
    assert component("no-such-script", "x.y") == [sys.executable, "-m", "x.y"]
