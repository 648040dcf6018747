"""The ReplicaSet controller: the ReplicationController machinery (claims, expectations, burst,
deletion ranking, status) with an apps/v1 LabelSelector and ownerReferences of kind ReplicaSet.

Deployments own ReplicaSets and only ever change their spec.replicas and annotations; this
controller turns that into pods.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from controlplane.controllers.context import ControllerContext
from controlplane.controllers.replication import ReplicationManager, WorkloadKind
from podnet.api.client import PODS, REPLICASETS
from podnet.api.informer import Handlers
from podnet.api.selectors import NOTHING, LabelSelector, SelectorError, label_selector_from_spec

__all__ = ["RS_KIND", "build", "rs_selector"]


def rs_selector(rs: Mapping[str, Any]) -> LabelSelector:
    """spec.selector (matchLabels AND matchExpressions).  Validation makes it required and non-empty;
    an unparsable one matches nothing rather than every pod (upstream refuses to act on it too)."""
    try:
        return label_selector_from_spec((rs.get("spec") or {}).get("selector"))
    except SelectorError:
        return NOTHING


RS_KIND = WorkloadKind(REPLICASETS, "ReplicaSet", "apps/v1", rs_selector, "replicaset")


def build(ctx: ControllerContext) -> ReplicationManager:
    """The catalog's entry: a ReplicaSet controller on the shared RS and pod informers."""
    rss = ctx.informers.get(REPLICASETS)
    pods = ctx.informers.get(PODS)
    manager = ReplicationManager(ctx.client, rss, pods, resync_period=ctx.options.resync_period,
                                 kind=RS_KIND, recorder=ctx.recorder)
    rss.add_handlers(Handlers(on_change=manager.rc_changed))
    pods.add_handlers(Handlers(on_add=manager.pod_added, on_update=manager.pod_updated,
                               on_delete=manager.pod_deleted))
    return manager
