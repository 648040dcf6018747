"""What every installed plugin executable runs: `main("<type>")` under `python -IS`.

Every exec pays the interpreter start (~8-10 ms) plus whatever it imports, so this module imports
nothing at module level beyond what `python -IS` has already loaded (posix, sys):

* VERSION is answered here from the plugin table, without importing the plugin.
* ADD/DEL/CHECK/GC/STATUS are forwarded to the per-node daemon (`cni.daemon`) when its socket
  exists.  The forward path uses only C modules (`_socket`, `_json`): the `socket` (enum) and
  `json` (re) wrappers would each add ~7 ms per exec (measured with `python -X importtime`).
* Without a daemon (socket missing, or stale: connect refused) the request runs in this process
  through `run_local`, the very function the daemon runs for every request, so both paths print
  byte-identical results and errors.

Wire protocol (one request per connection, both directions one ASCII JSON line):
request `{"plugin": <type>, "env": {...}, "stdin": <str>, "netns": "<dev>:<ino>"}` (or
`"stdin_b64"`); reply `{"code": <exit code>, "stdout": <str>}`.  Bytes travel as str decoded
with `surrogateescape` and JSON-escaped with \\u sequences, so any stdin/stdout bytes round-trip
exactly.  `netns` identifies the caller's network namespace: an exec'd plugin works in the
namespace it was started in, so a daemon living in another one refuses the request (code -1,
nothing run) and the executable runs it itself, rather than configuring the wrong host.
"""

# No `from __future__ import annotations` and no `os`: importing them costs ~0.2 ms and ~1.1 ms
# per exec (with -IS the interpreter has loaded neither); annotations here are valid at runtime.
import posix
import sys

DEFAULT_SOCKET = "/run/podnet/cni.sock"
SOCKET_ENV = "PODNET_CNI_SOCKET"  # empty: never forward
TIMEOUT_ENV = "PODNET_CNI_TIMEOUT"
DEFAULT_TIMEOUT = 120.0  # a runtime's own CNI timeout is longer than any sane op
CONNECT_TIMEOUT = 2.0  # a listening unix socket accepts at once; this only bounds a full backlog
MAX_REPLY = 64 << 20
_REPLY_HEAD = '{"code":'
_REPLY_STDOUT = ',"stdout":"'

REFUSED = -1  # reply code: "not my network namespace", nothing was run
# CNI error codes used on this path (cni.skel holds the full table; not imported here).
_TRY_AGAIN = 11
_INTERNAL = 999
_IO_FAILURE = 5


class DaemonUnavailable(Exception):
    """No daemon took the request (nothing was run): serving it locally is safe."""


class DaemonLost(Exception):
    """The request was sent but no complete reply came back (daemon died or timed out)."""


# ------------------------------------------------------------------ local path
def run_local(plugin_type: str, env: dict[str, str], stdin: bytes) -> tuple[int, bytes]:
    """Serve the request in this process (the daemon calls exactly this for every request)."""
    from cni import plugins, skel

    try:
        plugin = plugins.load(plugin_type)
    except Exception as exc:  # a broken or unknown plugin module must still answer in JSON
        return 1, error_output(_INTERNAL, f"{plugin_type}: cannot load plugin: {exc}", stdin,
                               type(exc).__name__)
    return skel.dispatch(plugin, env, stdin)


def version_output(plugin_type: str, stdin: bytes) -> bytes:
    from cni import plugins, skel

    return skel.version_reply(plugins.load_versions(plugin_type), stdin)


def error_output(code: int, msg: str, stdin: bytes = b"", details: str = "") -> bytes:
    """Spec error JSON, formatted like cni.skel's, in the request's cniVersion if readable."""
    import json

    from cni import skel, types

    version = types.CURRENT
    try:
        data = json.loads(stdin)
        if isinstance(data, dict) and data.get("cniVersion"):
            version = str(data["cniVersion"])
    except ValueError:
        pass
    body = skel.CniError(code, msg, details).to_json(version)
    return (json.dumps(body, separators=(",", ":")) + "\n").encode()


# --------------------------------------------------------------- wire format
def netns_id(path: str = "/proc/thread-self/ns/net") -> str | None:
    """A network namespace's identity, "<dev>:<inode>" of its nsfs file (posix.stat: no os)."""
    try:
        st = posix.stat(path)
    except OSError:
        return None
    return f"{st.st_dev}:{st.st_ino}"


def encode_request(plugin_type: str, env: dict[str, str], stdin: bytes,
                   netns: str | None = None) -> bytes:
    """The request line, built with the C string escaper (no `json` import on this path)."""
    from _json import encode_basestring_ascii as quote

    pairs = ",".join(f"{quote(k)}:{quote(v)}" for k, v in env.items())
    text = quote(stdin.decode("utf-8", "surrogateescape"))
    where = f',"netns":{quote(netns)}' if netns else ""
    return f'{{"plugin":{quote(plugin_type)},"env":{{{pairs}}},"stdin":{text}{where}}}\n'.encode("ascii")


def encode_reply(code: int, stdout: bytes) -> bytes:
    """The reply line, in the exact key order `decode_reply`'s fast path expects."""
    from _json import encode_basestring_ascii as quote

    text = quote(stdout.decode("utf-8", "surrogateescape"))
    return f'{_REPLY_HEAD}{int(code)},"stdout":{text}}}\n'.encode("ascii")


def decode_reply(line: bytes) -> tuple[int, bytes]:
    """(exit code, stdout bytes) from a reply line; ValueError if it is not a reply."""
    text = line.decode("utf-8", "surrogateescape").strip()
    fast = _decode_canonical_reply(text)
    if fast is not None:
        return fast
    import json  # another daemon version's layout: pay for the full parser

    obj = json.loads(text)
    if not isinstance(obj, dict) or not isinstance(obj.get("code"), int) or not isinstance(
            obj.get("stdout"), str):
        raise ValueError(f"not a daemon reply: {text[:200]!r}")
    return obj["code"], obj["stdout"].encode("utf-8", "surrogateescape")


def _decode_canonical_reply(text: str) -> tuple[int, bytes] | None:
    from _json import scanstring

    if not text.startswith(_REPLY_HEAD):
        return None
    sep = text.find(_REPLY_STDOUT, len(_REPLY_HEAD))
    if sep < 0:
        return None
    try:
        code = int(text[len(_REPLY_HEAD):sep])
        out, end = scanstring(text, sep + len(_REPLY_STDOUT), True)
    except ValueError:
        return None
    if text[end:] != "}":
        return None
    return code, out.encode("utf-8", "surrogateescape")


# ------------------------------------------------------------- forward path
class DaemonTimeout(DaemonLost):
    """The daemon took the request but did not answer in time (it may still be running it)."""


def forward(plugin_type: str, env: dict[str, str], stdin: bytes, socket_path: str,
            timeout: float = DEFAULT_TIMEOUT) -> tuple[int, bytes]:
    """Run the request in the daemon listening on `socket_path`."""
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(socket_path)
            sock.settimeout(timeout)
            # A send that fails means the daemon closed before reading the whole line, so it
            # cannot have run the request.
            sock.sendall(encode_request(plugin_type, env, stdin, netns_id()))
        except OSError as exc:
            raise DaemonUnavailable(f"{socket_path}: {exc}") from exc
        chunks: list[bytes] = []
        size = 0
        while not chunks or not chunks[-1].endswith(b"\n"):
            try:
                chunk = sock.recv(1 << 16)
            except TimeoutError as exc:
                raise DaemonTimeout(f"{socket_path}: no reply within {timeout:g} s") from exc
            except OSError as exc:
                raise DaemonLost(f"{socket_path}: {exc}") from exc
            size += len(chunk)
            if not chunk or size > MAX_REPLY:
                raise DaemonLost(f"{socket_path}: connection closed (or reply too large) before a reply")
            chunks.append(chunk)
        code, out = decode_reply(b"".join(chunks))
        if code == REFUSED:
            raise DaemonUnavailable(f"{socket_path}: the daemon serves another network namespace")
        return code, out
    finally:
        sock.close()


def _timeout(env: dict[str, str]) -> float:
    try:
        return float(env.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT)
    except ValueError:
        return DEFAULT_TIMEOUT


def serve(plugin_type: str, env: dict[str, str], stdin: bytes) -> tuple[int, bytes]:
    """Answer one invocation: VERSION here, the rest via the daemon or in this process."""
    code, out, _ = _serve(plugin_type, env, stdin)
    return code, out


def _serve(plugin_type: str, env: dict[str, str], stdin: bytes) -> tuple[int, bytes, bool]:
    """(exit code, stdout, whether plugin code ran in this process)."""
    command = env.get("CNI_COMMAND")
    if command == "VERSION":
        return 0, version_output(plugin_type, stdin), False
    socket_path = env.get(SOCKET_ENV, DEFAULT_SOCKET)
    if not socket_path:
        return (*run_local(plugin_type, env, stdin), True)
    try:
        return (*forward(plugin_type, env, stdin, socket_path, _timeout(env)), False)
    except DaemonUnavailable:
        return (*run_local(plugin_type, env, stdin), True)
    except (DaemonLost, ValueError) as exc:
        if command == "ADD" or isinstance(exc, DaemonTimeout):
            # The daemon may have done part of this ADD; re-running it here could collide with
            # that half state.  Code 11 makes the runtime DEL (which always follows a failed ADD,
            # SPEC section 3) and retry.  After a timeout the daemon may still be working on
            # this very container, so no verb is repeated here concurrently with it.
            msg = f"{plugin_type}: CNI daemon lost the request: {exc}"
            return 1, error_output(_TRY_AGAIN, msg, stdin), False
        # DEL/CHECK/GC/STATUS are idempotent and safe to repeat in this process.
        return (*run_local(plugin_type, env, stdin), True)


def read_stdin() -> bytes | None:
    try:
        return sys.stdin.buffer.read()
    except OSError:
        return None


def environ() -> dict[str, str]:
    """os.environ's exact contents (fs encoding, surrogateescape) without importing os."""
    enc = sys.getfilesystemencoding()
    return {k.decode(enc, "surrogateescape"): v.decode(enc, "surrogateescape")
            for k, v in posix.environ.items()}


def main(plugin_type: str) -> None:
    env = environ()
    stdin = read_stdin()
    local = True
    if stdin is None:
        code, out = 1, error_output(_IO_FAILURE, "failed to read the network config from stdin")
    else:
        code, out, local = _serve(plugin_type, env, stdin)
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    if not local:
        # Nothing of the plugin's ran here, so there is nothing to finalize: skipping the
        # interpreter's teardown saves ~1.4 ms per exec (measured, python -IS, N=150).
        sys.stderr.flush()
        posix._exit(code)
    sys.exit(code)
