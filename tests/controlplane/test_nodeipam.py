"""Node IPAM: the range allocator (lowest free, release+reuse, exhaustion, dual-stack, flag validation)
and the controller against fakes of its seams (restart rebuild, user-set CIDRs, conflicts, delete)."""

from __future__ import annotations

import argparse
import copy
import ipaddress
from collections.abc import Mapping
from typing import Any

import pytest

from controlplane.controllers.__main__ import parse_args
from controlplane.controllers.nodeipam import (
    CidrSet,
    Idle,
    NodeIpamController,
    RangeAllocator,
    allocator_from_flags,
    build,
    node_cidrs,
)
from podnet.api.client import ApiError, Resource

Obj = dict[str, Any]


# ---------------------------------------------------------------------------------- allocator
def test_lowest_free_release_and_reuse() -> None:
    s = CidrSet(ipaddress.ip_network("10.244.0.0/22"), 24)
    assert [s.allocate() for _ in range(4)] == [f"10.244.{i}.0/24" for i in range(4)]
    assert s.allocate() is None  # exhausted
    s.release("10.244.2.0/24")
    s.release("10.244.1.0/24")
    assert s.allocate() == "10.244.1.0/24"  # the lowest free, not the last released
    assert s.allocate() == "10.244.2.0/24"
    assert s.allocate() is None


def test_occupy_skips_taken_subnets_and_rejects_foreign_ones() -> None:
    s = CidrSet(ipaddress.ip_network("10.244.0.0/16"), 24)
    assert s.occupy("10.244.0.0/24") and s.occupy("10.244.2.0/24")
    assert not s.occupy("10.245.0.0/24")      # outside the cluster CIDR
    assert not s.occupy("10.244.3.0/25")      # not one of the /24 subnets
    assert not s.occupy("10.244.3.1/24")      # host bits set
    assert not s.occupy("fd00::/64")           # other family
    assert not s.occupy("garbage")
    assert [s.allocate(), s.allocate()] == ["10.244.1.0/24", "10.244.3.0/24"]
    assert s.index_of("10.244.255.0/24") == 255


def test_ipv6_and_whole_range_subnet() -> None:
    s = CidrSet(ipaddress.ip_network("fd00:10::/56"), 64)
    assert [s.allocate(), s.allocate()] == ["fd00:10::/64", "fd00:10:0:1::/64"]
    one = CidrSet(ipaddress.ip_network("10.0.0.0/24"), 24)
    assert one.allocate() == "10.0.0.0/24" and one.allocate() is None


def test_dual_stack_is_all_or_nothing() -> None:
    alloc = allocator_from_flags("10.0.0.0/23,fd00::/63", None)
    assert alloc.allocate() == ["10.0.0.0/24", "fd00::/64"]
    alloc.sets[1].occupy("fd00:0:0:1::/64")  # the v6 side is full now
    assert alloc.allocate() is None
    assert alloc.sets[0].allocate() == "10.0.1.0/24"  # the v4 subnet was given back


@pytest.mark.parametrize(("cidr", "mask", "sizes"), [
    ("10.244.0.0/16", None, [24]),
    ("10.244.0.0/16", 20, [20]),
    ("10.244.0.0/16", 16, [16]),             # one subnet: allowed (upstream: mask >= cluster prefix)
    ("fd00::/48", None, [64]),
    ("10.244.0.0/16, fd00::/48", None, [24, 64]),
])
def test_flags_ok(cidr: str, mask: int | None, sizes: list[int]) -> None:
    assert [s.mask for s in allocator_from_flags(cidr, mask).sets] == sizes


@pytest.mark.parametrize(("cidr", "mask", "message"), [
    ("", None, "needs --cluster-cidr"),
    ("10.244.0.0/16", 8, "must be between"),
    ("10.244.0.0/16", 33, "must be between"),
    ("nonsense", None, "invalid --cluster-cidr"),
    ("10.0.0.0/16,10.1.0.0/16", None, "one IPv4 and one IPv6"),
    ("10.0.0.0/16,fd00::/48,fd01::/48", None, "one IPv4 and one IPv6"),
    ("10.0.0.0/16,fd00::/48", 24, "not allowed with a dual-stack"),
    ("fd00::/32", None, "more than 2^16"),
])
def test_flags_invalid(cidr: str, mask: int | None, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("^", r"\^")):
        allocator_from_flags(cidr, mask)


def test_invalid_flags_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    ctx = argparse.Namespace(options=parse_args(["--kubeconfig", "k", "--controllers", "nodeipam",
                                                 "--allocate-node-cidrs"]))
    with pytest.raises(SystemExit) as exc:
        build(ctx)  # type: ignore[arg-type]
    assert exc.value.code == 2
    assert "needs --cluster-cidr" in capsys.readouterr().err


def test_without_allocate_node_cidrs_nothing_runs() -> None:
    ctx = argparse.Namespace(options=parse_args(["--kubeconfig", "k", "--cluster-cidr", "10.0.0.0/8"]))
    assert isinstance(build(ctx), Idle)  # type: ignore[arg-type]


def test_node_cidrs_prefers_the_list() -> None:
    assert node_cidrs({"spec": {"podCIDR": "10.0.0.0/24", "podCIDRs": ["10.0.0.0/24", "fd00::/64"]}}) == [
        "10.0.0.0/24", "fd00::/64"]
    assert node_cidrs({"spec": {"podCIDR": "10.0.0.0/24"}}) == ["10.0.0.0/24"]
    assert node_cidrs({"spec": {}}) == []


# ---------------------------------------------------------------------------------- the controller
def make_node(name: str, cidr: str | None = None, rv: str = "1") -> Obj:
    spec: Obj = {}
    if cidr:
        spec = {"podCIDR": cidr, "podCIDRs": [cidr]}
    return {"metadata": {"name": name, "resourceVersion": rv}, "spec": spec}


class FakeCache:
    def __init__(self, *nodes: Obj) -> None:
        self.items = {n["metadata"]["name"]: n for n in nodes}

    def get(self, key: str) -> Obj | None:
        return self.items.get(key)

    def list(self) -> list[Obj]:
        return list(self.items.values())


class FakeApi:
    """An API server over the cache: a stale resourceVersion is a 409, podCIDR is set-once."""

    def __init__(self, cache: FakeCache) -> None:
        self.cache = cache
        self.patches: list[tuple[str, Obj]] = []
        self.sneak: Obj | None = None  # applied to the node right before the next patch (a race)
        self.fail: int | None = None

    def get(self, res: Resource, name: str, namespace: str | None = None) -> Obj:
        node = self.cache.get(name)
        if node is None:
            raise ApiError({"code": 404}, 404)
        return copy.deepcopy(node)

    def patch(self, res: Resource, name: str, patch: Any, namespace: str | None = None, *,
              patch_type: str = "merge", subresource: str | None = None, field_manager: str | None = None,
              force: bool | None = None) -> Obj:
        if self.fail is not None:
            raise ApiError({"code": self.fail}, self.fail)
        node = self.cache.get(name)
        if node is None:
            raise ApiError({"code": 404}, 404)
        if self.sneak is not None:
            node["spec"].update(self.sneak)
            node["metadata"]["resourceVersion"] = str(int(node["metadata"]["resourceVersion"]) + 1)
            self.sneak = None
        if patch["metadata"]["resourceVersion"] != node["metadata"]["resourceVersion"]:
            raise ApiError({"code": 409}, 409)
        assert not node["spec"].get("podCIDR"), "podCIDR is immutable once set"
        self.patches.append((name, copy.deepcopy(patch)))
        node["spec"].update(patch["spec"])
        node["metadata"]["resourceVersion"] = str(int(node["metadata"]["resourceVersion"]) + 1)
        return node


def controller(*nodes: Obj, cidr: str = "10.244.0.0/16", mask: int | None = 24) -> tuple[NodeIpamController,
                                                                                        FakeApi, FakeCache]:
    cache = FakeCache(*nodes)
    api = FakeApi(cache)
    ctl = NodeIpamController(api, cache, allocator_from_flags(cidr, mask), exhausted_retry=30.0)
    for node in nodes:
        ctl.node_changed(node["metadata"]["name"])
    return ctl, api, cache


def cidrs_of(cache: FakeCache) -> dict[str, str | None]:
    return {name: n["spec"].get("podCIDR") for name, n in sorted(cache.items.items())}


def test_assigns_lowest_free_and_respects_user_set() -> None:
    ctl, api, cache = controller(make_node("a"), make_node("b"), make_node("user", "10.244.1.0/24"),
                                 make_node("outside", "192.168.7.0/24"))
    ctl.run_once()
    assert cidrs_of(cache) == {"a": "10.244.0.0/24", "b": "10.244.2.0/24", "outside": "192.168.7.0/24",
                               "user": "10.244.1.0/24"}
    assert api.patches[0][1]["spec"] == {"podCIDR": "10.244.0.0/24", "podCIDRs": ["10.244.0.0/24"]}
    writes = len(api.patches)
    ctl.run_once()
    for name in cache.items:
        ctl.node_changed(name)
    ctl.run_once()
    assert len(api.patches) == writes


def test_restart_rebuilds_before_allocating() -> None:
    """The new process sorts "a-new" before the nodes holding 0 and 1: it must still not reuse them."""
    ctl, api, cache = controller(make_node("z0", "10.244.0.0/24"), make_node("z1", "10.244.1.0/24"),
                                 make_node("a-new"))
    ctl.run_once()
    assert cidrs_of(cache)["a-new"] == "10.244.2.0/24"
    assert [p[0] for p in api.patches] == ["a-new"]


def test_release_on_delete_then_reuse() -> None:
    ctl, _, cache = controller(*(make_node(f"n{i}") for i in range(5)))
    ctl.run_once()
    assert cidrs_of(cache)["n2"] == "10.244.2.0/24"
    del cache.items["n2"]
    ctl.node_changed("n2")
    ctl.run_once()
    cache.items["n9"] = make_node("n9")
    ctl.node_changed("n9")
    ctl.run_once()
    assert cidrs_of(cache)["n9"] == "10.244.2.0/24"


def test_exhaustion_waits_and_a_release_retries_at_once() -> None:
    now = [0.0]
    cache = FakeCache(make_node("a"), make_node("b"), make_node("c"))
    api = FakeApi(cache)
    ctl = NodeIpamController(api, cache, allocator_from_flags("10.0.0.0/23", 24), exhausted_retry=30.0,
                             clock=lambda: now[0])
    for name in "abc":
        ctl.node_changed(name)
    ctl.run_once()
    assert cidrs_of(cache) == {"a": "10.0.0.0/24", "b": "10.0.1.0/24", "c": None}
    assert ctl.waiting == {"c"} and ctl._retry["c"] == 30.0
    del cache.items["a"]
    ctl.node_changed("a")
    ctl.run_once()  # releasing a's subnet marks the waiting node dirty (and wakes the loop) ...
    assert ctl.dirty.take() == {"c"}
    ctl.mark("c")
    ctl.run_once()  # ... so the next pass assigns it: no 30 s wait
    assert cidrs_of(cache) == {"b": "10.0.1.0/24", "c": "10.0.0.0/24"}
    assert ctl.waiting == set()


def test_conflict_rereads_and_adopts_a_concurrent_assignment() -> None:
    ctl, api, cache = controller(make_node("a"))
    api.sneak = {"podCIDR": "10.244.7.0/24", "podCIDRs": ["10.244.7.0/24"]}
    ctl.run_once()
    assert cidrs_of(cache) == {"a": "10.244.7.0/24"}
    assert ctl.assigned == {"a": ["10.244.7.0/24"]}
    assert ctl.allocator.sets[0].used == {7}  # the reserved 10.244.0.0/24 went back
    cache.items["b"] = make_node("b")
    ctl.node_changed("b")
    ctl.run_once()
    assert cidrs_of(cache)["b"] == "10.244.0.0/24"


def test_conflict_on_a_stale_version_retries_with_the_fresh_one() -> None:
    ctl, api, cache = controller(make_node("a"))
    api.sneak = {"unschedulable": True}  # another writer bumped the resourceVersion
    ctl.run_once()
    assert cidrs_of(cache) == {"a": "10.244.0.0/24"}
    assert len(api.patches) == 1


def test_failed_patch_keeps_the_reservation_for_the_retry() -> None:
    ctl, api, cache = controller(make_node("a"), make_node("b"))
    api.fail = 500
    ctl.run_once()  # both fail; each keeps its reserved subnet
    assert ctl.assigned == {"a": ["10.244.0.0/24"], "b": ["10.244.1.0/24"]}
    api.fail = None
    ctl._retry = {k: 0.0 for k in ctl._retry}
    ctl.run_once()
    assert cidrs_of(cache) == {"a": "10.244.0.0/24", "b": "10.244.1.0/24"}


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str, *,
              kind: str | None = None, api_version: str | None = None) -> bool:
        self.events.append((type_, reason, message))
        return True


def test_exhaustion_event() -> None:
    cache = FakeCache(make_node("a"), make_node("b"))
    rec = Recorder()
    ctl = NodeIpamController(FakeApi(cache), cache, RangeAllocator(
        [CidrSet(ipaddress.ip_network("10.0.0.0/24"), 24)]), recorder=rec)
    ctl.node_changed("a")
    ctl.node_changed("b")
    ctl.run_once()
    assert rec.events == [("Normal", "CIDRNotAvailable", "Node b status is now: CIDRNotAvailable")]


def test_dual_stack_node_gets_one_cidr_per_family() -> None:
    ctl, api, cache = controller(make_node("a"), make_node("b"), cidr="10.244.0.0/16,fd00:44::/48", mask=None)
    ctl.run_once()
    assert api.patches[1][1]["spec"] == {"podCIDR": "10.244.1.0/24",
                                         "podCIDRs": ["10.244.1.0/24", "fd00:44:0:1::/64"]}
    assert node_cidrs(cache.items["a"]) == ["10.244.0.0/24", "fd00:44::/64"]
