"""What an installed plugin executable imports, per path (each import is paid on every exec).

The executable runs under a driver that reports `sys.modules` at the moment it exits (the
forward path leaves through posix._exit, the others through sys.exit), so lazy imports count.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cni import daemon, entry

REPO = Path(__file__).resolve().parents[2]
HEAVY = {"pyroute2", "click", "scapy", "etcd3"}
# The forward path promises more: only C modules beyond the interpreter's own start-up set.
NOT_ON_FORWARD_PATH = {"os", "json", "re", "socket", "dataclasses", "enum", "cni.skel", "cni.plugins",
                       "ipaddress", "typing", "__future__"}

DRIVER = """
import posix, sys
def _report():
    sys.stderr.write("MODULES:" + ",".join(sorted(sys.modules)) + "\\n")
    sys.stderr.flush()
def _exit(code, _real=posix._exit):
    _report()
    _real(code)
def _sys_exit(code=0, _real=sys.exit):
    _report()
    _real(code)
posix._exit, sys.exit = _exit, _sys_exit
path = sys.argv[1]
sys.argv = [path]
exec(compile(open(path).read(), path, "exec"), {"__name__": "__main__"})
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bin")
    subprocess.run([sys.executable, "-m", "cni.install", "--dir", str(d)], check=True, cwd=REPO,
                   capture_output=True)
    return d


def modules_loaded(executable: Path, env: dict[str, str], stdin: bytes) -> tuple[set[str], bytes]:
    """Run the executable exactly as its shebang would (same interpreter, -IS) under the driver."""
    interpreter, flags = executable.read_text().splitlines()[0][2:].split(" ")
    proc = subprocess.run([interpreter, flags, "-c", DRIVER, str(executable)], input=stdin, env=env,
                          capture_output=True, timeout=60)
    lines = [ln for ln in proc.stderr.decode().splitlines() if ln.startswith("MODULES:")]
    assert lines, proc.stderr.decode()
    return set(lines[-1][len("MODULES:"):].split(",")), proc.stdout


def top_level(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


def host_local_conf(data_dir: Path) -> bytes:
    return json.dumps({"cniVersion": "1.0.0", "name": "podnet", "ipam": {
        "type": "host-local", "dataDir": str(data_dir), "ranges": [[{"subnet": "10.9.0.0/24"}]]}}).encode()


def cni_env(command: str, **extra: str) -> dict[str, str]:
    return {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/unused",
            "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent", **extra}


@pytest.fixture
def running_daemon() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="cniimp", dir="/tmp") as d:
        served = daemon.Daemon(f"{d}/cni.sock", preload=False, log_requests=False)
        served.start()
        yield served.socket_path
        served.stop()


@pytest.mark.parametrize("plugin", ["bridge", "host-local", "loopback", "portmap"])
def test_version_path_imports_nothing_heavy(installed, plugin):
    modules, out = modules_loaded(installed / plugin, {"CNI_COMMAND": "VERSION"}, b'{"cniVersion":"1.0.0"}')
    assert json.loads(out)["cniVersion"] == "1.0.0"
    assert not top_level(modules) & HEAVY
    assert f"cni.{plugin.replace('-', '_')}" not in modules  # answered without the plugin module


def test_forward_path_imports_only_c_modules(installed, running_daemon, tmp_path):
    env = cni_env("ADD", **{entry.SOCKET_ENV: running_daemon})
    modules, out = modules_loaded(installed / "bridge", env, b"{}")  # any reply will do
    assert json.loads(out)["code"]  # the daemon answered (with an error: the config is empty)
    assert not top_level(modules) & HEAVY
    assert not modules & NOT_ON_FORWARD_PATH, sorted(modules & NOT_ON_FORWARD_PATH)
    modules, out = modules_loaded(installed / "host-local", env, host_local_conf(tmp_path))
    assert json.loads(out)["ips"]
    assert not modules & NOT_ON_FORWARD_PATH


def test_host_local_in_process_path_imports_nothing_heavy(installed, tmp_path):
    env = cni_env("ADD", **{entry.SOCKET_ENV: ""})
    modules, out = modules_loaded(installed / "host-local", env, host_local_conf(tmp_path))
    assert json.loads(out)["ips"][0]["address"] == "10.9.0.2/24"
    assert "cni.host_local" in modules  # it really ran here
    assert not top_level(modules) & HEAVY, sorted(top_level(modules) & HEAVY)
