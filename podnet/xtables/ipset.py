"""The ipset seam: `ipset save` -> diff -> one `ipset restore` per apply.

Owned sets are those whose name starts with the owner's prefix (calico's "cali40", kube-proxy's
"KUBE-").  Unlike iptables-restore, `ipset restore` is NOT a transaction: it applies line by
line and stops at the first error, so every line is written to be idempotent (`-exist`) and a
failed apply is simply re-run by the next (full) sync.

Ordering with iptables is the caller's job: a set must exist before a rule references it, and
the kernel refuses to destroy a set a rule still references ("in use by a kernel component").
So apply sets with `destroy_stale=False`, then iptables, then sets again with destroy_stale=True.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from podnet import execs
from podnet.errors import PodnetError
from podnet.xtables.ruleset import Owner

NAME_MAX = 31  # IPSET_MAXNAMELEN is 32 including the NUL
TMP_SUFFIX = "-tmp"


class IpsetError(PodnetError, ValueError):
    """A desired set that cannot be written (foreign name, name too long, bad member)."""


@dataclass
class IpSet:
    """One set.  `options` (e.g. ("maxelem", "131072")) are used only when creating it."""

    name: str
    type: str = "hash:ip"
    family: str = "inet"
    members: set[str] = field(default_factory=set)
    options: tuple[str, ...] = ()

    def kind(self) -> tuple[str, str]:
        """What cannot change in place: a different type or family needs a new set."""
        return (self.type, self.family if self.type.startswith("hash:") else "")


# ------------------------------------------------------------------------------ members
def normalize_member(set_type: str, member: str) -> str:
    """A member as `ipset save` prints it, e.g. hash:net "10.1.2.3/32" -> "10.1.2.3",
    hash:ip,port "1.2.3.4,80" -> "1.2.3.4,tcp:80"."""
    kinds = set_type.partition(":")[2].split(",")
    parts = member.split(",")
    if len(parts) != len(kinds):
        return member  # let ipset itself reject it
    return ",".join(_normalize_part(kind, part) for kind, part in zip(kinds, parts, strict=True))


def _normalize_part(kind: str, part: str) -> str:
    try:
        if kind == "ip":
            return str(ipaddress.ip_address(part))
        if kind == "net":
            net = ipaddress.ip_network(part, strict=False)
            return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)
    except ValueError:
        return part
    if kind == "port":
        return part if ":" in part else f"tcp:{part}"  # ipset's default protocol is tcp
    if kind == "mac":
        return part.upper()
    return part


def contains(ipset: IpSet, value: str) -> bool:
    """Whether `value` (same shape as a member; an address for the net parts) is in the set."""
    kinds = ipset.type.partition(":")[2].split(",")
    parts = normalize_member(ipset.type, value).split(",")
    if "net" not in kinds:
        return ",".join(parts) in ipset.members
    for member in ipset.members:
        if all(_part_matches(k, m, p) for k, m, p in zip(kinds, member.split(","), parts, strict=True)):
            return True
    return False


def _part_matches(kind: str, member: str, value: str) -> bool:
    if kind != "net":
        return member == value
    try:
        return ipaddress.ip_address(value) in ipaddress.ip_network(member, strict=False)
    except ValueError:
        return False


# ------------------------------------------------------------------------------ parsing
def parse_save(text: str) -> dict[str, IpSet]:
    """Parse `ipset save` output (create/add lines)."""
    sets: dict[str, IpSet] = {}
    for raw in text.splitlines():
        words = raw.split()
        if len(words) >= 3 and words[0] == "create":
            family = _option(words[3:], "family") or "inet"
            sets[words[1]] = IpSet(words[1], words[2], family)
        elif len(words) >= 3 and words[0] == "add" and words[1] in sets:
            found = sets[words[1]]
            found.members.add(normalize_member(found.type, words[2]))
    return sets


def _option(words: list[str], name: str) -> str | None:
    for i, word in enumerate(words[:-1]):
        if word == name:
            return words[i + 1]
    return None


# --------------------------------------------------------------------------------- diff
def diff(
    desired: Iterable[IpSet],
    actual: dict[str, IpSet],
    owner: Owner,
    *,
    destroy_stale: bool = True,
    swap_threshold: int | None = None,
) -> str:
    """The `ipset restore` payload turning the owned sets of `actual` into `desired`.

    A set whose type/family changed is destroyed and re-created.  With `swap_threshold`, a set
    needing more than that many adds+dels is rebuilt in a temporary set and swapped in, so
    the kernel switches from old to new content at once (calico's "cali4t" copies).
    """
    wanted = {s.name: s for s in _validated(desired, owner)}
    heads: list[str] = []
    body: list[str] = []
    for name, want in wanted.items():
        have = actual.get(name)
        members = {normalize_member(want.type, m) for m in want.members}
        if have is not None and have.kind() != want.kind():
            heads.append(f"destroy {name}")
            have = None
        if have is None:
            body += [_create_line(want, name)] + [f"add {name} {m} -exist" for m in sorted(members)]
            continue
        adds, dels = sorted(members - have.members), sorted(have.members - members)
        if swap_threshold is not None and len(adds) + len(dels) > swap_threshold:
            body += _swap_lines(want, members, wanted)
        else:
            body += [f"del {name} {m} -exist" for m in dels] + [f"add {name} {m} -exist" for m in adds]
    stale = sorted(n for n in actual if n.startswith(owner) and n not in wanted)
    tail = [f"destroy {n}" for n in stale] if destroy_stale else []
    lines = heads + body + tail
    return "\n".join(lines) + "\n" if lines else ""


def _validated(desired: Iterable[IpSet], owner: Owner) -> list[IpSet]:
    sets = list(desired)
    for s in sets:
        if not s.name.startswith(owner) or len(s.name) > NAME_MAX:
            raise IpsetError(f"set {s.name} is not owned by {owner!r} or is longer than {NAME_MAX}")
    return sets


def _create_line(want: IpSet, name: str) -> str:
    family = f" family {want.family}" if want.type.startswith("hash:") else ""
    options = "".join(f" {o}" for o in want.options)
    return f"create {name} {want.type}{family}{options} -exist"


def _swap_lines(want: IpSet, members: set[str], wanted: dict[str, IpSet]) -> list[str]:
    # The temporary name keeps the owner prefix so a crash between create and destroy leaves a
    # set the next sync recognises as stale and destroys.
    tmp = want.name[: NAME_MAX - len(TMP_SUFFIX)] + TMP_SUFFIX
    if tmp in wanted:
        raise IpsetError(f"temporary set name {tmp} collides with a desired set")
    lines = [_create_line(want, tmp), f"flush {tmp}"]
    lines += [f"add {tmp} {m} -exist" for m in sorted(members)]
    return [*lines, f"swap {tmp} {want.name}", f"destroy {tmp}"]


# ------------------------------------------------------------------------------ runners
class IpsetBase:
    """save/restore are the seam; the rest is shared by the real runner and FakeIpset."""

    def save(self) -> str:
        raise NotImplementedError

    def restore(self, payload: str) -> None:
        raise NotImplementedError

    def list_sets(self) -> dict[str, IpSet]:
        return parse_save(self.save())

    def plan(self, desired: Iterable[IpSet], owner: Owner, *, destroy_stale: bool = True,
             swap_threshold: int | None = None) -> str:
        return diff(desired, self.list_sets(), owner, destroy_stale=destroy_stale,
                    swap_threshold=swap_threshold)

    def apply(self, desired: Iterable[IpSet], owner: Owner, *, destroy_stale: bool = True,
              swap_threshold: int | None = None) -> str:
        """Make the owned sets match `desired`; returns the payload written ("" = no-op)."""
        payload = self.plan(desired, owner, destroy_stale=destroy_stale, swap_threshold=swap_threshold)
        if payload:
            self.restore(payload)
        return payload

    def converged(self, desired: Iterable[IpSet], owner: Owner) -> bool:
        return not self.plan(desired, owner)


class Ipset(IpsetBase):
    """The real `ipset` tool, optionally inside a network namespace."""

    def __init__(self, netns: str | None = None, *, timeout: float = 60.0) -> None:
        self.netns = netns
        self.timeout = timeout

    def save(self) -> str:
        return execs.run(["ipset", "save"], netns=self.netns, timeout=self.timeout).stdout

    def restore(self, payload: str) -> None:
        execs.run(["ipset", "restore"], input=payload, netns=self.netns, timeout=self.timeout)
