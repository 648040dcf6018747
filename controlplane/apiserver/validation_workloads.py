"""Validation of replication controllers (core/v1), replica sets and deployments (apps/v1)."""

from __future__ import annotations

from controlplane.apiserver.validation_common import (
    Causes,
    Obj,
    as_map,
    go_label_selector,
    go_string_map,
    validate_label_selector,
    validate_labels,
)
from controlplane.apiserver.validation_core import validate_pod_spec
from podnet.api.selectors import SelectorError, label_selector_from_spec

# ---------------------------------------------------------------------------------------------
# Workloads: replication controllers (core), replica sets and deployments (apps/v1).

_SELECTOR_MISMATCH = "`selector` does not match template `labels`"


def _validate_replicas(spec: Obj, c: Causes) -> None:
    replicas = spec.get("replicas")
    if replicas is not None and (isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0):
        c.invalid("spec.replicas", replicas, "must be greater than or equal to 0")


def _validate_template(spec: Obj, c: Causes) -> Obj | None:
    """ValidatePodTemplateSpecForRC/ReplicaSet: labels, a pod spec, and restartPolicy Always."""
    template = spec.get("template")
    if not isinstance(template, dict):
        c.required("spec.template")
        return None
    validate_labels(as_map(template.get("metadata")).get("labels"), "spec.template.metadata.labels", c)
    tspec = as_map(template.get("spec"))
    validate_pod_spec(tspec, "spec.template.spec", c)
    if tspec.get("restartPolicy") not in (None, "Always"):
        c.not_supported("spec.template.spec.restartPolicy", tspec["restartPolicy"], ["Always"])
    if tspec.get("activeDeadlineSeconds") is not None:
        c.forbidden("spec.template.spec.activeDeadlineSeconds",
                    "activeDeadlineSeconds in ReplicationController is not Supported")
    return template


def validate_rc(obj: Obj, old: Obj | None, c: Causes) -> None:
    spec = as_map(obj.get("spec"))
    _validate_replicas(spec, c)
    selector = spec.get("selector")
    template = _validate_template(spec, c)
    if not selector:
        c.required("spec.selector")
        return
    validate_labels(selector, "spec.selector", c)
    if template is not None:
        labels = as_map(as_map(template.get("metadata")).get("labels"))
        if not isinstance(selector, dict) or any(labels.get(k) != v for k, v in selector.items()):
            c.invalid("spec.template.metadata.labels", go_string_map(labels), _SELECTOR_MISMATCH)


def _validate_apps_selector(spec: Obj, template: Obj | None, kind: str, c: Causes) -> None:
    selector = spec.get("selector")
    if selector is None:
        c.required("spec.selector")
        return
    validate_label_selector(selector, "spec.selector", c)
    sel = as_map(selector)
    if not sel.get("matchLabels") and not sel.get("matchExpressions"):
        c.invalid("spec.selector", go_label_selector(selector), f"empty selector is invalid for {kind}")
        return
    if template is None:
        return
    labels = as_map(as_map(template.get("metadata")).get("labels"))
    try:
        matches = label_selector_from_spec(sel).matches(labels)
    except SelectorError:
        return  # already reported by validate_label_selector
    if not matches:
        c.invalid("spec.template.metadata.labels", go_string_map(labels), _SELECTOR_MISMATCH)


def _validate_selector_immutable(obj: Obj, old: Obj | None, c: Causes) -> None:
    """apps/v1 made spec.selector immutable for Deployments and ReplicaSets."""
    if old is None:
        return
    new_sel = as_map(obj.get("spec")).get("selector")
    if new_sel != as_map(old.get("spec")).get("selector"):
        c.invalid("spec.selector", go_label_selector(new_sel), "field is immutable")


def validate_replica_set(obj: Obj, old: Obj | None, c: Causes) -> None:
    spec = as_map(obj.get("spec"))
    _validate_replicas(spec, c)
    _validate_apps_selector(spec, _validate_template(spec, c), "replicaset", c)
    _validate_selector_immutable(obj, old, c)


def _validate_strategy(spec: Obj, c: Causes) -> None:
    strategy = as_map(spec.get("strategy"))
    kind = strategy.get("type")
    if kind not in ("Recreate", "RollingUpdate"):
        c.not_supported("spec.strategy.type", kind, ["Recreate", "RollingUpdate"])
    elif kind == "Recreate" and strategy.get("rollingUpdate") is not None:
        c.forbidden("spec.strategy.rollingUpdate", "may not be specified when strategy `type` is 'Recreate'")
    rolling = as_map(strategy.get("rollingUpdate"))
    surge, unavailable = rolling.get("maxSurge"), rolling.get("maxUnavailable")
    if kind == "RollingUpdate" and surge in (0, "0%") and unavailable in (0, "0%"):
        c.invalid("spec.strategy.rollingUpdate.maxUnavailable", unavailable,
                  "may not be 0 when `maxSurge` is 0")


def validate_deployment(obj: Obj, old: Obj | None, c: Causes) -> None:
    spec = as_map(obj.get("spec"))
    _validate_replicas(spec, c)
    _validate_apps_selector(spec, _validate_template(spec, c), "deployment", c)
    _validate_strategy(spec, c)
    for key in ("revisionHistoryLimit", "progressDeadlineSeconds", "minReadySeconds"):
        value = spec.get(key)
        if value is not None and (not isinstance(value, int) or value < 0):
            c.invalid(f"spec.{key}", value, "must be greater than or equal to 0")
    _validate_selector_immutable(obj, old, c)
