"""The loopback plugin in pod namespaces, in-process and as the installed executable."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cni import loopback, skel
from podnet import execs, netns
from podnet.netlink import Netlink
from podnet.testing import cnirun
from podnet.testing.harness import Topology

CONF = {"cniVersion": "1.1.0", "name": "cni-loopback", "type": "loopback"}


def run(command: str, pod: str, conf: dict[str, Any] | None = None) -> tuple[int, dict[str, Any] | None]:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_NETNS": pod, "CNI_IFNAME": "eth0",
           "CNI_PATH": "/nonexistent"}
    code, out = skel.dispatch(loopback.PLUGIN, env, json.dumps(conf or CONF).encode())
    return code, (json.loads(out) if out.strip() else None)


def lo_up(pod: str) -> bool:
    with Netlink.open(pod) as nl:
        return nl.require_link("lo").up


def test_add_check_del_in_process(topo: Topology) -> None:
    pod = topo.add_pod_netns("lo1")
    execs.run(["ip", "link", "set", "lo", "down"], netns=pod)
    code, result = run("ADD", pod)
    assert code == 0, result
    assert result == {"cniVersion": "1.1.0",
                      "interfaces": [{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": pod}],
                      "ips": [{"interface": 0, "address": "127.0.0.1/8"},
                              {"interface": 0, "address": "::1/128"}]}
    assert lo_up(pod)
    assert execs.run(["ping", "-c1", "-W1", "127.0.0.1"], netns=pod, check=False).returncode == 0
    assert run("CHECK", pod, {**CONF, "prevResult": result})[0] == 0
    assert run("DEL", pod) == (0, None)
    assert not lo_up(pod)
    code, err = run("CHECK", pod, {**CONF, "prevResult": result})
    assert code == 1 and err is not None and err["msg"] == "loopback interface is down"


def test_prev_result_is_passed_through(topo: Topology) -> None:
    pod = topo.add_pod_netns("lo2")
    prev = {"cniVersion": "1.1.0", "ips": [{"address": "10.1.0.5/24"}]}
    code, result = run("ADD", pod, {**CONF, "prevResult": prev})
    assert code == 0 and result == prev


def test_del_succeeds_when_the_netns_is_gone(topo: Topology) -> None:
    pod = topo.add_pod_netns("lo3")
    netns.delete(os.path.basename(pod))
    assert run("DEL", pod) == (0, None)
    code, err = run("ADD", pod)
    assert code == 1 and err is not None and err["code"] == skel.UNKNOWN_CONTAINER


def test_real_executable(topo: Topology, cni_bin: Path) -> None:
    host, pod = topo.add_host(), topo.add_pod_netns("lo4")
    execs.run(["ip", "link", "set", "lo", "down"], netns=pod)
    kw: dict[str, Any] = {"cni_path": [str(cni_bin)], "container_id": "c1", "netns": pod}
    conf = {**CONF, "cniVersion": "0.3.1"}
    with netns.enter(host.name):
        result = cnirun.call("loopback", "ADD", conf, **kw)
        assert result is not None and result["cniVersion"] == "0.3.1"
        assert result["ips"][0] == {"version": "4", "interface": 0, "address": "127.0.0.1/8"}
        assert lo_up(pod)
        cnirun.call("loopback", "CHECK", {**conf, "cniVersion": "0.4.0", "prevResult": result}, **kw)
        cnirun.call("loopback", "DEL", conf, **kw)
        cnirun.call("loopback", "DEL", conf, **{**kw, "netns": ""})
    assert not lo_up(pod)
