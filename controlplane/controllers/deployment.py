"""The Deployment controller: owns ReplicaSets "<deployment>-<pod-template-hash>" and moves pods from
the old ones to the one matching the current template (upstream pkg/controller/deployment).

Informers on Deployments, ReplicaSets and pods only mark Deployment keys dirty; one `sync` per key
claims the ReplicaSets (adopt / release by selector), then takes at most one step:
- paused, or spec.replicas changed (a scaling event): resize the active RSs proportionally;
- RollingUpdate: scale the new RS up within replicas + maxSurge, else the old ones down while
  replicas - maxUnavailable pods stay available; Recreate: old to zero, wait for their pods, then new;
- when complete, delete old zero-sized RSs beyond revisionHistoryLimit;
and writes status (counts, Available, Progressing) when it changed.  Every RS write carries the
cached resourceVersion, so a step computed from a stale cache is refused (409) and recomputed.
The step's arithmetic is pure, in deployment_plan / deployment_util.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from controlplane.controllers import deployment_plan as plan
from controlplane.controllers import deployment_util as util
from controlplane.controllers.base import KeyedController
from controlplane.controllers.context import ControllerContext
from controlplane.controllers.replication import (
    Api,
    Cache,
    Recorder,
    WorkloadKind,
    adopt_and_release,
    claim_pods,
    controller_ref,
    owner_reference,
)
from podnet.api.client import DEPLOYMENTS, PODS, REPLICASETS, ApiError, Resource
from podnet.api.informer import Handlers, object_key

__all__ = ["DEPLOYMENT_KIND", "DeploymentController", "build", "new_replica_set"]

log = logging.getLogger("podnet.controllers.deployment")

Obj = dict[str, Any]
DEPLOYMENT_KIND = WorkloadKind(DEPLOYMENTS, "Deployment", "apps/v1", util.deployment_selector, "deployment")


class GetApi(Api, Protocol):
    """The writes of the RC machinery plus a GET (to look at an RS whose name collided)."""

    def get(self, res: Resource, name: str, namespace: str | None = None) -> Obj: ...


def new_replica_set(d: Mapping[str, Any], olds: list[Obj], new_revision: int) -> Obj:
    """The RS for the Deployment's current template: hash label on its selector, template and own
    labels, sized by NewRSNewReplicas, annotated with the revision and desired/max replicas."""
    spec = d.get("spec") or {}
    collision = (d.get("status") or {}).get("collisionCount")
    pod_hash = util.template_hash(spec.get("template") or {}, collision)
    template = copy.deepcopy(spec.get("template") or {})
    template.setdefault("metadata", {}).setdefault("labels", {})[util.HASH_LABEL] = pod_hash
    selector = copy.deepcopy(spec.get("selector") or {})
    selector.setdefault("matchLabels", {})[util.HASH_LABEL] = pod_hash
    rs: Obj = {"apiVersion": "apps/v1", "kind": "ReplicaSet",
               "metadata": {"name": f"{util.meta(d)['name']}-{pod_hash}",
                            "namespace": util.meta(d).get("namespace"),
                            "labels": dict(template["metadata"]["labels"]),
                            "ownerReferences": [owner_reference(d, DEPLOYMENT_KIND)]},
               "spec": {"replicas": 0, "minReadySeconds": int(spec.get("minReadySeconds") or 0),
                        "selector": selector, "template": template}}
    rs["spec"]["replicas"] = plan.new_rs_new_replicas(d, [*olds, rs], rs)
    rs["metadata"]["annotations"] = plan.new_rs_annotations(d, None, new_revision, exists=False)
    return rs


def _deployment_key(rs: Mapping[str, Any]) -> str | None:
    ref = controller_ref(rs)
    if ref is None or ref.get("kind") != "Deployment":
        return None
    ns = util.meta(rs).get("namespace")
    return f"{ns}/{ref.get('name')}" if ns else str(ref.get("name"))


class DeploymentController(KeyedController):
    name = "deployment"

    def __init__(self, api: GetApi, deployments: Cache, rss: Cache, pods: Cache, *,
                 resync_period: float = 30.0, retry_delay: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
                 recorder: Recorder | None = None) -> None:
        super().__init__(resync_period=resync_period, retry_delay=retry_delay, clock=clock)
        self.api, self.deployments, self.rss, self.pods, self.wall = api, deployments, rss, pods, wall
        self.recorder = recorder

    # ------------------------------------------------------------------ informer handlers (record only)
    def deployment_changed(self, key: str) -> None:
        self.mark(key)

    def rs_added(self, rs: Obj) -> None:
        self._mark_for_rs(rs)

    def rs_updated(self, old: Obj, new: Obj) -> None:
        self._mark_for_rs(old)
        self._mark_for_rs(new)

    def pod_deleted(self, pod: Obj) -> None:
        """Recreate waits for the old pods to be gone: a deleted pod's Deployment looks again."""
        ref = controller_ref(pod)
        if ref is None or ref.get("kind") != "ReplicaSet":
            return
        rs = self.rss.get(f"{util.meta(pod).get('namespace')}/{ref.get('name')}")
        if rs is not None and (key := _deployment_key(rs)) is not None:
            self.mark(key)

    def _mark_for_rs(self, rs: Mapping[str, Any]) -> None:
        """Its Deployment, or (an orphan) every Deployment of its namespace whose selector matches."""
        key = _deployment_key(rs)
        if key is not None:
            self.mark(key)
            return
        if controller_ref(rs) is not None:
            return
        for d in self.deployments.list():
            if util.meta(d).get("namespace") == util.meta(rs).get("namespace"):
                selector = util.deployment_selector(d)
                if not selector.empty and selector.matches(util.meta(rs).get("labels") or {}):
                    self.mark(object_key(d))

    def resync_keys(self) -> list[str]:
        return [object_key(d) for d in self.deployments.list()]

    # ------------------------------------------------------------------ the sync
    def sync(self, key: str) -> None:
        cached = self.deployments.get(key)
        if cached is None:
            return
        d = copy.deepcopy(cached)
        try:
            self._sync(cached, d)
        except ApiError as e:
            if not e.conflict:
                raise
            # a write computed from a stale cache; the newer object's event marks the key again
            log.info("%s: %s; retrying", key, e)
            self.requeue_after(key, self.retry_delay)

    def _sync(self, cached: Obj, d: Obj) -> None:
        if util.deployment_selector(d).empty:
            # upstream refuses to select every pod; it only records that it saw this generation
            self._write_status(cached, {**(d.get("status") or {}),
                                        "observedGeneration": util.meta(d).get("generation", 0)})
            return
        rss = self._claim(d)
        if util.meta(d).get("deletionTimestamp"):
            new, olds = self._new_and_old(d, rss, create=False)
            self._write_status(cached, plan.calculate_status(d, self._all(new, olds), new, self.wall()))
            return
        self._paused_condition(d)
        spec = d.get("spec") or {}
        if spec.get("paused") or plan.is_scaling_event(d, rss):
            self._sync_scale(cached, d, rss)
        elif util.is_rolling(d):
            self._rollout_rolling(cached, d, rss)
        else:
            self._rollout_recreate(cached, d, rss)

    def _claim(self, d: Obj) -> list[Obj]:
        claims = claim_pods(d, self.rss.list(), DEPLOYMENT_KIND)
        owned = adopt_and_release(self.api, REPLICASETS, owner_reference(d, DEPLOYMENT_KIND), claims)
        return [copy.deepcopy(rs) for rs in owned]

    @staticmethod
    def _all(new: Obj | None, olds: list[Obj]) -> list[Obj]:
        return [*olds, new] if new is not None else list(olds)

    def _paused_condition(self, d: Obj) -> None:
        """checkPausedConditions: Progressing=Unknown DeploymentPaused / DeploymentResumed."""
        if not plan.has_progress_deadline(d):
            return
        status = d.setdefault("status", {})
        cond = plan.condition(status, "Progressing")
        if cond is not None and cond.get("reason") == util.TIMED_OUT:
            return
        paused = bool((d.get("spec") or {}).get("paused"))
        if paused and (cond is None or cond.get("reason") != util.PAUSED):
            plan.set_condition(status, "Progressing", "Unknown", util.PAUSED, "Deployment is paused",
                               self.wall())
        elif not paused and cond is not None and cond.get("reason") == util.PAUSED:
            plan.set_condition(status, "Progressing", "Unknown", util.RESUMED, "Deployment is resumed",
                               self.wall())

    # ------------------------------------------------------------------ the new and old ReplicaSets
    def _new_and_old(self, d: Obj, rss: list[Obj], create: bool) -> tuple[Obj | None, list[Obj]]:
        """getAllReplicaSetsAndSyncRevision: the RS of the current template (created when asked),
        the others, and the Deployment's revision annotation set to the new RS's."""
        new = util.find_new_rs(d, rss)
        olds = [rs for rs in rss if new is None or util.meta(rs).get("uid") != util.meta(new).get("uid")]
        new_revision = util.max_revision(olds) + 1
        if new is not None:
            new = self._sync_existing_new(d, new, new_revision)
        elif create:
            new = self._create_new(d, olds, new_revision)
        if new is not None:
            self._set_revision(d, str(util.revision(new)))
        return new, olds

    def _sync_existing_new(self, d: Obj, rs: Obj, new_revision: int) -> Obj:
        """A reused RS (rollback, or the template went back) gets revision max+1; minReadySeconds
        follows the Deployment."""
        annotations = plan.new_rs_annotations(d, util.meta(rs).get("annotations"), new_revision, exists=True)
        min_ready = int((d.get("spec") or {}).get("minReadySeconds") or 0)
        patch: Obj = {}
        if annotations != (util.meta(rs).get("annotations") or {}):
            patch["metadata"] = {"annotations": annotations}
        if int((rs.get("spec") or {}).get("minReadySeconds") or 0) != min_ready:
            patch["spec"] = {"minReadySeconds": min_ready}
        if patch:
            rs = self._patch_rs(rs, patch)
        status = d.setdefault("status", {})
        if plan.condition(status, "Progressing") is None and plan.has_progress_deadline(d):
            plan.set_condition(status, "Progressing", "True", util.FOUND_NEW_RS,
                               f'Found new replica set "{util.meta(rs)["name"]}"', self.wall())
        return rs

    def _create_new(self, d: Obj, olds: list[Obj], new_revision: int) -> Obj | None:
        """Create "<name>-<hash>".  If that name is taken by an RS that is not ours-with-this-template,
        the hash collided: bump status.collisionCount (a new hash next sync) and stop here."""
        rs = new_replica_set(d, olds, new_revision)
        meta = util.meta(d)
        try:
            created = self.api.create(REPLICASETS, rs, meta.get("namespace"))
        except ApiError as e:
            if e.reason != "AlreadyExists":
                raise
            existing = self.api.get(REPLICASETS, rs["metadata"]["name"], meta.get("namespace"))
            ref = controller_ref(existing)
            template = (existing.get("spec") or {}).get("template") or {}
            if ref is not None and ref.get("uid") == meta.get("uid") and util.equal_ignore_hash(
                    template, (d.get("spec") or {}).get("template") or {}):
                return existing  # our cache had not seen it yet
            count = int((d.get("status") or {}).get("collisionCount") or 0) + 1
            log.info("%s: hash collision on %s; collisionCount=%d", object_key(d), rs["metadata"]["name"],
                     count)
            self.api.patch(DEPLOYMENTS, str(meta["name"]), {"status": {"collisionCount": count}},
                           meta.get("namespace"), subresource="status")
            return None
        log.info("%s: created replica set %s (%d replicas)", object_key(d), created["metadata"]["name"],
                 util.spec_replicas(created))
        self._event(d, "ScalingReplicaSet", f"Scaled up replica set {created['metadata']['name']} to "
                    f"{util.spec_replicas(created)}")
        if plan.has_progress_deadline(d):
            plan.set_condition(d.setdefault("status", {}), "Progressing", "True", util.NEW_RS_CREATED,
                               f'Created new replica set "{created["metadata"]["name"]}"', self.wall())
        return created

    def _set_revision(self, d: Obj, rev: str) -> None:
        """SetDeploymentRevision: the Deployment shows the revision of its current RS (kubectl rollout
        history/undo read the RSs'; users read this)."""
        annotations = util.meta(d).get("annotations") or {}
        if annotations.get(util.REVISION) == rev:
            return
        meta = util.meta(d)
        self.api.patch(DEPLOYMENTS, str(meta["name"]), {"metadata": {"annotations": {util.REVISION: rev}}},
                       meta.get("namespace"))
        d.setdefault("metadata", {}).setdefault("annotations", {})[util.REVISION] = rev

    # ------------------------------------------------------------------ writes
    def _patch_rs(self, rs: Obj, patch: Obj) -> Obj:
        """A merge patch carrying the cached resourceVersion (409 if the RS moved since)."""
        meta = util.meta(rs)
        body = {**patch, "metadata": {**patch.get("metadata", {}),
                                      "resourceVersion": meta.get("resourceVersion")}}
        return self.api.patch(REPLICASETS, str(meta["name"]), body, meta.get("namespace"))

    def _scale(self, d: Obj, rs: Obj, replicas: int) -> Obj:
        """scaleReplicaSet: size and desired/max-replicas annotations together."""
        wanted = plan.replicas_annotations(d)
        current = util.meta(rs).get("annotations") or {}
        if util.spec_replicas(rs) == replicas and all(current.get(k) == v for k, v in wanted.items()):
            return rs
        before, name = util.spec_replicas(rs), util.meta(rs)["name"]
        updated = self._patch_rs(rs, {"metadata": {"annotations": wanted}, "spec": {"replicas": replicas}})
        if before != replicas:
            log.info("%s: scaling %s %d -> %d", object_key(d), name, before, replicas)
            direction = "up" if replicas > before else "down"
            self._event(d, "ScalingReplicaSet",
                        f"Scaled {direction} replica set {name} to {replicas} from {before}")
        return updated

    def _event(self, d: Obj, reason: str, message: str) -> None:
        if self.recorder is not None:
            self.recorder.event(d, "Normal", reason, message, kind="Deployment", api_version="apps/v1")

    def _apply(self, d: Obj, rss: list[Obj], sizes: Mapping[str, int]) -> tuple[list[Obj], bool]:
        """Scale every RS named in `sizes`; the updated list and whether anything was written."""
        out, wrote = [], False
        for rs in rss:
            name = util.meta(rs)["name"]
            if name in sizes:
                updated = self._scale(d, rs, sizes[name])
                wrote = wrote or updated is not rs
                rs = updated
            out.append(rs)
        return out, wrote

    def _write_status(self, cached: Obj, status: Obj) -> None:
        if plan.status_differs(cached, status):
            meta = util.meta(cached)
            self.api.patch(DEPLOYMENTS, str(meta["name"]), {"status": status}, meta.get("namespace"),
                           subresource="status")
        delay = plan.progress_requeue(cached, status, self.wall())
        if delay is not None:
            self.requeue_after(object_key(cached), delay)

    def _rollout_status(self, cached: Obj, d: Obj, new: Obj | None, olds: list[Obj]) -> None:
        self._write_status(cached, plan.rollout_status(d, self._all(new, olds), new, self.wall()))

    # ------------------------------------------------------------------ strategies
    def _sync_scale(self, cached: Obj, d: Obj, rss: list[Obj]) -> None:
        """sync(): paused or a scaling event: resize proportionally, no rollout."""
        new, olds = self._new_and_old(d, rss, create=False)
        sizes = plan.plan_scale(d, new, olds)
        updated, _ = self._apply(d, self._all(new, olds), sizes)
        new_name = util.meta(new)["name"] if new is not None else None
        new = next((rs for rs in updated if rs["metadata"]["name"] == new_name), None)
        olds = [rs for rs in updated if rs is not new]
        if (d.get("spec") or {}).get("paused"):
            self._cleanup(d, olds)
        self._write_status(cached, plan.calculate_status(d, self._all(new, olds), new, self.wall()))

    def _rollout_rolling(self, cached: Obj, d: Obj, rss: list[Obj]) -> None:
        new, olds = self._new_and_old(d, rss, create=True)
        if new is None:
            # a hash collision bumped collisionCount: nothing moves until the next sync creates the RS
            # under its new name (scaling old RSs down with no new one would only lose pods)
            self.requeue_after(object_key(d), self.retry_delay)
            return
        all_rss = self._all(new, olds)
        want = util.spec_replicas(d)
        if util.spec_replicas(new) < want:
            want = plan.new_rs_new_replicas(d, all_rss, new)
        if want != util.spec_replicas(new):
            new = self._scale(d, new, want)
            self._rollout_status(cached, d, new, olds)
            return
        sizes = plan.plan_old_scale_down(d, all_rss, olds, new)
        olds, wrote = self._apply(d, olds, sizes)
        if not wrote and plan.deployment_complete(d, d.get("status") or {}):
            self._cleanup(d, olds)
        self._rollout_status(cached, d, new, olds)

    def _old_pods_running(self, new: Obj | None, olds: list[Obj]) -> bool:
        """oldPodsRunning: an old RS still reports pods, or a pod of one is not finished."""
        if util.status_sum(olds, "replicas") > 0:
            return True
        old_uids = {util.meta(rs).get("uid") for rs in olds}
        for pod in self.pods.list():
            ref = controller_ref(pod)
            if ref is None or ref.get("uid") not in old_uids:
                continue
            if (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
                return True
        return False

    def _rollout_recreate(self, cached: Obj, d: Obj, rss: list[Obj]) -> None:
        """Recreate: every old RS to zero, wait until their pods are gone, then the new RS to full size."""
        new, olds = self._new_and_old(d, rss, create=False)
        olds, wrote = self._apply(d, olds, {util.meta(rs)["name"]: 0 for rs in util.active(olds)})
        if wrote or self._old_pods_running(new, olds):
            self._rollout_status(cached, d, new, olds)
            return
        if new is None:
            new, olds = self._new_and_old(d, rss, create=True)
        if new is not None:
            new = self._scale(d, new, util.spec_replicas(d))
        if plan.deployment_complete(d, d.get("status") or {}):
            self._cleanup(d, olds)
        self._rollout_status(cached, d, new, olds)

    def _cleanup(self, d: Obj, olds: list[Obj]) -> None:
        """cleanupDeployment: keep revisionHistoryLimit old RSs; delete the oldest revisions beyond
        it that are empty and fully observed."""
        limit = (d.get("spec") or {}).get("revisionHistoryLimit")
        if limit is None:
            return
        cleanable = [rs for rs in olds if not util.meta(rs).get("deletionTimestamp")]
        excess = len(cleanable) - int(limit)
        if excess <= 0:
            return
        cleanable.sort(key=lambda rs: (util.revision(rs), str(util.meta(rs).get("creationTimestamp") or "")))
        for rs in cleanable[:excess]:
            meta = util.meta(rs)
            observed = util.status_int(rs, "observedGeneration")
            if (util.status_int(rs, "replicas") or util.spec_replicas(rs)
                    or int(meta.get("generation") or 0) > observed):
                continue
            log.info("%s: deleting old replica set %s (revision %d)", object_key(d), meta["name"],
                     util.revision(rs))
            try:
                self.api.delete(REPLICASETS, str(meta["name"]), meta.get("namespace"),
                                preconditions={"uid": str(meta.get("uid"))})
            except ApiError as e:
                if not e.not_found:
                    raise


def build(ctx: ControllerContext) -> DeploymentController:
    """The catalog's entry: a Deployment controller on the shared Deployment, RS and pod informers."""
    deployments = ctx.informers.get(DEPLOYMENTS)
    rss = ctx.informers.get(REPLICASETS)
    pods = ctx.informers.get(PODS)
    controller = DeploymentController(ctx.client, deployments, rss, pods,
                                      resync_period=ctx.options.resync_period, recorder=ctx.recorder)
    deployments.add_handlers(Handlers(on_change=controller.deployment_changed))
    rss.add_handlers(Handlers(on_add=controller.rs_added, on_update=controller.rs_updated,
                              on_delete=controller.rs_added))
    pods.add_handlers(Handlers(on_delete=controller.pod_deleted))
    return controller
