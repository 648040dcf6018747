"""The real runner's command lines, with podnet.execs.run replaced by a recorder."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from podnet import execs
from podnet.errors import ExecError
from podnet.xtables.iptables import Iptables, NotConverged
from podnet.xtables.ruleset import Ruleset

EMPTY_NAT = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n" \
            ":POSTROUTING ACCEPT [0:0]\nCOMMIT\n"


class Recorder:
    def __init__(self, save_output: str = EMPTY_NAT, fail: ExecError | None = None) -> None:
        self.calls: list[tuple[list[str], dict[str, Any]]] = []
        self.save_output = save_output
        self.fail = fail

    def __call__(self, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append((list(argv), kwargs))
        if self.fail is not None and argv[0].endswith("-save"):
            raise self.fail
        out = self.save_output if argv[0].endswith("-save") else ""
        return subprocess.CompletedProcess(argv, 0, out, "")


def desired() -> Ruleset:
    rs = Ruleset()
    rs.table("nat").chain("KUBE-A").append("-j RETURN")
    return rs


@pytest.mark.parametrize(("version", "prog"), [(4, "iptables"), (6, "ip6tables")])
def test_apply_is_save_then_one_restore_with_wait_and_noflush(monkeypatch, version: int, prog: str) -> None:
    rec = Recorder()
    monkeypatch.setattr(execs, "run", rec)
    ipt = Iptables(ip_version=version, netns="t1-x")
    rs = desired()
    rs.ip_version = version
    payload = ipt.apply(rs, "KUBE-")
    (save_argv, save_kw), (restore_argv, restore_kw) = rec.calls
    assert save_argv == [f"{prog}-save", "-t", "nat"]
    assert restore_argv == [f"{prog}-restore", "-w", "5", "-W", "100000", "--noflush"]
    assert save_kw["netns"] == restore_kw["netns"] == "t1-x"
    assert restore_kw["input"] == payload == "*nat\n:KUBE-A - [0:0]\n-A KUBE-A -j RETURN\nCOMMIT\n"


def test_noop_apply_runs_only_save(monkeypatch) -> None:
    rec = Recorder(save_output=EMPTY_NAT.replace("COMMIT", ":KUBE-A - [0:0]\n-A KUBE-A -j RETURN\nCOMMIT"))
    monkeypatch.setattr(execs, "run", rec)
    assert Iptables().apply(desired(), "KUBE-") == ""
    assert [argv[0] for argv, _ in rec.calls] == ["iptables-save"]


def test_check_converged_saves_again_after_restore(monkeypatch) -> None:
    rec = Recorder()
    monkeypatch.setattr(execs, "run", rec)
    with pytest.raises(NotConverged):  # the recorder never changes what save returns
        Iptables(check_converged=True).apply(desired(), "KUBE-")
    assert [argv[0] for argv, _ in rec.calls] == ["iptables-save", "iptables-restore", "iptables-save"]


def test_full_restore_omits_noflush(monkeypatch) -> None:
    rec = Recorder()
    monkeypatch.setattr(execs, "run", rec)
    Iptables(wait=2).restore("*nat\nCOMMIT\n", noflush=False)
    assert rec.calls[0][0] == ["iptables-restore", "-w", "2", "-W", "100000"]


def test_missing_table_in_legacy_save_is_empty(monkeypatch) -> None:
    monkeypatch.setattr(execs, "run", Recorder(fail=ExecError(["iptables-save"], 1,
                                                                "iptables-save: Table `nat' does not exist")))
    assert Iptables().save("nat") == ""
    monkeypatch.setattr(execs, "run", Recorder(fail=ExecError(["iptables-save"], 1, "Permission denied")))
    with pytest.raises(ExecError):
        Iptables().save("nat")


def test_bad_ip_version() -> None:
    with pytest.raises(ValueError):
        Iptables(ip_version=5)
