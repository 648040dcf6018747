"""A small in-memory libcni-like runtime for tests and benchmarks.

The production runtime (config loading, on-disk result cache, CniError) is podnet.cniruntime; this
wrapper keeps the older test-facing shape (string CNI_ARGS, an in-memory cache, PluginFailed with
the raw error object) and shares its plugin exec (`find`, `exec_plugin`).

It execs plugins exactly as a container runtime does (env + stdin, CNI_PATH lookup), chains a
conflist (prevResult, capabilities -> runtimeConfig, DEL in reverse order with the cached
result), and parses results and errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from podnet.cniruntime import exec_plugin, find

__all__ = ["Attachment", "PluginFailed", "Runtime", "call", "exec_plugin", "find"]


class PluginFailed(Exception):
    def __init__(self, plugin: str, command: str, code: int, error: dict[str, Any]) -> None:
        super().__init__(f"{plugin} {command} failed (exit {code}): {error}")
        self.plugin = plugin
        self.command = command
        self.exit_code = code
        self.error = error


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
