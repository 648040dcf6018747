"""The nft seam: one `nft -f` transaction per call.

nft applies a whole script atomically (one netlink batch), which is what makes a CNI ADD or DEL
one atomic firewall change instead of one exec per rule (the reference portmap runs iptables
25 times per ADD, cni.md section 2.1).

Besides the raw runners this module holds the pattern the CNI plugins share (`OwnedTable`): one
table per feature whose static chains and rules are rewritten idempotently on every ADD, and whose
per-attachment state is set/map *elements* tagged with an owner comment.  Per-pod work is then
O(1) element adds/deletes inside one transaction, and DEL/GC find what to remove from the nft state
itself (the comment), never from the pod's netns, which may be gone (the reference bridge ipMasq
leak, plugins#810).

Every call runs nft in the calling thread's network namespace: `podnet.netns.enter()` setns()s the
thread, and a child forked from that thread inherits it (verified by the netns tests).

Idempotence with nft 1.0.6, which has no `destroy` command:
* `add table|chain|set|map` succeed when the object exists with the same spec;
* `add element` succeeds when the element exists with the same map data (the comment is NOT
  updated, and different data fails with EEXIST);
* a delete that must not fail when the object is absent is written "add X; delete X" in the same
  transaction (`forget_lines`); element deletes are planned from a listing instead.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from podnet import execs
from podnet.errors import ExecError

COMMENT_MAX = 128  # nft refuses longer comments ("comment too long, 128 characters maximum")
LOCK_DIR = "/run/podnet/locks"  # shared with the bridge plugin's per-bridge locks
# nft's message for a missing table/chain/set/element, and for an element clash.
ENOENT_TEXT = "No such file or directory"
EEXIST_TEXT = "File exists"


def run_script(script: str, netns: str | None = None) -> None:
    """Apply `script` as one transaction (all or nothing); raises ExecError with nft's stderr."""
    execs.run(["nft", "-f", "-"], input=script, netns=netns)


def list_json(*what: str, netns: str | None = None) -> dict[str, Any]:
    """`nft -j list <what>` parsed, e.g. list_json("table", "inet", "podnet_cni")."""
    out = execs.run(["nft", "-j", "list", *what], netns=netns).stdout
    data: dict[str, Any] = json.loads(out) if out.strip() else {"nftables": []}
    return data


def list_table(family: str, name: str, netns: str | None = None) -> dict[str, Any] | None:
    """The table as `nft -j list table` prints it, or None when it does not exist."""
    try:
        return list_json("table", family, name, netns=netns)
    except ExecError as exc:
        if ENOENT_TEXT in exc.stderr:
            return None
        raise


# ----------------------------------------------------------------------------- backends
class Backend(Protocol):
    """What the plugins need from nft; `System` is the kernel, `nft_fake.FakeNft` the test double."""

    def apply(self, script: str) -> None: ...

    def list_table(self, family: str, name: str) -> dict[str, Any] | None: ...

    def lock(self, family: str, name: str) -> AbstractContextManager[None]: ...


class System:
    """nft on this machine, in the calling thread's netns (or in `netns` if given)."""

    def __init__(self, netns: str | None = None, lock_dir: str = LOCK_DIR) -> None:
        self.netns = netns
        self.lock_dir = lock_dir

    def apply(self, script: str) -> None:
        run_script(script, netns=self.netns)

    def list_table(self, family: str, name: str) -> dict[str, Any] | None:
        return list_table(family, name, netns=self.netns)

    @contextmanager
    def lock(self, family: str, name: str) -> Iterator[None]:
        """Serialise read-modify-write of one table across processes and threads (flock is per
        open file description, so two threads of a daemon exclude each other too).

        Needed because DEL deletes the table once it holds no element: without the lock a
        concurrent ADD could add its element between DEL's listing and its `delete table`.
        The lock is global, not per netns: coarser than necessary, never wrong.
        """
        os.makedirs(self.lock_dir, exist_ok=True)
        fd = os.open(os.path.join(self.lock_dir, f"nft-{family}-{name}.lock"),
                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the flock


SYSTEM = System()


# ----------------------------------------------------------------------------- elements
@dataclass(frozen=True)
class Element:
    """One set or map element in nft syntax: key "10.1.0.5 . 10.1.0.0/24", value for maps."""

    set: str
    key: str
    value: str | None = None
    comment: str = ""

    def add_line(self, family: str, table: str, *, with_comment: bool = True) -> str:
        comment = f' comment "{self.comment}"' if with_comment and self.comment else ""
        data = f" : {self.value}" if self.value is not None else ""
        return f"add element {family} {table} {self.set} {{ {self.key}{comment}{data} }}"

    def delete_line(self, family: str, table: str) -> str:
        return f"delete element {family} {table} {self.set} {{ {self.key} }}"


def value_text(value: Any) -> str:
    """An element key or value from nft's JSON back into nft syntax."""
    if isinstance(value, bool):
        raise ValueError(f"unexpected nft JSON value {value!r}")
    if isinstance(value, (str, int)):
        return str(value)
    if isinstance(value, dict):
        if "concat" in value:
            return " . ".join(value_text(v) for v in value["concat"])
        if "prefix" in value:
            return f"{value['prefix']['addr']}/{value['prefix']['len']}"
        if "range" in value:
            low, high = value["range"]
            return f"{value_text(low)}-{value_text(high)}"
        if "elem" in value:
            return value_text(value["elem"]["val"])
    raise ValueError(f"unexpected nft JSON value {value!r}")


def _element(set_name: str, raw: Any, is_map: bool) -> Element:
    key_raw, data = (raw[0], raw[1]) if is_map else (raw, None)
    comment = ""
    if isinstance(key_raw, dict) and "elem" in key_raw:
        comment = str(key_raw["elem"].get("comment", ""))
    return Element(set_name, value_text(key_raw), value_text(data) if is_map else None, comment)


def elements_of(listing: dict[str, Any] | None) -> list[Element]:
    """Every set and map element of an `nft -j list` answer."""
    out: list[Element] = []
    for obj in (listing or {}).get("nftables", []):
        for kind in ("set", "map"):
            spec = obj.get(kind)
            if spec:
                out.extend(_element(spec["name"], raw, kind == "map") for raw in spec.get("elem", []))
    return out


def rule_counts(listing: dict[str, Any] | None) -> dict[str, int]:
    """chain name -> number of rules, for every chain of the listing (0 for empty chains)."""
    counts: dict[str, int] = {}
    for obj in (listing or {}).get("nftables", []):
        if "chain" in obj:
            counts.setdefault(obj["chain"]["name"], 0)
        elif "rule" in obj:
            chain = obj["rule"]["chain"]
            counts[chain] = counts.get(chain, 0) + 1
    return counts


# ----------------------------------------------------------------------------- owner tags
# Per-field budgets of an owner tag (network name, container id, ifname): 40+64+20 plus two
# separators stays under COMMENT_MAX; a Kubernetes container id (64 hex) always fits verbatim.
TAG_BUDGETS = (40, 64, 20)
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-+=@")


def tag_field(value: str, budget: int) -> str:
    """One field of an owner tag: percent-encoded (no quote, colon, comma or space can reach the
    nft script), or "%h<sha256 prefix>" when too long.  Deterministic per field, so GC can match
    the network field alone.  Percent-encoding only writes "%" before two hex digits, never "%h",
    so the two forms cannot collide."""
    enc = "".join(c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode()) for c in value)
    if len(enc) <= budget:
        return enc
    import hashlib  # rare path; saves ~2.5 ms of import on every plugin exec

    return "%h" + hashlib.sha256(value.encode()).hexdigest()[: budget - 2]


def owner_tag(network: str, container_id: str, ifname: str) -> str:
    """The comment every element of one attachment carries: "<network>:<container id>:<ifname>"."""
    fields = (network, container_id, ifname)
    return ":".join(tag_field(v, b) for v, b in zip(fields, TAG_BUDGETS, strict=True))


def owned_by(network: str, container_id: str, ifname: str) -> Callable[[Element], bool]:
    tag = owner_tag(network, container_id, ifname)
    return lambda el: el.comment == tag


def stale_in(network: str, keep: Iterable[tuple[str, str]]) -> Callable[[Element], bool]:
    """GC predicate: elements of `network` whose (container id, ifname) is not in `keep`."""
    net = tag_field(network, TAG_BUDGETS[0])
    kept = {owner_tag(network, cid, ifname) for cid, ifname in keep}

    def stale(el: Element) -> bool:
        parts = el.comment.split(":")
        return len(parts) == 3 and parts[0] == net and el.comment not in kept

    return stale


# ----------------------------------------------------------------------------- owned table
@dataclass
class OwnedTable:
    """A table of ours: static skeleton (sets, maps, chains, rules) plus owner-tagged elements.

    `skeleton` lines must be idempotent ("add set ...", "flush chain X" then "add rule X ...");
    `rules` is how many rules each chain of the skeleton has, which is how a listing tells that
    the skeleton is intact.  The table is deleted when its last element goes, under
    `Backend.lock`, so a host without pods carries no rules of ours.

    Cost model (kernel 6.x, measured): a transaction that deletes anything (element, rule, table)
    waits for an RCU grace period, ~16 ms; one that only adds takes ~2-3 ms, and so does a
    listing.  So `ensure` lists first and then only adds, unless something must really go.
    """

    family: str
    name: str
    skeleton: Sequence[str]
    rules: Mapping[str, int]
    backend: Backend  # no default: a test that forgets its fake must fail, not touch the host

    def listing(self) -> dict[str, Any] | None:
        return self.backend.list_table(self.family, self.name)

    def intact(self, listing: dict[str, Any] | None) -> bool:
        counts = rule_counts(listing)
        return listing is not None and all(counts.get(c) == n for c, n in self.rules.items())

    def plan(self, listing: dict[str, Any] | None, desired: Sequence[Element],
             owned: Callable[[Element], bool]) -> list[str]:
        """Script lines turning `listing` into one where `desired` exist with their comments and no
        other element `owned` selects does; the skeleton is (re)written only when not intact."""
        lines = [] if self.intact(listing) else [f"add table {self.family} {self.name}", *self.skeleton]
        current = {(el.set, el.key): el for el in elements_of(listing)}
        wanted = {(el.set, el.key): el for el in desired}
        lines += [el.delete_line(self.family, self.name) for key, el in current.items()
                  if owned(el) and key not in wanted]
        for key, el in wanted.items():
            have = current.get(key)
            if have == el:
                continue
            if have is not None:
                # Held by another owner (an address or host port of a pod whose DEL never came:
                # plugins#683 sends traffic to the dead pod) or with other data: take it over, so
                # the old owner's DEL cannot remove it.
                lines.append(el.delete_line(self.family, self.name))
            lines.append(el.add_line(self.family, self.name))
        return lines

    def ensure(self, desired: Sequence[Element], owned: Callable[[Element], bool]) -> None:
        """Level-triggered ADD: one listing, then at most one transaction."""
        with self.backend.lock(self.family, self.name):
            lines = self.plan(self.listing(), desired, owned)
            if lines:
                self.backend.apply("\n".join(lines) + "\n")

    def create_new(self, desired: Sequence[Element]) -> bool:
        """ADD's fast path: one blind transaction of `create element` lines (NLM_F_EXCL), no
        listing.  True when it applied; False when it failed atomically because the table or a
        set is missing or a key already exists, and the caller falls back to `ensure`.  It does
        not check the skeleton's rules (that needs the listing this skips)."""
        script = "".join("create" + el.add_line(self.family, self.name).removeprefix("add") + "\n"
                         for el in desired)
        # Locked: a DEL that saw an almost empty table must not delete it under our elements.
        with self.backend.lock(self.family, self.name):
            try:
                self.backend.apply(script)
            except ExecError as exc:
                if ENOENT_TEXT in exc.stderr or EEXIST_TEXT in exc.stderr:
                    return False
                raise
        return True

    def remove(self, doomed: Callable[[Element], bool]) -> list[Element]:
        """Delete the elements `doomed` selects (one transaction); drop the table when nothing
        else is left in it.  Succeeds when the table or the elements are already gone."""
        with self.backend.lock(self.family, self.name):
            listing = self.listing()
            if listing is None:
                return []
            current = elements_of(listing)
            gone = [el for el in current if doomed(el)]
            if len(gone) == len(current):
                self.backend.apply(f"delete table {self.family} {self.name}\n")
            elif gone:
                self.backend.apply("\n".join(el.delete_line(self.family, self.name) for el in gone) + "\n")
            return gone

    def missing(self, desired: Collection[Element]) -> list[str]:
        """What CHECK reports: absent (or differently owned/valued) elements, short chains."""
        listing = self.listing()
        if listing is None:
            return [f"table {self.family} {self.name} does not exist"]
        present = set(elements_of(listing))
        problems = [f"{el.set} element {el.key!r} (owner {el.comment})" for el in desired
                    if el not in present]
        counts = rule_counts(listing)
        problems += [f"chain {chain} has {counts.get(chain, 0)} rules, want {want}"
                     for chain, want in self.rules.items() if counts.get(chain, 0) != want]
        return problems


def forget_lines(kind: str, family: str, table: str, name: str = "") -> list[str]:
    """Idempotent delete of a table/chain/set (nft 1.0.6 has no `destroy`): add, then delete."""
    target = f"{family} {table} {name}".strip()
    if kind in ("set", "map"):
        raise ValueError("a set needs its type to be added; delete it with its table instead")
    return [f"add {kind} {target}", f"delete {kind} {target}"]
