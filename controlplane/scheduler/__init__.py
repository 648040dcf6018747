"""podnet-scheduler: binds pending pods to nodes.

The pure core (no I/O) lives in resources (quantities, pod requests), filters (feasibility with
upstream reason strings), scoring (least-allocated, controller spreading, PreferNoSchedule) and
framework (one scheduling cycle and the aggregated "0/N nodes are available" message).  The daemon
(daemon: queue, assumed bindings, binder threads, Events) keeps its NodeInfos up to date between
cycles with cache.NodeInfoCache.
"""

from controlplane.scheduler.framework import Unschedulable, build_node_infos, schedule, schedule_on

__all__ = ["Unschedulable", "build_node_infos", "schedule", "schedule_on"]
