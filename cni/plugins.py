"""Which module implements which plugin type (stdlib only).

The executables `podnet cni install` writes, the per-node daemon and in-process delegation all
resolve a plugin type through this table, so one name always means one implementation.
"""

from __future__ import annotations

import importlib

from cni.skel import Plugin

MODULES = {
    "bridge": "cni.bridge",
    "flannel": "cni.flannel",
    "host-local": "cni.host_local",
    "loopback": "cni.loopback",
    "portmap": "cni.portmap",
}

# The installed executables carry this line so delegation can recognise one of ours and run it
# in-process instead of paying another interpreter start (~25 ms).
MARKER = b"# podnet-cni-plugin: "


def load(plugin_type: str) -> Plugin:
    """The Plugin object of a type; importing its module is deferred to this call."""
    module = importlib.import_module(MODULES[plugin_type])
    plugin = module.PLUGIN
    assert isinstance(plugin, Plugin)
    return plugin


def load_versions(plugin_type: str) -> Plugin:
    """A stand-in Plugin for VERSION: answering it must not import the plugin module."""
    if plugin_type not in MODULES:
        raise KeyError(plugin_type)

    def _never(_req: object) -> None:
        raise AssertionError("VERSION stand-in called for a verb")

    return Plugin(name=plugin_type, add=_never, delete=_never, check=_never)


def podnet_type_of(executable: str) -> str | None:
    """The plugin type if `executable` is a podnet-installed plugin, else None."""
    try:
        with open(executable, "rb") as f:
            head = f.read(512)
    except OSError:
        return None
    for line in head.splitlines():
        if line.startswith(MARKER):
            name = line[len(MARKER):].decode().strip()
            return name if name in MODULES else None
    return None
