"""Pure iptables model: desired tables -> chains -> rules, the iptables-save parser and the diff.

The diff follows neutron's IptablesManager and kube-proxy's restore writer: read the kernel with
`iptables-save`, compare only what the owner owns, and write one `iptables-restore --noflush`
payload.  An owner is identified by a chain-name prefix ("KUBE-", "cali-", "FLANNEL-"):

* owned chains are the user chains whose name starts with the prefix;
* owned rules in builtin chains are the rules that jump (-j/-g) to a name with the prefix, or carry
  a `--comment` that starts with it.  Nothing else is ever written, flushed or deleted.

Rules are held as iptables-save prints them ("-A CHAIN -s 10.0.0.0/8 -j X").  Content comparison
is textual, so `normalize_rule` rewrites the common non-canonical spellings (implicit `-m tcp`,
host /32s, `--set-mark`, probabilities, quoting) into what iptables-save 1.8 prints; anything it
misses shows up as a diff that never converges, which `IptablesBase.converged()` detects.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass, field

from podnet.errors import PodnetError
from podnet.names import CHAIN_MAX

BUILTIN_CHAINS: dict[str, tuple[str, ...]] = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
    "security": ("INPUT", "FORWARD", "OUTPUT"),
}

Owner = str | tuple[str, ...]


class RulesetError(PodnetError, ValueError):
    """A desired ruleset that cannot be written (foreign chain, bad rule line, dangling jump)."""


@dataclass
class Chain:
    """One chain.  `rules` hold full lines: "-A NAME ..." (or "-I NAME ..." for a desired jump
    from a builtin chain that must go to the top).  `policy` is only meaningful for builtin
    chains: None leaves the kernel's policy alone."""

    name: str
    builtin: bool = False
    policy: str | None = None
    rules: list[str] = field(default_factory=list)

    def append(self, spec: str) -> None:
        """Add `spec` (the part after "-A NAME ") at the end of the chain."""
        self.rules.append(f"-A {self.name} {spec}".rstrip())

    def insert(self, spec: str) -> None:
        """Desired jump at the top of a builtin chain (written with -I when missing)."""
        if not self.builtin:
            raise RulesetError(f"-I is only for builtin chains, not {self.name}")
        self.rules.append(f"-I {self.name} {spec}".rstrip())


@dataclass
class Table:
    name: str
    chains: dict[str, Chain] = field(default_factory=dict)

    def chain(self, name: str, policy: str | None = None) -> Chain:
        """The chain `name`, created empty if missing (builtin-ness comes from the table)."""
        found = self.chains.get(name)
        if found is None:
            builtin = name in BUILTIN_CHAINS.get(self.name, ())
            found = self.chains[name] = Chain(name, builtin=builtin)
        if policy is not None:
            found.policy = policy
        return found

    def add_rule(self, line: str) -> None:
        """Add a full "-A CHAIN ..." / "-I CHAIN ..." line to its chain."""
        parts = line.split(None, 2)
        if len(parts) < 2 or parts[0] not in ("-A", "-I"):
            raise RulesetError(f"not a rule line: {line!r}")
        chain = self.chain(parts[1])
        if parts[0] == "-I":
            chain.insert(parts[2] if len(parts) > 2 else "")
        else:
            chain.rules.append(line.rstrip())


@dataclass
class Ruleset:
    """Desired (or saved) state of some tables of one address family."""

    ip_version: int = 4
    tables: dict[str, Table] = field(default_factory=dict)

    def table(self, name: str) -> Table:
        if name not in BUILTIN_CHAINS:
            raise RulesetError(f"unknown table {name}")
        if name not in self.tables:
            self.tables[name] = Table(name)
        return self.tables[name]

    def render(self) -> str:
        """The ruleset as iptables-save prints it (without the date comments)."""
        out: list[str] = []
        for table in self.tables.values():
            out.append(f"*{table.name}")
            chains = _save_order(table)
            out.extend(f":{c.name} {(c.policy or 'ACCEPT') if c.builtin else '-'} [0:0]" for c in chains)
            out.extend(rule for c in chains for rule in c.rules)
            out.append("COMMIT")
        return "\n".join(out) + "\n" if out else ""


def _save_order(table: Table) -> list[Chain]:
    """Builtin chains in kernel hook order, then user chains sorted by name (as iptables-save)."""
    builtins = [table.chains[n] for n in BUILTIN_CHAINS[table.name] if n in table.chains]
    users = sorted((c for c in table.chains.values() if not c.builtin), key=lambda c: c.name)
    return builtins + users


# ----------------------------------------------------------------------------------- parsing
def parse_save(text: str, ip_version: int = 4) -> Ruleset:
    """Parse `iptables-save` output (any number of tables) into a Ruleset."""
    rs = Ruleset(ip_version=ip_version)
    table: Table | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            table = rs.table(line[1:])
        elif table is None:
            raise RulesetError(f"line {lineno}: {line!r} outside a table")
        elif line == "COMMIT":
            table = None
        elif line.startswith(":"):
            name, policy = line[1:].split()[:2]
            chain = table.chain(name)
            chain.builtin = policy != "-"
            chain.policy = policy if chain.builtin else None
        elif line.startswith("-A "):
            table.add_rule(line)
        else:
            raise RulesetError(f"line {lineno}: unexpected {line!r}")
    return rs


def rule_words(line: str) -> list[str]:
    """A rule line split as iptables-restore's add_param_to_argv() does: only double quotes
    group, and inside them a backslash escapes any character (so `"it\\'s"` is `it's`).
    Single quotes are ordinary characters to iptables, unlike to a shell."""
    words: list[str] = []
    word: list[str] | None = None
    quoted = escaped = False
    for ch in line:
        if quoted and escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
            continue
        elif ch == '"':
            quoted = not quoted
            word = word if word is not None else []
            continue
        elif ch.isspace() and not quoted:
            if word is not None:
                words.append("".join(word))
            word = None
            continue
        word = word if word is not None else []
        word.append(ch)
    if quoted:
        raise RulesetError(f"unterminated quote in rule {line!r}")
    if word is not None:
        words.append("".join(word))
    return words


def rule_target(words: list[str]) -> str | None:
    """The -j/-g target of a split rule, if any."""
    for i, word in enumerate(words[:-1]):
        if word in ("-j", "-g", "--jump", "--goto"):
            return words[i + 1]
    return None


def is_owned_rule(line: str, owner: Owner) -> bool:
    """Whether a rule in a builtin chain is ours: it jumps to an owned chain or has our comment."""
    words = rule_words(line)
    target = rule_target(words)
    if target is not None and target.startswith(owner):
        return True
    return any(w == "--comment" and words[i + 1].startswith(owner) for i, w in enumerate(words[:-1]))


# ------------------------------------------------------------------------------ normalizing
_BASIC = {"-s": "-s", "--source": "-s", "--src": "-s", "-d": "-d", "--destination": "-d",
          "--dst": "-d", "-i": "-i", "--in-interface": "-i", "-o": "-o", "--out-interface": "-o",
          "-p": "-p", "--protocol": "-p"}
_BASIC_ORDER = ("-s", "-d", "-i", "-o", "-p")
_LONG = {"--match": "-m", "--jump": "-j", "--goto": "-g", "--destination-port": "--dport",
         "--source-port": "--sport"}
_FREE_TEXT = {"--comment", "--log-prefix", "--nflog-prefix"}
_PROTO_NUMBERS = {"1": "icmp", "6": "tcp", "17": "udp", "58": "ipv6-icmp", "132": "sctp",
                  "icmpv6": "ipv6-icmp"}
# protocol -> (implicit match module, options that load it); iptables-save prints the module.
_IMPLICIT = {
    "tcp": ("tcp", {"--dport", "--sport", "--tcp-flags", "--syn", "--tcp-option"}),
    "udp": ("udp", {"--dport", "--sport"}),
    "sctp": ("sctp", {"--dport", "--sport", "--chunk-types"}),
    "icmp": ("icmp", {"--icmp-type"}),
    "ipv6-icmp": ("icmp6", {"--icmpv6-type"}),
}
_SAFE_CHARS = set("_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def save_quote(value: str) -> str:
    """Quote a string the way libxtables' xtables_save_string() does for iptables-save."""
    if value and set(value) <= _SAFE_CHARS:
        return value
    escaped = "".join("\\" + c if c in "\"\\'" else c for c in value)
    return f'"{escaped}"'


def normalize_rule(line: str, ip_version: int = 4) -> str:
    """Rewrite a rule line into the form iptables-save prints (see the module docstring)."""
    words = rule_words(line)
    if len(words) < 2:
        raise RulesetError(f"not a rule line: {line!r}")
    basic, tail = _split_basic(words[2:], ip_version)
    proto = basic.get("-p", (False, ""))[1]
    tail = _fix_target(_add_implicit_match(tail, proto), ip_version)
    out = words[:2]
    for opt in _BASIC_ORDER:
        if opt in basic:
            negated, value = basic[opt]
            out += ["!", opt, value] if negated else [opt, value]
    return " ".join(out + tail)


def _split_basic(words: list[str], ip_version: int) -> tuple[dict[str, tuple[bool, str]], list[str]]:
    """Pull the basic options (printed first by iptables-save) out of the match list."""
    basic: dict[str, tuple[bool, str]] = {}
    tail: list[str] = []
    i = 0
    while i < len(words):
        negated = words[i] == "!" and i + 1 < len(words) and words[i + 1] in _BASIC
        opt = words[i + 1] if negated else words[i]
        if opt in _BASIC and i + (2 if negated else 1) < len(words):
            value = words[i + (2 if negated else 1)]
            key = _BASIC[opt]
            basic[key] = (negated, _canonical_basic(key, value, ip_version))
            i += 3 if negated else 2
            continue
        word = _LONG.get(words[i], words[i])
        if word in _FREE_TEXT and i + 1 < len(words):
            tail += [word, save_quote(words[i + 1])]
            i += 2
            continue
        tail.append(word)
        i += 1
    if basic.get("-p") == (False, "all"):
        del basic["-p"]
    return basic, tail


def _canonical_basic(opt: str, value: str, ip_version: int) -> str:
    if opt in ("-s", "-d"):
        try:
            return str(ipaddress.ip_network(value, strict=False))
        except ValueError:
            return value  # a hostname or a list; left for iptables to complain about
    if opt == "-p":
        low = value.lower()
        return _PROTO_NUMBERS.get(low, low)
    return value


def _add_implicit_match(tail: list[str], proto: str) -> list[str]:
    """`-p tcp --dport 80` is saved as `-p tcp -m tcp --dport 80` (the module is implicit)."""
    if proto not in _IMPLICIT:
        return tail
    module, options = _IMPLICIT[proto]
    tail = _expand_syn(tail)
    if any(tail[i] == "-m" and tail[i + 1] == module for i in range(len(tail) - 1)):
        return tail
    for i, word in enumerate(tail):
        if word in options:
            at = i - 1 if i > 0 and tail[i - 1] == "!" else i
            return [*tail[:at], "-m", module, *tail[at:]]
    return tail


def _expand_syn(tail: list[str]) -> list[str]:
    out: list[str] = []
    for word in tail:
        out += ["--tcp-flags", "FIN,SYN,RST,ACK", "SYN"] if word == "--syn" else [word]
    return out


def _fix_target(tail: list[str], ip_version: int) -> list[str]:
    """Target/match options whose saved spelling differs from the usual input spelling."""
    out = list(tail)
    for i, word in enumerate(out[:-1]):
        if word == "--mark":
            out[i + 1] = _hex_mark(out[i + 1], with_mask=False)
        elif word == "--probability":
            # xt_statistic keeps lround(p * 2^31); iptables-save prints that back with %.11f.
            kept = int(float(out[i + 1]) * 0x80000000 + 0.5)
            out[i + 1] = f"{kept / 0x80000000:.11f}"
    mark = _mark_to_xmark(out)
    if mark is not None:
        return mark
    target = rule_target(out)
    if target == "REJECT" and "--reject-with" not in out:
        default = "icmp-port-unreachable" if ip_version == 4 else "icmp6-port-unreachable"
        out += ["--reject-with", default]
    return out


def _hex_mark(value: str, *, with_mask: bool) -> str:
    mark, _, mask = value.partition("/")
    if not mask:
        return f"{int(mark, 0):#x}/0xffffffff" if with_mask else f"{int(mark, 0):#x}"
    return f"{int(mark, 0):#x}/{int(mask, 0):#x}"


def _mark_to_xmark(tail: list[str]) -> list[str] | None:
    """MARK --set-mark/--or-mark/--and-mark/--xor-mark are all saved as --set-xmark v/m."""
    ops = {"--set-mark", "--set-xmark", "--or-mark", "--and-mark", "--xor-mark"}
    at = next((i for i, w in enumerate(tail[:-1]) if w in ops), None)
    if at is None or rule_target(tail) != "MARK":
        return None
    op, arg = tail[at], tail[at + 1]
    value, _, mask_text = arg.partition("/")
    val = int(value, 0)
    mask = int(mask_text, 0) if mask_text else 0xFFFFFFFF
    if op == "--set-mark":
        val, mask = val, (val | mask) & 0xFFFFFFFF  # libxt_MARK: OR semantics via a wider mask
    elif op == "--or-mark":
        mask = val
    elif op == "--and-mark":
        val, mask = 0, ~val & 0xFFFFFFFF
    elif op == "--xor-mark":
        mask = 0
    return [*tail[:at], "--set-xmark", f"{val:#x}/{mask:#x}", *tail[at + 2:]]


# ------------------------------------------------------------------------------------- diff
def diff(desired: Ruleset, actual: Ruleset, owner: Owner) -> str:
    """The `iptables-restore --noflush` payload that turns `actual` into `desired` for what
    `owner` owns, in the tables `desired` lists; "" when nothing needs to change."""
    out: list[str] = []
    for name, want in desired.tables.items():
        have = actual.tables.get(name, Table(name))
        lines = _diff_table(want, have, owner, desired.ip_version)
        if lines:
            out += [f"*{name}", *lines, "COMMIT"]
    return "\n".join(out) + "\n" if out else ""


def _diff_table(want: Table, have: Table, owner: Owner, ip_version: int) -> list[str]:
    desired = _desired_user_chains(want, owner, ip_version)
    current = {n: c.rules for n, c in have.chains.items() if not c.builtin and n.startswith(owner)}
    changed = sorted(n for n, rules in desired.items() if current.get(n) != rules)
    stale = sorted(n for n in current if n not in desired)
    pinned = _foreign_targets(have, owner)  # stale chains a foreign rule still jumps to
    flush = [n for n in stale if n not in pinned or current[n]]
    heads, deletes, adds = _diff_builtins(want, have, owner, ip_version, desired)
    lines = heads + [f":{n} - [0:0]" for n in changed + flush] + deletes
    lines += [rule for n in changed for rule in desired[n]] + adds
    return lines + [f"-X {n}" for n in stale if n not in pinned]


def _desired_user_chains(want: Table, owner: Owner, ip_version: int) -> dict[str, list[str]]:
    chains: dict[str, list[str]] = {}
    for chain in want.chains.values():
        if chain.builtin:
            continue
        if not chain.name.startswith(owner) or len(chain.name) > CHAIN_MAX:
            raise RulesetError(f"chain {chain.name} is not owned by {owner!r} or is too long")
        chains[chain.name] = [normalize_rule(_checked(r, chain.name, "-A"), ip_version) for r in chain.rules]
    for name, rules in chains.items():
        for rule in rules:
            target = rule_target(rule_words(rule))
            if target is not None and target.startswith(owner) and target not in chains:
                raise RulesetError(f"{name}: jump to {target}, which is not in the ruleset")
    return chains


def _checked(rule: str, chain: str, *ops: str) -> str:
    words = rule.split(None, 2)
    if len(words) < 2 or words[0] not in ops or words[1] != chain:
        raise RulesetError(f"rule {rule!r} does not belong to chain {chain}")
    return rule


def _foreign_targets(have: Table, owner: Owner) -> set[str]:
    """Owned chains referenced from foreign user chains: those must not be deleted (-X fails
    with EBUSY and would abort the whole batch), only flushed."""
    refs: set[str] = set()
    for chain in have.chains.values():
        if chain.builtin or chain.name.startswith(owner):
            continue
        for rule in chain.rules:
            target = rule_target(rule_words(rule))
            if target is not None and target.startswith(owner):
                refs.add(target)
    return refs


def _diff_builtins(
    want: Table, have: Table, owner: Owner, ip_version: int, user_chains: dict[str, list[str]]
) -> tuple[list[str], list[str], list[str]]:
    """Policy lines, -D lines for owned rules no longer wanted, -I/-A lines for missing ones."""
    heads: list[str] = []
    deletes: list[str] = []
    adds: list[str] = []
    names = [n for n in BUILTIN_CHAINS[want.name] if n in want.chains or n in have.chains]
    for name in names:
        want_chain = want.chains.get(name, Chain(name, builtin=True))
        have_chain = have.chains.get(name, Chain(name, builtin=True))
        if want_chain.policy and want_chain.policy != (have_chain.policy or "ACCEPT"):
            heads.append(f":{name} {want_chain.policy} [0:0]")
        wanted = [_wanted_builtin_rule(r, name, owner, ip_version, user_chains) for r in want_chain.rules]
        present = Counter(r for r in have_chain.rules if is_owned_rule(r, owner))
        for key, _ in wanted:
            present[key] -= 1
        deletes += ["-D" + rule[2:] for rule, n in present.items() for _ in range(n)]
        missing = _missing(wanted, have_chain.rules)
        adds += [line for key, line in reversed(missing) if line.startswith("-I")]
        adds += [line for key, line in missing if line.startswith("-A")]
    return heads, deletes, adds


def _wanted_builtin_rule(
    rule: str, chain: str, owner: Owner, ip_version: int, user_chains: dict[str, list[str]]
) -> tuple[str, str]:
    """(saved form "-A CHAIN ...", line to write) of a desired rule in a builtin chain."""
    line = normalize_rule(_checked(rule, chain, "-A", "-I"), ip_version)
    if not is_owned_rule(line, owner):
        raise RulesetError(f"rule {rule!r} in builtin chain {chain} is not recognisable as ours")
    target = rule_target(rule_words(line))
    if target is not None and target.startswith(owner) and target not in user_chains:
        raise RulesetError(f"{chain}: jump to {target}, which is not in the ruleset")
    return "-A" + line[2:], line


def _missing(wanted: list[tuple[str, str]], present: list[str]) -> list[tuple[str, str]]:
    """Wanted rules not present (as a multiset: a rule wanted twice must be there twice).

    Only missing rules are inserted; a present rule is not moved (kube-proxy's EnsureRule does
    the same), so another owner inserting above ours does not cause churn on every sync.
    """
    have = Counter(present)
    out: list[tuple[str, str]] = []
    for key, line in wanted:
        if have[key] > 0:
            have[key] -= 1
        else:
            out.append((key, line))
    return out
