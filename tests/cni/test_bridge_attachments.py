"""cni.attachments: the per-attachment record store and the ADD undo stack."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from cni import attachments
from cni.attachments import Attachment, Store, Undo


def test_put_get_remove_round_trip(tmp_path: Path) -> None:
    store = Store.for_network(str(tmp_path), "net1")
    assert store.get("c1", "eth0") is None and not store.exists("c1", "eth0")
    att = Attachment(container_id="c1", ifname="eth0", netns="/run/netns/p", host_iface="veth0",
                     ips=["10.1.0.5/24"], extra={"bridge": "cni0"})
    store.put(att)
    assert store.get("c1", "eth0") == att
    att.complete, att.result = True, {"cniVersion": "1.1.0", "ips": []}
    store.put(att)
    assert store.get("c1", "eth0") == att
    assert store.remove("c1", "eth0") is True
    assert store.remove("c1", "eth0") is False
    assert store.get("c1", "eth0") is None


def test_records_are_per_network_and_sorted(tmp_path: Path) -> None:
    a, b = Store.for_network(str(tmp_path), "a"), Store.for_network(str(tmp_path), "b")
    for cid in ("c2", "c1"):
        a.put(Attachment(container_id=cid, ifname="eth0"))
    b.put(Attachment(container_id="c3", ifname="net1"))
    assert [r.key for r in a.records()] == [("c1", "eth0"), ("c2", "eth0")]
    assert [r.key for r in b.records()] == [("c3", "net1")]
    assert Store.for_network(str(tmp_path), "none").records() == []


def test_writes_leave_no_temp_file(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "s"))
    store.put(Attachment(container_id="c1", ifname="eth0"))
    assert os.listdir(store.directory) == ["c1:eth0.json"]


def test_an_unreadable_record_still_names_its_attachment(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    (tmp_path / "c1:eth0.json").write_text("{torn")
    (tmp_path / "c2:eth0.json").write_text('{"container_id": "other", "ifname": "eth0"}')
    assert [r.key for r in store.records()] == [("c1", "eth0"), ("c2", "eth0")]
    assert store.get("c1", "eth0") == Attachment(container_id="c1", ifname="eth0")


def test_stale_temp_files_are_collected_and_never_listed(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    store.put(Attachment(container_id="c1", ifname="eth0"))
    (tmp_path / ".c2:eth0.json.tmp.123").write_text("{")
    assert [r.key for r in store.records()] == [("c1", "eth0")]
    assert store.remove_stale_temp_files() == 1
    assert os.listdir(tmp_path) == ["c1:eth0.json"]


@pytest.mark.parametrize(("name", "key"), [
    ("c1:eth0.json", ("c1", "eth0")),
    ("a.b-c_d:net-1.json", ("a.b-c_d", "net-1")),
    (".c1:eth0.json.tmp.5", None),
    ("c1.json", None),
    ("notes.txt", None),
])
def test_file_names(name: str, key: tuple[str, str] | None) -> None:
    assert attachments.parse_file_name(name) == key
    if key:
        assert attachments.file_name(*key) == name


def test_undo_runs_newest_first_only_on_failure() -> None:
    done: list[str] = []
    with Undo() as undo:
        undo.push("a", lambda: done.append("a"))
    assert done == []
    with pytest.raises(RuntimeError), Undo() as undo:
        undo.push("a", lambda: done.append("a"))
        undo.push("b", lambda: done.append("b"))
        raise RuntimeError("boom")
    assert done == ["b", "a"]


def test_undo_continues_past_a_failing_step_and_keeps_the_record() -> None:
    done: list[str] = []

    def fail() -> None:
        raise OSError("device busy")

    with pytest.raises(RuntimeError) as err, Undo() as undo:
        undo.push("drop record", lambda: done.append("record"), needs_clean=True)
        undo.push("ipam del", lambda: done.append("ipam"))
        undo.push("delete veth", fail)
        raise RuntimeError("boom")
    assert done == ["ipam"]  # the record stays so that DEL or GC can finish the job
    assert err.value.__notes__ == ["rollback incomplete: delete veth: device busy"]


def test_locked_excludes_other_threads(tmp_path: Path) -> None:
    path = str(tmp_path / "locks" / "bridge-cni0.lock")
    order: list[str] = []
    inside = threading.Event()

    def other() -> None:
        inside.wait()
        with attachments.locked(path):
            order.append("other")

    t = threading.Thread(target=other)
    t.start()
    with attachments.locked(path):
        inside.set()
        t.join(timeout=0.2)
        order.append("first")
    t.join()
    assert order == ["first", "other"]
