"""The flannel meta-plugin: subnet.env (written by flanneld) -> a delegate config -> bridge.

Reference semantics (flannel-io/cni-plugin flannel.go, flannel_linux.go; cni.md section 3):

* netconf keys `subnetFile` (default /run/flannel/subnet.env), `dataDir` (default
  /var/lib/cni/flannel), `delegate` {...} and a top-level `ipam` that seeds the delegate's.
* subnet.env is `KEY=VALUE` lines: FLANNEL_NETWORK (comma list, duplicates dropped),
  FLANNEL_SUBNET (`10.1.17.1/24`, masked to `10.1.17.0/24`), FLANNEL_IPV6_NETWORK,
  FLANNEL_IPV6_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ (`true` or anything else = false).  A network
  and a subnet of some family, the MTU and IPMASQ are required.
* The delegate is the user's `delegate` object plus: `name` = the network name, `type` bridge,
  `ipMasq` = !FLANNEL_IPMASQ (flanneld masquerades when it is true), `mtu` = FLANNEL_MTU, for a
  bridge `isGateway` true, `cniVersion` and `runtimeConfig` copied, and `ipam` = the netconf's
  `ipam` with `type` host-local, `ranges` [[{subnet}]] per family and `routes` = its own routes
  plus one per flannel network.  A delegate naming `name` or `ipam` is refused (flannel sets them).
* ADD writes the delegate config to `<dataDir>/<containerID>` (0600) before delegating, so the
  DEL that follows a failed ADD finds it; DEL delegates DEL with that file and removes it only
  when the delegate succeeded; a missing (or unreadable JSON) file makes DEL a success.

Differences from the reference:

* A bridge delegate also defaults `hairpinMode` true (unless `promiscMode` is set: the two
  exclude each other), as the standard kube-flannel conflist sets it, so a pod reaches itself
  through a Service.
* Errors carry spec codes instead of 999: subnet.env missing 11 (TRY_AGAIN: flanneld has not
  written it yet), unreadable 5, malformed or incomplete 7; a bad netconf 7.  Values are
  whitespace-stripped (a hand-edited file with CRLF still parses).
* The cache file is written atomically (temporary file, fsync, rename): a crash leaves the old
  file or the new one, never a torn one that would make DEL skip the delegate.
* CHECK delegates CHECK with the cached config and the runtime's prevResult (the reference's
  CHECK is a TODO returning success); no cache file is code 3 (UNKNOWN_CONTAINER).
* GC passes through: the delegate config rendered from the current subnet.env (else the newest
  cached one) gets the runtime's valid-attachments list, and once the delegate collected, cache
  files of containers not in that list are removed.  STATUS is 50 (NOT_AVAILABLE) while
  subnet.env is not usable, else the delegate's STATUS.  The reference (libcni v1.2 skel with
  no GC or STATUS handler) answers success to both without doing anything.

Stdlib only at module level (it runs on every exec); the delegate runs in-process when it is a
podnet plugin (cni.delegate), else it is exec'd.
"""

from __future__ import annotations

import json
import os

from cni import delegate, skel, types

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"
DEFAULT_DATA_DIR = "/var/lib/cni/flannel"
GC_KEYS = ("cni.dev/valid-attachments", "cni.dev/attachments")


# --------------------------------------------------------------------------- subnet.env
class SubnetEnv:
    """What flanneld told us about this host (parsed subnet.env)."""

    __slots__ = ("ip6_networks", "ip6_subnet", "ipmasq", "mtu", "networks", "subnet")

    def __init__(self, *, mtu: int, ipmasq: bool, networks: list[str] | None = None,
                 subnet: str | None = None, ip6_networks: list[str] | None = None,
                 ip6_subnet: str | None = None) -> None:
        self.networks = networks or []
        self.subnet = subnet
        self.ip6_networks = ip6_networks or []
        self.ip6_subnet = ip6_subnet
        self.mtu = mtu
        self.ipmasq = ipmasq

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SubnetEnv) and all(
            getattr(self, k) == getattr(other, k) for k in self.__slots__)

    def __repr__(self) -> str:
        return "SubnetEnv(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__) + ")"


def _malformed(path: str, msg: str) -> skel.CniError:
    return skel.CniError(skel.INVALID_CONFIG, f"flannel: {path}: {msg}")


def _cidr(path: str, key: str, text: str) -> str:
    """Go's net.ParseCIDR as the reference uses it: the network of `addr/len`."""
    import ipaddress  # ~4 ms (enum, functools): only the verbs that read subnet.env pay it

    try:
        return str(ipaddress.ip_network(text.strip(), strict=False))
    except ValueError:
        raise _malformed(path, f"{key}: invalid CIDR {text.strip()!r}") from None


def _cidr_list(path: str, key: str, text: str) -> list[str]:
    out: list[str] = []
    for item in text.split(","):
        net = _cidr(path, key, item)
        if net not in out:  # the reference drops repeated networks
            out.append(net)
    return out


def _mtu(path: str, text: str) -> int:
    value = text.strip()
    if not value.isdigit() or int(value) >= 1 << 32:  # ParseUint(s, 10, 32)
        raise _malformed(path, f"FLANNEL_MTU: invalid number {value!r}")
    return int(value)


def parse_subnet_env(text: str, path: str = DEFAULT_SUBNET_FILE) -> SubnetEnv:
    """subnet.env contents -> SubnetEnv; code 7 naming the key for anything malformed or missing."""
    values: dict[str, Any] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if not sep:
            continue
        if key == "FLANNEL_NETWORK":
            values["networks"] = _cidr_list(path, key, value)
        elif key == "FLANNEL_IPV6_NETWORK":
            values["ip6_networks"] = _cidr_list(path, key, value)
        elif key == "FLANNEL_SUBNET":
            values["subnet"] = _cidr(path, key, value)
        elif key == "FLANNEL_IPV6_SUBNET":
            values["ip6_subnet"] = _cidr(path, key, value)
        elif key == "FLANNEL_MTU":
            values["mtu"] = _mtu(path, value)
        elif key == "FLANNEL_IPMASQ":
            values["ipmasq"] = value.strip() == "true"
    missing = _missing(values)
    if missing:
        raise _malformed(path, f"is missing {', '.join(missing)}")
    return SubnetEnv(**values)


def _missing(values: dict[str, Any]) -> list[str]:
    """The reference's list: either family satisfies the network and subnet requirements."""
    out: list[str] = []
    if not values.get("networks") and not values.get("ip6_networks"):
        out += ["FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK"]
    if not values.get("subnet") and not values.get("ip6_subnet"):
        out += ["FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET"]
    out += [key for key, field in (("FLANNEL_MTU", "mtu"), ("FLANNEL_IPMASQ", "ipmasq"))
            if field not in values]
    return out


def load_subnet_env(path: str) -> SubnetEnv:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        raise skel.CniError(skel.TRY_AGAIN, f"flannel: {path} does not exist (is flanneld "
                            "running and has it acquired a subnet?)") from None
    except OSError as exc:
        raise skel.CniError(skel.IO_FAILURE, f"flannel: cannot read {path}: {exc}") from None
    return parse_subnet_env(text, path)


# --------------------------------------------------------------------------- netconf
def _invalid(msg: str) -> skel.CniError:
    return skel.CniError(skel.INVALID_CONFIG, f"flannel: {msg}")


def _path_key(config: dict[str, Any], key: str, default: str) -> str:
    value = config.get(key) or default
    if not isinstance(value, str):
        raise _invalid(f"{key} must be a string, not {value!r}")
    return value


def subnet_file(config: dict[str, Any]) -> str:
    return _path_key(config, "subnetFile", DEFAULT_SUBNET_FILE)


def data_dir(config: dict[str, Any]) -> str:
    return _path_key(config, "dataDir", DEFAULT_DATA_DIR)


def _user_delegate(config: dict[str, Any]) -> dict[str, Any]:
    raw = config.get("delegate")
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _invalid("'delegate' must be an object")
    if "type" in raw and not isinstance(raw["type"], str):
        raise _invalid("'delegate' dictionary, if present, must have (string) 'type' field")
    for key in ("name", "ipam"):
        if key in raw:
            raise _invalid(f"'delegate' dictionary must not have '{key}' field, it'll be set by flannel")
    copied: dict[str, Any] = json.loads(json.dumps(raw))  # deep copy: never alter the request
    return copied


def _ipam_routes(ipam: dict[str, Any]) -> list[dict[str, Any]]:
    routes = ipam.get("routes")
    if routes is None:
        return []
    if not isinstance(routes, list) or not all(
            isinstance(r, dict) and isinstance(r.get("dst"), str) for r in routes):
        raise _invalid("failed to parse ipam.routes: want a list of {\"dst\": CIDR, \"gw\": IP}")
    return [dict(r) for r in routes]


def delegate_ipam(config: dict[str, Any], env: SubnetEnv) -> dict[str, Any]:
    """The netconf's `ipam` (or {}) with host-local, flannel's ranges and network routes added."""
    raw = config.get("ipam")
    if raw is not None and not isinstance(raw, dict):
        raise _invalid("ipam must be an object")
    ipam: dict[str, Any] = json.loads(json.dumps(raw or {}))
    ipam.setdefault("type", "host-local")
    ipam["ranges"] = [[{"subnet": sn}] for sn in (env.subnet, env.ip6_subnet) if sn]
    ipam["routes"] = _ipam_routes(ipam) + [{"dst": nw} for nw in env.networks + env.ip6_networks]
    return ipam


def build_delegate(config: dict[str, Any], env: SubnetEnv) -> dict[str, Any]:
    """The delegate's network config for this netconf and subnet.env (pure)."""
    conf = _user_delegate(config)
    runtime = config.get("runtimeConfig")
    if isinstance(runtime, dict):
        conf["runtimeConfig"] = runtime
    conf["name"] = config.get("name", "")
    conf.setdefault("type", "bridge")
    conf.setdefault("ipMasq", not env.ipmasq)  # flanneld masquerades itself when IPMASQ is true
    conf.setdefault("mtu", env.mtu)
    if conf["type"] == "bridge":
        conf.setdefault("isGateway", True)
        if not conf.get("promiscMode"):  # bridge refuses hairpin together with promisc
            conf.setdefault("hairpinMode", True)
    if config.get("cniVersion"):
        conf["cniVersion"] = config["cniVersion"]
    conf["ipam"] = delegate_ipam(config, env)
    return conf


# --------------------------------------------------------------------------- cache
def cache_path(directory: str, container_id: str) -> str:
    """Keyed by container ID alone, as the reference does, so both share a dataDir."""
    return os.path.join(directory, container_id)


def save_cache(directory: str, container_id: str, conf: dict[str, Any]) -> None:
    """Atomic and durable: the DEL that follows an ADD (even after a crash) must find it."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    target = cache_path(directory, container_id)
    tmp = os.path.join(directory, f".{container_id}.tmp.{os.getpid()}")
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            f.write(json.dumps(conf, separators=(",", ":")).encode())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError:
        _unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def load_cache(directory: str, container_id: str) -> dict[str, Any] | None:
    """The cached delegate config; None when absent or not a JSON object (both: nothing to undo)."""
    try:
        with open(cache_path(directory, container_id), "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise skel.CniError(skel.IO_FAILURE, f"flannel: cannot read cached config: {exc}") from None
    try:
        conf = json.loads(raw)
    except ValueError as exc:
        skel.debug(f"flannel: cached config of {container_id} is not JSON: {exc}")
        return None
    return conf if isinstance(conf, dict) and isinstance(conf.get("type"), str) else None


def remove_cache(directory: str, container_id: str) -> None:
    _unlink(cache_path(directory, container_id))


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return  # already gone: every removal here is idempotent


def cached_ids(directory: str) -> list[str]:
    """Container IDs with a cache file (temporary files start with '.', never an ID)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(n for n in names if skel.valid_id(n))


# --------------------------------------------------------------------------- verbs
def cmd_add(req: skel.Request) -> types.Result:
    env = load_subnet_env(subnet_file(req.config))
    conf = build_delegate(req.config, env)
    skel.debug(f"flannel: delegate config {json.dumps(conf)}")
    try:
        save_cache(data_dir(req.config), req.container_id, conf)
    except OSError as exc:
        raise skel.CniError(skel.IO_FAILURE, f"flannel: cannot save the delegate config: {exc}") from None
    # A failed delegate ADD keeps the file: the runtime's DEL (spec section 3) releases with it.
    result = delegate.delegate(conf["type"], "ADD", req, conf)
    assert result is not None
    return result


def cmd_del(req: skel.Request) -> None:
    directory = data_dir(req.config)
    conf = load_cache(directory, req.container_id)
    if conf is not None:
        delegate.delegate(conf["type"], "DEL", req, conf)  # raises: the file stays for a retry
    remove_cache(directory, req.container_id)


def cmd_check(req: skel.Request) -> None:
    conf = load_cache(data_dir(req.config), req.container_id)
    if conf is None:
        raise skel.CniError(skel.UNKNOWN_CONTAINER, f"flannel: no cached delegate config for "
                            f"container {req.container_id}")
    conf["cniVersion"] = req.version  # prevResult is in the runtime's version
    if "prevResult" in req.config:
        conf["prevResult"] = req.config["prevResult"]
    delegate.delegate(conf["type"], "CHECK", req, conf)


def _gc_delegate(req: skel.Request, directory: str) -> dict[str, Any] | None:
    """Current subnet.env's delegate config, else the newest cached one, else None."""
    try:
        return build_delegate(req.config, load_subnet_env(subnet_file(req.config)))
    except skel.CniError as exc:
        skel.debug(f"flannel: GC without subnet.env ({exc.msg}); using a cached config")
    paths = [cache_path(directory, cid) for cid in cached_ids(directory)]
    for path in sorted(paths, key=_mtime, reverse=True):
        conf = load_cache(directory, os.path.basename(path))
        if conf is not None:
            conf.pop("runtimeConfig", None)  # per-attachment data, meaningless for GC
            conf["cniVersion"] = req.version
            return conf
    return None


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def cmd_gc(req: skel.Request) -> None:
    directory = data_dir(req.config)
    conf = _gc_delegate(req, directory)
    if conf is not None:
        for key in GC_KEYS:
            if key in req.config:
                conf[key] = req.config[key]
        delegate.delegate(conf["type"], "GC", req, conf)
    keep = {cid for cid, _ifname in req.valid_attachments}
    for cid in cached_ids(directory):
        if cid not in keep:
            remove_cache(directory, cid)
    _remove_temp_files(directory)


def _remove_temp_files(directory: str) -> None:
    """Left by an ADD killed between write and rename (GC runs with no ADD in flight, spec)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    for name in names:
        if name.startswith(".") and ".tmp." in name:
            _unlink(os.path.join(directory, name))


def cmd_status(req: skel.Request) -> None:
    try:
        env = load_subnet_env(subnet_file(req.config))
    except skel.CniError as exc:
        raise skel.CniError(skel.NOT_AVAILABLE, exc.msg) from None
    conf = build_delegate(req.config, env)
    delegate.delegate(conf["type"], "STATUS", req, conf)


PLUGIN = skel.Plugin(name="flannel", add=cmd_add, delete=cmd_del, check=cmd_check, gc=cmd_gc,
                     status=cmd_status)
