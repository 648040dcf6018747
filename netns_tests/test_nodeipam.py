"""Node IPAM in podnet-controller-manager against a real podnet-apiserver: distinct pod CIDRs in range,
a user-set CIDR respected, a restart that reassigns nothing, a deleted node's CIDR reused; an exhausted
range makes a node wait (CIDRNotAvailable) until a release."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from netns_tests.apiserver_fixtures import ApiServerProcess, component_command, component_process
from podnet.api.client import EVENTS, NODES, ApiError, Client
from podnet.testing.wait import wait_until

CLUSTER = ipaddress.ip_network("10.244.0.0/16")
COMMAND = [*component_command("podnet-controller-manager", "controlplane.controllers"),
           "--leader-elect=false", "--controllers", "nodeipam", "--allocate-node-cidrs",
           f"--cluster-cidr={CLUSTER}", "--node-cidr-mask-size=24"]


def _node(name: str, cidr: str | None = None) -> dict[str, Any]:
    node: dict[str, Any] = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}
    if cidr:
        node["spec"] = {"podCIDR": cidr, "podCIDRs": [cidr]}
    return node


def _cidrs(client: Client) -> dict[str, str | None]:
    return {n["metadata"]["name"]: (n.get("spec") or {}).get("podCIDR") for n in client.list(NODES)["items"]}


def _all_assigned(client: Client, names: list[str]) -> bool:
    cidrs = _cidrs(client)
    return all(cidrs.get(n) for n in names)


def _stop(proc: subprocess.Popen[bytes], log_path: Path) -> None:
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(15) == 0
    assert b"Traceback" not in log_path.read_bytes()


def test_nodeipam_assigns_survives_restart_and_reuses(client: Client, apiserver: ApiServerProcess,
                                                       tmp_path: Path) -> None:
    client.create(NODES, _node("preset", "10.244.0.0/24"))   # a user's choice, inside the range
    client.create(NODES, _node("outside", "192.168.9.0/24"))  # outside: left alone
    first = tmp_path / "cm-1.log"
    names = [f"node-{i}" for i in range(1, 6)]
    with component_process(apiserver, first, COMMAND) as proc:
        for name in names:
            client.create(NODES, _node(name))
        wait_until(lambda: _all_assigned(client, names), 20.0, "5 nodes with podCIDRs")
        cidrs = _cidrs(client)
        nets = [ipaddress.ip_network(str(cidrs[n])) for n in names]
        assert all(net.subnet_of(CLUSTER) and net.prefixlen == 24 for net in nets)  # type: ignore[arg-type]
        assert sorted(map(str, nets)) == [f"10.244.{i}.0/24" for i in range(1, 6)]  # lowest free, distinct
        assert (cidrs["preset"], cidrs["outside"]) == ("10.244.0.0/24", "192.168.9.0/24")
        node = client.get(NODES, "node-1")
        assert node["spec"]["podCIDRs"] == [node["spec"]["podCIDR"]]
        # set once: the API server refuses to move it
        try:
            client.patch(NODES, "node-1", {"spec": {"podCIDR": "10.244.99.0/24", "podCIDRs": None}})
        except ApiError as e:
            assert e.code == 422, e
        else:
            raise AssertionError("spec.podCIDR changed after it was set")
        _stop(proc, first)

    second = tmp_path / "cm-2.log"
    with component_process(apiserver, second, COMMAND) as proc:
        wait_until(lambda: b"caches synced" in second.read_bytes(), 20.0, "the new manager's caches")
        client.create(NODES, _node("node-6"))
        wait_until(lambda: _all_assigned(client, ["node-6"]), 20.0, "node-6 podCIDR")
        after = _cidrs(client)
        assert after["node-6"] == "10.244.6.0/24"  # the rebuilt occupancy skipped 0..5
        assert {n: after[n] for n in cidrs} == cidrs  # nothing reassigned

        freed = after["node-3"]
        started = time.monotonic()
        client.delete(NODES, "node-3")
        wait_until(lambda: "node-3" not in _cidrs(client), 10.0, "node-3 gone")
        client.create(NODES, _node("node-7"))
        wait_until(lambda: _all_assigned(client, ["node-7"]), 20.0, "node-7 podCIDR")
        print(f"node-3 deleted -> node-7 got its CIDR in {time.monotonic() - started:.2f}s")
        assert _cidrs(client)["node-7"] == freed
        _stop(proc, second)


def test_nodeipam_exhausted_range_waits_for_a_release(client: Client, apiserver: ApiServerProcess,
                                                      tmp_path: Path) -> None:
    command = [*COMMAND[:-2], "--cluster-cidr=10.99.0.0/23", "--node-cidr-mask-size=24"]
    log_path = tmp_path / "cm.log"
    with component_process(apiserver, log_path, command) as proc:
        client.create(NODES, _node("a"))  # one after the other: "a" takes the lower subnet
        wait_until(lambda: _all_assigned(client, ["a"]), 20.0, "a podCIDR")
        client.create(NODES, _node("b"))
        wait_until(lambda: _all_assigned(client, ["b"]), 20.0, "b podCIDR")
        client.create(NODES, _node("c"))

        def not_available() -> bool:
            return any(e["reason"] == "CIDRNotAvailable" and e["involvedObject"]["name"] == "c"
                       for e in client.list(EVENTS, "default")["items"])

        wait_until(not_available, 10.0, "a CIDRNotAvailable event for node c")
        assert _cidrs(client) == {"a": "10.99.0.0/24", "b": "10.99.1.0/24", "c": None}
        client.delete(NODES, "a")
        wait_until(lambda: _cidrs(client).get("c") == "10.99.0.0/24", 10.0, "c gets a's CIDR")
        _stop(proc, log_path)
