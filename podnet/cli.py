"""The `podnet` command.

Components are started as processes (`python -m <component>`), never imported: the foundation
imports no component (import-linter contract), and each component keeps its own start-up cost.
"""

from __future__ import annotations

import os
import sys

import click


def _exec_module(module: str, *args: str) -> None:
    """Replace this process with `python -m module args...` (same interpreter, same venv)."""
    argv = [sys.executable, "-m", module, *args]
    os.execv(sys.executable, argv)


@click.group()
def main() -> None:
    """podnet: Kubernetes networking on real Linux hosts."""


@main.group()
def cni() -> None:
    """CNI plugins: install the executables, run the per-node daemon."""


@cni.command("install")
@click.option("--dir", "directory", required=True, type=click.Path(file_okay=False),
              help="Directory to write bridge, host-local, loopback and portmap into (CNI_PATH).")
def cni_install(directory: str) -> None:
    """Write the plugin executables into DIR."""
    _exec_module("cni.install", "--dir", directory)


@cni.command("daemon")
@click.option("--socket", "socket_path", default="/run/podnet/cni.sock", show_default=True,
              help="Unix socket the plugin executables forward requests to.")
def cni_daemon(socket_path: str) -> None:
    """Serve CNI requests with warm netlink and nft state (optional; plugins work without it)."""
    _exec_module("cni.daemon", "--socket", socket_path)


if __name__ == "__main__":
    main()
