"""Pure Deployment arithmetic and bookkeeping (upstream pkg/controller/deployment/util), table-tested.

Objects are the API's dicts.  A ReplicaSet's "replicas" is spec.replicas (what the Deployment asked
for); "available" is status.availableReplicas (what the ReplicaSet controller observed).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from podnet.api.selectors import NOTHING, LabelSelector, SelectorError, label_selector_from_spec

Obj = dict[str, Any]

HASH_LABEL = "pod-template-hash"
REVISION = "deployment.kubernetes.io/revision"
REVISION_HISTORY = "deployment.kubernetes.io/revision-history"
DESIRED_REPLICAS = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS = "deployment.kubernetes.io/max-replicas"
# Deployment annotations that are not copied to its ReplicaSets (upstream annotationsToSkip).
SKIPPED_ANNOTATIONS = frozenset({"kubectl.kubernetes.io/last-applied-configuration", REVISION,
                                 REVISION_HISTORY, DESIRED_REPLICAS, MAX_REPLICAS,
                                 "deprecated.deployment.rollback.to"})
SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # upstream rand.SafeEncodeString: no vowels, no 0/1/3

# Progressing reasons (upstream deploymentutil)
NEW_RS_CREATED = "NewReplicaSetCreated"
FOUND_NEW_RS = "FoundNewReplicaSet"
RS_UPDATED = "ReplicaSetUpdated"
NEW_RS_AVAILABLE = "NewReplicaSetAvailable"
TIMED_OUT = "ProgressDeadlineExceeded"
PAUSED = "DeploymentPaused"
RESUMED = "DeploymentResumed"


def meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def spec_replicas(obj: Mapping[str, Any] | None) -> int:
    """spec.replicas (the API server defaults it to 1)."""
    if obj is None:
        return 0
    value = (obj.get("spec") or {}).get("replicas")
    return 1 if value is None else int(value)


def status_int(obj: Mapping[str, Any] | None, field: str) -> int:
    return int(((obj or {}).get("status") or {}).get(field) or 0)


def deployment_selector(d: Mapping[str, Any]) -> LabelSelector:
    try:
        return label_selector_from_spec((d.get("spec") or {}).get("selector"))
    except SelectorError:
        return NOTHING


# ---------------------------------------------------------------------------------- the template hash
def _fnv32a(data: bytes) -> int:
    h = 0x811C9DC5
    for byte in data:
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return h


def safe_encode(text: str) -> str:
    """rand.SafeEncodeString: each character mapped into an alphabet that cannot spell words."""
    return "".join(SAFE_ALPHABET[ord(c) % len(SAFE_ALPHABET)] for c in text)


def _prune(value: Any) -> Any:
    """Drop nulls and empty maps/lists: Go's semantic equality treats nil and empty alike."""
    if isinstance(value, Mapping):
        pruned = {k: _prune(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in (None, {}, [])}
    if isinstance(value, list):
        return [_prune(v) for v in value]
    return value


def template_hash(template: Mapping[str, Any], collision_count: int | None = None) -> str:
    """A stable hash of the pod template (canonical JSON) plus collisionCount (little-endian uint32,
    as upstream ComputeHash), fnv-32a, its decimal form safe-encoded."""
    data = json.dumps(_prune(template), sort_keys=True, separators=(",", ":")).encode()
    if collision_count is not None:
        data += int(collision_count).to_bytes(4, "little")
    return safe_encode(str(_fnv32a(data)))


def without_hash(template: Mapping[str, Any]) -> Obj:
    out = copy.deepcopy(dict(template))
    labels = (out.get("metadata") or {}).get("labels")
    if labels:
        labels.pop(HASH_LABEL, None)
    return out


def equal_ignore_hash(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Templates equal apart from the pod-template-hash label (upstream EqualIgnoreHash)."""
    return bool(_prune(without_hash(a)) == _prune(without_hash(b)))


# ---------------------------------------------------------------------------------- fenceposts
def scaled_value(value: int | str | None, total: int, round_up: bool) -> int:
    """intstr.GetScaledValueFromIntOrPercent: an int as is, "N%" of total rounded up or down."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if not text.endswith("%"):
        return int(text)
    exact = int(text[:-1]) * total / 100
    return math.ceil(exact) if round_up else math.floor(exact)


def resolve_fenceposts(max_surge: int | str | None, max_unavailable: int | str | None,
                       desired: int) -> tuple[int, int]:
    """(surge, unavailable): surge rounds up, unavailable down; validation forbids both being 0, but
    rounding can make both 0, and then one pod may be unavailable so the rollout can progress."""
    surge = scaled_value(max_surge, desired, True)
    unavailable = scaled_value(max_unavailable, desired, False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


def is_rolling(d: Mapping[str, Any]) -> bool:
    return (((d.get("spec") or {}).get("strategy") or {}).get("type") or "RollingUpdate") == "RollingUpdate"


def _fenceposts(d: Mapping[str, Any]) -> tuple[int, int]:
    rolling = (((d.get("spec") or {}).get("strategy") or {}).get("rollingUpdate") or {})
    return resolve_fenceposts(rolling.get("maxSurge", "25%"), rolling.get("maxUnavailable", "25%"),
                              spec_replicas(d))


def max_surge(d: Mapping[str, Any]) -> int:
    return _fenceposts(d)[0] if is_rolling(d) else 0


def max_unavailable(d: Mapping[str, Any]) -> int:
    """Never more than spec.replicas; 0 for Recreate or zero replicas."""
    replicas = spec_replicas(d)
    if not is_rolling(d) or replicas == 0:
        return 0
    return min(_fenceposts(d)[1], replicas)


# ---------------------------------------------------------------------------------- replica set lists
def replicas_sum(rss: Iterable[Mapping[str, Any] | None]) -> int:
    return sum(spec_replicas(rs) for rs in rss if rs is not None)


def status_sum(rss: Iterable[Mapping[str, Any] | None], field: str) -> int:
    return sum(status_int(rs, field) for rs in rss if rs is not None)


def active(rss: Iterable[Mapping[str, Any] | None]) -> list[Obj]:
    """FilterActiveReplicaSets: the ones asked for at least one pod."""
    return [dict(rs) for rs in rss if rs is not None and spec_replicas(rs) > 0]


def by_creation(rss: Iterable[Mapping[str, Any]], newest_first: bool = False) -> list[Obj]:
    """ReplicaSetsByCreationTimestamp (ties by name)."""
    key = [(str(meta(rs).get("creationTimestamp") or ""), str(meta(rs).get("name") or ""), dict(rs))
           for rs in rss]
    key.sort(key=lambda t: (t[0], t[1]), reverse=newest_first)
    return [t[2] for t in key]


def revision(rs: Mapping[str, Any] | None) -> int:
    try:
        return int((meta(rs or {}).get("annotations") or {}).get(REVISION) or 0)
    except ValueError:
        return 0


def max_revision(rss: Iterable[Mapping[str, Any]]) -> int:
    return max((revision(rs) for rs in rss), default=0)


def find_new_rs(d: Mapping[str, Any], rss: Iterable[Mapping[str, Any]]) -> Obj | None:
    """The oldest ReplicaSet whose template equals the Deployment's (ignoring the hash label)."""
    template = (d.get("spec") or {}).get("template") or {}
    for rs in by_creation(rss):
        if equal_ignore_hash((rs.get("spec") or {}).get("template") or {}, template):
            return rs
    return None


def available_for_scale_down(rs: Mapping[str, Any]) -> int:
    """status.availableReplicas, but never more than spec.replicas.  WHY: right after a scale-down the
    RS status still counts the pods being deleted; upstream accepts that race, we do not let a stale
    count license a second scale-down below the availability floor."""
    return min(status_int(rs, "availableReplicas"), spec_replicas(rs))
