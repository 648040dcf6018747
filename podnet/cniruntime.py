"""A libcni-like CNI runtime: load the network list containerd would pick, run ADD/CHECK/DEL/GC/STATUS.

Upstream behaviour carried over (containernetworking/cni libcni, containerd go-cni):
- Loading: `*.conf`, `*.conflist`, `*.json` in the conf dir, sorted by file name; the first one with
  plugins wins (go-cni keeps only the first network).  A single-plugin `.conf` is wrapped into a
  one-plugin list.  The effective version is the highest one we implement among `cniVersion` and
  `cniVersions` (libcni NetworkConfFromBytes).
- Chaining: plugins run in order, each with the previous result as `prevResult`; the list's name and
  version are injected into every plugin's config; capability args go to `runtimeConfig` only for
  the capabilities a plugin declares.  DEL runs in reverse with the cached ADD result.
- The cache: `<cache_dir>/results/<net>-<containerID>-<ifname>` (kind cniCacheV1, config base64,
  cniArgs, capabilityArgs, result).  DEL without a readable cache still runs (plugins must cope).
- CHECK needs version >= 0.4.0; GC and STATUS need >= 1.1.0 and are skipped below it.  GC first
  DELs every cached attachment of the network that is not valid, then sends GC to each plugin.
- Plugin errors are the JSON `{code, msg, details}` on stdout (stderr only when stdout is empty);
  an exec hitting "text file busy" is retried (a plugin binary being replaced).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from podnet import execs

__all__ = ["SUPPORTED_VERSIONS", "Attachment", "CniConfig", "CniError", "CniRuntime", "NoCniConfig",
           "exec_plugin", "find", "k8s_args"]

Obj = dict[str, Any]
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
CONF_EXTENSIONS = (".conf", ".conflist", ".json")
EXEC_RETRIES = 5  # libcni pkg/invoke/raw_exec.go: "text file busy" retried 5 times
TEXT_BUSY = "text file busy"


class CniError(Exception):
    """A CNI error: a plugin's {code, msg, details}, or a runtime-side failure (code 0)."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(f"CNI error {code}: {msg}" + (f" ({details})" if details else ""))
        self.code, self.msg, self.details = code, msg, details


class NoCniConfig(CniError):
    """No usable network config in the conf dir (the kubelet's "cni config uninitialized")."""


def _vtuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        return (0,)


def pick_version(conf: Mapping[str, Any]) -> str:
    """The highest version among cniVersion and cniVersions that this runtime implements."""
    candidates = [str(conf.get("cniVersion") or "0.2.0"), *map(str, conf.get("cniVersions") or [])]
    known = [v for v in candidates if v in SUPPORTED_VERSIONS]
    if not known:
        raise CniError(1, f"no supported CNI version among {candidates}")
    return max(known, key=_vtuple)


@dataclass(frozen=True)
class CniConfig:
    """One network list (what libcni calls NetworkConfigList)."""

    name: str
    cni_version: str
    plugins: tuple[Obj, ...]
    raw: bytes
    source: str = ""
    disable_check: bool = False
    disable_gc: bool = False

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "") -> CniConfig:
        try:
            conf = json.loads(data)
        except ValueError as exc:
            raise CniError(6, f"invalid network config {source}: {exc}") from exc
        if not isinstance(conf, dict):
            raise CniError(6, f"invalid network config {source}: not an object")
        if "plugins" not in conf:
            # a legacy single-plugin .conf: libcni ConfListFromConf wraps it
            plugin = {k: v for k, v in conf.items() if k not in ("name", "cniVersion", "cniVersions")}
            conf = {"name": conf.get("name"), "cniVersion": conf.get("cniVersion"),
                    "cniVersions": conf.get("cniVersions"), "plugins": [plugin]}
            data = json.dumps(conf).encode()
        if not conf.get("name"):
            raise CniError(6, f"network config {source} has no name")
        plugins = tuple(p for p in conf.get("plugins") or [] if isinstance(p, dict))
        if any(not p.get("type") for p in plugins):
            raise CniError(6, f"network config {source}: a plugin has no type")
        return cls(name=str(conf["name"]), cni_version=pick_version(conf), plugins=plugins, raw=data,
                   source=source, disable_check=bool(conf.get("disableCheck")),
                   disable_gc=bool(conf.get("disableGC")))

    @classmethod
    def load(cls, conf_dir: str) -> CniConfig:
        """The network list containerd would use; NoCniConfig when there is none."""
        try:
            names = sorted(n for n in os.listdir(conf_dir) if n.endswith(CONF_EXTENSIONS))
        except FileNotFoundError:
            names = []
        for name in names:
            path = os.path.join(conf_dir, name)
            with open(path, "rb") as f:
                net = cls.from_bytes(f.read(), path)
            if net.plugins:  # go-cni skips a list with no plugins
                return net
        raise NoCniConfig(0, f"no network config found in {conf_dir}")

    def at_least(self, version: str) -> bool:
        return _vtuple(self.cni_version) >= _vtuple(version)


@dataclass
class Attachment:
    """One (container, interface) attachment.  `args` become CNI_ARGS in order (K=V;...)."""

    container_id: str
    netns: str
    ifname: str = "eth0"
    args: dict[str, str] = field(default_factory=dict)
    capability_args: dict[str, Any] = field(default_factory=dict)


def k8s_args(namespace: str, name: str, sandbox_id: str, uid: str) -> dict[str, str]:
    """CNI_ARGS as containerd's CRI passes them (IgnoreUnknown first, so plugins tolerate the rest)."""
    return {"IgnoreUnknown": "1", "K8S_POD_NAMESPACE": namespace, "K8S_POD_NAME": name,
            "K8S_POD_INFRA_CONTAINER_ID": sandbox_id, "K8S_POD_UID": uid}


# ---------------------------------------------------------------------------------- exec (one plugin)
def find(plugin_type: str, cni_path: list[str]) -> str:
    for d in cni_path:
        p = os.path.join(d, plugin_type)
        if os.access(p, os.X_OK):
            return p
    raise FileNotFoundError(f"{plugin_type} not in {cni_path}")


def exec_plugin(plugin_type: str, command: str, conf: dict[str, Any], *, cni_path: list[str],
                container_id: str = "", netns: str = "", ifname: str = "eth0", args: str = "",
                extra_env: dict[str, str] | None = None, timeout: float = 60.0
                ) -> tuple[int, dict[str, Any] | None, str]:
    """Exec one plugin as a runtime does; returns (exit code, parsed stdout or None, stderr)."""
    # libcni passes the runtime's own environment on (so e.g. PODNET_CNI_SOCKET set for a
    # kubelet reaches the plugins); the CNI_* variables are always this call's own.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env.setdefault("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    env |= {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
            "CNI_IFNAME": ifname, "CNI_ARGS": args, "CNI_PATH": ":".join(cni_path)}
    env.update(extra_env or {})
    path = find(plugin_type, cni_path)
    for attempt in range(EXEC_RETRIES):
        try:
            proc = execs.run_bytes([path], input=json.dumps(conf).encode(), env=env, timeout=timeout)
            break
        except OSError as exc:
            if TEXT_BUSY not in str(exc).lower() or attempt + 1 == EXEC_RETRIES:
                raise
            time.sleep(0.05 * (attempt + 1))
    out = json.loads(proc.stdout) if proc.stdout.strip() else None
    return proc.returncode, out, proc.stderr.decode(errors="replace")


def _invoke(plugin_type: str, command: str, conf: Obj, cni_path: list[str], att: Attachment | None,
            timeout: float) -> Obj | None:
    """One plugin call; a failure becomes CniError as libcni reports it."""
    kw: dict[str, Any] = {}
    if att is not None:
        kw = {"container_id": att.container_id, "netns": att.netns, "ifname": att.ifname,
              "args": ";".join(f"{k}={v}" for k, v in att.args.items())}
    try:
        code, out, err = exec_plugin(plugin_type, command, conf, cni_path=cni_path, timeout=timeout, **kw)
    except FileNotFoundError as exc:
        raise CniError(0, f"failed to find plugin {plugin_type!r} in path {cni_path}") from exc
    except ValueError as exc:
        raise CniError(0, f"{plugin_type} {command}: undecodable output: {exc}") from exc
    except OSError as exc:
        raise CniError(0, f"{plugin_type} {command}: exec failed: {exc}") from exc
    if code == 0:
        return out
    if isinstance(out, dict) and "code" in out:
        raise CniError(int(out.get("code") or 0), str(out.get("msg", "")), str(out.get("details", "")))
    raise CniError(0, f"{plugin_type} {command} failed (exit {code}): {err.strip()}")


# ---------------------------------------------------------------------------------- the runtime
@dataclass
class CniRuntime:
    """libcni's CNIConfig: AddNetworkList / CheckNetworkList / DelNetworkList / GCNetworkList /
    GetStatusNetworkList, with the on-disk result cache."""

    bin_dirs: list[str]
    cache_dir: str = "/var/lib/cni"
    timeout: float = 60.0

    # ------------------------------------------------------------------ verbs
    def add(self, net: CniConfig, att: Attachment) -> Obj:
        """ADD through the whole list; the final result is cached and returned.  On failure nothing
        is cached and the caller must still DEL (SPEC: every ADD is eventually followed by DEL)."""
        prev: Obj | None = None
        for plugin in net.plugins:
            prev = _invoke(plugin["type"], "ADD", self._conf(net, plugin, att, prev), self.bin_dirs, att,
                           self.timeout)
        result = dict(prev or {})
        result.setdefault("cniVersion", net.cni_version)  # libcni fixupResultVersion
        self._write_cache(net, att, result)
        return result

    def check(self, net: CniConfig, att: Attachment) -> None:
        if not net.at_least("0.4.0"):
            raise CniError(0, f"configuration version {net.cni_version!r} does not support CHECK")
        if net.disable_check:
            return
        cached = self.cached(net.name, att.container_id, att.ifname)
        if cached is None:
            raise CniError(0, f"no cached result for {att.container_id}/{att.ifname} in {net.name}")
        for plugin in net.plugins:
            _invoke(plugin["type"], "CHECK", self._conf(net, plugin, att, cached.get("result")),
                    self.bin_dirs, att, self.timeout)

    def delete(self, net: CniConfig, att: Attachment) -> None:
        """DEL in reverse order with the cached result as prevResult (>= 0.4.0), then drop the cache."""
        entry = self.cached(net.name, att.container_id, att.ifname)
        prev = (entry or {}).get("result") if net.at_least("0.4.0") else None
        for plugin in reversed(net.plugins):
            _invoke(plugin["type"], "DEL", self._conf(net, plugin, att, prev), self.bin_dirs, att,
                    self.timeout)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._cache_path(net.name, att.container_id, att.ifname))

    def gc(self, net: CniConfig, valid_attachments: list[Attachment]) -> None:
        """DEL every cached attachment of `net` not in the valid set, then GC each plugin (>= 1.1.0).
        Best effort as upstream: every step runs; the errors are raised together at the end."""
        valid = {(a.container_id, a.ifname) for a in valid_attachments}
        errors: list[str] = []
        for att in self.cached_attachments(net.name):
            if (att.container_id, att.ifname) in valid:
                continue
            try:
                self.delete(net, att)
            except CniError as exc:
                errors.append(str(exc))
        if net.at_least("1.1.0") and not net.disable_gc:
            keep = [{"containerID": c, "ifname": i} for c, i in sorted(valid)]
            for plugin in net.plugins:
                conf = {**self._conf(net, plugin, None, None), "cni.dev/valid-attachments": keep,
                        "cni.dev/attachments": keep}  # libcni sends both keys (cni PR #1103)
                try:
                    _invoke(plugin["type"], "GC", conf, self.bin_dirs, None, self.timeout)
                except CniError as exc:
                    errors.append(str(exc))
        if errors:
            raise CniError(0, "GC failed", "; ".join(errors))

    def status(self, net: CniConfig) -> None:
        """STATUS each plugin (>= 1.1.0 only); raises the first plugin's error (codes 50/51)."""
        if not net.at_least("1.1.0"):
            return
        for plugin in net.plugins:
            _invoke(plugin["type"], "STATUS", self._conf(net, plugin, None, None), self.bin_dirs, None,
                    self.timeout)

    # ------------------------------------------------------------------ config and cache
    @staticmethod
    def _conf(net: CniConfig, plugin: Obj, att: Attachment | None, prev: Obj | None) -> Obj:
        """libcni buildOneConfig: the list's name/version injected, declared capabilities only."""
        conf = {k: v for k, v in plugin.items() if k != "cniVersions"}
        conf["name"], conf["cniVersion"] = net.name, net.cni_version
        caps = plugin.get("capabilities") or {}
        runtime = {k: v for k, v in (att.capability_args if att else {}).items() if caps.get(k)}
        if runtime:
            conf["runtimeConfig"] = runtime
        if prev is not None:
            conf["prevResult"] = prev
        return conf

    def _cache_path(self, net_name: str, container_id: str, ifname: str) -> str:
        return os.path.join(self.cache_dir, "results", f"{net_name}-{container_id}-{ifname}")

    def _write_cache(self, net: CniConfig, att: Attachment, result: Obj) -> None:
        entry = {"kind": "cniCacheV1", "containerId": att.container_id,
                 "config": base64.b64encode(net.raw).decode(), "ifName": att.ifname,
                 "networkName": net.name, "netns": att.netns,
                 "cniArgs": [[k, v] for k, v in att.args.items()],
                 "capabilityArgs": att.capability_args, "result": result}
        path = self._cache_path(net.name, att.container_id, att.ifname)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(entry, f)
        os.replace(tmp, path)  # atomic: a crash never leaves half a cache entry

    def cached(self, net_name: str, container_id: str, ifname: str) -> Obj | None:
        """The cache entry of one attachment, None when missing or unreadable."""
        try:
            with open(self._cache_path(net_name, container_id, ifname)) as f:
                entry = json.load(f)
        except (OSError, ValueError):
            return None
        return entry if isinstance(entry, dict) else None

    def cached_attachments(self, net_name: str) -> list[Attachment]:
        """Every attachment of `net_name` the cache knows (libcni GetCachedAttachments)."""
        results = os.path.join(self.cache_dir, "results")
        try:
            names = sorted(os.listdir(results))
        except FileNotFoundError:
            return []
        out = []
        for name in names:
            if not name.startswith(f"{net_name}-") or ".tmp" in name:
                continue
            try:
                with open(os.path.join(results, name)) as f:
                    entry = json.load(f)
            except (OSError, ValueError):
                continue
            if not isinstance(entry, dict) or entry.get("networkName") != net_name:
                continue
            out.append(Attachment(container_id=str(entry.get("containerId", "")),
                                  netns=str(entry.get("netns") or ""), ifname=str(entry.get("ifName", "")),
                                  args={str(k): str(v) for k, v in entry.get("cniArgs") or []},
                                  capability_args=dict(entry.get("capabilityArgs") or {})))
        return out
