"""`python -m cni.install --dir DIR` (what `podnet cni install` runs): write the executables.

Each executable starts the *real* interpreter of this install with `-IS` (isolated, no site; a
shebang passes one argument): a pyenv shim or `/usr/bin/env` costs ~150 ms per exec and `site`
~5 ms.  It then puts the source in front of sys.path and the install's site-packages behind the
stdlib, where `site` would have put it: the forward path's C modules (`_socket`, `_json`) are then
found without listing site-packages first.
"""

from __future__ import annotations

import argparse
import os
import sys
import sysconfig
from pathlib import Path

from cni import plugins

TEMPLATE = """#!{python} -IS
{marker}{plugin}
import sys
sys.path[:0] = {front!r}
sys.path += {back!r}
from cni.entry import main
main({plugin!r})
"""


def import_paths() -> tuple[list[str], list[str]]:
    """(before the stdlib, after it): where `cni` and the third-party packages it may import
    lazily are found."""
    source_root = str(Path(__file__).resolve().parent.parent)
    site = sysconfig.get_paths()["purelib"]
    return ([], [site]) if source_root == site else ([source_root], [site])


def render(plugin: str) -> str:
    front, back = import_paths()
    return TEMPLATE.format(python=os.path.realpath(sys.executable), marker=plugins.MARKER.decode(),
                           plugin=plugin, front=front, back=back)


def install(directory: str) -> list[str]:
    """Write every plugin into `directory` atomically (rename), so a running runtime never
    execs a half-written file ("text file busy" is retried by libcni, a torn file is not)."""
    os.makedirs(directory, exist_ok=True)
    written = []
    for plugin in sorted(plugins.MODULES):
        target = os.path.join(directory, plugin)
        tmp = f"{target}.tmp.{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(render(plugin))
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)
        written.append(target)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", required=True, help="directory to install the plugins into")
    args = parser.parse_args()
    for path in install(args.dir):
        print(path)


if __name__ == "__main__":
    main()
