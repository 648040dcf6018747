"""The on-disk store: the reference plugin's file layout, old id-only files, torn files, and the
flock that serialises threads, processes and a killed holder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from ipaddress import ip_address

import pytest

from cni import skel
from cni.ipam import allocator, config
from cni.ipam.allocator import Owner
from cni.ipam.disk_store import DiskStore, decode_owner, encode_owner


@pytest.fixture
def store(tmp_path) -> DiskStore:
    return DiskStore(str(tmp_path), "net")


def test_reserve_writes_reference_layout(store, tmp_path):
    with store.locked():
        assert store.reserve(ip_address("10.0.0.2"), Owner("cid", "eth0"), 0)
        assert store.reserve(ip_address("fd00::2"), Owner("cid", "eth0"), 1)
        assert not store.reserve(ip_address("10.0.0.2"), Owner("other", "eth0"), 0)
    net = tmp_path / "net"
    assert sorted(os.listdir(net)) == [
        "10.0.0.2", "fd00::2", "last_reserved_ip.0", "last_reserved_ip.1", "lock"]
    assert (net / "10.0.0.2").read_bytes() == b"cid\r\neth0"
    assert (net / "last_reserved_ip.0").read_bytes() == b"10.0.0.2"
    assert (net / "last_reserved_ip.1").read_bytes() == b"fd00::2"
    assert oct((net / "10.0.0.2").stat().st_mode & 0o777) == oct(0o644 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_held_reads_new_and_old_files_and_ignores_the_rest(store, tmp_path):
    net = tmp_path / "net"
    net.mkdir()
    (net / "10.0.0.2").write_bytes(b"cid\r\neth0")
    (net / "10.0.0.3").write_bytes(b"oldcid\n")  # pre-0.7 format: container ID only
    (net / "10.0.0.4").write_bytes(b"")  # a writer killed between create and write
    (net / "fd00::5").write_bytes(b"v6\r\nnet1")
    (net / "lock").write_bytes(b"")
    (net / "last_reserved_ip.0").write_bytes(b"10.0.0.2")
    (net / "notes.txt").write_bytes(b"cid\r\neth0")
    (net / "10.0.0.9").mkdir()
    with store.locked():
        held = store.held()
    assert held == {ip_address("10.0.0.2"): Owner("cid", "eth0"),
                    ip_address("10.0.0.3"): Owner("oldcid", None),
                    ip_address("10.0.0.4"): Owner("", None),  # never valid: GC frees it
                    ip_address("fd00::5"): Owner("v6", "net1")}


def test_owner_encoding_round_trip():
    assert encode_owner(Owner("c", "eth0")) == b"c\r\neth0"
    assert encode_owner(Owner("c", None)) == b"c"
    assert decode_owner(b"  c\r\neth0\n") == Owner("c", "eth0")
    assert decode_owner(b"c") == Owner("c", None)


def test_release_is_idempotent(store, tmp_path):
    with store.locked():
        store.reserve(ip_address("10.0.0.2"), Owner("c", "eth0"), 0)
        store.release(ip_address("10.0.0.2"))
        store.release(ip_address("10.0.0.2"))
        assert store.held() == {}


@pytest.mark.parametrize("content", [b"", b"10.0.", b"garbage", b"10.0.0.300"])
def test_torn_last_reserved_only_loses_round_robin(store, tmp_path, content):
    with store.locked():
        store.reserve(ip_address("10.0.0.7"), Owner("c", "eth0"), 0)
    (tmp_path / "net" / "last_reserved_ip.0").write_bytes(content)
    with store.locked():
        assert store.last_reserved(0) is None
        assert store.last_reserved(5) is None


def test_exists_and_ensure_writable(store, tmp_path):
    assert not store.exists()
    store.ensure_writable()
    assert store.exists()


def test_unusable_data_dir_is_an_io_failure(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    bad = DiskStore(str(tmp_path / "file"), "net")
    for action in (bad.ensure_dir, bad.ensure_writable):
        with pytest.raises(skel.CniError, match="creating") as err:
            action()
        assert err.value.code == skel.IO_FAILURE
    with pytest.raises(skel.CniError), bad.locked():
        pass


def test_allocator_over_disk_store_survives_a_reopen(tmp_path):
    rsets = config.load({"name": "net", "cniVersion": "1.1.0",
                         "ipam": {"ranges": [[{"subnet": "10.0.0.0/29"}]]}}, {}).range_sets
    first = allocator.allocate(DiskStore(str(tmp_path), "net"), rsets, [], "a", "eth0")
    second = allocator.allocate(DiskStore(str(tmp_path), "net"), rsets, [], "b", "eth0")
    assert [str(a.ip) for a in first + second] == ["10.0.0.2", "10.0.0.3"]


def test_lock_excludes_threads_of_one_process(store):
    order: list[str] = []
    inside = threading.Event()

    def holder() -> None:
        with store.locked():
            order.append("a-in")
            inside.set()
            time.sleep(0.1)
            order.append("a-out")

    t = threading.Thread(target=holder)
    t.start()
    inside.wait(5)
    with store.locked():
        order.append("b-in")
    t.join()
    assert order == ["a-in", "a-out", "b-in"]


HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""


def test_lock_is_shared_with_other_processes_and_freed_by_sigkill(store):
    store.ensure_dir()
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, os.path.join(store.dir, "lock")],
                            stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"locked\n"
        got = threading.Event()

        def taker() -> None:
            with store.locked():
                got.set()

        t = threading.Thread(target=taker, daemon=True)
        t.start()
        assert not got.wait(0.2), "lock taken while another process holds it"
        os.kill(proc.pid, signal.SIGKILL)
        assert got.wait(5), "lock stuck after its holder was killed"
        t.join(5)
    finally:
        proc.kill()
        proc.wait()
