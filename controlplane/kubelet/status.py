"""Pure pieces of the pod worker: container specs from a pod, restart decisions, the pod status.

Upstream behaviour carried over (pkg/kubelet/kubelet_pods.go getPhase, status_manager,
kuberuntime_container.go):
- phase: Pending until every container has started once; Running while any runs (or, with
  restartPolicy Always / OnFailure-after-a-failure, while one is being restarted); with all
  containers exited, Succeeded when all exited 0 and Failed otherwise (policy Never / OnFailure).
- conditions PodScheduled, Initialized, ContainersReady, Ready; a condition's lastTransitionTime
  only moves when its status changes.
- containerStatuses: state running / terminated (reason Completed or Error) / waiting
  (ContainerCreating, CrashLoopBackOff), lastState = the previous attempt's termination,
  restartCount = the attempt number, containerID "<runtime>://<id>".
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable, Mapping
from typing import Any

from controlplane.kubelet import restart
from podnet.runtime.base import ContainerInfo, ContainerSpec, Mount

Obj = dict[str, Any]
TERMINAL_PHASES = ("Succeeded", "Failed")
_QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
_MEM_SUFFIX = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20,
               "Gi": 2**30, "Ti": 2**40}


def rfc3339(unix: float | None) -> str | None:
    if unix is None:
        return None
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cpu_millis(text: Any) -> int | None:
    m = _QUANTITY.match(str(text)) if text is not None else None
    if m is None:
        return None
    return int(float(m.group(1))) if m.group(2) == "m" else int(float(m.group(1)) * 1000)


def memory_bytes(text: Any) -> int | None:
    m = _QUANTITY.match(str(text)) if text is not None else None
    if m is None or m.group(2) not in _MEM_SUFFIX:
        return None
    return int(float(m.group(1)) * _MEM_SUFFIX[m.group(2)])


def log_path(logs_root: str, pod: Mapping[str, Any], container: str, attempt: int) -> str:
    """Upstream layout /var/log/pods/<ns>_<pod>_<uid>/<container>/<attempt>.log."""
    meta = pod.get("metadata") or {}
    pod_dir = f"{meta.get('namespace')}_{meta.get('name')}_{meta.get('uid')}"
    return f"{logs_root}/{pod_dir}/{container}/{attempt}.log"


# The downward-API fields a container's env may name (fieldRef.fieldPath).
FIELD_PATHS = {"metadata.name", "metadata.namespace", "metadata.uid", "spec.nodeName",
               "spec.serviceAccountName", "status.podIP", "status.hostIP"}


def field_values(pod: Mapping[str, Any], pod_ip: str, host_ip: str) -> dict[str, str]:
    meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
    return {"metadata.name": str(meta.get("name", "")), "metadata.namespace": str(meta.get("namespace", "")),
            "metadata.uid": str(meta.get("uid", "")), "spec.nodeName": str(spec.get("nodeName", "")),
            "spec.serviceAccountName": str(spec.get("serviceAccountName", "")),
            "status.podIP": pod_ip, "status.hostIP": host_ip}


def container_env(container: Mapping[str, Any], fields: Mapping[str, str]) -> dict[str, str]:
    """env with values and downward-API fieldRefs, in order, with upstream's $(VAR) expansion of
    earlier variables (configMap/secret refs need objects we do not read: left out)."""
    env: dict[str, str] = {}
    for e in container.get("env") or []:
        if "name" not in e:
            continue
        if "valueFrom" in e:
            ref = str(((e.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath"))
            if ref in fields:
                env[str(e["name"])] = fields[ref]
            continue
        value = str(e.get("value", ""))
        for name, known in env.items():
            value = value.replace(f"$({name})", known)
        env[str(e["name"])] = value
    return env


def volume_mounts(pod: Mapping[str, Any], container: Mapping[str, Any], pods_dir: str) -> list[Mount]:
    """hostPath volumes as bind mounts, emptyDir as a per-pod directory (upstream's
    <root-dir>/pods/<uid>/volumes/kubernetes.io~empty-dir/<name>); other volume types are skipped."""
    meta = pod.get("metadata") or {}
    volumes = {v.get("name"): v for v in (pod.get("spec") or {}).get("volumes") or []}
    mounts = []
    for vm in container.get("volumeMounts") or []:
        volume = volumes.get(vm.get("name")) or {}
        if "hostPath" in volume:
            host = str(volume["hostPath"].get("path", ""))
        elif "emptyDir" in volume:
            host = f"{pods_dir}/{meta.get('uid')}/volumes/kubernetes.io~empty-dir/{vm['name']}"
        else:
            continue
        mounts.append(Mount(host, str(vm["mountPath"]), bool(vm.get("readOnly"))))
    return mounts


def container_spec(pod: Mapping[str, Any], container: Mapping[str, Any], attempt: int, netns_path: str,
                   logs_root: str, *, fields: Mapping[str, str] | None = None,
                   pods_dir: str = "") -> ContainerSpec:
    """What the runtime starts for one container of `pod` (no images: argv runs on the host's files)."""
    meta = pod.get("metadata") or {}
    argv = [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]
    env = container_env(container, fields or {})
    limits = (container.get("resources") or {}).get("limits") or {}
    return ContainerSpec(
        pod_uid=str(meta.get("uid")), pod_namespace=str(meta.get("namespace", "default")),
        pod_name=str(meta.get("name")), name=str(container["name"]), attempt=attempt, argv=argv,
        env=env, working_dir=str(container.get("workingDir") or ""), netns_path=netns_path,
        mounts=volume_mounts(pod, container, pods_dir) if pods_dir else [],
        cpu_limit_millis=cpu_millis(limits.get("cpu")), memory_limit_bytes=memory_bytes(limits.get("memory")),
        log_path=log_path(logs_root, pod, str(container["name"]), attempt),
        hostname=str((pod.get("spec") or {}).get("hostname") or meta.get("name")))


def attempt_of(info: ContainerInfo) -> int:
    return int(info.labels.get("io.kubernetes.container.attempt", "0"))


def latest_by_name(infos: list[ContainerInfo]) -> dict[str, list[ContainerInfo]]:
    """Container name -> its attempts, newest first."""
    out: dict[str, list[ContainerInfo]] = {}
    for info in infos:
        out.setdefault(info.labels.get("io.kubernetes.container.name", ""), []).append(info)
    for attempts in out.values():
        attempts.sort(key=attempt_of, reverse=True)
    return out


def should_restart(policy: str, info: ContainerInfo) -> bool:
    """Whether an exited container is restarted under the pod's restartPolicy."""
    return restart.should_restart(policy, info.state, info.exit_code)


def _state(info: ContainerInfo, runtime: str) -> Obj:
    if info.state == "exited":
        return {"terminated": {"exitCode": info.exit_code if info.exit_code is not None else -1,
                               "reason": restart.termination_reason(info.exit_code),
                               "startedAt": rfc3339(info.started_at), "finishedAt": rfc3339(info.finished_at),
                               "containerID": f"{runtime}://{info.id}"}}
    if info.state == "running":
        return {"running": {"startedAt": rfc3339(info.started_at)}}
    return {"waiting": {"reason": "ContainerCreating"}}


def container_status(container: Mapping[str, Any], attempts: list[ContainerInfo], policy: str,
                     ready: bool, runtime: str) -> Obj:
    status: Obj = {"name": container["name"], "image": container.get("image", ""), "imageID": "",
                   "restartCount": 0, "ready": False, "started": False, "lastState": {}}
    if not attempts:
        status["state"] = {"waiting": {"reason": "ContainerCreating"}}
        return status
    latest = attempts[0]
    status["restartCount"] = attempt_of(latest)
    status["containerID"] = f"{runtime}://{latest.id}"
    status["state"] = _state(latest, runtime)
    if should_restart(policy, latest):
        status["state"] = {"waiting": {"reason": "CrashLoopBackOff"}}
        status["lastState"] = _state(latest, runtime)
    elif len(attempts) > 1:
        status["lastState"] = _state(attempts[1], runtime)
    status["started"] = latest.state == "running"
    status["ready"] = latest.state == "running" and ready
    return status


def phase(containers: list[Obj], policy: str) -> str:
    """getPhase from the computed container statuses."""
    states = [c["state"] for c in containers]
    if not states or any("waiting" in s and c["restartCount"] == 0 and not c["lastState"]
                         for s, c in zip(states, containers, strict=True)):
        return "Pending"
    if any("running" in s or "waiting" in s for s in states):
        return "Running"
    codes = [s["terminated"]["exitCode"] for s in states]
    if policy == "Always":
        return "Running"
    return "Succeeded" if all(c == 0 for c in codes) else "Failed"


def conditions(containers_ready: bool, previous: list[Obj], now: str) -> list[Obj]:
    before = {c.get("type"): c for c in previous}
    out = []
    for type_, ok in (("PodScheduled", True), ("Initialized", True), ("ContainersReady", containers_ready),
                      ("Ready", containers_ready)):
        status = "True" if ok else "False"
        old = before.get(type_) or {}
        since = old.get("lastTransitionTime") if old.get("status") == status else now
        cond: Obj = {"type": type_, "status": status, "lastTransitionTime": since}
        if not ok:
            cond["reason"] = "ContainersNotReady"
        out.append(cond)
    return out


def pod_status(pod: Mapping[str, Any], infos: list[ContainerInfo], pod_ips: list[str], host_ip: str,
               ready: Callable[[str], bool], runtime: str, now: str) -> Obj:
    """The whole status the kubelet posts for a live pod."""
    spec, current = pod.get("spec") or {}, pod.get("status") or {}
    policy = str(spec.get("restartPolicy") or "Always")
    by_name = latest_by_name(infos)
    statuses = [container_status(c, by_name.get(c["name"], []), policy, ready(c["name"]), runtime)
                for c in spec.get("containers") or []]
    all_ready = bool(statuses) and all(s["ready"] for s in statuses)
    status: Obj = {"phase": phase(statuses, policy), "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
                   "startTime": current.get("startTime") or now,
                   "conditions": conditions(all_ready, list(current.get("conditions") or []), now),
                   "containerStatuses": statuses}
    if pod_ips:
        status["podIP"] = pod_ips[0]
        status["podIPs"] = [{"ip": ip} for ip in pod_ips]
    return status


def differs(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Whether posting `desired` would change the pod's status (avoids a write per sync)."""
    return any(current.get(k) != v for k, v in desired.items())
