"""Bring a cluster up in namespaces, report on it, and take it down again (from the manifest)."""

from __future__ import annotations

import contextlib
import http.client
import json
import secrets
import shutil
import socket
import ssl
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from podnet import execs, netns, tls
from podnet.api.client import NODES, PODS, ApiError, Client
from podnet.api.kubeconfig import load_kubeconfig
from podnet.cluster import plan as P
from podnet.cluster.manifest import Manifest, is_alive
from podnet.cluster.supervise import component, spawn, stop

Echo = Callable[[str], None]
ETCD_CLIENT = "http://127.0.0.1:2379"  # inside the control-plane namespace (fresh: fixed ports)
ETCD_PEER = "http://127.0.0.1:2380"
CONTAINER_RUNTIME = "process"  # needs nothing beyond util-linux; crun is optional on a dev box
DRAIN_TIMEOUT = 30.0  # `down` waits this long for the kubelets to tear their pods down
LOCAL_ETCD_PORT = 23790  # first loopback port in the control-plane netns relaying an --etcd-servers URL


class ClusterError(RuntimeError):
    """`podnet up` cannot proceed (already up, a step failed); the message says what to do."""


def kubelet_available() -> bool:
    return (Path(sys.executable).parent / "podnet-kubelet").exists()


def free_loopback_port(preferred: int = 6443) -> int:
    """`preferred` when it is free on the root namespace's 127.0.0.1, else any free port."""
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise ClusterError("no free loopback port")


# ----------------------------------------------------------------------------------- up
def up(plan: P.ClusterPlan, *, kubelet: bool, api_port: int | None = None, timeout: float = 120.0,
       echo: Echo = print) -> Manifest:
    """Create everything; on any failure undo what was made (from the manifest) and re-raise."""
    manifest = _begin(plan)
    try:
        _build(plan, manifest, kubelet, api_port or free_loopback_port(), timeout, echo)
    except BaseException:
        echo("start-up failed; removing what was created")
        down(plan.state_dir, echo=lambda _m: None)
        raise
    return manifest


def _begin(plan: P.ClusterPlan) -> Manifest:
    """Refuse a second cluster in one state dir; the state dir is ours only when we create it."""
    if plan.manifest_path.exists():
        raise ClusterError(f"a cluster is already up in {plan.state_dir} "
                           f"(`podnet status --state-dir {plan.state_dir}`; `podnet down` removes it)")
    existed = plan.state_dir.exists()
    if existed and any(plan.state_dir.iterdir()):
        raise ClusterError(f"{plan.state_dir} is not empty and holds no podnet cluster; "
                           "choose another --state-dir")
    top = plan.state_dir
    while not top.parent.exists():
        top = top.parent  # the first directory mkdir -p creates: `down` removes up to it
    plan.state_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(path=plan.manifest_path, prefix=plan.prefix,
                        info={"keep_state_dir": existed, "created_top": str(top),
                              "backend": plan.backend, "nodes": [n.name for n in plan.nodes]})
    manifest.save()
    return manifest


def _build(plan: P.ClusterPlan, m: Manifest, kubelet: bool, api_port: int, timeout: float,
           echo: Echo) -> None:
    steps = 6
    echo(f"[1/{steps}] namespaces: fabric, control plane, {len(plan.nodes)} node(s)")
    _make_fabric(plan, m)
    echo(f"[2/{steps}] etcd and podnet-apiserver in {plan.cp_netns}")
    token = _start_api(plan, m)
    echo(f"[3/{steps}] API server on https://127.0.0.1:{api_port} (root namespace loopback)")
    _start_forwarder(plan, m, api_port)
    ca = str(plan.cert_dir / tls.CA_CERT)
    _write_kubeconfigs(plan, token, ca, api_port)
    m.info.update(api_port=api_port, kubeconfig=str(plan.kubeconfig_path))
    m.save()
    echo(f"[4/{steps}] podnet-scheduler, podnet-controller-manager")
    _start_controllers(plan, m)
    echo(f"[5/{steps}] nodes: flanneld ({plan.backend}), CNI daemon"
         + (", podnet-kubelet" if kubelet else " (no kubelet)"))
    client = Client.from_config(load_kubeconfig(plan.kubeconfig_path))
    try:
        for node in plan.nodes:
            _start_node(plan, m, node, kubelet, client)
        echo(f"[6/{steps}] waiting for nodes")
        _wait_nodes(plan, client, kubelet, timeout, echo)
    finally:
        client.close()


def _make_fabric(plan: P.ClusterPlan, m: Manifest) -> None:
    m.add_dir(plan.run_dir)
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    fab = plan.fabric_netns
    m.add_namespace(fab)
    netns.create(fab)
    execs.run(["ip", "-n", fab, "link", "add", "br0", "type", "bridge"])
    execs.run(["ip", "-n", fab, "addr", "add", f"{P.FABRIC_GATEWAY}/24", "dev", "br0"])
    execs.run(["ip", "-n", fab, "link", "set", "br0", "up"])
    _add_host(plan, m, plan.cp_netns, P.CONTROL_PLANE_IP, "cp")
    for node in plan.nodes:
        _add_host(plan, m, node.netns, node.ip, node.fabric_veth)


def _add_host(plan: P.ClusterPlan, m: Manifest, name: str, ip: str, veth: str) -> None:
    """A host namespace with eth0 on the fabric bridge; the veth is created inside the fabric
    namespace, so no link ever appears in the root namespace."""
    m.add_namespace(name)
    netns.create(name)
    fab = plan.fabric_netns
    execs.run(["ip", "-n", fab, "link", "add", veth, "type", "veth", "peer", "name", "eth0",
               "netns", name])
    execs.run(["ip", "-n", fab, "link", "set", veth, "master", "br0", "up"])
    execs.run(["ip", "-n", name, "addr", "add", f"{ip}/24", "dev", "eth0"])
    execs.run(["ip", "-n", name, "link", "set", "eth0", "up"])
    execs.run(["ip", "-n", name, "route", "add", "default", "via", P.FABRIC_GATEWAY])
    execs.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], netns=name)


def _start_api(plan: P.ClusterPlan, m: Manifest) -> str:
    """etcd (or relays to --etcd-servers) and the API server; returns the admin token."""
    cp = plan.cp_netns
    servers = ETCD_CLIENT
    if plan.external_etcd:
        servers = ",".join(_relay_etcd(plan, m))
    else:
        data = plan.state_dir / "etcd"
        spawn(m, "etcd", ["etcd", "--name", "podnet", "--data-dir", str(data),
                          "--listen-client-urls", ETCD_CLIENT, "--advertise-client-urls", ETCD_CLIENT,
                          "--listen-peer-urls", ETCD_PEER, "--initial-advertise-peer-urls", ETCD_PEER,
                          "--initial-cluster", f"podnet={ETCD_PEER}", "--log-level", "warn"],
              plan.log("etcd"), netns=cp)
        _wait(lambda: http_ok(f"{ETCD_CLIENT}/health", cp), 30, "etcd healthy", m, "etcd")
    cert = tls.ensure_serving_cert(str(plan.cert_dir), [P.CONTROL_PLANE_IP, "localhost"])
    token = secrets.token_hex(16)
    tokens = plan.state_dir / "tokens.csv"
    tokens.write_text(f'{token},admin,uid-admin,"system:masters"\n')
    tokens.chmod(0o600)
    spawn(m, "apiserver", [*component("podnet-apiserver", "controlplane.apiserver"),
                           f"--etcd-servers={servers}", "--bind-address=0.0.0.0",
                           f"--secure-port={P.API_PORT}", f"--advertise-address={P.CONTROL_PLANE_IP}",
                           f"--tls-cert-file={cert.cert_file}", f"--tls-private-key-file={cert.key_file}",
                           f"--token-auth-file={tokens}",
                           f"--service-cluster-ip-range={P.SERVICE_CIDR}"],
          plan.log("apiserver"), netns=cp)
    ctx = ssl.create_default_context(cafile=cert.ca_file)
    _wait(lambda: http_ok(f"https://127.0.0.1:{P.API_PORT}/readyz", cp, ctx), 60,
          "podnet-apiserver ready", m, "apiserver")
    return token


def _relay_etcd(plan: P.ClusterPlan, m: Manifest) -> list[str]:
    """--etcd-servers name root-namespace addresses the control-plane namespace cannot reach: one
    forwarder per URL relays a control-plane loopback port to it."""
    urls = []
    for i, url in enumerate(plan.external_etcd):
        hostport = url.split("://", 1)[-1].rstrip("/")
        port = LOCAL_ETCD_PORT + i
        spawn(m, f"etcd-relay-{i}", [sys.executable, "-m", "podnet.cluster.forward",
                                     "--listen", f"127.0.0.1:{port}", "--listen-netns", plan.cp_netns,
                                     "--connect", hostport], plan.log(f"etcd-relay-{i}"))
        urls.append(f"http://127.0.0.1:{port}")
    for url in urls:
        _wait(lambda u=url: http_ok(f"{u}/health", plan.cp_netns), 30, f"etcd via {url}", m, None)  # type: ignore[misc]
    return urls


def _start_forwarder(plan: P.ClusterPlan, m: Manifest, api_port: int) -> None:
    spawn(m, "api-forwarder", [sys.executable, "-m", "podnet.cluster.forward",
                               "--listen", f"127.0.0.1:{api_port}", "--connect",
                               f"127.0.0.1:{P.API_PORT}", "--connect-netns", plan.cp_netns],
          plan.log("api-forwarder"))
    ctx = ssl.create_default_context(cafile=str(plan.cert_dir / tls.CA_CERT))
    _wait(lambda: http_ok(f"https://127.0.0.1:{api_port}/readyz", None, ctx), 20,
          "API server through the loopback forwarder", m, "api-forwarder")


def _write_kubeconfigs(plan: P.ClusterPlan, token: str, ca: str, api_port: int) -> None:
    """Three views of one server: the user's (root loopback forwarder), the control plane's own
    loopback, and the nodes' (the control-plane host's fabric address; in the certificate's SANs)."""
    views = {plan.kubeconfig_path: f"https://127.0.0.1:{api_port}",
             plan.state_dir / "cp.kubeconfig": f"https://127.0.0.1:{P.API_PORT}",
             plan.state_dir / "node.kubeconfig": f"https://{P.CONTROL_PLANE_IP}:{P.API_PORT}"}
    for path, server in views.items():
        path.write_text(P.dumps(P.kubeconfig(server, ca, token)))
        path.chmod(0o600)


def _start_controllers(plan: P.ClusterPlan, m: Manifest) -> None:
    kc = f"--kubeconfig={plan.state_dir / 'cp.kubeconfig'}"
    spawn(m, "scheduler", [*component("podnet-scheduler", "controlplane.scheduler"), kc],
          plan.log("scheduler"), netns=plan.cp_netns)
    spawn(m, "controller-manager",
          [*component("podnet-controller-manager", "controlplane.controllers"), kc,
           "--allocate-node-cidrs", f"--cluster-cidr={P.CLUSTER_CIDR}",
           f"--node-cidr-mask-size={P.NODE_CIDR_MASK}"],
          plan.log("controller-manager"), netns=plan.cp_netns)


def _start_node(plan: P.ClusterPlan, m: Manifest, node: P.NodePlan, kubelet: bool,
                client: Client) -> None:
    for d in (node.cni_conf_dir, node.cni_bin_dir, node.subnet_file.parent, node.kubelet_dir,
              node.run_dir):
        d.mkdir(parents=True, exist_ok=True)
    plan.net_conf_path.write_text(P.dumps(P.net_conf(plan.backend)))
    (node.cni_conf_dir / "10-flannel.conflist").write_text(P.dumps(P.conflist(node)))
    execs.run([sys.executable, "-m", "cni.install", "--dir", str(node.cni_bin_dir)])
    node_kc = str(plan.state_dir / "node.kubeconfig")
    spawn(m, f"{node.name}/cni-daemon", [sys.executable, "-m", "cni.daemon", "--socket",
                                         str(node.cni_socket)],
          plan.log(f"{node.name}-cni-daemon"), netns=node.netns)
    if not kubelet:
        # No kubelet registers the Node: create it, so node IPAM assigns its podCIDR and
        # flanneld (kube mode) can take it as its lease.
        client.create(NODES, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node.name},
                              "status": {"addresses": [{"type": "InternalIP", "address": node.ip}]}})
    spawn(m, f"{node.name}/flanneld",
          [*component("podnet-flanneld", "flanneld"), "--kube-subnet-mgr",
           f"--kubeconfig-file={node_kc}", f"--net-config-path={plan.net_conf_path}",
           f"--node-name={node.name}", "--iface=eth0", f"--subnet-file={node.subnet_file}",
           f"--healthz-port={P.FLANNEL_HEALTHZ_PORT}"],
          plan.log(f"{node.name}-flanneld"), netns=node.netns)
    if kubelet:
        spawn(m, f"{node.name}/kubelet",
              [*component("podnet-kubelet", "controlplane.kubelet"), f"--kubeconfig={node_kc}",
               f"--hostname-override={node.name}", f"--node-ip={node.ip}",
               f"--root-dir={node.kubelet_dir}", f"--cni-conf-dir={node.cni_conf_dir}",
               f"--cni-bin-dir={node.cni_bin_dir}", f"--cni-cache-dir={node.dir / 'cni' / 'cache'}",
               f"--pod-logs-dir={node.dir / 'pods'}", f"--container-runtime={CONTAINER_RUNTIME}"],
              plan.log(f"{node.name}-kubelet"), netns=node.netns,
              env={"PODNET_CNI_SOCKET": str(node.cni_socket)})


def _wait_nodes(plan: P.ClusterPlan, client: Client, kubelet: bool, timeout: float,
                echo: Echo) -> None:
    """All nodes Ready (kubelet) or networked (flannel wrote subnet.env); one progress line per
    change, so a slow node is visible."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        done = [n.name for n in plan.nodes if _node_up(client, n, kubelet)]
        line = f"      {len(done)}/{len(plan.nodes)} nodes {'Ready' if kubelet else 'networked'}"
        if line != last:
            echo(line)
            last = line
        if len(done) == len(plan.nodes):
            return
        if time.monotonic() > deadline:
            missing = [n.name for n in plan.nodes if n.name not in done]
            raise ClusterError(f"nodes not up after {timeout:g}s: {', '.join(missing)} "
                               f"(logs in {plan.state_dir / 'logs'})")
        time.sleep(0.2)


def _node_up(client: Client, node: P.NodePlan, kubelet: bool) -> bool:
    if not node.subnet_file.exists():
        return False
    if not kubelet:
        return True
    try:
        obj = client.get(NODES, node.name)
    except (ApiError, OSError):  # not registered yet / transient: keep waiting
        return False
    return condition(obj, "Ready") == "True"


def condition(node: dict[str, Any], kind: str) -> str:
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return str(cond.get("status", "Unknown"))
    return "Unknown"


# --------------------------------------------------------------------------------- down
def down(state_dir: Path, *, echo: Echo = print) -> bool:
    """Stop every recorded process (newest first), delete every recorded namespace and directory.
    Returns False when there was no cluster in `state_dir`."""
    path = Path(state_dir) / "manifest.json"
    if not path.exists():
        return False
    m = Manifest.load(path)
    if any(p.name.endswith("/kubelet") for p in m.processes):
        _drain(m, echo)
    _stop_all(m, echo)
    _sweep_kubelet_leftovers(Path(state_dir), echo)
    for name in reversed(m.namespaces):
        echo(f"deleting namespace {name}")
        netns.delete(name)
    for d in reversed(m.dirs):
        shutil.rmtree(d, ignore_errors=True)
    with contextlib.suppress(OSError):
        Path(P.RUN_ROOT).rmdir()  # shared by all clusters: only when no other one uses it
    _remove_state(Path(state_dir), bool(m.info.get("keep_state_dir")))
    _remove_created_parents(Path(state_dir), m.info.get("created_top"))
    return True


def _remove_created_parents(state_dir: Path, top: str | None) -> None:
    """The parents `up` created for the state dir (mkdir -p), while empty: nothing else uses them."""
    if not top or state_dir.exists() or not state_dir.is_relative_to(top):
        return
    d = state_dir.parent
    while d.is_relative_to(top):
        try:
            d.rmdir()
        except OSError:
            return  # not empty (someone else's files) or already gone
        d = d.parent


def _stop_all(m: Manifest, echo: Echo) -> None:
    """Node daemons first, all nodes at once (each takes a few hundred ms to exit and they are
    independent), then the control plane newest first, so the API server outlives its clients."""
    nodes = [r for r in reversed(m.processes) if "/" in r.name]
    for rec in nodes:
        echo(f"stopping {rec.name} (pid {rec.pid})")
    threads = [threading.Thread(target=stop, args=(rec,), daemon=True) for rec in nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for rec in reversed(m.processes):
        if "/" not in rec.name:
            echo(f"stopping {rec.name} (pid {rec.pid})")
            stop(rec)


def _drain(m: Manifest, echo: Echo) -> None:
    """Let the kubelets tear their pods down as on a node drain (CNI DEL, containers stopped,
    final delete): stop the scheduler and controller manager first, so no controller recreates a
    pod, then delete every pod with a short grace period and wait for them to go."""
    for name in ("controller-manager", "scheduler"):
        rec = m.process(name)
        if rec is not None:
            stop(rec)
    kubeconfig = m.info.get("kubeconfig")
    if not kubeconfig:
        return
    try:
        client = Client.from_config(load_kubeconfig(kubeconfig))
    except (OSError, ValueError):
        return
    try:
        pods, _ = client.list_all(PODS)
        if pods:
            echo(f"deleting {len(pods)} pod(s); waiting for the kubelets")
        for pod in pods:
            meta = pod["metadata"]
            with contextlib.suppress(ApiError, OSError):
                client.delete(PODS, meta["name"], meta["namespace"], grace_period_seconds=1)
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while pods and time.monotonic() < deadline:
            time.sleep(0.2)
            pods, _ = client.list_all(PODS)
    except (ApiError, OSError, http.client.HTTPException) as e:
        echo(f"API server unreachable ({e!r}); removing pods from the nodes directly")
    finally:
        client.close()


def _sweep_kubelet_leftovers(state_dir: Path, echo: Echo) -> None:
    """After the kubelets stopped: containers they left (the runtime's own records under each
    kubelet's root dir) and pod sandbox namespaces (the kubelet's sandbox records) are ours too."""
    for kubelet_dir in sorted(state_dir.glob("nodes/*/kubelet")):
        try:
            from podnet.runtime import new_runtime

            runtime = new_runtime(CONTAINER_RUNTIME, str(kubelet_dir / "containers"))
            for info in runtime.list():
                echo(f"removing container {info.id}")
                runtime.stop(info.id, 1.0)
                runtime.remove(info.id)
        except Exception as e:  # down must finish: report and go on with the namespaces
            echo(f"containers under {kubelet_dir}: {e}")
        for record in sorted(kubelet_dir.glob("sandboxes/*.json")):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                name = json.loads(record.read_text())["netns"]
                if name and netns.exists(name):
                    echo(f"deleting pod namespace {name}")
                    netns.delete(name)


def _remove_state(state_dir: Path, keep_dir: bool) -> None:
    """All of the state dir is ours (up refuses a non-empty one); keep the directory itself only
    when it existed before `podnet up`."""
    if not keep_dir:
        shutil.rmtree(state_dir, ignore_errors=True)
        return
    for child in state_dir.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


# ------------------------------------------------------------------------------- helpers
def http_ok(url: str, where: str | None, ctx: ssl.SSLContext | None = None) -> bool:
    try:
        with netns.enter(where), urllib.request.urlopen(url, timeout=2, context=ctx) as resp:
            return int(resp.status) == 200
    except (OSError, ValueError, netns.NotFound):  # NotFound: the namespace is gone already
        return False


def _wait(check: Callable[[], bool], timeout: float, what: str, m: Manifest, proc: str | None) -> None:
    deadline = time.monotonic() + timeout
    rec = m.process(proc) if proc else None
    while not check():
        if rec is not None and not is_alive(rec):
            raise ClusterError(f"{proc} exited; see {rec.log}:\n{_tail(Path(rec.log))}")
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.1)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
