"""`podnet cni install`: real executables any runtime can exec, on the real interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PLUGINS = ("bridge", "flannel", "host-local", "loopback", "portmap")


def install(tmp_path: Path) -> Path:
    podnet = Path(sys.executable).parent / "podnet"
    subprocess.run([str(podnet), "cni", "install", "--dir", str(tmp_path)], check=True,
                   capture_output=True)
    return tmp_path


def test_install_writes_every_plugin_executable(tmp_path: Path) -> None:
    d = install(tmp_path)
    for plugin in PLUGINS:
        assert os.access(d / plugin, os.X_OK)
        assert f"# podnet-cni-plugin: {plugin}" in (d / plugin).read_text()


def test_interpreter_line_is_a_real_binary_not_a_shim(tmp_path: Path) -> None:
    shebang = (install(tmp_path) / "bridge").read_text().splitlines()[0]
    interpreter, flags = shebang[2:].split(" ")
    assert flags == "-IS"
    assert os.path.realpath(interpreter) == interpreter, "symlinked interpreter"
    assert "shims" not in interpreter
    with open(interpreter, "rb") as f:
        assert f.read(4) == b"\x7fELF", "interpreter must be a binary, not a wrapper script"


def test_installed_plugins_answer_version(tmp_path: Path) -> None:
    d = install(tmp_path)
    for plugin in PLUGINS:
        out = subprocess.run([str(d / plugin)], input=b'{"cniVersion":"0.3.1"}', capture_output=True,
                             env={"CNI_COMMAND": "VERSION"}, check=True).stdout
        assert json.loads(out) == {"cniVersion": "0.3.1", "supportedVersions":
                                   ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}


def test_reinstall_is_idempotent(tmp_path: Path) -> None:
    install(tmp_path)
    install(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(PLUGINS)
