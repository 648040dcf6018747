"""The pod worker: one level-triggered sync(key) per pod, run on per-pod threads.

sync(key) reads the pod from the informer cache and the runtime/sandbox state from disk, and does
what is missing (upstream SyncPod / SyncTerminatingPod / SyncTerminatedPod in one function):
- a live pod: the sandbox (netns + CNI ADD), then every container not yet running (restarted
  under the restartPolicy, after a back-off), then the status if it changed;
- a pod with deletionTimestamp: every container stopped with the grace period (the pod's
  deletionGracePeriodSeconds, else spec.terminationGracePeriodSeconds), the containers removed,
  CNI DEL, the netns deleted, then DELETE with gracePeriodSeconds=0 and a uid precondition (so a
  new pod of the same name is never deleted by mistake);
- a terminal pod (Succeeded/Failed): containers stopped, the sandbox released, status kept;
- a key whose pod is gone, or a sandbox of another uid under the same name: torn down.

PodWorkers gives each pod its own thread (upstream podWorkers: one goroutine per pod), so a
30-second graceful stop of one pod never delays another; a sync requested while one runs is
coalesced into one more pass afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from controlplane.kubelet import restart
from controlplane.kubelet import status as podstatus
from controlplane.kubelet.restart import BackOff
from controlplane.kubelet.sandbox import Sandbox, Sandboxes
from podnet.api.client import PODS, ApiError, Resource
from podnet.runtime.base import ContainerInfo, ContainerRuntime

log = logging.getLogger("podnet.kubelet.pods")

Obj = dict[str, Any]
DEFAULT_GRACE = 30
ORPHAN_GRACE = 2.0  # a pod we no longer know: its grace period is unknown too


class Api(Protocol):
    def patch(self, res: Resource, name: str, patch: Any, namespace: str | None = None, *,
              patch_type: str = "merge", subresource: str | None = None, field_manager: str | None = None,
              force: bool | None = None) -> Obj: ...

    def delete(self, res: Resource, name: str, namespace: str | None = None, *,
               propagation_policy: str | None = None, grace_period_seconds: int | None = None,
               preconditions: Mapping[str, str] | None = None) -> Obj: ...


class Cache(Protocol):
    def get(self, key: str) -> Obj | None: ...


class Probes(Protocol):
    """Readiness as the prober sees it (K3's ProbeManager); the default says ready when running."""

    def update(self, pod: Mapping[str, Any]) -> None: ...

    def ready(self, pod_uid: str, container: str) -> bool: ...

    def liveness_failure(self, pod_uid: str, container: str) -> str | None: ...

    def forget(self, pod_uid: str) -> None: ...


class NoProbes:
    def update(self, pod: Mapping[str, Any]) -> None:
        pass

    def ready(self, pod_uid: str, container: str) -> bool:
        return True

    def liveness_failure(self, pod_uid: str, container: str) -> str | None:
        return None

    def forget(self, pod_uid: str) -> None:
        pass


def object_name(pod: Mapping[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"


def grace_seconds(pod: Mapping[str, Any]) -> float:
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    if meta.get("deletionGracePeriodSeconds") is not None:
        return float(meta["deletionGracePeriodSeconds"])
    value = spec.get("terminationGracePeriodSeconds")
    return float(DEFAULT_GRACE if value is None else value)


class PodSyncer:
    def __init__(self, api: Api, cache: Cache, runtime: ContainerRuntime, sandboxes: Sandboxes, *,
                 host_ip: str, logs_root: str, runtime_name: str = "podnet",
                 probes: Probes | None = None, backoff: BackOff | None = None,
                 requeue: Callable[[str, float], None] | None = None) -> None:
        self.api, self.cache, self.runtime, self.sandboxes = api, cache, runtime, sandboxes
        self.host_ip, self.logs_root, self.runtime_name = host_ip, logs_root, runtime_name
        self.probes = probes or NoProbes()
        self.backoff = backoff or BackOff()
        self.requeue = requeue or (lambda key, delay: None)
        # <root-dir>/pods/<uid>/volumes (upstream layout), next to <root-dir>/sandboxes
        self.pods_dir = os.path.join(os.path.dirname(sandboxes.dir), "pods")

    # ------------------------------------------------------------------ state readers
    def containers_of(self, uid: str) -> list[ContainerInfo]:
        return [i for i in self.runtime.list() if i.labels.get("io.kubernetes.pod.uid") == uid]

    # ------------------------------------------------------------------ the sync
    def sync(self, key: str) -> None:
        pod = self.cache.get(key)
        uid = str(((pod or {}).get("metadata") or {}).get("uid") or "")
        for sb in self.sandboxes.list():  # stale sandboxes under this name (gone, or recreated)
            if sb.key == key and sb.uid != uid:
                self.kill_pod(sb.uid, ORPHAN_GRACE, sb)
        if pod is None:
            return
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            self.terminate(pod)
        elif (pod.get("status") or {}).get("phase") in podstatus.TERMINAL_PHASES:
            self.kill_pod(uid, grace_seconds(pod), self.sandboxes.get(uid), keep_containers=True)
        else:
            self.sync_live(key, pod)

    def sync_live(self, key: str, pod: Obj) -> None:
        uid = str(pod["metadata"]["uid"])
        sb = self.sandboxes.ensure(pod)
        self.probes.update(pod)
        self.kill_unhealthy(pod)
        infos = self.start_missing(key, pod, sb)
        ips = sb.ips if sb.netns else [self.host_ip]  # hostNetwork: the pod IP is the node's
        desired = podstatus.pod_status(pod, infos, ips, self.host_ip,
                                       lambda name: self.probes.ready(uid, name), self.runtime_name,
                                       podstatus.rfc3339(time.time()) or "")
        for cs in desired["containerStatuses"]:
            waiting = cs["state"].get("waiting") or {}
            if waiting.get("reason") == "CrashLoopBackOff":
                delay = self.backoff.get(restart.backoff_key(pod, cs["name"]))
                waiting["message"] = restart.crash_loop_message(delay, cs["name"], pod)
        if desired["phase"] in podstatus.TERMINAL_PHASES:
            self.kill_pod(uid, grace_seconds(pod), sb, keep_containers=True)
        self.post_status(pod, desired)

    def kill_unhealthy(self, pod: Obj) -> None:
        """A failed liveness/startup probe: stop the container with the pod's grace period; the
        restart policy then decides, as for any exit (upstream killContainer + SyncPod)."""
        uid = str(pod["metadata"]["uid"])
        for name, attempts in podstatus.latest_by_name(self.containers_of(uid)).items():
            reason = self.probes.liveness_failure(uid, name)
            if reason and attempts[0].state == "running":
                log.info("pod %s: %s", object_name(pod), reason)
                self.runtime.stop(attempts[0].id, grace_seconds(pod))

    def start_missing(self, key: str, pod: Obj, sb: Sandbox) -> list[ContainerInfo]:
        """Start each container that never ran, or restart an exited one once its back-off passed."""
        uid = str(pod["metadata"]["uid"])
        policy = str((pod.get("spec") or {}).get("restartPolicy") or "Always")
        by_name = podstatus.latest_by_name(self.containers_of(uid))
        for container in (pod.get("spec") or {}).get("containers") or []:
            attempts = by_name.get(container["name"], [])
            if attempts and not podstatus.should_restart(policy, attempts[0]):
                continue
            attempt = podstatus.attempt_of(attempts[0]) + 1 if attempts else 0
            backoff_key = restart.backoff_key(pod, container["name"])
            if attempts:
                wait = self.backoff.remaining(backoff_key, attempts[0].finished_at or 0, time.time())
                if wait > 0:
                    self.requeue(key, wait)
                    continue
                for old in attempts[1:]:  # keep the newest exited attempt (kubectl logs --previous)
                    self.runtime.remove(old.id)
            ips = sb.ips if sb.netns else [self.host_ip]
            fields = podstatus.field_values(pod, ips[0] if ips else "", self.host_ip)
            spec = podstatus.container_spec(pod, container, attempt, sb.netns_path, self.logs_root,
                                            fields=fields, pods_dir=self.pods_dir)
            # upstream: the kubelet owns /var/log/pods/<pod>/<container>/ and the runtime writes in it
            os.makedirs(os.path.dirname(spec.log_path), exist_ok=True)
            for mount in spec.mounts:  # emptyDir directories are ours to make; hostPath must exist
                if mount.host_path.startswith(self.pods_dir + "/"):
                    os.makedirs(mount.host_path, exist_ok=True)
            self.runtime.create_and_start(spec)
            if attempts:
                self.backoff.record_restart(backoff_key, time.time())
            log.info("pod %s: started container %s (attempt %d)", key, container["name"], attempt)
        return self.containers_of(uid)

    def post_status(self, pod: Obj, desired: Obj) -> None:
        if not podstatus.differs(pod.get("status") or {}, desired):
            return
        meta = pod["metadata"]
        try:
            self.api.patch(PODS, meta["name"], {"status": desired}, meta.get("namespace"),
                           subresource="status")
        except ApiError as e:
            if not e.not_found:
                raise

    # ------------------------------------------------------------------ termination
    def stop_all(self, uid: str, grace: float) -> None:
        """Stop the running containers in parallel, each with the full grace period."""
        running = [i for i in self.containers_of(uid) if i.state != "exited"]
        threads = [threading.Thread(target=self.runtime.stop, args=(i.id, grace), daemon=True)
                   for i in running]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def kill_pod(self, uid: str, grace: float, sb: Sandbox | None, *, keep_containers: bool = False,
                 pod: Mapping[str, Any] | None = None) -> None:
        self.stop_all(uid, grace)
        if not keep_containers:
            for info in self.containers_of(uid):
                self.runtime.remove(info.id)
            self.probes.forget(uid)
            self.backoff.forget_pod(uid)
            self.remove_logs(uid)
            if uid and "/" not in uid:  # emptyDir volumes
                shutil.rmtree(os.path.join(self.pods_dir, uid), ignore_errors=True)
        if sb is not None:
            self.sandboxes.teardown(sb, pod)

    def remove_logs(self, uid: str) -> None:
        """The pod's log directory goes with its containers (upstream removes /var/log/pods/<pod>)."""
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.logs_root):
                if name.endswith(f"_{uid}"):
                    shutil.rmtree(os.path.join(self.logs_root, name), ignore_errors=True)

    def terminate(self, pod: Obj) -> None:
        meta = pod["metadata"]
        uid = str(meta["uid"])
        grace = grace_seconds(pod)
        log.info("pod %s/%s: terminating (grace %.0fs)", meta.get("namespace"), meta["name"], grace)
        self.kill_pod(uid, grace, self.sandboxes.get(uid), pod=pod)
        try:
            self.api.delete(PODS, meta["name"], meta.get("namespace"), grace_period_seconds=0,
                            preconditions={"uid": uid})
        except ApiError as e:
            if not (e.not_found or e.conflict):
                raise

    def cleanup_orphans(self, known_uids: set[str]) -> list[str]:
        """Tear down sandboxes and containers of pods not in the cache; returns their uids."""
        uids = {sb.uid for sb in self.sandboxes.list()}
        uids |= {i.labels.get("io.kubernetes.pod.uid", "") for i in self.runtime.list()}
        orphans = sorted(u for u in uids - known_uids if u)
        for uid in orphans:
            log.info("removing the sandbox and containers of pod uid %s (no longer ours)", uid)
            self.kill_pod(uid, ORPHAN_GRACE, self.sandboxes.get(uid))
        return orphans


class PodWorkers:
    """One thread per busy pod key; a dispatch during a run makes one more pass afterwards."""

    def __init__(self, sync: Callable[[str], None], on_error: Callable[[str, Exception], None]) -> None:
        self.sync, self.on_error = sync, on_error
        self._lock = threading.Lock()
        self._busy: set[str] = set()
        self._again: set[str] = set()

    def dispatch(self, key: str) -> None:
        with self._lock:
            if key in self._busy:
                self._again.add(key)
                return
            self._busy.add(key)
        threading.Thread(target=self._work, args=(key,), name=f"pod-{key}", daemon=True).start()

    def busy(self) -> int:
        with self._lock:
            return len(self._busy)

    def _work(self, key: str) -> None:
        while True:
            try:
                self.sync(key)
            except Exception as e:
                log.exception("pod %s: sync failed", key)
                self.on_error(key, e)
            with self._lock:
                if key not in self._again:
                    self._busy.discard(key)
                    return
                self._again.discard(key)
