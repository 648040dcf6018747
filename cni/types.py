"""CNI versions and result conversion (spec 1.1.0 and the versions it must interoperate with).

Stdlib only: imported on every plugin exec.  Internally a result is always held in the 1.1.0
shape; `to_version` renders it for the version the runtime asked for and `normalize` lifts a
result of any version (a `prevResult`, a delegated IPAM result) back to 1.1.0.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

CURRENT = "1.1.0"
# Oldest first.  0.1.0/0.2.0 are cheap to answer and old runtimes still send them.
SUPPORTED = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
DEFAULT_WHEN_MISSING = "0.2.0"  # spec: a config without cniVersion is 0.2.0

if TYPE_CHECKING:
    Result = dict[str, Any]


def vtuple(version: str) -> tuple[int, ...]:
    """'0.3.1' -> (0, 3, 1); ValueError for anything that is not dotted numbers."""
    parts = version.split(".")
    if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"invalid version {version!r}")
    return tuple(int(p) for p in parts) + (0,) * (3 - len(parts))


def at_least(version: str, minimum: str) -> bool:
    return vtuple(version) >= vtuple(minimum)


def _family(address: str) -> str:
    # A colon only ever appears in IPv6 text; cheaper than importing ipaddress on every exec.
    return "6" if ":" in address else "4"


def _legacy_block(result: Result, family: str) -> dict[str, Any] | None:
    """The 0.2.0 `ip4`/`ip6` block: first IP of the family plus that family's routes."""
    ips = [ip for ip in result.get("ips", []) if _family(ip["address"]) == family]
    if not ips:
        return None
    block: dict[str, Any] = {"ip": ips[0]["address"]}
    if ips[0].get("gateway"):
        block["gateway"] = ips[0]["gateway"]
    routes = [
        {k: v for k, v in r.items() if k in ("dst", "gw")}
        for r in result.get("routes", [])
        if _family(r["dst"]) == family
    ]
    if routes:
        block["routes"] = routes
    return block


def _to_legacy(result: Result, version: str) -> Result:
    out: Result = {"cniVersion": version}
    for family, key in (("4", "ip4"), ("6", "ip6")):
        block = _legacy_block(result, family)
        if block:
            out[key] = block
    if result.get("dns"):
        out["dns"] = result["dns"]
    return out


def _to_040(result: Result, version: str) -> Result:
    out: Result = {"cniVersion": version}
    if result.get("interfaces"):
        out["interfaces"] = [
            {k: v for k, v in i.items() if k in ("name", "mac", "sandbox")} for i in result["interfaces"]
        ]
    if result.get("ips"):
        out["ips"] = [{"version": _family(ip["address"]), **ip} for ip in result["ips"]]
    if result.get("routes"):
        out["routes"] = [{k: v for k, v in r.items() if k in ("dst", "gw")} for r in result["routes"]]
    if result.get("dns"):
        out["dns"] = result["dns"]
    return out


def to_version(result: Result, version: str) -> Result:
    """Render an internal (1.1.0) result for `version`."""
    v = vtuple(version)
    if v < (0, 3, 0):
        return _to_legacy(result, version)
    if v < (1, 0, 0):
        return _to_040(result, version)
    out: Result = {"cniVersion": version}
    for key in ("interfaces", "ips", "routes"):
        if result.get(key):
            out[key] = [dict(x) for x in result[key]]
    if result.get("dns"):
        out["dns"] = result["dns"]
    return out


def _from_legacy(result: Result) -> Result:
    out: Result = {"cniVersion": CURRENT, "ips": [], "routes": []}
    for key in ("ip4", "ip6"):
        block = result.get(key)
        if not block:
            continue
        ip: dict[str, Any] = {"address": block["ip"]}
        if block.get("gateway"):
            ip["gateway"] = block["gateway"]
        out["ips"].append(ip)
        out["routes"].extend(dict(r) for r in block.get("routes", []))
    if result.get("dns"):
        out["dns"] = result["dns"]
    return out


def normalize(result: Result) -> Result:
    """Lift a result of any supported version to the internal 1.1.0 shape."""
    version = result.get("cniVersion") or DEFAULT_WHEN_MISSING
    if vtuple(version) < (0, 3, 0) or "ip4" in result or "ip6" in result:
        return _from_legacy(result)
    out: Result = {"cniVersion": CURRENT}
    for key in ("interfaces", "routes"):
        if result.get(key):
            out[key] = [dict(x) for x in result[key]]
    if result.get("ips"):
        out["ips"] = [{k: v for k, v in ip.items() if k != "version"} for ip in result["ips"]]
    if result.get("dns"):
        out["dns"] = result["dns"]
    return out


def version_answer(request_version: str | None, supported: tuple[str, ...] = SUPPORTED) -> Result:
    """What VERSION prints."""
    return {"cniVersion": request_version or CURRENT, "supportedVersions": list(supported)}
