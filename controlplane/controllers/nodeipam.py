"""Node IPAM: gives every node a pod CIDR from --cluster-cidr (kube-controller-manager's range
allocator, active only with --allocate-node-cidrs).

A node without spec.podCIDR gets the lowest free subnet of --node-cidr-mask-size (one per family for
a dual-stack "v4,v6" cluster CIDR) as spec.podCIDR and spec.podCIDRs.  Occupancy lives only in this
process: before its first allocation it is rebuilt from every node in the cache, so a restart never
hands out a subnet a node already has, and nodes whose podCIDR a user set are respected (and occupy
their subnet when it lies in the range).  A deleted node's subnets are free again.  When the range is
exhausted the node waits (a log line and a CIDRNotAvailable Event) until a subnet is released.  The
API server keeps spec.podCIDR immutable once set, so a subnet never moves under a running node.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NoReturn, Protocol

from controlplane.controllers.base import KeyedController
from controlplane.controllers.context import ControllerContext
from podnet.api.client import NODES, ApiError, Resource
from podnet.api.informer import Handlers

__all__ = ["CidrSet", "Idle", "NodeIpamController", "RangeAllocator", "allocator_from_flags", "node_cidrs"]

log = logging.getLogger("podnet.controllers.nodeipam")

Obj = dict[str, Any]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT_MASK = {4: 24, 6: 64}
MAX_SUBNET_BITS_V6 = 16  # upstream clusterSubnetMaxDiff: at most 2^16 IPv6 node subnets
PATCH_ATTEMPTS = 3  # upstream cidrUpdateRetries
EXHAUSTED_RETRY = 30.0  # seconds; a release also retries the waiting nodes at once


class Api(Protocol):
    def get(self, res: Resource, name: str, namespace: str | None = None) -> Obj: ...

    def patch(self, res: Resource, name: str, patch: Any, namespace: str | None = None, *,
              patch_type: str = "merge", subresource: str | None = None, field_manager: str | None = None,
              force: bool | None = None) -> Obj: ...


class Cache(Protocol):
    def get(self, key: str) -> Obj | None: ...

    def list(self) -> list[Obj]: ...


class Recorder(Protocol):
    def event(self, obj: Mapping[str, Any], type_: str, reason: str, message: str, *,
              kind: str | None = None, api_version: str | None = None) -> bool: ...


# ---------------------------------------------------------------------------------- allocation (pure)
class CidrSet:
    """The subnets of one cluster CIDR with one prefix length; index i is the i-th subnet."""

    def __init__(self, cluster: Network, mask: int) -> None:
        self.cluster, self.mask = cluster, mask
        self.size = 1 << (mask - cluster.prefixlen)
        self.used: set[int] = set()
        self._hint = 0  # every index below it is used: lowest-free scans start here

    def _subnet(self, index: int) -> Network:
        step = 1 << (self.cluster.max_prefixlen - self.mask)
        address = ipaddress.ip_address(int(self.cluster.network_address) + index * step)
        return ipaddress.ip_network(f"{address}/{self.mask}")

    def index_of(self, cidr: str) -> int | None:
        """The subnet's index, or None when `cidr` is not exactly one of this set's subnets."""
        try:
            net = ipaddress.ip_network(cidr, strict=True)
        except ValueError:
            return None
        if net.version != self.cluster.version or net.prefixlen != self.mask or not net.subnet_of(
                self.cluster):  # type: ignore[arg-type]
            return None
        offset = int(net.network_address) - int(self.cluster.network_address)
        return offset >> (self.cluster.max_prefixlen - self.mask)

    def occupy(self, cidr: str) -> bool:
        index = self.index_of(cidr)
        if index is None:
            return False
        self.used.add(index)
        return True

    def release(self, cidr: str) -> None:
        index = self.index_of(cidr)
        if index is not None and index in self.used:
            self.used.discard(index)
            self._hint = min(self._hint, index)

    def allocate(self) -> str | None:
        """The lowest free subnet, now used; None when every one is taken."""
        index = self._hint
        while index in self.used:
            index += 1
        if index >= self.size:
            self._hint = self.size
            return None
        self.used.add(index)
        self._hint = index + 1
        return str(self._subnet(index))


class RangeAllocator:
    """One CidrSet per cluster CIDR (one, or a v4 and a v6 one): a node gets one subnet of each."""

    def __init__(self, sets: Sequence[CidrSet]) -> None:
        self.sets = list(sets)

    def allocate(self) -> list[str] | None:
        """One subnet per family, or None (and nothing taken) when a family is exhausted."""
        got: list[str] = []
        for cidr_set in self.sets:
            cidr = cidr_set.allocate()
            if cidr is None:
                self.release(got)
                return None
            got.append(cidr)
        return got

    def occupy(self, cidrs: Iterable[str]) -> list[str]:
        """Mark the in-range ones used; returns those outside every range (ignored, as upstream)."""
        outside = []
        for cidr in cidrs:
            if not any(s.occupy(cidr) for s in self.sets):
                outside.append(cidr)
        return outside

    def release(self, cidrs: Iterable[str]) -> None:
        for cidr in cidrs:
            for cidr_set in self.sets:
                cidr_set.release(cidr)


def allocator_from_flags(cluster_cidr: str, mask_size: int | None) -> RangeAllocator:
    """Parse --cluster-cidr ("v4", "v6" or "v4,v6") and --node-cidr-mask-size; ValueError says
    what is wrong (upstream kube-controller-manager refuses to start on the same mistakes)."""
    texts = [t.strip() for t in cluster_cidr.split(",") if t.strip()]
    if not texts:
        raise ValueError("--allocate-node-cidrs needs --cluster-cidr")
    nets: list[Network] = []
    for text in texts:
        try:
            nets.append(ipaddress.ip_network(text, strict=False))
        except ValueError as e:
            raise ValueError(f"invalid --cluster-cidr {text!r}: {e}") from None
    if len(nets) > 2 or (len(nets) == 2 and nets[0].version == nets[1].version):
        raise ValueError("--cluster-cidr takes one CIDR, or one IPv4 and one IPv6 CIDR (dual-stack)")
    if len(nets) == 2 and mask_size is not None:
        raise ValueError("--node-cidr-mask-size is not allowed with a dual-stack --cluster-cidr")
    sets = []
    for net in nets:
        mask = mask_size if mask_size is not None else DEFAULT_MASK[net.version]
        if not net.prefixlen <= mask <= net.max_prefixlen:
            raise ValueError(f"--node-cidr-mask-size {mask} must be between the prefix length of "
                             f"--cluster-cidr {net} and {net.max_prefixlen}")
        if net.version == 6 and mask - net.prefixlen > MAX_SUBNET_BITS_V6:
            raise ValueError(f"--node-cidr-mask-size {mask} splits {net} into more than "
                             f"2^{MAX_SUBNET_BITS_V6} subnets")
        sets.append(CidrSet(net, mask))
    return RangeAllocator(sets)


def node_cidrs(node: Mapping[str, Any]) -> list[str]:
    """spec.podCIDRs, or the single spec.podCIDR of an older writer."""
    spec = node.get("spec") or {}
    cidrs = [str(c) for c in spec.get("podCIDRs") or []]
    if not cidrs and spec.get("podCIDR"):
        cidrs = [str(spec["podCIDR"])]
    return cidrs


# ---------------------------------------------------------------------------------- the controller
class NodeIpamController(KeyedController):
    name = "nodeipam"

    def __init__(self, api: Api, nodes: Cache, allocator: RangeAllocator, *, resync_period: float = 30.0,
                 retry_delay: float = 1.0, exhausted_retry: float = EXHAUSTED_RETRY,
                 clock: Callable[[], float] = time.monotonic, recorder: Recorder | None = None) -> None:
        super().__init__(resync_period=resync_period, retry_delay=retry_delay, clock=clock)
        self.api, self.nodes, self.allocator, self.recorder = api, nodes, allocator, recorder
        self.exhausted_retry = exhausted_retry
        self.assigned: dict[str, list[str]] = {}  # node -> the subnets it holds in the allocator
        self.waiting: set[str] = set()  # nodes that found the range exhausted
        self._rebuilt = False

    def node_changed(self, key: str) -> None:
        self.mark(key)

    def resync_keys(self) -> list[str]:
        return [str((n.get("metadata") or {}).get("name")) for n in self.nodes.list()]

    def sync(self, key: str) -> None:
        if not self._rebuilt:
            self._rebuild()
        node = self.nodes.get(key)
        if node is None:
            self._release(key)
            return
        cidrs = node_cidrs(node)
        if cidrs:
            self._record(key, cidrs)
        else:
            self._assign(key, node)

    def _rebuild(self) -> None:
        """Occupancy from every node before the first allocation (the cache has synced by now), so
        a restarted controller cannot give out a subnet some node already has."""
        for node in self.nodes.list():
            cidrs = node_cidrs(node)
            if cidrs:
                self._record(str(node["metadata"]["name"]), cidrs)
        self._rebuilt = True
        log.info("occupancy rebuilt from %d nodes with pod CIDRs", len(self.assigned))

    def _record(self, name: str, cidrs: list[str]) -> None:
        """The node has its subnets (ours, a user's, or a previous run's): they are taken."""
        if self.assigned.get(name) == cidrs:
            return
        self._release(name)  # we had reserved others for it and lost a race: give those back
        for cidr in self.allocator.occupy(cidrs):
            log.info("node %s: podCIDR %s is outside --cluster-cidr; left alone", name, cidr)
        self.assigned[name] = cidrs
        self.waiting.discard(name)

    def _release(self, name: str) -> None:
        cidrs = self.assigned.pop(name, None)
        self.waiting.discard(name)
        if not cidrs:
            return
        self.allocator.release(cidrs)
        log.info("node %s: released %s", name, ",".join(cidrs))
        for waiting in sorted(self.waiting):  # level-triggered: they look again at once
            self.mark(waiting)

    def _assign(self, name: str, node: Obj) -> None:
        cidrs = self.assigned.get(name) or self.allocator.allocate()
        if cidrs is None:
            self.waiting.add(name)
            log.warning("node %s: no pod CIDR available in the cluster CIDR; retrying later", name)
            if self.recorder is not None:
                self.recorder.event(node, "Normal", "CIDRNotAvailable", f"Node {name} status is now: "
                                    "CIDRNotAvailable", kind="Node", api_version="v1")
            self.requeue_after(name, self.exhausted_retry)
            return
        self.assigned[name] = cidrs  # reserved for this node until the patch lands or it goes
        self.waiting.discard(name)
        self._patch(name, node, cidrs)

    def _patch(self, name: str, node: Obj, cidrs: list[str]) -> None:
        """spec.podCIDR(s) guarded by resourceVersion; on a conflict re-read the node: someone may
        have set a podCIDR meanwhile (then that one counts), else try again on the fresh version."""
        rv = node["metadata"].get("resourceVersion")
        for attempt in range(PATCH_ATTEMPTS):
            patch = {"metadata": {"resourceVersion": rv}, "spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs}}
            try:
                self.api.patch(NODES, name, patch)
            except ApiError as e:
                if e.not_found:
                    self._release(name)
                    return
                if not e.conflict or attempt + 1 == PATCH_ATTEMPTS:
                    raise  # the reservation stays; the retry patches the same subnets
                fresh = self.api.get(NODES, name)
                if node_cidrs(fresh):
                    self._record(name, node_cidrs(fresh))
                    return
                rv = fresh["metadata"].get("resourceVersion")
                continue
            log.info("node %s: assigned podCIDRs %s", name, ",".join(cidrs))
            return


class Idle:
    """What the catalog gets without --allocate-node-cidrs: upstream does not start the controller."""

    name = "nodeipam"

    def run(self, stop: threading.Event, poll: float = 0.5) -> None:
        stop.wait()


def _usage_error(message: str) -> NoReturn:
    """argparse's convention (exit status 2): a bad flag combination is a usage error, not a crash."""
    print(f"podnet-controller-manager: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def build(ctx: ControllerContext) -> NodeIpamController | Idle:
    opts: argparse.Namespace = ctx.options
    if not opts.allocate_node_cidrs:
        return Idle()
    try:
        allocator = allocator_from_flags(opts.cluster_cidr, opts.node_cidr_mask_size)
    except ValueError as e:
        _usage_error(str(e))
    nodes = ctx.informers.get(NODES)
    controller = NodeIpamController(ctx.client, nodes, allocator, resync_period=opts.resync_period,
                                    recorder=ctx.recorder)
    nodes.add_handlers(Handlers(on_change=controller.node_changed))
    return controller
