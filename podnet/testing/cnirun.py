"""A small libcni-like runtime for tests and benchmarks (stdlib only).

It execs plugins exactly as a container runtime does (env + stdin, CNI_PATH lookup), chains a
conflist (prevResult, capabilities -> runtimeConfig, DEL in reverse order with the cached
result), and parses results and errors.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from typing import Any


class PluginFailed(Exception):
    def __init__(self, plugin: str, command: str, code: int, error: dict[str, Any]) -> None:
        super().__init__(f"{plugin} {command} failed (exit {code}): {error}")
        self.plugin = plugin
        self.command = command
        self.exit_code = code
        self.error = error


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
    """Exec one plugin; returns (exit code, parsed stdout or None, stderr)."""
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
           "CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
           "CNI_IFNAME": ifname, "CNI_ARGS": args, "CNI_PATH": ":".join(cni_path)}
    env.update(extra_env or {})
    proc = subprocess.run([find(plugin_type, cni_path)], input=json.dumps(conf).encode(),
                          capture_output=True, env=env, timeout=timeout, check=False)
    out = json.loads(proc.stdout) if proc.stdout.strip() else None
    return proc.returncode, out, proc.stderr.decode(errors="replace")


def call(plugin_type: str, command: str, conf: dict[str, Any], **kwargs: Any) -> dict[str, Any] | None:
    code, out, err = exec_plugin(plugin_type, command, conf, **kwargs)
    if code != 0:
        raise PluginFailed(plugin_type, command, code, out or {"stderr": err})
    return out


@dataclass
class Attachment:
    container_id: str
    netns: str
    ifname: str = "eth0"
    args: str = ""
    capability_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class Runtime:
    """Runs a conflist like libcni's AddNetworkList/DelNetworkList/CheckNetworkList/GCNetworkList."""

    conflist: dict[str, Any]
    cni_path: list[str]
    cache: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    def _conf_for(self, plugin: dict[str, Any], att: Attachment, prev: dict[str, Any] | None
                  ) -> dict[str, Any]:
        conf = dict(plugin)
        conf["cniVersion"] = self.conflist["cniVersion"]
        conf["name"] = self.conflist["name"]
        caps = plugin.get("capabilities") or {}
        runtime = {k: v for k, v in att.capability_args.items() if caps.get(k)}
        if runtime:
            conf["runtimeConfig"] = runtime
        if prev is not None:
            conf["prevResult"] = prev
        return conf

    def _kw(self, att: Attachment) -> dict[str, Any]:
        return {"cni_path": self.cni_path, "container_id": att.container_id, "netns": att.netns,
                "ifname": att.ifname, "args": att.args}

    def add(self, att: Attachment) -> dict[str, Any]:
        prev: dict[str, Any] | None = None
        for plugin in self.conflist["plugins"]:
            prev = call(plugin["type"], "ADD", self._conf_for(plugin, att, prev), **self._kw(att))
        assert prev is not None
        self.cache[(att.container_id, att.ifname)] = prev
        return prev

    def check(self, att: Attachment) -> None:
        prev = self.cache.get((att.container_id, att.ifname))
        for plugin in self.conflist["plugins"]:
            call(plugin["type"], "CHECK", self._conf_for(plugin, att, prev), **self._kw(att))

    def delete(self, att: Attachment) -> None:
        prev = self.cache.get((att.container_id, att.ifname))
        for plugin in reversed(self.conflist["plugins"]):
            call(plugin["type"], "DEL", self._conf_for(plugin, att, prev), **self._kw(att))
        self.cache.pop((att.container_id, att.ifname), None)

    def gc(self, valid: list[Attachment]) -> None:
        keep = [{"containerID": a.container_id, "ifname": a.ifname} for a in valid]
        for plugin in self.conflist["plugins"]:
            conf = {**plugin, "cniVersion": self.conflist["cniVersion"], "name": self.conflist["name"],
                    "cni.dev/valid-attachments": keep, "cni.dev/attachments": keep}
            call(plugin["type"], "GC", conf, cni_path=self.cni_path)
