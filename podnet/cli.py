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


DEFAULT_STATE_DIR = "/var/lib/podnet/cluster"
STATE_DIR = click.option("--state-dir", default=DEFAULT_STATE_DIR, show_default=True,
                         type=click.Path(file_okay=False),
                         help="Where the cluster's manifest, certificates, kubeconfig and logs live.")


@main.command("up")
@click.option("--nodes", default=3, show_default=True, type=click.IntRange(1, 200))
@click.option("--network", default="flannel", show_default=True, type=click.Choice(["flannel"]))
@click.option("--flannel-backend", default="vxlan", show_default=True,
              type=click.Choice(["vxlan", "host-gw", "udp"]))
@STATE_DIR
@click.option("--etcd-servers", default="", help="Comma-separated etcd URLs to use instead of a "
              "local member (reached from the control-plane namespace through a relay).")
@click.option("--api-port", type=int, default=None,
              help="Loopback port of the API server in this namespace (default 6443, else free).")
@click.option("--kubelet/--no-kubelet", default=None,
              help="Run podnet-kubelet on each node (default: when installed).")
@click.option("--timeout", default=180.0, show_default=True, help="Seconds to wait for the nodes.")
def up_cmd(nodes: int, network: str, flannel_backend: str, state_dir: str, etcd_servers: str,
           api_port: int | None, kubelet: bool | None, timeout: float) -> None:
    """Start a cluster on this machine, in network namespaces (the root namespace is not changed)."""
    from podnet.cluster import plan, up

    servers = tuple(u for u in etcd_servers.split(",") if u)
    if os.geteuid() != 0:
        raise click.ClickException("podnet up needs root (it creates network namespaces)")
    try:
        cluster = plan.make_plan(state_dir, nodes, flannel_backend, servers)
    except ValueError as e:
        raise click.UsageError(str(e)) from e
    with_kubelet = up.kubelet_available() if kubelet is None else kubelet
    if with_kubelet and not up.kubelet_available():
        raise click.ClickException("podnet-kubelet is not installed (use --no-kubelet)")
    try:
        m = up.up(cluster, kubelet=with_kubelet, api_port=api_port, timeout=timeout,
                  echo=lambda line: click.echo(line, err=True))
    except up.ClusterError as e:
        raise click.ClickException(str(e)) from e
    kc = m.info["kubeconfig"]
    click.echo(f"cluster up: {nodes} node(s), flannel {flannel_backend}\n"
               f"  export KUBECONFIG={kc}\n  kubectl get nodes -o wide\n"
               f"  podnet status --state-dir {cluster.state_dir}\n"
               f"  podnet down --state-dir {cluster.state_dir}")


@main.command("down")
@STATE_DIR
def down_cmd(state_dir: str) -> None:
    """Stop the cluster's processes and remove everything it created."""
    from pathlib import Path

    from podnet.cluster import up

    if not up.down(Path(state_dir).absolute(), echo=lambda line: click.echo(line, err=True)):
        click.echo(f"no cluster in {state_dir}", err=True)
        return
    click.echo("cluster removed")


@main.command("status")
@STATE_DIR
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
def status_cmd(state_dir: str, output: str) -> None:
    """Daemons (process and health endpoint), nodes with subnets, pods with IPs; exit 1 when a
    daemon is down or failing its health check."""
    import json
    from pathlib import Path

    from podnet.cluster import status

    data = status.collect(Path(state_dir).absolute())
    if data is None:
        raise click.ClickException(f"no cluster in {state_dir}")
    click.echo(json.dumps(data, indent=2) if output == "json" else status.render(data), nl=False)
    if output == "json":
        click.echo()
    if data["api_error"] or not all(p["alive"] for p in data["processes"]) \
            or not all(h["ok"] for h in data["health"]):
        sys.exit(1)


@main.group()
def agnhost() -> None:
    """Test servers and clients like upstream's agnhost image (stdlib only)."""


@agnhost.command("serve-hostname")
@click.option("--port", default=9376, show_default=True)
@click.option("--udp/--no-udp", default=False, help="Also answer UDP datagrams.")
def agnhost_serve_hostname(port: int, udp: bool) -> None:
    """Answer every TCP connection (and HTTP request) with this host's name."""
    from podnet import agnhost as a
    a.serve_hostname(port, udp=udp)


@agnhost.command("netexec")
@click.option("--http-port", default=8080, show_default=True)
@click.option("--udp-port", default=8081, show_default=True)
def agnhost_netexec(http_port: int, udp_port: int) -> None:
    """HTTP /hostname /echo?msg= /clientip /healthz, UDP "hostname" / "echo x"."""
    from podnet import agnhost as a
    a.netexec(http_port, udp_port)


@agnhost.command("connect")
@click.argument("target")
@click.option("--protocol", default="tcp", type=click.Choice(["tcp", "udp"]), show_default=True)
@click.option("--timeout", default=5.0, show_default=True)
def agnhost_connect(target: str, protocol: str, timeout: float) -> None:
    """Try a connection to HOST:PORT; exit 0 on success, 1 otherwise (message on stderr)."""
    from podnet import agnhost as a
    error = a.connect(target, protocol, timeout)
    if error:
        click.echo(error, err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
