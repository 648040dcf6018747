"""What every installed plugin executable runs (stdlib only at module level).

The executable is a few lines written by `podnet cni install`: `main("<type>")`.  VERSION is
answered here without importing the plugin; every other verb runs the plugin's verbs through
`cni.skel.dispatch`, in this process.
"""

from __future__ import annotations

import os
import sys

from cni import plugins, skel


def run_local(plugin_type: str, env: dict[str, str], stdin: bytes) -> tuple[int, bytes]:
    """Serve the request in this process."""
    return skel.dispatch(plugins.load(plugin_type), env, stdin)


def main(plugin_type: str) -> None:
    env = dict(os.environ)
    stdin = skel.read_stdin()
    if env.get("CNI_COMMAND") == "VERSION":
        code, out = 0, skel.version_reply(plugins.load_versions(plugin_type), stdin)
    else:
        code, out = run_local(plugin_type, env, stdin)
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    sys.exit(code)
