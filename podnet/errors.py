"""Domain exceptions raised by the podnet seams.

The seams translate errno values and tool exit codes into these, so components never look at
pyroute2's NetlinkError or a CalledProcessError themselves.
"""

from __future__ import annotations


class PodnetError(Exception):
    """Base class of every error raised by podnet's seams."""


class NotFound(PodnetError):
    """The object (link, address, route, netns, chain, file) does not exist."""


class AlreadyExists(PodnetError):
    """The object exists with a spec that differs from the one asked for."""


class NetlinkFailure(PodnetError):
    """A netlink request failed with an errno we do not translate further."""

    def __init__(self, op: str, errno: int, message: str) -> None:
        super().__init__(f"{op}: errno {errno}: {message}")
        self.op = op
        self.errno = errno


class ExecError(PodnetError):
    """A helper program (nft, iptables-restore, ipset, ...) exited non-zero."""

    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        super().__init__(f"{' '.join(argv)} exited {returncode}: {stderr.strip()}")
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr
