"""Pure decisions of the Deployment controller: how far to scale the new and old ReplicaSets in one
step, proportional scaling, annotations, status and conditions (upstream pkg/controller/deployment
rolling.go, sync.go, progress.go and util).  Every function returns what to write; deployment.py
writes it.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from controlplane.controllers.deployment_util import (
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    NEW_RS_AVAILABLE,
    REVISION,
    REVISION_HISTORY,
    RS_UPDATED,
    SKIPPED_ANNOTATIONS,
    TIMED_OUT,
    Obj,
    active,
    available_for_scale_down,
    by_creation,
    is_rolling,
    max_surge,
    max_unavailable,
    meta,
    replicas_sum,
    spec_replicas,
    status_int,
    status_sum,
)

Scales = dict[str, int]  # ReplicaSet name -> the spec.replicas to write


# ---------------------------------------------------------------------------------- rolling update
def new_rs_new_replicas(d: Mapping[str, Any], all_rss: Sequence[Mapping[str, Any]],
                        new_rs: Mapping[str, Any]) -> int:
    """NewRSNewReplicas: Recreate jumps to spec.replicas; RollingUpdate adds pods until the total asked
    for reaches replicas + maxSurge, never past spec.replicas for the new RS itself."""
    desired = spec_replicas(d)
    if not is_rolling(d):
        return desired
    current = replicas_sum(all_rss)
    max_total = desired + max_surge(d)
    if current >= max_total:
        return spec_replicas(new_rs)
    scale_up = min(max_total - current, desired - spec_replicas(new_rs))
    return spec_replicas(new_rs) + max(scale_up, 0)


def _cleanup_unhealthy(old_rss: list[Obj], budget: int, plan: Scales) -> int:
    """cleanupUnhealthyReplicas: first drop old pods that are not available (they cost nothing)."""
    total = 0
    for rs in by_creation(old_rss):
        if total >= budget:
            break
        replicas = plan.get(meta(rs)["name"], spec_replicas(rs))
        unhealthy = replicas - available_for_scale_down(rs)
        if replicas == 0 or unhealthy <= 0:
            continue
        step = min(budget - total, unhealthy)
        plan[meta(rs)["name"]] = replicas - step
        total += step
    return total


def plan_old_scale_down(d: Mapping[str, Any], all_rss: Sequence[Mapping[str, Any]],
                        old_rss: Sequence[Mapping[str, Any]], new_rs: Mapping[str, Any] | None) -> Scales:
    """reconcileOldReplicaSets: scale old RSs down as far as keeps replicas - maxUnavailable pods
    available, counting the new RS's not-yet-available pods as unavailable."""
    plan: Scales = {}
    olds = active(old_rss)
    if replicas_sum(olds) == 0:
        return plan
    min_available = spec_replicas(d) - max_unavailable(d)
    new_unavailable = spec_replicas(new_rs) - (available_for_scale_down(new_rs) if new_rs else 0)
    max_scaled_down = replicas_sum(all_rss) - min_available - new_unavailable
    if max_scaled_down <= 0:
        return plan
    _cleanup_unhealthy(olds, max_scaled_down, plan)
    # scaleDownOldReplicaSetsForRollingUpdate: available pods above the floor, oldest RS first
    available = sum(available_for_scale_down(rs) for rs in all_rss)
    to_scale = available - min_available
    done = 0
    for rs in by_creation(olds):
        name = meta(rs)["name"]
        replicas = plan.get(name, spec_replicas(rs))
        if done >= to_scale:
            break
        if replicas == 0:
            continue
        step = min(replicas, to_scale - done)
        plan[name] = replicas - step
        done += step
    return plan


# ---------------------------------------------------------------------------------- scaling events
def desired_annotation(rs: Mapping[str, Any], name: str = DESIRED_REPLICAS) -> int | None:
    try:
        return int((meta(rs).get("annotations") or {})[name])
    except (KeyError, ValueError, TypeError):
        return None


def is_scaling_event(d: Mapping[str, Any], rss: Sequence[Mapping[str, Any] | None]) -> bool:
    """spec.replicas differs from the desired-replicas an active RS was last sized for."""
    for rs in active(rss):
        desired = desired_annotation(rs)
        if desired is not None and desired != spec_replicas(d):
            return True
    return False


def _fraction(rs: Mapping[str, Any], d: Mapping[str, Any]) -> int:
    """getReplicaSetFraction: the RS's share of the new size, by the max-replicas it was sized for."""
    if spec_replicas(d) == 0:
        return -spec_replicas(rs)
    allowed = spec_replicas(d) + max_surge(d)
    annotated = desired_annotation(rs, MAX_REPLICAS)
    if annotated is None:
        annotated = status_int(d, "replicas")
    if annotated == 0:
        return 0
    size = spec_replicas(rs) * allowed / annotated
    return int(size + 0.5) - spec_replicas(rs)  # integer.RoundToInt32 rounds half up


def _proportion(rs: Mapping[str, Any], d: Mapping[str, Any], to_add: int, added: int) -> int:
    if spec_replicas(rs) == 0 or to_add == 0 or to_add == added:
        return 0
    fraction, allowed = _fraction(rs, d), to_add - added
    return min(fraction, allowed) if to_add > 0 else max(fraction, allowed)


def _is_saturated(d: Mapping[str, Any], rs: Mapping[str, Any] | None) -> bool:
    if rs is None:
        return False
    want = spec_replicas(d)
    return (spec_replicas(rs) == want and desired_annotation(rs) == want
            and status_int(rs, "availableReplicas") == want)


def plan_scale(d: Mapping[str, Any], new_rs: Mapping[str, Any] | None,
               old_rss: Sequence[Mapping[str, Any]]) -> Scales:
    """DeploymentController.scale: a replica change mid-rollout is spread over the active RSs in
    proportion to their size (bigger first; newer first when adding, older first when removing),
    the rounding leftover going to the first.  Returns every active RS's size (annotations follow)."""
    olds = by_creation(old_rss, newest_first=True)
    candidates = active([*olds, new_rs])
    if not candidates:
        latest = new_rs if new_rs is not None else (olds[0] if olds else None)
        return {meta(latest)["name"]: spec_replicas(d)} if latest is not None else {}
    if len(candidates) == 1:
        return {meta(candidates[0])["name"]: spec_replicas(d)}
    if _is_saturated(d, new_rs):
        return {meta(rs)["name"]: 0 for rs in active(olds)}
    if not is_rolling(d):
        return {}
    allowed = spec_replicas(d) + max_surge(d) if spec_replicas(d) > 0 else 0
    to_add = allowed - replicas_sum(candidates)
    ordered = by_creation(candidates, newest_first=to_add > 0)
    ordered.sort(key=lambda rs: spec_replicas(rs), reverse=True)
    sizes: Scales = {}
    added = 0
    for rs in ordered:
        share = _proportion(rs, d, to_add, added)
        sizes[meta(rs)["name"]] = spec_replicas(rs) + share
        added += share
    if to_add != 0:
        first = meta(ordered[0])["name"]
        sizes[first] = max(sizes[first] + to_add - added, 0)
    return sizes


# ---------------------------------------------------------------------------------- annotations
def replicas_annotations(d: Mapping[str, Any]) -> dict[str, str]:
    return {DESIRED_REPLICAS: str(spec_replicas(d)), MAX_REPLICAS: str(spec_replicas(d) + max_surge(d))}


def new_rs_annotations(d: Mapping[str, Any], rs_annotations: Mapping[str, str] | None,
                       new_revision: int, exists: bool) -> dict[str, str]:
    """SetNewReplicaSetAnnotations: the Deployment's own annotations are copied; the revision only
    moves up (a reused old RS gets max+1, and its previous numbers go to revision-history); a new RS
    also gets desired/max-replicas."""
    out = dict(rs_annotations or {})
    for key, value in (meta(d).get("annotations") or {}).items():
        if key not in SKIPPED_ANNOTATIONS:
            out[key] = value
    old = out.get(REVISION, "")
    try:
        old_number = int(old) if old else 0
    except ValueError:
        old_number = 0
    if old_number < new_revision:
        out[REVISION] = str(new_revision)
        if old:
            history = out.get(REVISION_HISTORY)
            out[REVISION_HISTORY] = f"{history},{old}" if history else old
    if not exists:
        out.update(replicas_annotations(d))
    return out


# ---------------------------------------------------------------------------------- status and conditions
def now_rfc3339(now: float) -> str:
    return datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str | None) -> float | None:
    try:
        return datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def condition(status: Mapping[str, Any], kind: str) -> Obj | None:
    for cond in status.get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return None


def set_condition(status: Obj, kind: str, value: str, reason: str, message: str, now: float) -> None:
    """SetDeploymentCondition: unchanged status+reason is left alone (its times too); the same status
    with another reason keeps lastTransitionTime."""
    current = condition(status, kind)
    if current is not None and current.get("status") == value and current.get("reason") == reason:
        return
    stamp = now_rfc3339(now)
    cond = {"type": kind, "status": value, "lastUpdateTime": stamp, "lastTransitionTime": stamp,
            "reason": reason, "message": message}
    if current is not None and current.get("status") == value:
        cond["lastTransitionTime"] = current.get("lastTransitionTime", stamp)
    status["conditions"] = [*(c for c in status.get("conditions") or [] if c.get("type") != kind), cond]


def remove_condition(status: Obj, kind: str) -> None:
    status["conditions"] = [c for c in status.get("conditions") or [] if c.get("type") != kind]


def calculate_status(d: Mapping[str, Any], all_rss: Sequence[Mapping[str, Any]],
                     new_rs: Mapping[str, Any] | None, now: float) -> Obj:
    """calculateStatus: counts from the RSs' status (spec for unavailable), the Available condition."""
    available = status_sum(all_rss, "availableReplicas")
    dstatus = d.get("status") or {}
    status: Obj = {
        "observedGeneration": int(meta(d).get("generation") or 0),
        "replicas": status_sum(all_rss, "replicas"),
        "updatedReplicas": status_int(new_rs, "replicas") if new_rs else 0,
        "readyReplicas": status_sum(all_rss, "readyReplicas"),
        "availableReplicas": available,
        "unavailableReplicas": max(replicas_sum(all_rss) - available, 0),
        "conditions": [dict(c) for c in dstatus.get("conditions") or []],
    }
    if dstatus.get("collisionCount") is not None:
        status["collisionCount"] = dstatus["collisionCount"]
    if available >= spec_replicas(d) - max_unavailable(d):
        set_condition(status, "Available", "True", "MinimumReplicasAvailable",
                      "Deployment has minimum availability.", now)
    else:
        set_condition(status, "Available", "False", "MinimumReplicasUnavailable",
                      "Deployment does not have minimum availability.", now)
    return status


def has_progress_deadline(d: Mapping[str, Any]) -> bool:
    deadline = (d.get("spec") or {}).get("progressDeadlineSeconds")
    return deadline is not None and int(deadline) != 2**31 - 1


def deployment_complete(d: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    want = spec_replicas(d)
    return (status.get("updatedReplicas") == want and status.get("replicas") == want
            and status.get("availableReplicas") == want
            and int(status.get("observedGeneration") or 0) >= int(meta(d).get("generation") or 0))


def deployment_progressing(d: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    """Any move since the last status: more updated/ready/available pods, or fewer old ones."""
    old = d.get("status") or {}
    old_olds = int(old.get("replicas") or 0) - int(old.get("updatedReplicas") or 0)
    new_olds = int(status.get("replicas") or 0) - int(status.get("updatedReplicas") or 0)
    return (int(status.get("updatedReplicas") or 0) > int(old.get("updatedReplicas") or 0)
            or new_olds < old_olds
            or int(status.get("readyReplicas") or 0) > int(old.get("readyReplicas") or 0)
            or int(status.get("availableReplicas") or 0) > int(old.get("availableReplicas") or 0))


def timed_out(d: Mapping[str, Any], status: Mapping[str, Any], now: float) -> bool:
    """The Progressing condition has not been updated for progressDeadlineSeconds."""
    if not has_progress_deadline(d):
        return False
    cond = condition(status, "Progressing")
    if cond is None or cond.get("reason") == NEW_RS_AVAILABLE:
        return False
    if cond.get("reason") == TIMED_OUT:
        return True
    since = parse_time(cond.get("lastUpdateTime"))
    deadline = int((d.get("spec") or {}).get("progressDeadlineSeconds") or 0)
    return since is not None and since + deadline < now


def rollout_status(d: Mapping[str, Any], all_rss: Sequence[Mapping[str, Any]],
                   new_rs: Mapping[str, Any] | None, now: float) -> Obj:
    """syncRolloutStatus's new status: Progressing follows the rollout (complete, progressing, or
    past its deadline); a complete rollout keeps its condition until something new happens."""
    status = calculate_status(d, all_rss, new_rs, now)
    if not has_progress_deadline(d):
        remove_condition(status, "Progressing")
        return status
    current = condition(d.get("status") or {}, "Progressing")
    complete = (status["replicas"] == status["updatedReplicas"] and current is not None
                and current.get("reason") == NEW_RS_AVAILABLE)
    if complete:
        return status
    name = meta(new_rs)["name"] if new_rs else ""
    if deployment_complete(d, status):
        set_condition(status, "Progressing", "True", NEW_RS_AVAILABLE,
                      f'ReplicaSet "{name}" has successfully progressed.', now)
    elif deployment_progressing(d, status):
        # a fresh lastUpdateTime restarts the deadline; the transition time stays while still True
        remove_condition(status, "Progressing")
        set_condition(status, "Progressing", "True", RS_UPDATED, f'ReplicaSet "{name}" is progressing.', now)
        if current is not None and current.get("status") == "True":
            condition_in(status, "Progressing")["lastTransitionTime"] = current.get("lastTransitionTime")
    elif timed_out(d, status, now):
        set_condition(status, "Progressing", "False", TIMED_OUT,
                      f'ReplicaSet "{name}" has timed out progressing.', now)
    return status


def condition_in(status: Obj, kind: str) -> Obj:
    """The condition dict inside `status` (to edit in place)."""
    for cond in status.get("conditions") or []:
        if cond.get("type") == kind:
            return cond
    raise KeyError(kind)


def status_differs(d: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
    """Zero counts are omitted by the server (omitempty), so a missing field equals 0."""
    old = d.get("status") or {}
    for key in set(old) | set(status):
        if key == "conditions":
            if (old.get(key) or []) != (status.get(key) or []):
                return True
        elif (old.get(key) or 0) != (status.get(key) or 0):
            return True
    return False


def progress_requeue(d: Mapping[str, Any], status: Mapping[str, Any], now: float) -> float | None:
    """requeueStuckDeployment: seconds until a progressing rollout would pass its deadline."""
    if not has_progress_deadline(d):
        return None
    cond = condition(status, "Progressing")
    if cond is None or cond.get("status") != "True" or cond.get("reason") == NEW_RS_AVAILABLE:
        return None
    since = parse_time(cond.get("lastUpdateTime"))
    if since is None:
        return None
    deadline = int((d.get("spec") or {}).get("progressDeadlineSeconds") or 0)
    return max(since + deadline - now, 0.0) + 1.0
