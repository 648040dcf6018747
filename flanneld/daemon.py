"""The flanneld daemon loop: one level-triggered sync owns the whole dataplane.

Lease watch events only mark the runner dirty (podnet.reconcile.Runner); a periodic full resync
catches anything changed behind our back (a deleted route, a flushed FDB).  Each sync:

  1. (re)acquires our lease when we have none or it was lost (deleted/expired in etcd),
  2. prepares the backend's devices (idempotent: adopts what a previous run left),
  3. renews the lease when it is within --subnet-lease-renew-margin of expiry,
  4. computes the desired routes/neighbours/FDB from ALL leases and applies the diff,
  5. converges the FLANNEL-* iptables rules (full syncs, or when our subnet changed), and
  6. writes subnet.env (atomically, only when it changes and only once the above is done).

Nothing is done until the lease watch has delivered its first snapshot: before that the lease
cache is empty, so a restart would delete every route it adopted (a traffic gap).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from flanneld import masq, subnetenv
from flanneld.backend.base import ApplyError, Backend, Iface, LeaseLike, NetlinkSeam
from flanneld.kernelwatch import KernelWatch
from podnet.log import get_logger
from podnet.metrics import Metrics
from podnet.reconcile import Runner
from podnet.xtables.iptables import IptablesBase

LOG = get_logger("flanneld")


class NetConfigLike(Protocol):
    @property
    def network(self) -> ipaddress.IPv4Network: ...


class SubnetManager(Protocol):
    """FB's flanneld.subnet.base.SubnetManager, as far as the daemon uses it."""

    def network_config(self) -> Any: ...
    def acquire(self, public_ip: str, backend_type: str, backend_data: dict[str, Any],
                previous: ipaddress.IPv4Network | None) -> Any: ...
    def stored_backend_data(self, public_ip: str, backend_type: str) -> dict[str, Any]: ...
    def renew(self, lease: Any) -> Any: ...
    def leases(self) -> Mapping[ipaddress.IPv4Network, Any]: ...
    def run_watch(self, on_change: Callable[[], None], stop: threading.Event) -> None: ...
    def own_lease_lost(self) -> bool: ...


@dataclass(frozen=True)
class Options:
    public_ip: str
    iface: Iface
    subnet_file: str = subnetenv.DEFAULT_PATH
    ip_masq: bool = False
    forward: bool = True  # upstream --iptables-forward-rules
    renew_margin: float = 3600.0  # upstream --subnet-lease-renew-margin 60 (minutes)
    resync_period: float = 10.0  # upstream host-gw routeCheck period
    min_sync_interval: float = 0.02
    watch_kernel: bool = False  # wake on deletions of owned kernel objects (kernelwatch)


def describe_metrics(metrics: Metrics) -> None:
    for name, kind, text in (
        ("flannel_leases", "gauge", "Leases known (all hosts, our own included)"),
        ("flannel_routes", "gauge", "Routes flanneld wants in the kernel"),
        ("flannel_reconcile_total", "counter", "Dataplane syncs run"),
        ("flannel_reconcile_errors_total", "counter", "Dataplane syncs that failed (retried with backoff)"),
        ("flannel_reconcile_duration_seconds", "summary", "Duration of dataplane syncs"),
        ("flannel_reconcile_changes_total", "counter", "Kernel entries added or removed by syncs"),
        ("flannel_peer_errors", "gauge", "Peers that could not be programmed (e.g. host-gw off-L2)"),
        ("flannel_lease_renewals_total", "counter", "Own lease renewals"),
        ("flannel_lease_acquisitions_total", "counter", "Own lease acquisitions (start, lease lost)"),
        ("flannel_ready", "gauge", "1 once subnet.env is written"),
    ):
        metrics.describe(name, kind, text)


class Daemon:
    def __init__(self, sm: SubnetManager, backend: Backend, nl: NetlinkSeam, ipt: IptablesBase,
                 opts: Options, *, metrics: Metrics | None = None,
                 wall: Callable[[], float] = time.time) -> None:
        self.sm = sm
        self.backend = backend
        self.nl = nl
        self.ipt = ipt
        self.opts = opts
        self.metrics = metrics or Metrics()
        describe_metrics(self.metrics)
        self.wall = wall
        self.config: Any = None
        self.own: Any = None
        self.ready = threading.Event()  # subnet.env written
        self.leases_seen = threading.Event()  # the watch delivered its first snapshot
        self._problems: tuple[str, ...] = ()
        self._masq_for: ipaddress.IPv4Network | None = None  # subnet the rules were last made for
        self.kernel_watch: KernelWatch | None = None

    # ------------------------------------------------------------------ the watch side
    def on_leases_changed(self, runner: Runner | None = None) -> None:
        """Called by the subnet manager's watch after every change or re-list (any thread)."""
        self.leases_seen.set()
        if runner is not None:
            runner.request()

    # ------------------------------------------------------------------ the sync
    def sync(self, full: bool = True) -> None:
        started = time.monotonic()
        self.metrics.inc("flannel_reconcile_total")
        try:
            self._sync(full)
        except Exception:
            self.metrics.inc("flannel_reconcile_errors_total")
            raise
        finally:
            self.metrics.observe("flannel_reconcile_duration_seconds", time.monotonic() - started)

    def _sync(self, full: bool) -> None:
        if self.config is None:
            self.config = self.sm.network_config()
        if self.own is None and not self.leases_seen.is_set():
            # Peers are programmed from the lease cache: an empty one (before the snapshot)
            # would garbage-collect every route a restart adopted.
            LOG.debug("waiting for the first lease snapshot")
            return
        if self.own is None or self.sm.own_lease_lost():
            self._acquire()
        data = self.backend.prepare(self.nl, self.opts.public_ip, self.opts.iface)
        if data != self.own.backend_data:
            # The device was recreated with another MAC (or VNI): peers must learn it.
            LOG.info("backend data changed to %s; publishing it", data)
            self.own = self.sm.renew(dataclasses.replace(self.own, backend_data=data))
        self._maybe_renew()
        failure = self._apply_peers()
        # iptables-save costs a fork per table: lease events (not full) skip it unless our own
        # subnet changed; the periodic full resync re-checks the rules (upstream: every 5 s).
        if full or self._masq_for != self.own.subnet:
            masq.apply(self.ipt, self.config.network, self.own.subnet, ip_masq=self.opts.ip_masq,
                       forward=self.opts.forward)
            self._masq_for = self.own.subnet
        self._write_subnet_env()
        if failure is not None:
            raise failure

    def _acquire(self) -> None:
        previous = (self.own.subnet if self.own is not None
                    else subnetenv.previous_subnet(self.opts.subnet_file))
        if self.own is None:
            self._restore_previous()
        data = self.backend.prepare(self.nl, self.opts.public_ip, self.opts.iface)
        lost = self.own is not None
        self.own = self.sm.acquire(self.opts.public_ip, self.backend.type_name, data, previous)
        self.metrics.inc("flannel_lease_acquisitions_total")
        LOG.info("%s lease %s (public IP %s, %s)", "re-acquired" if lost else "acquired",
                 self.own.subnet, self.opts.public_ip, self.backend.type_name)

    def _restore_previous(self) -> None:
        """Hand the backend what this host last published (etcd: the lease holding our PublicIP,
        upstream's node identity; kube: our Node's annotations), so a device recreated after a
        reboot gets the VtepMAC peers know (upstream GetStoredMacAddresses, PR #1946)."""
        data = self.sm.stored_backend_data(self.opts.public_ip, self.backend.type_name)
        if data:
            self.backend.restore(data)

    def _maybe_renew(self) -> None:
        expiration = self.own.expiration
        if expiration is None or self.wall() < expiration - self.opts.renew_margin:
            return
        try:
            self.own = self.sm.renew(self.own)
        except Exception as exc:  # retried on the next sync; the lease is still valid meanwhile
            LOG.warning("renewing lease %s failed: %s", self.own.subnet, exc)
            return
        self.metrics.inc("flannel_lease_renewals_total")
        LOG.info("renewed lease %s", self.own.subnet)

    def _apply_peers(self) -> ApplyError | None:
        leases: Mapping[ipaddress.IPv4Network, LeaseLike] = self.sm.leases()
        desired = self.backend.desired(self.own, leases)
        self.metrics.set("flannel_leases", len(leases))
        self.metrics.set("flannel_routes", len(desired.routes))
        self.metrics.set("flannel_peer_errors", len(desired.problems))
        if desired.problems != self._problems:
            for problem in desired.problems:
                LOG.error("%s", problem)
            self._problems = desired.problems
        self._watch_devices(desired.devices + tuple(desired.addresses))
        try:
            applied = self.backend.apply(self.nl, desired)
        except ApplyError as exc:
            return exc
        if applied.changed:
            self.metrics.inc("flannel_reconcile_changes_total", len(applied.added) + len(applied.removed))
            LOG.info("dataplane: +%s -%s", applied.added, applied.removed)
        return None

    def _watch_devices(self, names: tuple[str, ...]) -> None:
        if self.kernel_watch is None:
            return
        devices = {}
        for name in names:
            link = self.nl.get_link(name)
            if link is not None:
                devices[name] = link.index
        self.kernel_watch.set_devices(devices)

    def _write_subnet_env(self) -> None:
        env = subnetenv.SubnetEnv(self.config.network, self.own.subnet,
                                  self.backend.mtu(self.opts.iface), self.opts.ip_masq)
        if subnetenv.write(self.opts.subnet_file, env):
            LOG.info("wrote %s (subnet %s)", self.opts.subnet_file, self.own.subnet)
        if not self.ready.is_set():
            self.ready.set()
            self.metrics.set("flannel_ready", 1)

    # ------------------------------------------------------------------ the loop
    def run(self, stop: threading.Event) -> None:
        """Sync until `stop` is set: the watch runs on a thread, the syncs on this one."""
        runner = Runner(self.sync, min_interval=self.opts.min_sync_interval,
                        max_interval=self.opts.resync_period, backoff_initial=0.2,
                        backoff_max=10.0, name="flanneld")
        watch = threading.Thread(target=self.sm.run_watch, name="lease-watch", daemon=True,
                                 args=(lambda: self.on_leases_changed(runner), stop))
        def stopper_main() -> None:
            stop.wait()
            runner.stop()

        stopper = threading.Thread(target=stopper_main, name="stopper", daemon=True)
        watch.start()
        stopper.start()
        if self.opts.watch_kernel:
            self.kernel_watch = KernelWatch(runner.request)
            threading.Thread(target=self.kernel_watch.run, args=(stop,), name="kernel-watch",
                             daemon=True).start()
        try:
            runner.run_forever()
        finally:
            self.backend.close()
            watch.join(timeout=5)


# ------------------------------------------------------------------ the external interface
def resolve_iface(nl: NetlinkSeam, iface: str | None) -> Iface:
    """The underlay interface, as upstream --iface picks it: a name or one of its IPv4
    addresses; without --iface, the interface of the default route, else the first interface
    (by index) with an IPv4 address that is not loopback."""
    links = sorted(nl.list_links(), key=lambda link: link.index)
    addrs = {link.name: [ipaddress.IPv4Interface(a) for a in nl.list_addrs(link.name, 2)]
             for link in links}
    chosen = None
    if iface:
        for link in links:
            if link.name == iface or any(str(a.ip) == iface for a in addrs[link.name]):
                chosen = link
                break
        if chosen is None:
            raise LookupError(f"--iface {iface}: no such interface or address")
    else:
        default = next((r for r in nl.list_routes(2) if r.dst == "0.0.0.0/0" and r.oif), None)
        candidates = [link for link in links if link.name != "lo" and addrs[link.name]]
        chosen = next((link for link in candidates if default is not None and link.index == default.oif),
                      candidates[0] if candidates else None)
        if chosen is None:
            raise LookupError("no interface with an IPv4 address; pass --iface")
    own = addrs[chosen.name]
    if not own:
        raise LookupError(f"interface {chosen.name} has no IPv4 address")
    if iface and any(str(a.ip) == iface for a in own):
        first = next(a for a in own if str(a.ip) == iface)
    else:
        first = own[0]
    return Iface(chosen.name, str(first.ip), chosen.mtu, tuple(a.network for a in own))
