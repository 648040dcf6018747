"""The nft seam: one `nft -f` transaction per call.

nft applies a whole script atomically (one netlink batch), which is what makes a CNI ADD or DEL
one atomic firewall change instead of one exec per rule (the reference portmap runs iptables
25 times per ADD, cni.md section 2.1).
"""

from __future__ import annotations

import json
from typing import Any

from podnet import execs


def run_script(script: str, netns: str | None = None) -> None:
    """Apply `script` as one transaction (all or nothing); raises ExecError with nft's stderr."""
    execs.run(["nft", "-f", "-"], input=script, netns=netns)


def list_json(*what: str, netns: str | None = None) -> dict[str, Any]:
    """`nft -j list <what>` parsed, e.g. list_json("table", "inet", "podnet_cni")."""
    out = execs.run(["nft", "-j", "list", *what], netns=netns).stdout
    data: dict[str, Any] = json.loads(out) if out.strip() else {"nftables": []}
    return data
