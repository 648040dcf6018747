"""Property test: random ADD/DEL/GC sequences through the plugin against a simple model.

The model predicts every answer (including the round-robin pick) from a flat list of the
allocatable addresses per range set, an implementation independent of the allocator's.  After
every step: the reservation files on disk equal the model, no address is held twice, every
address lies in its range and is never the gateway.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cni import host_local, skel

RANGES = [
    [{"subnet": "10.0.0.0/28", "rangeStart": "10.0.0.2", "rangeEnd": "10.0.0.9", "gateway": "10.0.0.5"},
     {"subnet": "10.0.1.0/29"}],
    [{"subnet": "fd00::/125", "rangeEnd": "fd00::4"}],  # small: exhaustion and rollback happen
]
# Allocatable addresses of each set in allocation order, written out by hand.
POOLS = [
    [f"10.0.0.{i}" for i in (2, 3, 4, 6, 7, 8, 9)] + [f"10.0.1.{i}" for i in range(2, 7)],
    [f"fd00::{i}" for i in range(2, 5)],
]
GATEWAYS = {"10.0.0.5", "10.0.1.1", "fd00::1"}
CIDS = ["a", "b", "c", "d", "e", "f", "g"]
IFNAMES = ["eth0", "eth1"]
OUT_OF_RANGE = "10.0.0.12"  # inside the subnet, after rangeEnd

attachments = st.tuples(st.sampled_from(CIDS), st.sampled_from(IFNAMES))
requested = st.one_of(st.none(), st.sampled_from([*POOLS[0], *POOLS[1][:2], "10.0.0.5", OUT_OF_RANGE]))
operations = st.lists(st.one_of(
    st.tuples(st.just("ADD"), attachments, requested),
    st.tuples(st.just("ADD"), attachments, st.none()),
    st.tuples(st.just("ADD"), attachments, st.none()),
    st.tuples(st.just("DEL"), attachments, st.none()),
    st.tuples(st.just("GC"), st.lists(attachments, max_size=6), st.none()),
), max_size=50)


@dataclass
class Model:
    held: dict[str, tuple[str, str]] = field(default_factory=dict)  # ip -> attachment
    last: dict[int, str] = field(default_factory=dict)

    def add(self, att: tuple[str, str], want: str | None) -> tuple[int, list[str]]:
        """(expected code, addresses); mirrors the plugin's order of checks."""
        if want is not None and (want in GATEWAYS or want == OUT_OF_RANGE):
            return skel.INVALID_CONFIG, []
        if att in self.held.values():
            return skel.ALREADY_ATTACHED, []
        got: list[str] = []
        for index, pool in enumerate(POOLS):
            ip = self._pick(index, pool, want if want in pool else None)
            if ip is None:
                for taken in got:
                    del self.held[taken]
                return (skel.INTERNAL if want in pool else skel.POOL_EXHAUSTED), []
            self.held[ip] = att
            self.last[index] = ip
            got.append(ip)
        return 0, got

    def _pick(self, index: int, pool: list[str], want: str | None) -> str | None:
        if want is not None:
            return None if want in self.held else want
        start = pool.index(self.last[index]) + 1 if index in self.last else 0
        rotated = pool[start:] + pool[:start]
        return next((ip for ip in rotated if ip not in self.held), None)

    def delete(self, att: tuple[str, str]) -> None:
        self.held = {ip: a for ip, a in self.held.items() if a != att}

    def gc(self, keep: list[tuple[str, str]]) -> None:
        self.held = {ip: a for ip, a in self.held.items() if a in keep}


def dispatch(command: str, conf: dict, att: tuple[str, str] = ("", ""), args: str = "") -> tuple[int, dict]:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": att[0], "CNI_IFNAME": att[1],
           "CNI_NETNS": "/var/run/netns/unused", "CNI_PATH": "/nonexistent", "CNI_ARGS": args}
    code, out = skel.dispatch(host_local.PLUGIN, env, json.dumps(conf).encode())
    return code, json.loads(out) if out else {}


def on_disk(data_dir: str) -> dict[str, tuple[str, str]]:
    net = os.path.join(data_dir, "net")
    out = {}
    for name in os.listdir(net) if os.path.isdir(net) else []:
        if name != "lock" and not name.startswith("last_reserved_ip."):
            with open(os.path.join(net, name), "rb") as f:
                cid, ifname = f.read().decode().split("\r\n")
            out[name] = (cid, ifname)
    return out


def check_invariants(disk: dict[str, tuple[str, str]]) -> None:
    per_attachment: dict[tuple[str, str], list[str]] = {}
    for ip, att in disk.items():
        per_attachment.setdefault(att, []).append(ip)
        assert ip not in GATEWAYS
        assert any(ip in pool for pool in POOLS), ip
    for ips in per_attachment.values():  # one address per set, so no attachment holds two of a set
        assert sorted(sum(ip in pool for ip in ips) for pool in POOLS) == [1, 1]


def step(conf: dict, model: Model, op: tuple) -> None:
    kind, target, want = op
    if kind == "ADD":
        code, out = dispatch("ADD", conf, target, f"IP={want}" if want else "")
        expected_code, expected_ips = model.add(target, want)
        assert code == (0 if expected_code == 0 else 1), out
        if expected_code:
            assert out["code"] == expected_code, out
        else:
            assert [ip_address(x["address"].split("/")[0]) for x in out["ips"]] == [
                ip_address(x) for x in expected_ips]
            for entry in out["ips"]:
                ip = entry["address"].split("/")[0]
                assert entry["gateway"] in GATEWAYS and entry["gateway"] != ip
                assert ip_address(ip) in ip_network(entry["address"], strict=False)
    elif kind == "DEL":
        assert dispatch("DEL", conf, target)[0] == 0
        model.delete(target)
    else:
        keep = [{"containerID": c, "ifname": i} for c, i in target]
        assert dispatch("GC", {**conf, "cni.dev/valid-attachments": keep})[0] == 0
        model.gc(list(target))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations)
def test_random_sequences_match_the_model(ops):
    with tempfile.TemporaryDirectory() as data_dir:
        conf = {"cniVersion": "1.1.0", "name": "net",
                "ipam": {"type": "host-local", "dataDir": data_dir, "ranges": RANGES}}
        model = Model()
        for op in ops:
            step(conf, model, op)
            disk = on_disk(data_dir)
            assert disk == model.held, op
            check_invariants(disk)
