"""podnet.cluster.up without root: refusing a second cluster, and `down` from a manifest."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from podnet import cli
from podnet.cluster import plan as P
from podnet.cluster import up
from podnet.cluster.manifest import ProcRecord


def test_a_second_up_in_one_state_dir_is_refused(tmp_path: Path) -> None:
    plan = P.make_plan(str(tmp_path / "c"), 1)
    m = up._begin(plan)
    assert m.info["keep_state_dir"] is False and m.info["nodes"] == ["node-1"]
    with pytest.raises(up.ClusterError, match="already up"):
        up._begin(plan)


def test_a_non_empty_foreign_state_dir_is_refused(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("mine")
    with pytest.raises(up.ClusterError, match="not empty"):
        up._begin(P.make_plan(str(tmp_path), 1))
    assert (tmp_path / "precious.txt").read_text() == "mine"


def test_down_without_a_cluster_is_false(tmp_path: Path) -> None:
    assert up.down(tmp_path, echo=lambda _m: None) is False


def test_down_removes_recorded_dirs_and_keeps_a_pre_existing_state_dir(tmp_path: Path) -> None:
    state, run = tmp_path / "state", tmp_path / "run"
    state.mkdir()
    (run / "node-1").mkdir(parents=True)
    m = up._begin(P.make_plan(str(state), 1))
    assert m.info["keep_state_dir"] is True
    m.add_dir(run)
    m.add_process(ProcRecord(name="gone", pid=2**22 + 3, start_ticks=5, argv=[], log=""))
    (state / "logs").mkdir()
    (state / "kubeconfig").write_text("{}")
    said: list[str] = []
    assert up.down(state, echo=said.append) is True
    assert said == [f"stopping gone (pid {2**22 + 3})"]
    assert not run.exists()
    assert state.is_dir() and list(state.iterdir()) == []


def test_down_removes_a_state_dir_it_created(tmp_path: Path) -> None:
    state = tmp_path / "new"
    up._begin(P.make_plan(str(state), 1))
    assert up.down(state, echo=lambda _m: None) is True
    assert not state.exists()


def test_node_condition() -> None:
    node = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    assert up.condition(node, "Ready") == "True"
    assert up.condition(node, "NetworkUnavailable") == "Unknown"
    assert up.condition({}, "Ready") == "Unknown"


def test_cli_status_and_down_without_a_cluster(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(cli.main, ["status", "--state-dir", str(tmp_path)])
    assert res.exit_code == 1 and "no cluster in" in res.output
    res = runner.invoke(cli.main, ["down", "--state-dir", str(tmp_path)])
    assert res.exit_code == 0 and "no cluster in" in res.output


def test_cli_up_refuses_bad_options_before_creating_anything(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli.main, ["up", "--nodes", "0", "--state-dir", str(tmp_path / "x")])
    assert res.exit_code == 2
    assert not (tmp_path / "x").exists()


def test_down_removes_the_parents_up_created_but_not_older_ones(tmp_path: Path) -> None:
    state = tmp_path / "a" / "b" / "state"
    up._begin(P.make_plan(str(state), 1))
    assert up.down(state, echo=lambda _m: None) is True
    assert not (tmp_path / "a").exists() and tmp_path.exists()


def test_down_keeps_a_created_parent_that_gained_other_files(tmp_path: Path) -> None:
    state = tmp_path / "a" / "state"
    up._begin(P.make_plan(str(state), 1))
    (tmp_path / "a" / "other").write_text("not ours")
    assert up.down(state, echo=lambda _m: None) is True
    assert not state.exists() and (tmp_path / "a" / "other").exists()
