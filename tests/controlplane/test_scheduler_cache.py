"""NodeInfoCache: incremental refreshes from marked keys always equal a full rebuild."""

from __future__ import annotations

import random
from typing import Any

from controlplane.scheduler import build_node_infos
from controlplane.scheduler.cache import NodeInfoCache
from controlplane.scheduler.filters import NodeInfo
from tests.controlplane.test_scheduler import make_node, make_pod
from tests.controlplane.test_scheduler_daemon import FakeCache


def summary(infos: dict[str, NodeInfo]) -> dict[str, Any]:
    """What filters and scores read, in a comparable form."""
    return {
        name: (
            info.node,
            sorted((p["metadata"]["name"], p["spec"].get("nodeName")) for p in info.pods),
            {k: v for k, v in info.requested.items() if v},
            info.nonzero_requested,
            info.used_ports,
            {k: v for k, v in info.controller_counts.items() if v},
        )
        for name, info in infos.items()
    }


def expected(nodes: FakeCache, pods: FakeCache, assumed: dict[str, Any]) -> dict[str, Any]:
    effective = [assumed.get(key, pod) for key, pod in pods.items.items()]
    return summary(build_node_infos(nodes.list(), effective))


def test_first_refresh_builds_everything() -> None:
    nodes = FakeCache([make_node("a"), make_node("b")])
    pods = FakeCache([make_pod("x", cpu="1", node="a"), make_pod("y")])
    cache = NodeInfoCache()
    infos = cache.refresh(nodes, pods, {})
    assert summary(infos) == expected(nodes, pods, {}) and cache.rebuilds == 1
    assert infos["a"].requested["cpu"] == 1000


def test_only_marked_keys_are_reread() -> None:
    nodes = FakeCache([make_node("a")])
    pods = FakeCache([make_pod("x", cpu="1", node="a")])
    cache = NodeInfoCache()
    cache.refresh(nodes, pods, {})
    pods.put(make_pod("x", cpu="2", node="a"))
    assert cache.refresh(nodes, pods, {})["a"].requested["cpu"] == 1000  # not marked: stale
    cache.mark_pod("default/x")
    assert cache.refresh(nodes, pods, {})["a"].requested["cpu"] == 2000
    assert cache.rebuilds == 1


def test_node_update_keeps_its_pods_and_a_node_coming_back_gets_them_again() -> None:
    nodes = FakeCache([make_node("a", cpu="2")])
    pods = FakeCache([make_pod("x", cpu="1", node="a")])
    cache = NodeInfoCache()
    cache.refresh(nodes, pods, {})
    nodes.put(make_node("a", cpu="8"))
    cache.mark_node("a")
    info = cache.refresh(nodes, pods, {})["a"]
    assert info.allocatable["cpu"] == 8000 and info.requested["cpu"] == 1000
    del nodes.items["a"]
    cache.mark_node("a")
    assert cache.refresh(nodes, pods, {}) == {}
    nodes.put(make_node("a"))
    cache.mark_node("a")
    assert [p["metadata"]["name"] for p in cache.refresh(nodes, pods, {})["a"].pods] == ["x"]


def test_assumed_version_counts_and_finished_pods_do_not() -> None:
    nodes = FakeCache([make_node("a")])
    pods = FakeCache([make_pod("x", cpu="1"), make_pod("y", cpu="1", node="a")])
    cache = NodeInfoCache()
    cache.refresh(nodes, pods, {})
    cache.mark_pod("default/x")
    assumed = {"default/x": make_pod("x", cpu="1", node="a")}
    assert cache.refresh(nodes, pods, assumed)["a"].requested["cpu"] == 2000
    pods.put(make_pod("y", cpu="1", node="a", phase="Succeeded"))
    cache.mark_pod("default/y")
    assert cache.refresh(nodes, pods, assumed)["a"].requested["cpu"] == 1000


def test_mark_all_rebuilds() -> None:
    nodes = FakeCache([make_node("a")])
    pods = FakeCache([make_pod("x", cpu="1", node="a")])
    cache = NodeInfoCache()
    cache.refresh(nodes, pods, {})
    pods.put(make_pod("x", cpu="3", node="a"))
    cache.mark_all()
    assert cache.refresh(nodes, pods, {})["a"].requested["cpu"] == 3000 and cache.rebuilds == 2


def test_random_churn_matches_a_full_rebuild() -> None:
    """Nodes and pods appear, change, move, finish and vanish; assumptions come and go; after every
    step the incrementally kept NodeInfos equal ones built from scratch."""
    rng = random.Random(5)
    names = [f"n{i}" for i in range(4)]
    nodes, pods = FakeCache(), FakeCache()
    cache = NodeInfoCache()
    assumed: dict[str, Any] = {}
    for step in range(600):
        action = rng.randrange(6)
        if action == 0:  # a node appears, changes or goes
            name = rng.choice(names)
            if name in nodes.items and rng.random() < 0.3:
                del nodes.items[name]
            else:
                nodes.put(make_node(name, cpu=str(rng.randrange(1, 9)), pods=str(rng.randrange(5, 30))))
            cache.mark_node(name)
        elif action in (1, 2, 3):  # a pod is created, rebound, resized, finished or deleted
            name = f"p{rng.randrange(40)}"
            key = f"default/{name}"
            if key in pods.items and rng.random() < 0.2:
                del pods.items[key]
            else:
                host = rng.choice([None, *names, "unknown-node"])
                phase = rng.choice(["Pending", "Running", "Running", "Succeeded"])
                port = {"containerPort": 80, "hostPort": rng.choice([80, 81])}
                ports = [port] if rng.random() < 0.3 else None
                pods.put(make_pod(name, cpu=f"{rng.randrange(1, 9) * 100}m", node=host, phase=phase,
                                  owner=rng.choice([None, "rc1", "rc2"]), ports=ports))
            cache.mark_pod(key)
        elif action == 4 and pods.items:  # assume a binding, or drop an assumption
            key = rng.choice(sorted(pods.items))
            if key in assumed:
                del assumed[key]
            else:
                assumed[key] = {**pods.items[key], "spec": {**pods.items[key]["spec"],
                                                             "nodeName": rng.choice(names)}}
            cache.mark_pod(key)
        elif action == 5 and rng.random() < 0.1:
            cache.mark_all()
        for key in [k for k in assumed if k not in pods.items]:
            del assumed[key]  # the daemon drops assumptions of deleted pods (and marks them)
            cache.mark_pod(key)
        assert summary(cache.refresh(nodes, pods, assumed)) == expected(nodes, pods, assumed), step
