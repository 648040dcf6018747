"""NodeInfos kept up to date between scheduling cycles (upstream's scheduler cache + snapshot).

Rebuilding every NodeInfo from every pod on every cycle made a cycle O(pods): ~16 ms at 1,000
pods, so the scheduler could not reach 100 pods/s.  Instead, the informer handlers only mark the
pod and node keys that changed (thread-safe, no work on the informer threads) and the scheduling
thread, at the start of each cycle, re-reads just those keys from the informer caches:

* a dirty pod: forget the version accounted before (if any), account the current one (if it is
  bound to a node and not finished).  An assumed binding (made by this scheduler, not yet shown by
  the watch) counts as the pod's current version;
* a dirty node: a fresh NodeInfo from the node object, with the pods accounted to it re-added;
  gone from the cache: its NodeInfo goes (its pods wait, accounted, in case it comes back).

`mark_all()` (called periodically by the daemon) throws it all away and rebuilds from the caches:
a level-triggered safety net, so a missed mark cannot leave the accounting wrong for long.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, Protocol

from controlplane.scheduler.filters import NodeInfo

__all__ = ["NodeInfoCache"]

Obj = dict[str, Any]
_TERMINAL_PHASES = ("Succeeded", "Failed")


class Cache(Protocol):
    """The part of podnet.api.informer.Informer read here."""

    def get(self, key: str) -> Obj | None: ...

    def list(self) -> list[Obj]: ...

    def snapshot(self) -> dict[str, Obj]: ...


def _node_name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def _host(pod: Mapping[str, Any] | None) -> str | None:
    """The node a pod occupies, or None (unbound, finished: upstream skips Succeeded/Failed)."""
    if pod is None or (pod.get("status") or {}).get("phase") in _TERMINAL_PHASES:
        return None
    host = (pod.get("spec") or {}).get("nodeName")
    return str(host) if host else None


class NodeInfoCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dirty_pods: set[str] = set()
        self._dirty_nodes: set[str] = set()
        self._all_dirty = True
        self._infos: dict[str, NodeInfo] = {}
        self._accounted: dict[str, tuple[str, Obj]] = {}  # pod key -> (node name, the version counted)
        self._by_node: dict[str, set[str]] = {}  # node name -> keys of the pods accounted to it
        self.rebuilds = 0  # full rebuilds, for tests and logs

    # ------------------------------------------------------------------ marking (any thread)
    def mark_pod(self, key: str) -> None:
        with self._lock:
            self._dirty_pods.add(key)

    def mark_node(self, key: str) -> None:
        with self._lock:
            self._dirty_nodes.add(key)

    def mark_all(self) -> None:
        with self._lock:
            self._all_dirty = True

    # ------------------------------------------------------------------ refreshing (scheduling thread)
    def refresh(self, nodes: Cache, pods: Cache, assumed: Mapping[str, Obj]) -> dict[str, NodeInfo]:
        """Bring the NodeInfos up to date and return them (owned by the cache: the caller may
        add_pod/remove_pod on them only through marks; read-only otherwise)."""
        with self._lock:
            rebuild, self._all_dirty = self._all_dirty, False
            dirty_pods, self._dirty_pods = self._dirty_pods, set()
            dirty_nodes, self._dirty_nodes = self._dirty_nodes, set()
        if rebuild:
            self._rebuild(nodes, pods, assumed)
            return self._infos
        for key in dirty_nodes:
            self._refresh_node(key, nodes.get(key))
        for key in dirty_pods:
            pod = pods.get(key)
            self._refresh_pod(key, assumed.get(key, pod) if pod is not None else None)
        return self._infos

    def _rebuild(self, nodes: Cache, pods: Cache, assumed: Mapping[str, Obj]) -> None:
        self.rebuilds += 1
        self._infos = {_node_name(node): NodeInfo.of(node) for node in nodes.list()}
        self._accounted, self._by_node = {}, {}
        for key, pod in pods.snapshot().items():
            self._refresh_pod(key, assumed.get(key, pod))

    def _refresh_node(self, name: str, node: Obj | None) -> None:
        if node is None:
            self._infos.pop(name, None)
            return
        info = NodeInfo.of(node)
        for key in sorted(self._by_node.get(name, ())):
            info.add_pod(self._accounted[key][1])
        self._infos[name] = info

    def _refresh_pod(self, key: str, pod: Obj | None) -> None:
        old = self._accounted.pop(key, None)
        if old is not None:
            old_host, old_pod = old
            self._by_node[old_host].discard(key)
            if old_host in self._infos:
                self._infos[old_host].remove_pod(old_pod)
        host = _host(pod)
        if pod is None or host is None:
            return
        self._accounted[key] = (host, pod)
        self._by_node.setdefault(host, set()).add(key)
        if host in self._infos:
            self._infos[host].add_pod(pod)
