"""The loopback plugin: bring `lo` up in CNI_NETNS (reference plugins/main/loopback).

CNI_IFNAME is ignored (this only ever configures `lo`).  The result reports the addresses the
kernel put on `lo` when it came up (127.0.0.1/8, and ::1/128 when IPv6 is enabled), exactly as the
reference does; a `prevResult` is passed through untouched.  DEL sets `lo` down and succeeds when
CNI_NETNS is empty or the namespace is already gone.
"""

from __future__ import annotations

import ipaddress

from cni import skel, types
from podnet.errors import NotFound
from podnet.netlink import AF_INET, AF_INET6, Netlink

LO = "lo"
LO_MAC = "00:00:00:00:00:00"


def loopback_result(netns: str, v4: list[str], v6: list[str]) -> types.Result:
    """The reference result: `lo` in the sandbox plus the first address of each family."""
    result: types.Result = {
        "cniVersion": types.CURRENT,
        "interfaces": [{"name": LO, "mac": LO_MAC, "sandbox": netns}],
        "ips": [{"interface": 0, "address": addrs[0]} for addrs in (v4, v6) if addrs],
    }
    return result


def require_loopback_only(addresses: list[str]) -> None:
    """The reference's sanity check: `lo` carrying a routable address is a misconfigured sandbox."""
    for cidr in addresses:
        if not ipaddress.ip_interface(cidr).ip.is_loopback:
            raise skel.CniError(skel.INTERNAL, f"loopback interface found with non-loopback address {cidr}")


def cmd_add(req: skel.Request) -> types.Result:
    try:
        with Netlink.open(req.netns) as nl:
            nl.set_up(LO)
            v4 = nl.list_addrs(LO, family=AF_INET)
            v6 = nl.list_addrs(LO, family=AF_INET6)
    except NotFound as exc:
        raise skel.CniError(skel.UNKNOWN_CONTAINER, f"loopback: {exc}") from exc
    require_loopback_only(v4 + v6)
    prev = req.prev_result
    if prev is not None:  # chained after another plugin: pass its result through (reference)
        return prev
    return loopback_result(req.netns, v4, v6)


def cmd_del(req: skel.Request) -> None:
    if not req.netns:
        return
    try:
        with Netlink.open(req.netns) as nl:
            nl.set_down(LO)
    except NotFound:
        # The namespace (or, impossibly, lo) is gone: DEL must succeed when there is nothing
        # left to undo (kubernetes#43014).
        return


def cmd_check(req: skel.Request) -> None:
    try:
        with Netlink.open(req.netns) as nl:
            link = nl.require_link(LO)
    except NotFound as exc:
        raise skel.CniError(skel.UNKNOWN_CONTAINER, f"loopback: {exc}") from exc
    if not link.up:
        raise skel.CniError(skel.INTERNAL, "loopback interface is down")


PLUGIN = skel.Plugin(name="loopback", add=cmd_add, delete=cmd_del, check=cmd_check,
                     gc=lambda _req: None, status=lambda _req: None)
