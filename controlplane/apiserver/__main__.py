"""`podnet-apiserver`: the API server process (HTTPS with bearer tokens, optional loopback HTTP).

    podnet-apiserver --etcd-servers=http://127.0.0.1:2379 --secure-port=6443 \
        --token-auth-file=tokens.csv --cert-dir=/var/run/podnet/apiserver-certs

SIGTERM/SIGINT stop it cleanly (listeners closed, watch caches stopped, store closed).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import ssl
import sys
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from controlplane.apiserver import auth, bootstrap, config, server
from controlplane.apiserver.admission import Admission
from controlplane.apiserver.allocators import ClusterIPAllocator, NodePortAllocator, ServiceAllocators
from controlplane.apiserver.context import Access
from podnet import tls
from podnet.store.etcd import EtcdStore

log = logging.getLogger("podnet.apiserver")


def ssl_context(cfg: config.Config) -> ssl.SSLContext:
    """The serving TLS context: the given cert/key, or a self-signed pair generated into --cert-dir."""
    if cfg.tls_cert_file:
        cert, key = cfg.tls_cert_file, cfg.tls_private_key_file
    else:
        hosts = [cfg.bind_address, socket.gethostname()]
        generated = tls.ensure_serving_cert(cfg.cert_dir, hosts)
        cert, key = generated.cert_file, generated.key_file
        log.info("serving certificate %s (CA %s)", cert, generated.ca_file)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


def build_access(cfg: config.Config, store: Any) -> Access:
    authenticator = auth.TokenAuthenticator.from_file(cfg.token_auth_file) if cfg.token_auth_file else None
    # RBAC objects live under the registry's keys for their group
    source = auth.StoreRbacSource(store, f"{cfg.etcd_prefix}/rbac.authorization.k8s.io")
    return Access(authenticator, auth.Authorizer(source))


def build_registry(cfg: config.Config, store: Any) -> tuple[Any, ServiceAllocators]:
    from controlplane.apiserver.registry import Registry

    services = ServiceAllocators(
        ClusterIPAllocator(store, cfg.service_cluster_ip_range, prefix=cfg.etcd_prefix),
        NodePortAllocator(store, cfg.service_node_port_range, prefix=cfg.etcd_prefix),
    )
    admission = Admission(services)
    registry = Registry(store, prefix=cfg.etcd_prefix, admit=admission.admit,
                        on_delete=admission.on_delete)
    return registry, services


async def run(cfg: config.Config) -> None:
    store = EtcdStore(list(cfg.etcd_servers), timeout=cfg.etcd_timeout)
    access = build_access(cfg, store)  # a bad token file fails now, not after waiting for etcd
    tls_context = ssl_context(cfg) if cfg.secure_port else None
    registry, services = build_registry(cfg, store)
    host, port = cfg.advertise_address, cfg.secure_port or cfg.insecure_port
    started = asyncio.Event()
    limits = server.Limits(cfg.max_requests_inflight, cfg.max_mutating_requests_inflight,
                           cfg.min_request_timeout)
    app = server.build_app(registry, store, access, server_address=f"{host}:{port}", limits=limits,
                           started=started)
    access_log = logging.getLogger("podnet.apiserver.access") if cfg.log_level == "debug" else None
    runner = web.AppRunner(app, access_log=access_log, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    await _listen(cfg, runner, tls_context)
    # listen first (health answers, /readyz says why not ready), then wait for etcd
    background = asyncio.create_task(_background(registry, services, host, port, started))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    background.cancel()
    await runner.cleanup()
    await registry.stop()
    store.close()


async def _listen(cfg: config.Config, runner: web.AppRunner, tls_context: ssl.SSLContext | None) -> None:
    if cfg.secure_port:
        site = web.TCPSite(runner, cfg.bind_address, cfg.secure_port, ssl_context=tls_context,
                           reuse_address=True)
        await site.start()
        log.info("serving HTTPS on %s:%d", cfg.bind_address, cfg.secure_port)
    if cfg.insecure_port:
        # plain HTTP has no authentication: loopback only, as upstream's insecure port
        await web.TCPSite(runner, "127.0.0.1", cfg.insecure_port, reuse_address=True).start()
        log.info("serving insecure HTTP on 127.0.0.1:%d", cfg.insecure_port)


async def _background(registry: Any, services: ServiceAllocators, host: str, port: int,
                      started: asyncio.Event) -> None:
    await _start_registry(registry, services.ips.kubernetes_ip, host, port, started)
    await bootstrap.repair_allocations_forever(registry, services)


async def _start_registry(registry: Any, cluster_ip: str, host: str, port: int,
                          started: asyncio.Event) -> None:
    """Start the watch caches, create the default namespaces and the `kubernetes` service; retry
    while etcd is not up yet; then open the gate for resource requests."""
    delay = 0.2
    while True:
        try:
            await registry.start()
            await bootstrap.ensure_kubernetes_service(registry, cluster_ip, host, port)
            started.set()
            log.info("registry started")
            return
        except Exception as e:
            log.warning("registry start failed (%s); retrying in %.1fs", e, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def main(argv: Sequence[str] | None = None) -> int:
    cfg = config.parse_args(argv)
    logging.basicConfig(level=cfg.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(run(cfg))
    except (auth.TokenFileError, OSError, ssl.SSLError) as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
