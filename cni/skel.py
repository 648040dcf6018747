"""The CNI protocol layer shared by every plugin: env and stdin in, result or error JSON out.

Stdlib only (it runs on every exec).  `dispatch` takes the environment and stdin as values and
returns the exit code and stdout bytes, so the same code serves a plugin exec'd by a runtime, the
per-node daemon answering a forwarded request, and unit tests.  Errors are printed on stdout as
`{"cniVersion", "code", "msg", "details"}`: libcni reads stdout first (cni.md 1.7).
"""

from __future__ import annotations

import json
import os
import sys

from cni import types

# typing, dataclasses (which pulls in inspect) and re cost ~25 ms of start-up under `python -IS`;
# this module runs on every plugin exec, so it uses none of them at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

# Spec error codes (SPEC section 5).
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
INVALID_NETNS = 8
TRY_AGAIN = 11
NOT_AVAILABLE = 50
NOT_AVAILABLE_DEGRADED = 51
INTERNAL = 999  # what libcni reports for a plain error
# Plugin-specific codes (the spec reserves 0-99 for itself).
ALREADY_ATTACHED = 100  # duplicate ADD: (container, ifname) already has an attachment
POOL_EXHAUSTED = 101  # IPAM has no free address in a range set

COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")
_REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),  # CNI_NETNS may be empty on DEL
    "GC": ("CNI_PATH",),
    "STATUS": (),
    "VERSION": (),
}
_ID_FIRST = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_ID_REST = _ID_FIRST | frozenset("_.-")
# CNI_ARGS keys the runtimes we serve send; others need IgnoreUnknown=1 (libcni LoadArgs rule).
KNOWN_ARGS = frozenset({"IgnoreUnknown", "K8S_POD_NAMESPACE", "K8S_POD_NAME",
                        "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID", "IP", "MAC"})


class CniError(Exception):
    """A failure reported to the runtime as spec error JSON."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


def valid_id(value: object) -> bool:
    """Container IDs and network names: `^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$` (libcni utils)."""
    return (isinstance(value, str) and value != "" and value[0] in _ID_FIRST
            and all(c in _ID_REST for c in value))


class Request:
    """One parsed plugin invocation."""

    __slots__ = ("args", "command", "config", "container_id", "env", "ifname", "netns", "path", "stdin")

    def __init__(self, *, command: str, container_id: str, netns: str, ifname: str,
                 args: dict[str, str], path: list[str], config: dict[str, Any], stdin: bytes,
                 env: dict[str, str] | None = None) -> None:
        self.command = command
        self.container_id = container_id
        self.netns = netns
        self.ifname = ifname
        self.args = args
        self.path = path
        self.config = config
        self.stdin = stdin
        self.env = env if env is not None else {}

    def replace(self, **changes: Any) -> Request:
        """A copy with some fields changed (like dataclasses.replace)."""
        fields = {name: getattr(self, name) for name in self.__slots__}
        fields.update(changes)
        return Request(**fields)

    def __repr__(self) -> str:
        return f"Request({self.command} {self.container_id}/{self.ifname} netns={self.netns!r})"

    @property
    def version(self) -> str:
        return str(self.config.get("cniVersion") or types.DEFAULT_WHEN_MISSING)

    @property
    def name(self) -> str:
        return str(self.config.get("name", ""))

    @property
    def runtime_config(self) -> dict[str, Any]:
        rc = self.config.get("runtimeConfig")
        return rc if isinstance(rc, dict) else {}

    @property
    def prev_result(self) -> types.Result | None:
        """prevResult lifted to the 1.1.0 shape, or None when absent or empty."""
        prev = self.config.get("prevResult")
        if not isinstance(prev, dict) or not prev:
            return None
        prev = dict(prev)
        prev.setdefault("cniVersion", self.version)
        return types.normalize(prev)

    @property
    def valid_attachments(self) -> list[tuple[str, str]]:
        """GC's keep-list; libcni sends both key spellings (cni PR #1103)."""
        raw = self.config.get("cni.dev/valid-attachments")
        if raw is None:
            raw = self.config.get("cni.dev/attachments") or []
        out = []
        for item in raw:
            if isinstance(item, dict) and "containerID" in item:
                out.append((str(item["containerID"]), str(item.get("ifname", ""))))
        return out


if TYPE_CHECKING:
    Handler = Callable[[Request], Any]


class Plugin:
    """A plugin's verbs.  `add` returns a 1.1.0-shaped result; the others return nothing."""

    __slots__ = ("add", "check", "delete", "gc", "name", "status", "versions")

    def __init__(self, name: str, add: Handler, delete: Handler, check: Handler,
                 gc: Handler | None = None, status: Handler | None = None,
                 versions: tuple[str, ...] = types.SUPPORTED) -> None:
        self.name = name
        self.add = add
        self.delete = delete
        self.check = check
        self.gc = gc
        self.status = status
        self.versions = versions


def parse_cni_args(raw: str) -> dict[str, str]:
    """CNI_ARGS 'K=V;K2=V2' -> dict; code 4 for a malformed pair or an unknown key."""
    args: dict[str, str] = {}
    for pair in filter(None, raw.split(";")):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CniError(INVALID_ENV, f"CNI_ARGS: invalid pair {pair!r} (want KEY=VALUE)")
        args[key] = value
    ignore = args.get("IgnoreUnknown", "").lower() in ("1", "true")
    unknown = sorted(set(args) - KNOWN_ARGS)
    if unknown and not ignore:
        raise CniError(INVALID_ENV, f"CNI_ARGS: unknown keys {', '.join(unknown)} (set IgnoreUnknown=1)")
    return args


def _validate_env(command: str, env: Mapping[str, str]) -> None:
    missing = [k for k in _REQUIRED_ENV[command] if not env.get(k)]
    if missing:
        raise CniError(INVALID_ENV, f"required env variables missing: {', '.join(missing)}")
    cid = env.get("CNI_CONTAINERID", "")
    if cid and not valid_id(cid):
        raise CniError(INVALID_ENV, f"invalid CNI_CONTAINERID {cid!r}")
    ifname = env.get("CNI_IFNAME", "")
    if ifname and not _valid_ifname(ifname):
        raise CniError(INVALID_ENV, f"invalid CNI_IFNAME {ifname!r}")


def _valid_ifname(name: str) -> bool:
    if len(name.encode()) > 15 or name in (".", ".."):
        return False
    return not any(c in name for c in "/: \t\n\r\v\f")


def _is_own_netns(path: str) -> bool:
    """skel's rule: ADD/CHECK into the plugin's own netns is refused (code 8) unless overridden,
    since configuring the host namespace as if it were a pod's would break the host."""
    try:
        there, here = os.stat(path), os.stat("/proc/thread-self/ns/net")
    except OSError:
        return False
    return (there.st_dev, there.st_ino) == (here.st_dev, here.st_ino)


def _decode_config(stdin: bytes) -> dict[str, Any]:
    try:
        config = json.loads(stdin)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CniError(DECODE_FAILURE, f"failed to decode network config: {exc}") from exc
    if not isinstance(config, dict):
        raise CniError(DECODE_FAILURE, "network config must be a JSON object")
    return config


def _validate_config(command: str, config: dict[str, Any], plugin: Plugin) -> None:
    version = config.get("cniVersion") or types.DEFAULT_WHEN_MISSING
    try:
        types.vtuple(str(version))
    except ValueError as exc:
        raise CniError(INCOMPATIBLE_VERSION, f"invalid cniVersion {version!r}") from exc
    if version not in plugin.versions:
        raise CniError(INCOMPATIBLE_VERSION, f"incompatible CNI versions: config is {version!r}, "
                       f"plugin supports {list(plugin.versions)}")
    if command == "CHECK" and not types.at_least(version, "0.4.0"):
        raise CniError(INCOMPATIBLE_VERSION, f"config version {version} does not allow CHECK")
    if command in ("GC", "STATUS") and not types.at_least(version, "1.1.0"):
        raise CniError(INCOMPATIBLE_VERSION, f"config version {version} does not allow {command}")
    name = config.get("name")
    if not valid_id(name):
        raise CniError(INVALID_CONFIG, f"invalid or missing network name {name!r}")


def parse_request(plugin: Plugin, env: Mapping[str, str], stdin: bytes) -> Request:
    """Validate env and stdin into a Request (raises CniError with the spec code)."""
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(INVALID_ENV, f"CNI_COMMAND {command!r} is not one of {', '.join(COMMANDS)}")
    _validate_env(command, env)
    if command in ("ADD", "CHECK") and not env.get("CNI_NETNS_OVERRIDE") and _is_own_netns(
            env["CNI_NETNS"]):
        raise CniError(INVALID_NETNS, f"CNI_NETNS {env['CNI_NETNS']} is the plugin's own namespace")
    config = _decode_config(stdin)
    _validate_config(command, config, plugin)
    return Request(
        command=command,
        container_id=env.get("CNI_CONTAINERID", ""),
        netns=env.get("CNI_NETNS", ""),
        ifname=env.get("CNI_IFNAME", ""),
        args=parse_cni_args(env.get("CNI_ARGS", "")),
        path=[p for p in env.get("CNI_PATH", "").split(":") if p],
        config=config,
        stdin=stdin,
        env=dict(env),
    )


def version_reply(plugin: Plugin, stdin: bytes) -> bytes:
    requested = None
    try:
        data = json.loads(stdin) if stdin.strip() else {}
        requested = data.get("cniVersion") if isinstance(data, dict) else None
    except ValueError:
        pass  # VERSION must answer even with junk on stdin
    return _dump(types.version_answer(requested, plugin.versions))


def _dump(obj: Any) -> bytes:
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode()


def _error_version(stdin: bytes) -> str:
    try:
        data = json.loads(stdin)
        return str(data.get("cniVersion") or types.CURRENT)
    except (ValueError, AttributeError, TypeError):
        return types.CURRENT


def run_verb(plugin: Plugin, req: Request) -> bytes:
    """Run the verb of a parsed request; returns stdout bytes (a result only for ADD)."""
    if req.command == "ADD":
        result = plugin.add(req)
        return _dump(types.to_version(result, req.version))
    handler = {"DEL": plugin.delete, "CHECK": plugin.check, "GC": plugin.gc, "STATUS": plugin.status}
    fn = handler[req.command]
    if fn is not None:
        fn(req)
    return b""


def dispatch(plugin: Plugin, env: Mapping[str, str], stdin: bytes) -> tuple[int, bytes]:
    """The whole protocol: returns (exit code, stdout)."""
    if env.get("CNI_COMMAND") == "VERSION":
        return 0, version_reply(plugin, stdin)
    try:
        req = parse_request(plugin, env, stdin)
        return 0, run_verb(plugin, req)
    except CniError as exc:
        return 1, _dump(exc.to_json(_error_version(stdin)))
    except Exception as exc:
        debug(f"{plugin.name}: unexpected {type(exc).__name__}: {exc}")
        err = CniError(INTERNAL, f"{plugin.name}: {exc}", type(exc).__name__)
        return 1, _dump(err.to_json(_error_version(stdin)))


def read_stdin() -> bytes:
    try:
        return sys.stdin.buffer.read()
    except OSError as exc:
        sys.stdout.write(json.dumps(CniError(IO_FAILURE, f"reading stdin: {exc}").to_json(types.CURRENT)))
        sys.exit(1)


def debug(message: str) -> None:
    """Free-form log line on stderr (stdout is reserved for the result), when PODNET_CNI_DEBUG is set."""
    if os.environ.get("PODNET_CNI_DEBUG"):
        sys.stderr.write(message + "\n")
