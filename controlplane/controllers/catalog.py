"""The controllers `podnet-controller-manager --controllers` knows, by upstream name.

Each entry is "module:function"; the function takes a ControllerContext, registers handlers on the
shared informers it needs and returns the controller to run.  Modules load only when selected.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import cast

from controlplane.controllers.context import ControllerContext, Runnable

__all__ = ["CONTROLLERS", "build", "select"]

CONTROLLERS: dict[str, str] = {
    "replicationcontroller": "controlplane.controllers.replication:build",
    "replicaset": "controlplane.controllers.replicaset:build",
    "deployment": "controlplane.controllers.deployment:build",
    "nodelifecycle": "controlplane.controllers.nodelifecycle:build",
    "nodeipam": "controlplane.controllers.nodeipam:build",
    "endpoint": "controlplane.controllers.endpoints:build",
    "endpointslice": "controlplane.controllers.endpointslice:build",
    "namespace": "controlplane.controllers.namespace:build",
    "garbagecollector": "controlplane.controllers.garbagecollector:build",
    "serviceaccount": "controlplane.controllers.serviceaccount:build",
}


def select(spec: str) -> list[str]:
    """Upstream's --controllers grammar: "*" is every controller, "foo" enables, "-foo" disables.
    Raises ValueError on an unknown name."""
    items = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = sorted({i.lstrip("-") for i in items} - set(CONTROLLERS) - {"*"})
    if unknown:
        raise ValueError(f"unknown controllers {unknown}; known: {', '.join(CONTROLLERS)}")
    chosen = set(CONTROLLERS) if "*" in items else set()
    chosen |= {i for i in items if i != "*" and not i.startswith("-")}
    chosen -= {i[1:] for i in items if i.startswith("-")}
    return [name for name in CONTROLLERS if name in chosen]


def build(name: str, ctx: ControllerContext) -> Runnable:
    module, _, function = CONTROLLERS[name].partition(":")
    factory = getattr(importlib.import_module(module), function)
    return cast(Callable[[ControllerContext], Runnable], factory)(ctx)
