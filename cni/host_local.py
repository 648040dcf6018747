"""host-local IPAM plugin (CNI spec 1.1): addresses from configured ranges, kept on local disk.

Behaves like the reference plugin (containernetworking/plugins plugins/ipam/host-local) and
shares its on-disk state, plus the spec 1.1 verbs it lacks (`/* FIXME GC */` upstream,
plugins#1047): GC frees every reservation of attachments the runtime no longer knows, which is
what stops the reboot/crash leaks of plugins#252 and #697, and STATUS reports an unwritable store
or an exhausted range set.

Stdlib only, and no podnet.netlink: IPAM runs once per pod on every ADD/DEL, so it must stay at
the ~25 ms interpreter floor (pyroute2 alone costs ~200 ms).  It never looks at CNI_NETNS.
"""

from __future__ import annotations

from typing import Any

from cni import skel, types
from cni.ipam import allocator, config
from cni.ipam.disk_store import DiskStore


def add(req: skel.Request) -> types.Result:
    """Reserve one address per range set; the result has `ips`, `routes`, `dns` and, being an
    IPAM result, neither `interfaces` nor `ips[].interface`."""
    conf = config.load(req.config, req.args)
    dns = config.read_resolv_conf(conf.resolv_conf) if conf.resolv_conf else {}
    store = DiskStore(conf.data_dir, conf.name)
    allocations = allocator.allocate(store, conf.range_sets, conf.requested, req.container_id,
                                     req.ifname)
    result: types.Result = {"cniVersion": types.CURRENT,
                            "ips": [a.ip_config() for a in allocations]}
    if conf.routes:
        result["routes"] = [dict(r) for r in conf.routes]
    if dns:
        result["dns"] = dns
    return result


def delete(req: skel.Request) -> None:
    """Release everything of (containerID, ifname).  Needs neither the netns nor valid ranges,
    and never creates the network directory (nothing there means nothing to release)."""
    name, data_dir = config.load_location(req.config)
    store = DiskStore(data_dir, name)
    if store.exists():
        allocator.release(store, req.container_id, req.ifname)


def check(req: skel.Request) -> None:
    """The attachment must hold an address, and every address of `prevResult` that lies in one
    of our range sets must be held by it."""
    conf = config.load(req.config, req.args)
    store = DiskStore(conf.data_dir, conf.name)
    held = allocator.lookup(store, req.container_id, req.ifname) if store.exists() else []
    if not held:
        raise skel.CniError(skel.INTERNAL, f"host-local: failed to find address added by container "
                            f"{req.container_id} ({req.ifname})")
    for address in _prev_addresses(req):
        ip = config.parse_ip(address, "prevResult address")
        if ip not in held and any(config.set_contains(rset, ip) for rset in conf.range_sets):
            raise skel.CniError(skel.INTERNAL, f"host-local: {ip} of prevResult is not reserved for "
                                f"container {req.container_id} ({req.ifname})")


def _prev_addresses(req: skel.Request) -> list[Any]:
    prev = req.prev_result
    return [ip.get("address") for ip in (prev or {}).get("ips", [])]


def gc(req: skel.Request) -> None:
    """Free every reservation whose attachment is not in `cni.dev/valid-attachments`."""
    name, data_dir = config.load_location(req.config)
    store = DiskStore(data_dir, name)
    if store.exists():
        freed = allocator.gc(store, req.valid_attachments)
        if freed:
            skel.debug(f"host-local: GC of {name} freed {', '.join(map(str, freed))}")


def status(req: skel.Request) -> None:
    """Ready for ADD when the store is writable and every range set has a free address."""
    conf = config.load(req.config, req.args)
    store = DiskStore(conf.data_dir, conf.name)
    try:
        store.ensure_writable()
    except skel.CniError as exc:
        raise skel.CniError(skel.NOT_AVAILABLE, exc.msg) from None
    free = allocator.free_counts(store, conf.range_sets)
    full = [f"{i} ({config.describe(conf.range_sets[i])})" for i, n in enumerate(free) if n <= 0]
    if full:
        raise skel.CniError(skel.NOT_AVAILABLE, f"host-local: no free address in range set "
                            f"{', '.join(full)}")


PLUGIN = skel.Plugin(name="host-local", add=add, delete=delete, check=check, gc=gc, status=status)
