"""In-memory iptables and ipset for unit tests, plus a small packet tracer.

Like Felix's IptablesStub and kube-proxy's FakeIPTables, the fakes PARSE what they are given
and reject what the real tools reject (unknown chain, -D of a missing rule, jump to a missing
chain, -X of a chain still referenced, a set that does not exist), so a diff bug fails a unit
test instead of a node.  Semantics follow iptables-nft 1.8.9 / ipset 7.17 as measured:
an iptables-restore payload is all-or-nothing; an ipset restore stops at the first bad line
with the earlier lines applied.

The tracer follows kube-proxy's tracePacket idea: assert behaviour ("tcp to the VIP ends in
DNAT 10.1.2.3:8080 with the masquerade mark") rather than rule text.
"""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from podnet.errors import ExecError, PodnetError
from podnet.names import CHAIN_MAX
from podnet.xtables.ipset import IpSet, IpsetBase, contains, normalize_member
from podnet.xtables.iptables import IptablesBase
from podnet.xtables.ruleset import (
    BUILTIN_CHAINS,
    Chain,
    Ruleset,
    Table,
    normalize_rule,
    rule_target,
    rule_words,
)

# Targets that are extensions, not chains (what the fake accepts after -j).
TARGETS = {"ACCEPT", "DROP", "RETURN", "REJECT", "DNAT", "SNAT", "MASQUERADE", "MARK", "LOG",
           "REDIRECT", "CONNMARK", "NOTRACK", "CT", "NFLOG", "TPROXY", "CHECKSUM", "TCPMSS"}
TERMINAL = {"ACCEPT", "DROP", "REJECT", "DNAT", "SNAT", "MASQUERADE", "REDIRECT"}


class RestoreError(Exception):
    """One bad restore line (turned into an ExecError carrying the line number)."""


# ===================================================================================== iptables
class FakeIptables(IptablesBase):
    """Tables in memory; `restores` records every payload received (tests assert no-op syncs)."""

    def __init__(self, ip_version: int = 4, *, ipset: FakeIpset | None = None,
                 local_ips: Iterable[str] = (), check_converged: bool = True) -> None:
        self.ip_version = ip_version
        self.check_converged = check_converged
        self.state = Ruleset(ip_version=ip_version)
        self.restores: list[str] = []
        self.ipset = ipset
        self.local_ips = set(local_ips)
        if ipset is not None:
            ipset.users.append(self.references_set)

    # ------------------------------------------------------------------- the seam
    def save(self, table: str) -> str:
        if table not in BUILTIN_CHAINS:
            raise ExecError([f"{self._prog()}-save", "-t", table], 1, f"Table `{table}' does not exist")
        if table not in self.state.tables:
            return ""
        return Ruleset(self.ip_version, {table: self.state.tables[table]}).render()

    def restore(self, payload: str, noflush: bool = True) -> None:
        self.restores.append(payload)
        work = copy.deepcopy(self.state)
        table: Table | None = None
        lines = payload.splitlines()
        for lineno, raw in enumerate(lines, 1):
            try:
                table = self._restore_line(work, table, raw.strip(), noflush)
            except RestoreError as exc:
                raise ExecError([f"{self._prog()}-restore"], 1, f"line {lineno}: {exc}") from None
        if table is not None:
            raise ExecError([f"{self._prog()}-restore"], 1, f"COMMIT expected at line {len(lines) + 1}")
        self.state = work  # all or nothing, like iptables-nft's single transaction

    def _prog(self) -> str:
        return "iptables" if self.ip_version == 4 else "ip6tables"

    # ------------------------------------------------------------------- parsing
    def _restore_line(self, work: Ruleset, table: Table | None, line: str, noflush: bool) -> Table | None:
        """Apply one line to `work`; returns the table the next line belongs to."""
        if not line or line.startswith("#"):
            return table
        if line.startswith("*"):
            if table is not None or line[1:] not in BUILTIN_CHAINS:
                raise RestoreError(f"bad table line {line!r}")
            return self._open_table(work, line[1:], noflush)
        if table is None:
            raise RestoreError(f"{line!r} outside a table")
        if line == "COMMIT":
            return None
        if line.startswith(":"):
            self._declare(table, line)
        else:
            self._command(table, rule_words(line))
        return table

    def _open_table(self, work: Ruleset, name: str, noflush: bool) -> Table:
        # iptables-nft creates a table's builtin chains the first time the table is used.
        table = work.table(name)
        for chain_name in BUILTIN_CHAINS[name]:
            chain = table.chain(chain_name)
            chain.policy = chain.policy or "ACCEPT"
        if not noflush:
            table.chains = {n: c for n, c in table.chains.items() if c.builtin}
            for chain in table.chains.values():
                chain.rules.clear()
        return table

    def _declare(self, table: Table, line: str) -> None:
        words = line[1:].split()
        if len(words) < 2:
            raise RestoreError(f"bad chain line {line!r}")
        name, policy = words[0], words[1]
        chain = table.chains.get(name)
        if chain is not None and chain.builtin:
            if policy not in ("ACCEPT", "DROP"):
                raise RestoreError(f"bad policy {policy} for {name}")
            chain.policy = policy  # a builtin chain is not flushed by --noflush declarations
            return
        if policy != "-" or len(name) > CHAIN_MAX:
            raise RestoreError(f"bad chain declaration {line!r}")
        if chain is None:
            table.chains[name] = Chain(name)
        else:
            chain.rules.clear()  # ":CHAIN - [0:0]" flushes an existing user chain

    def _command(self, table: Table, words: list[str]) -> None:
        if len(words) < 2:
            raise RestoreError(f"bad command {words!r}")
        op, name = words[0], words[1]
        if op == "-N":
            if name in table.chains:
                raise RestoreError("Chain already exists.")
            table.chains[name] = Chain(name)
            return
        chain = table.chains.get(name)
        if chain is None:
            raise RestoreError(f"No chain/target/match by that name: {name}")
        handlers: dict[str, Callable[[Table, Chain, list[str]], None]] = {
            "-A": self._append, "-I": self._insert, "-D": self._delete,
            "-F": lambda t, c, w: c.rules.clear(), "-X": self._delete_chain,
        }
        if op not in handlers:
            raise RestoreError(f"unsupported command {op}")
        handlers[op](table, chain, words[2:])

    def _rule_line(self, table: Table, chain: Chain, spec: list[str]) -> str:
        """Validate a rule's references like the kernel would and return its saved form."""
        target = rule_target(spec)
        if target is not None and target not in TARGETS and target not in table.chains:
            raise RestoreError(f"Chain '{target}' does not exist")
        if target is not None and target in BUILTIN_CHAINS[table.name]:
            raise RestoreError(f"cannot jump to builtin chain {target}")
        for i, word in enumerate(spec[:-1]):
            if word == "--match-set" and (self.ipset is None or spec[i + 1] not in self.ipset.sets):
                raise RestoreError(f"Set {spec[i + 1]} doesn't exist.")
        text = " ".join(_quoted(spec))
        return normalize_rule(f"-A {chain.name} {text}", self.ip_version)

    def _append(self, table: Table, chain: Chain, spec: list[str]) -> None:
        chain.rules.append(self._rule_line(table, chain, spec))

    def _insert(self, table: Table, chain: Chain, spec: list[str]) -> None:
        pos = 1
        if spec and spec[0].isdigit():
            pos, spec = int(spec[0]), spec[1:]
        if not 1 <= pos <= len(chain.rules) + 1:
            raise RestoreError("Index of insertion too big.")
        chain.rules.insert(pos - 1, self._rule_line(table, chain, spec))

    def _delete(self, table: Table, chain: Chain, spec: list[str]) -> None:
        if len(spec) == 1 and spec[0].isdigit():
            if not 1 <= int(spec[0]) <= len(chain.rules):
                raise RestoreError("Index of deletion too big.")
            del chain.rules[int(spec[0]) - 1]
            return
        line = normalize_rule(f"-A {chain.name} {' '.join(_quoted(spec))}", self.ip_version)
        if line not in chain.rules:
            raise RestoreError("Bad rule (does a matching rule exist in that chain?).")
        chain.rules.remove(line)

    def _delete_chain(self, table: Table, chain: Chain, spec: list[str]) -> None:
        if chain.builtin:
            raise RestoreError(f"cannot delete builtin chain {chain.name}")
        referenced = any(rule_target(rule_words(r)) == chain.name
                         for c in table.chains.values() for r in c.rules)
        if referenced or chain.rules:
            raise RestoreError(f"CHAIN_DEL failed (Device or resource busy): chain {chain.name}")
        del table.chains[chain.name]

    def references_set(self, name: str) -> bool:
        """Whether any rule uses ipset `name` (the kernel then refuses to destroy it)."""
        return any(f"--match-set {name} " in rule for t in self.state.tables.values()
                   for c in t.chains.values() for rule in c.rules)

    # ------------------------------------------------------------------- tracing
    def trace(self, table: str, chain: str, packet: Mapping[str, Any]) -> Verdict:
        """Follow `packet` through `chain` of `table`; see `Verdict`.

        packet keys: src, dst, proto, dport, sport (optional), mark, iif, oif, ctstate (default
        "NEW"), random (0..1, compared with `-m statistic --probability`; default 0.0).
        """
        tables = self.state.tables
        if table not in tables:
            raise TraceError(f"table {table} has never been written")
        tracer = _Tracer(self, tables[table], packet)
        found = tracer.walk(chain, depth=0)
        if found is None:
            start = tables[table].chains.get(chain)
            policy = (start.policy or "ACCEPT") if start is not None and start.builtin else "RETURN"
            found = Verdict(policy)
        found.mark = tracer.mark
        found.path = tracer.path
        return found


def _quoted(words: list[str]) -> list[str]:
    """Re-quote split words so normalize_rule can split them again."""
    return [w if w and not any(c in w for c in " \"'\\") else '"' + w.replace("\\", "\\\\")
            .replace('"', '\\"') + '"' for w in words]


@dataclass
class Verdict:
    """Where a traced packet ended.  target: ACCEPT/DROP/REJECT/DNAT/SNAT/MASQUERADE/REDIRECT,
    the builtin chain's policy when it fell off the end, or RETURN when it left a user chain.
    `to` is the --to-destination/--to-source/--to-ports argument; `mark` the packet mark
    afterwards (MARK is not terminal); `path` the rules whose target fired, in order."""

    target: str
    to: str | None = None
    mark: int = 0
    path: list[str] = field(default_factory=list)


class TraceError(PodnetError):
    """The tracer met a match or target it does not model (better than a silent guess)."""


_ARITY = {"-s": 1, "-d": 1, "-p": 1, "-i": 1, "-o": 1, "-m": 1, "--comment": 1, "--dport": 1,
          "--sport": 1, "--dports": 1, "--sports": 1, "--match-set": 2, "--mark": 1, "--mode": 1,
          "--probability": 1, "--dst-type": 1, "--src-type": 1, "--ctstate": 1, "--state": 1}
_MODULES = {"comment", "tcp", "udp", "sctp", "set", "mark", "statistic", "addrtype", "conntrack",
            "state", "multiport"}
_MAX_DEPTH = 64


class _Tracer:
    def __init__(self, ipt: FakeIptables, table: Table, packet: Mapping[str, Any]) -> None:
        self.ipt = ipt
        self.table = table
        self.packet = packet
        self.mark = int(packet.get("mark", 0))
        self.path: list[str] = []

    def walk(self, name: str, depth: int) -> Verdict | None:
        """The verdict reached in chain `name`, or None when the packet returns from it."""
        if depth > _MAX_DEPTH:
            raise TraceError(f"jump loop through {name}")
        chain = self.table.chains.get(name)
        if chain is None:
            raise TraceError(f"no chain {name} in {self.table.name}")
        for rule in chain.rules:
            words = rule_words(rule)[2:]
            matches, target, args = _split_rule(words)
            if not all(neg != self._match(opt, vals) for neg, opt, vals in matches):
                continue
            self.path.append(rule)
            outcome = self._fire(target, args, words, depth)
            if outcome != "continue":
                return outcome if isinstance(outcome, Verdict) else None
        return None

    def _fire(self, target: str | None, args: dict[str, str], words: list[str],
              depth: int) -> Verdict | str | None:
        """Run a matched rule's target: a Verdict, None (return from this chain) or "continue"."""
        if target is None or target in ("LOG", "NFLOG"):
            return "continue"
        if target == "RETURN":
            return None
        if target == "MARK":
            value, _, mask = args["--set-xmark"].partition("/")
            self.mark = (self.mark & ~int(mask, 0)) ^ int(value, 0)
            return "continue"
        if target in TERMINAL:
            to = args.get("--to-destination") or args.get("--to-source") or args.get("--to-ports")
            return Verdict(target, to=to)
        if target in self.table.chains:
            found = self.walk(target, depth + 1)
            if found is not None:
                return found
            # -g (goto): returning from the called chain returns from this one too.
            return None if "-g" in words else "continue"
        raise TraceError(f"target {target} is not modelled by the tracer")

    def _match(self, opt: str, vals: list[str]) -> bool:
        pkt = self.packet
        if opt == "-m":
            if vals[0] not in _MODULES:
                raise TraceError(f"match module {vals[0]} is not modelled by the tracer")
            return True
        if opt in ("--comment", "--mode"):
            return True
        if opt in ("-s", "-d"):
            addr = pkt.get("src" if opt == "-s" else "dst")
            return addr is not None and ipaddress.ip_address(addr) in ipaddress.ip_network(vals[0])
        if opt == "-p":
            return str(pkt.get("proto", "")).lower() == vals[0]
        if opt in ("-i", "-o"):
            return _iface_match(vals[0], pkt.get("iif" if opt == "-i" else "oif"))
        if opt in ("--dport", "--sport", "--dports", "--sports"):
            port = pkt.get("dport" if opt.startswith("--d") else "sport")
            return port is not None and _port_match(vals[0], int(port))
        return self._match_module(opt, vals)

    def _match_module(self, opt: str, vals: list[str]) -> bool:
        pkt = self.packet
        if opt == "--match-set":
            return self._in_set(vals[0], vals[1])
        if opt == "--mark":
            value, _, mask = vals[0].partition("/")
            return (self.mark & int(mask or "0xffffffff", 0)) == int(value, 0)
        if opt == "--probability":
            return float(pkt.get("random", 0.0)) < float(vals[0])
        if opt in ("--dst-type", "--src-type"):
            if vals[0] != "LOCAL":
                raise TraceError(f"addrtype {vals[0]} is not modelled")
            return pkt.get("dst" if opt == "--dst-type" else "src") in self.ipt.local_ips
        if opt in ("--ctstate", "--state"):
            return str(pkt.get("ctstate", "NEW")) in vals[0].split(",")
        raise TraceError(f"match option {opt} is not modelled by the tracer")

    def _in_set(self, name: str, flags: str) -> bool:
        ipsets = self.ipt.ipset
        if ipsets is None or name not in ipsets.sets:
            raise TraceError(f"set {name} is unknown to the tracer")
        ipset = ipsets.sets[name]
        kinds = ipset.type.partition(":")[2].split(",")
        parts = []
        for kind, flag in zip(kinds, flags.split(","), strict=False):
            side = "src" if flag == "src" else "dst"
            if kind == "port":
                parts.append(f"{self.packet.get('proto', 'tcp')}:{self.packet.get(side[0] + 'port')}")
            else:
                parts.append(str(self.packet.get(side)))
        return contains(ipset, ",".join(parts))


def _split_rule(words: list[str]) -> tuple[list[tuple[bool, str, list[str]]], str | None, dict[str, str]]:
    """(matches as (negated, option, values), target, target options) of a saved rule."""
    matches: list[tuple[bool, str, list[str]]] = []
    i, negate = 0, False
    while i < len(words):
        word = words[i]
        if word == "!":
            negate = True
        elif word in ("-j", "-g"):
            return matches, words[i + 1], _target_args(words[i + 2:])
        elif word in _ARITY:
            matches.append((negate, word, words[i + 1:i + 1 + _ARITY[word]]))
            negate = False
            i += _ARITY[word]
        else:
            raise TraceError(f"match option {word} is not modelled by the tracer")
        i += 1
    return matches, None, {}


def _target_args(words: list[str]) -> dict[str, str]:
    args: dict[str, str] = {}
    for i, word in enumerate(words):
        if word.startswith("--"):
            has_value = i + 1 < len(words) and not words[i + 1].startswith("--")
            args[word] = words[i + 1] if has_value else ""
    return args


def _iface_match(pattern: str, iface: Any) -> bool:
    if iface is None:
        return False
    if pattern.endswith("+"):
        return str(iface).startswith(pattern[:-1])
    return str(iface) == pattern


def _port_match(spec: str, port: int) -> bool:
    for item in spec.split(","):
        low, _, high = item.partition(":")
        if int(low) <= port <= int(high or low):
            return True
    return False


# ======================================================================================= ipset
class FakeIpset(IpsetBase):
    """Sets in memory.  `users` are callables name -> bool telling whether a rule references a
    set (FakeIptables registers itself), so destroying a referenced set fails as in the kernel."""

    def __init__(self) -> None:
        self.sets: dict[str, IpSet] = {}
        self.users: list[Callable[[str], bool]] = []
        self.restores: list[str] = []

    def save(self) -> str:
        lines: list[str] = []
        for s in self.sets.values():
            family = f" family {s.family}" if s.type.startswith("hash:") else ""
            lines.append(f"create {s.name} {s.type}{family} hashsize 1024 maxelem 65536")
            lines += [f"add {s.name} {m}" for m in sorted(s.members)]
        return "\n".join(lines) + "\n" if lines else ""

    def restore(self, payload: str) -> None:
        """Line by line, stopping at the first error with earlier lines applied (like ipset)."""
        self.restores.append(payload)
        for lineno, raw in enumerate(payload.splitlines(), 1):
            words = raw.split()
            if not words or words[0].startswith("#"):
                continue
            try:
                self._command(words)
            except RestoreError as exc:
                raise ExecError(["ipset", "restore"], 1, f"Error in line {lineno}: {exc}") from None

    def contains(self, name: str, value: str) -> bool:
        return contains(self.sets[name], value)

    def _command(self, words: list[str]) -> None:
        exist = "-exist" in words
        words = [w for w in words if w != "-exist"]
        op = words[0]
        if op == "create" and len(words) >= 3:
            self._create(words, exist)
        elif op in ("add", "del") and len(words) == 3:
            self._member(op, self._get(words[1]), words[2], exist)
        elif op == "destroy" and len(words) == 2:
            self._get(words[1])
            if any(user(words[1]) for user in self.users):
                raise RestoreError("Set cannot be destroyed: it is in use by a kernel component")
            del self.sets[words[1]]
        elif op == "flush" and len(words) == 2:
            self._get(words[1]).members.clear()
        elif op == "swap" and len(words) == 3:
            self._swap(self._get(words[1]), self._get(words[2]))
        else:
            raise RestoreError(f"Syntax error: {' '.join(words)}")

    def _get(self, name: str) -> IpSet:
        if name not in self.sets:
            raise RestoreError("The set with the given name does not exist")
        return self.sets[name]

    def _create(self, words: list[str], exist: bool) -> None:
        name, set_type = words[1], words[2]
        family = "inet"
        if "family" in words:
            family = words[words.index("family") + 1]
        new = IpSet(name, set_type, family)
        old = self.sets.get(name)
        if old is not None:
            if not exist or old.kind() != new.kind():
                raise RestoreError("Set cannot be created: set with the same name already exists")
            return
        self.sets[name] = new

    def _member(self, op: str, ipset: IpSet, member: str, exist: bool) -> None:
        value = normalize_member(ipset.type, member)
        _check_member(ipset, value)
        if op == "add":
            if value in ipset.members and not exist:
                raise RestoreError("Element cannot be added to the set: it's already added")
            ipset.members.add(value)
        else:
            if value not in ipset.members and not exist:
                raise RestoreError("Element cannot be deleted from the set: it's not added")
            ipset.members.discard(value)

    def _swap(self, a: IpSet, b: IpSet) -> None:
        if a.kind() != b.kind():
            raise RestoreError("The sets cannot be swapped: their type does not match")
        a.members, b.members = b.members, a.members


def _check_member(ipset: IpSet, value: str) -> None:
    """Reject members ipset could not parse for the set's type and family."""
    want = 6 if ipset.family == "inet6" else 4
    for kind, part in zip(ipset.type.partition(":")[2].split(","), value.split(","), strict=False):
        if kind not in ("ip", "net"):
            continue
        try:
            version = ipaddress.ip_network(part, strict=False).version
        except ValueError:
            raise RestoreError(f"Syntax error: cannot parse {part}") from None
        if version != want:
            raise RestoreError(f"Syntax error: {part} is not an {ipset.family} address")
