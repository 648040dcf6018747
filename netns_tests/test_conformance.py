"""CNI spec conformance of the installed executables, as a runtime drives them.

Every supported cniVersion: the ADD result is rendered in that version, CHECK is allowed only
from 0.4.0, GC and STATUS only from 1.1.0, DEL is idempotent (repeated, empty CNI_NETNS, no
prevResult).  Errors come back as spec JSON on stdout with the right code.  Plugins run as real
processes inside a simulated host's namespace (`podnet.netns.enter` is inherited by the child).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cni import types
from podnet import netns
from podnet.testing import cnirun
from podnet.testing.harness import Host, Topology

RICH = [v for v in types.SUPPORTED if types.at_least(v, "0.3.0")]


@pytest.fixture
def host(topo: Topology) -> Host:
    return topo.add_host()


def conf(version: str, tmp: Path) -> dict[str, Any]:
    return {"cniVersion": version, "name": "conform", "type": "bridge", "bridge": "cnf0",
            "isGateway": True, "stateDir": str(tmp / "state"),
            "ipam": {"type": "host-local", "subnet": "10.66.0.0/24", "dataDir": str(tmp / "ipam"),
                     "routes": [{"dst": "0.0.0.0/0"}]}}


def run(host: Host, cni_bin: Path, command: str, c: dict[str, Any], cid: str, ns: str
        ) -> tuple[int, dict[str, Any] | None]:
    with netns.enter(host.name):
        code, out, _ = cnirun.exec_plugin("bridge", command, c, cni_path=[str(cni_bin)],
                                          container_id=cid, netns=ns)
    return code, out


def expect_shape(version: str, result: dict[str, Any]) -> None:
    assert result["cniVersion"] == version
    if not types.at_least(version, "0.3.0"):
        assert result["ip4"]["ip"].startswith("10.66.0.") and "ips" not in result
        return
    assert [i["name"] for i in result["interfaces"]][-1] == "eth0"
    ip = result["ips"][0]
    assert ip["interface"] == 2 and ip["address"].startswith("10.66.0.")
    if types.at_least(version, "1.0.0"):
        assert "version" not in ip
    else:
        assert ip["version"] == "4"


@pytest.mark.parametrize("version", types.SUPPORTED)
def test_verbs_in_every_version(host: Host, topo: Topology, cni_bin: Path, tmp_path: Path,
                                version: str) -> None:
    ns = topo.add_pod_netns("p" + version.replace(".", ""))
    c = conf(version, tmp_path)
    code, result = run(host, cni_bin, "ADD", c, "c1", ns)
    assert code == 0, result
    assert result is not None
    expect_shape(version, result)
    if types.at_least(version, "0.4.0"):
        assert run(host, cni_bin, "CHECK", {**c, "prevResult": result}, "c1", ns) == (0, None)
    else:
        code, err = run(host, cni_bin, "CHECK", c, "c1", ns)
        assert code == 1 and err is not None and err["code"] == 1
    for verb in ("GC", "STATUS"):
        code, out = run(host, cni_bin, verb, c, "", "")
        assert (code == 0) == types.at_least(version, "1.1.0"), out
    assert run(host, cni_bin, "DEL", {**c, "prevResult": result}, "c1", ns) == (0, None)
    assert run(host, cni_bin, "DEL", c, "c1", ns) == (0, None)  # repeated, no prevResult
    assert run(host, cni_bin, "DEL", c, "c1", "") == (0, None)  # empty CNI_NETNS


def test_duplicate_add_is_an_error_and_keeps_the_first(host: Host, topo: Topology, cni_bin: Path,
                                                       tmp_path: Path) -> None:
    ns = topo.add_pod_netns("dup")
    c = conf("1.1.0", tmp_path)
    code, first = run(host, cni_bin, "ADD", c, "c1", ns)
    assert code == 0 and first is not None
    code, err = run(host, cni_bin, "ADD", c, "c1", ns)
    assert code == 1 and err is not None and err["code"] == 100
    assert run(host, cni_bin, "CHECK", {**c, "prevResult": first}, "c1", ns) == (0, None)
    assert run(host, cni_bin, "DEL", c, "c1", ns) == (0, None)


@pytest.mark.parametrize("stdin,env,code", [
    (b"{not json", {}, 6),
    (json.dumps({"cniVersion": "0.9.0", "name": "x", "type": "bridge"}).encode(), {}, 1),
    (json.dumps({"cniVersion": "1.0.0", "name": "bad name", "type": "bridge"}).encode(), {}, 7),
    (json.dumps({"cniVersion": "1.0.0", "name": "x", "type": "bridge"}).encode(),
     {"CNI_IFNAME": ""}, 4),
])
def test_errors_are_spec_json_on_stdout(cni_bin: Path, stdin: bytes, env: dict[str, str],
                                        code: int) -> None:
    full = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/none",
            "CNI_IFNAME": "eth0", "CNI_PATH": str(cni_bin), **env}
    proc = subprocess.run([str(cni_bin / "bridge")], input=stdin, env=full, capture_output=True,
                          check=False)
    assert proc.returncode == 1
    err = json.loads(proc.stdout)
    assert err["code"] == code and err["msg"]
