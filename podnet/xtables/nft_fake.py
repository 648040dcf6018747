"""An in-memory nft for unit tests: parses the scripts it is given and keeps the state.

It understands the flat, one-command-per-line subset podnet writes:

    add|delete|flush table FAMILY TABLE
    add|delete|flush chain FAMILY TABLE CHAIN [{ type .. hook .. priority ..; policy ..; }]
    add|delete set|map FAMILY TABLE NAME [{ type K [: V]; [flags F;] }]
    add|delete element FAMILY TABLE SET { KEY [comment "C"] [: VALUE], ... }
    add rule FAMILY TABLE CHAIN <statement>     delete rule FAMILY TABLE CHAIN handle N

and reproduces the kernel behaviour the callers rely on: transactions are all-or-nothing; `add`
of an existing table/chain/set or same-data element is a no-op (the element keeps its old
comment); deleting something absent fails with ENOENT; a map element with different data fails
with EEXIST; a set or chain still referenced by a rule cannot be deleted (EBUSY).  Errors are
`ExecError`s with nft's wording, so code that inspects stderr behaves as with the real tool.
`list_table` answers in the shape of `nft -j list table` (rules carry their text in
`expr: [{"fake": ...}]`), so the same parsing code runs against both.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from podnet.errors import ExecError

_TOKEN = re.compile(r'"[^"]*"|[{},]|[^\s{},"]+')
_ARGV = ["nft", "-f", "-"]


def _fail(errno_text: str, line: str) -> ExecError:
    return ExecError(_ARGV, 1, f"Error: Could not process rule: {errno_text}\n{line}\n")


@dataclass
class FakeSet:
    kind: str  # "set" or "map"
    spec: str  # normalised "type ...; flags ...;" text
    elements: dict[str, tuple[str | None, str]] = field(default_factory=dict)  # key -> (value, comment)


@dataclass
class FakeChain:
    spec: str
    rules: list[tuple[int, str]] = field(default_factory=list)  # (handle, text)


@dataclass
class FakeTable:
    chains: dict[str, FakeChain] = field(default_factory=dict)
    sets: dict[str, FakeSet] = field(default_factory=dict)
    next_handle: int = 1


class FakeNft:
    """Implements podnet.xtables.nft.Backend in memory."""

    def __init__(self) -> None:
        self.tables: dict[tuple[str, str], FakeTable] = {}
        self.scripts: list[str] = []  # every successfully applied transaction, in order
        self.listings = 0
        self.locks = 0
        self.fail_next: ExecError | None = None  # injected failure for the next apply

    # ------------------------------------------------------------------ Backend
    def apply(self, script: str) -> None:
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc
        staged = copy.deepcopy(self.tables)
        for raw in script.splitlines():
            line = raw.strip()
            if line and not line.startswith("#"):
                _Command(staged, line).run()
        self.tables = staged
        self.scripts.append(script)

    def list_table(self, family: str, name: str) -> dict[str, Any] | None:
        self.listings += 1
        table = self.tables.get((family, name))
        return None if table is None else _listing(family, name, table)

    @contextmanager
    def lock(self, family: str, name: str) -> Iterator[None]:
        self.locks += 1
        yield

    # ------------------------------------------------------------------ assertions
    def elements(self, family: str, table: str, name: str) -> dict[str, tuple[str | None, str]]:
        t = self.tables.get((family, table))
        return dict(t.sets[name].elements) if t and name in t.sets else {}

    def rules(self, family: str, table: str, chain: str) -> list[str]:
        t = self.tables.get((family, table))
        return [text for _, text in t.chains[chain].rules] if t and chain in t.chains else []

    def has_table(self, family: str, name: str) -> bool:
        return (family, name) in self.tables


class _Command:
    """One script line applied to the staged state."""

    def __init__(self, tables: dict[tuple[str, str], FakeTable], line: str) -> None:
        self.tables = tables
        self.line = line
        words = line.split(None, 4)
        if len(words) < 4:
            raise ExecError(_ARGV, 1, f"Error: syntax error\n{line}\n")
        self.verb, self.obj, family, table = words[:4]
        self.key = (family, table)
        rest = words[4] if len(words) > 4 else ""
        self.name, _, self.body = rest.partition(" ")
        self.body = self.body.strip()

    def run(self) -> None:
        handler = getattr(self, f"_{self.verb}_{self.obj}", None)
        if handler is None:
            raise ExecError(_ARGV, 1, f"Error: fake nft does not understand\n{self.line}\n")
        handler()

    def _table(self) -> FakeTable:
        table = self.tables.get(self.key)
        if table is None:
            raise _fail("No such file or directory", self.line)
        return table

    # tables
    def _add_table(self) -> None:
        self.tables.setdefault(self.key, FakeTable())

    def _delete_table(self) -> None:
        self._table()
        del self.tables[self.key]

    def _flush_table(self) -> None:
        for chain in self._table().chains.values():
            chain.rules.clear()

    # chains
    def _add_chain(self) -> None:
        self._table().chains.setdefault(self.name, FakeChain(spec=_spec(self.body)))

    def _existing_chain(self) -> FakeChain:
        chain = self._table().chains.get(self.name)
        if chain is None:
            raise _fail("No such file or directory", self.line)
        return chain

    def _flush_chain(self) -> None:
        self._existing_chain().rules.clear()

    def _delete_chain(self) -> None:
        chain = self._existing_chain()
        if chain.rules or _referenced(self._table(), f"jump {self.name}", f"goto {self.name}"):
            raise _fail("Device or resource busy", self.line)
        del self._table().chains[self.name]

    # sets and maps
    def _add_set(self, kind: str = "set") -> None:
        table = self._table()
        spec = _spec(self.body)
        if ":" in spec and kind == "set":
            raise ExecError(_ARGV, 1, f"Error: a set has no data type; use a map\n{self.line}\n")
        existing = table.sets.get(self.name)
        if existing is None:
            table.sets[self.name] = FakeSet(kind=kind, spec=spec)
        elif existing.kind != kind or existing.spec != spec:
            raise _fail("File exists", self.line)

    def _add_map(self) -> None:
        self._add_set("map")

    def _delete_set(self) -> None:
        table = self._table()
        if self.name not in table.sets:
            raise _fail("No such file or directory", self.line)
        if _referenced(table, f"@{self.name}"):
            raise _fail("Device or resource busy", self.line)
        del table.sets[self.name]

    _delete_map = _delete_set

    def _existing_set(self) -> FakeSet:
        found = self._table().sets.get(self.name)
        if found is None:
            raise _fail("No such file or directory", self.line)
        return found

    def _add_element(self) -> None:
        target = self._existing_set()
        for key, comment, value in parse_elements(self.body):
            if (value is None) != (target.kind == "set"):
                raise ExecError(_ARGV, 1, f"Error: map data mismatch\n{self.line}\n")
            old = target.elements.get(key)
            if old is None:
                target.elements[key] = (value, comment)
            elif old[0] != value:
                raise _fail("File exists", self.line)

    def _create_element(self) -> None:
        """`create element` is `add element` failing on any existing key (NLM_F_EXCL)."""
        target = self._existing_set()
        if any(key in target.elements for key, _comment, _value in parse_elements(self.body)):
            raise _fail("File exists", self.line)
        self._add_element()

    def _delete_element(self) -> None:
        target = self._existing_set()
        for key, _comment, _value in parse_elements(self.body):
            if key not in target.elements:
                raise _fail("No such file or directory", self.line)
            del target.elements[key]

    # rules
    def _add_rule(self) -> None:
        table = self._table()
        chain = self._existing_chain()
        for ref in re.findall(r"@(\w+)", self.body):
            if ref not in table.sets:
                raise _fail("No such file or directory", self.line)
        for ref in re.findall(r"\b(?:jump|goto) (\w+)", self.body):
            if ref not in table.chains:
                raise _fail("No such file or directory", self.line)
        chain.rules.append((table.next_handle, " ".join(self.body.split())))
        table.next_handle += 1

    def _delete_rule(self) -> None:
        chain = self._existing_chain()
        words = self.body.split()
        if len(words) != 2 or words[0] != "handle":
            raise ExecError(_ARGV, 1, f"Error: syntax error\n{self.line}\n")
        handle = int(words[1])
        if not any(h == handle for h, _ in chain.rules):
            raise _fail("No such file or directory", self.line)
        chain.rules = [(h, t) for h, t in chain.rules if h != handle]


def _spec(body: str) -> str:
    """'{ type nat hook postrouting priority srcnat; policy accept; }' -> normalised inner text."""
    inner = body.strip().removeprefix("{").removesuffix("}")
    return "; ".join(" ".join(part.split()) for part in inner.split(";") if part.strip())


def _referenced(table: FakeTable, *needles: str) -> bool:
    pattern = re.compile("|".join(re.escape(n) + r"\b" for n in needles))
    return any(pattern.search(text) for chain in table.chains.values() for _, text in chain.rules)


def parse_elements(body: str) -> list[tuple[str, str, str | None]]:
    """'{ 10.1.0.5 . tcp . 80 comment "x" : 10.2.0.1 . 8080, ... }' -> [(key, comment, value)].

    A map's ':' must stand alone between spaces (nft's own syntax allows that, and IPv6 addresses
    contain colons); keys are normalised to single-space separated tokens.
    """
    tokens = _TOKEN.findall(body)
    if not tokens or tokens[0] != "{" or tokens[-1] != "}":
        raise ExecError(_ARGV, 1, f"Error: syntax error, element list must be in braces: {body}\n")
    out = []
    group: list[str] = []
    for tok in [*tokens[1:-1], ","]:
        if tok != ",":
            group.append(tok)
            continue
        if group:
            out.append(_one_element(group))
        group = []
    return out


def _one_element(tokens: list[str]) -> tuple[str, str, str | None]:
    comment = ""
    if "comment" in tokens:
        i = tokens.index("comment")
        comment = tokens[i + 1].strip('"')
        tokens = tokens[:i] + tokens[i + 2:]
    value = None
    if ":" in tokens:
        i = tokens.index(":")
        value = " ".join(tokens[i + 1:])
        tokens = tokens[:i]
    return " ".join(tokens), comment, value


def _json_value(text: str) -> Any:
    """nft syntax -> the JSON `nft -j` prints for it (concat, prefix, range, numbers)."""
    parts = [p.strip() for p in text.split(" . ")]
    values = [_json_atom(p) for p in parts]
    return values[0] if len(values) == 1 else {"concat": values}


def _json_atom(text: str) -> Any:
    if text.isdigit():
        return int(text)
    if "/" in text:
        addr, length = text.split("/", 1)
        return {"prefix": {"addr": addr, "len": int(length)}}
    if "-" in text and "." in text and ":" not in text:
        low, high = text.split("-", 1)
        return {"range": [low, high]}
    return text


def _set_json(family: str, table: str, name: str, s: FakeSet) -> dict[str, Any]:
    parts = dict(p.split(" ", 1) for p in s.spec.split("; ") if " " in p)
    key_type, _, data_type = parts.get("type", "").partition(" : ")
    types = [t.strip() for t in key_type.split(" . ")]
    obj: dict[str, Any] = {"family": family, "name": name, "table": table,
                           "type": types[0] if len(types) == 1 else types}
    if s.kind == "map":
        obj["map"] = data_type.strip()
    if "flags" in parts:
        obj["flags"] = [f.strip() for f in parts["flags"].split(",")]
    elems = []
    for key, (value, comment) in s.elements.items():
        k = {"elem": {"val": _json_value(key), "comment": comment}} if comment else _json_value(key)
        elems.append([k, _json_value(value)] if s.kind == "map" and value is not None else k)
    if elems:
        obj["elem"] = elems
    return {s.kind: obj}


def _chain_json(family: str, table: str, name: str, chain: FakeChain) -> dict[str, Any]:
    obj: dict[str, Any] = {"family": family, "table": table, "name": name}
    words = chain.spec.replace(";", " ").split()
    for key, json_key in (("type", "type"), ("hook", "hook"), ("priority", "prio"), ("policy", "policy")):
        if key in words and words.index(key) + 1 < len(words):
            obj[json_key] = words[words.index(key) + 1]
    return {"chain": obj}


def _listing(family: str, name: str, table: FakeTable) -> dict[str, Any]:
    objs: list[dict[str, Any]] = [{"metainfo": {"version": "fake"}},
                                  {"table": {"family": family, "name": name}}]
    objs += [_set_json(family, name, n, s) for n, s in table.sets.items()]
    for chain_name, chain in table.chains.items():
        objs.append(_chain_json(family, name, chain_name, chain))
        objs += [{"rule": {"family": family, "table": name, "chain": chain_name, "handle": h,
                           "expr": [{"fake": text}]}} for h, text in chain.rules]
    return {"nftables": objs}
