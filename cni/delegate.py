"""Delegation to another plugin (IPAM, or a chained plugin) as the spec describes: find the
executable named `type` in CNI_PATH and run it with the same CNI_* env but our own command.

When the executable found is a podnet plugin, it runs in-process through the same skel dispatch
(identical stdin, env and result handling; no second interpreter start).  Any other executable,
e.g. a reference plugin from /usr/lib/cni, is exec'd through podnet.execs.
"""

from __future__ import annotations

import json
import os
from typing import Any

from cni import plugins, skel, types


def find_executable(plugin_type: str, path: list[str]) -> str:
    for directory in path:
        candidate = os.path.join(directory, plugin_type)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise skel.CniError(skel.INVALID_CONFIG, f"failed to find plugin {plugin_type!r} in path {path}")


def _env_for(req: skel.Request, command: str) -> dict[str, str]:
    env = dict(req.env)
    env["CNI_COMMAND"] = command
    return env


def _run(executable: str, env: dict[str, str], stdin: bytes) -> tuple[int, bytes]:
    own = plugins.podnet_type_of(executable)
    if own is not None:
        return skel.dispatch(plugins.load(own), env, stdin)
    from podnet import execs

    proc = execs.run_bytes([executable], input=stdin, env=env)
    if proc.stderr:
        skel.debug(proc.stderr.decode(errors="replace"))
    return proc.returncode, proc.stdout


def _raise_from(plugin_type: str, code: int, out: bytes) -> None:
    try:
        err = json.loads(out)
        raise skel.CniError(int(err.get("code", skel.INTERNAL)), str(err.get("msg", "")),
                            str(err.get("details", "")))
    except (ValueError, AttributeError, TypeError):
        raise skel.CniError(skel.INTERNAL, f"delegated plugin {plugin_type} failed (exit {code}): "
                            f"{out.decode(errors='replace').strip()}") from None


def delegate(plugin_type: str, command: str, req: skel.Request, conf: dict[str, Any] | None = None
             ) -> types.Result | None:
    """Run `command` on the delegate; returns its normalized result for ADD, else None.

    `conf` is the delegate's stdin (defaults to the request's own config, as IPAM delegation
    passes the whole network config through).
    """
    stdin = json.dumps(conf if conf is not None else req.config).encode()
    executable = find_executable(plugin_type, req.path)
    code, out = _run(executable, _env_for(req, command), stdin)
    if code != 0:
        _raise_from(plugin_type, code, out)
    if command != "ADD":
        return None
    try:
        result = json.loads(out)
    except ValueError as exc:
        raise skel.CniError(skel.DECODE_FAILURE, f"delegated plugin {plugin_type} printed "
                            f"no valid result: {exc}") from exc
    result.setdefault("cniVersion", req.version)
    return types.normalize(result)


def ipam_type(req: skel.Request) -> str:
    ipam = req.config.get("ipam")
    if not isinstance(ipam, dict) or not ipam.get("type"):
        raise skel.CniError(skel.INVALID_CONFIG, "network config has no ipam.type")
    return str(ipam["type"])
