"""The runtime seam's pure parts: ids, CRI log records, state files, and the FakeRuntime."""

from __future__ import annotations

from pathlib import Path

import pytest

from podnet.runtime.base import (
    MAX_LOG_LINE,
    ContainerSpec,
    Mount,
    RuntimeFailure,
    StateDir,
    container_id,
    cri_records,
    cri_timestamp,
    list_ids,
    parse_cri_line,
)
from podnet.runtime.fake import FakeRuntime


def spec(name: str = "app", attempt: int = 0) -> ContainerSpec:
    return ContainerSpec(pod_uid="0123456789abcdef-ffff", pod_namespace="default", pod_name="p",
                         name=name, attempt=attempt, argv=["/bin/true"],
                         mounts=[Mount("/h", "/c", read_only=True)])


@pytest.mark.parametrize(("uid", "name", "attempt", "want"), [
    ("0123456789abcdef", "app", 0, "podnet-0123456789ab-app-0"),
    ("ABCDEF01-2345-6789", "Web_1", 3, "podnet-abcdef01-234-web-1-3"),
])
def test_container_id_is_deterministic(uid: str, name: str, attempt: int, want: str) -> None:
    assert container_id(uid, name, attempt) == want


def test_cri_timestamp_has_nanoseconds_utc() -> None:
    assert cri_timestamp(1_700_000_000_123_456_789) == "2023-11-14T22:13:20.123456789Z"


@pytest.mark.parametrize(("chunk", "tag", "body"), [
    (b"hello\n", b"F", b"hello"),
    (b"tail-without-newline", b"F", b"tail-without-newline"),
    (b"x" * MAX_LOG_LINE, b"P", b"x" * MAX_LOG_LINE),
])
def test_cri_records(chunk: bytes, tag: bytes, body: bytes) -> None:
    rec = cri_records("stderr", chunk, 0)
    assert rec == b"1970-01-01T00:00:00.000000000Z stderr " + tag + b" " + body + b"\n"


def test_parse_cri_line_keeps_spaces_in_message() -> None:
    assert parse_cri_line("t stdout F a b  c\n") == ("t", "stdout", "F", "a b  c")
    assert parse_cri_line("t stdout F") == ("t", "stdout", "F", "")


def test_spec_round_trips_through_state_dir(tmp_path: Path) -> None:
    s = spec()
    d = StateDir(str(tmp_path), s.id)
    Path(d.path).mkdir()
    d.write_json("spec.json", s.to_json())
    assert d.spec() == s
    assert list_ids(str(tmp_path)) == [s.id]
    (tmp_path / "not-ours").mkdir()
    assert list_ids(str(tmp_path)) == [s.id]


def test_state_dir_refuses_foreign_ids(tmp_path: Path) -> None:
    with pytest.raises(RuntimeFailure):
        StateDir(str(tmp_path), "../etc")


def test_fake_runtime_lifecycle() -> None:
    rt = FakeRuntime()
    s = spec()
    info = rt.create_and_start(s)
    assert info.state == "running" and info.labels["io.kubernetes.container.name"] == "app"
    rt.exec_results[(s.id, ("cat", "/ready"))] = (1, "no")
    assert rt.exec(s.id, ["cat", "/ready"], 1.0) == (1, "no")
    rt.stop(s.id, 5)
    assert rt.status(s.id).exit_code == 143 and rt.stop_graces[s.id] == 5
    with pytest.raises(RuntimeFailure):
        rt.exec(s.id, ["true"], 1.0)
    rt.remove(s.id)
    assert rt.list() == []
    rt.fail_start.add("bad")
    with pytest.raises(RuntimeFailure):
        rt.create_and_start(spec("bad"))
