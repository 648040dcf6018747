r"""Label and field selectors with the grammar and semantics of k8s.io/apimachinery.

Label selectors (pkg/labels/selector.go): comma-separated requirements, all of which must hold:
`k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k` (exists), `!k` (does not exist) and the
rarely used `k>N` / `k<N`. `!=` and `notin` also match objects WITHOUT the label (upstream).
Field selectors (pkg/fields/selector.go): `field=v`, `field==v`, `field!=v` joined by commas, values
compared as strings; `\\`, `\,` and `\=` escape inside values. Which fields a resource supports is
the server's business: it passes `allowed` and an unknown field raises SelectorError (-> 400).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FieldSelector",
    "LabelSelector",
    "Requirement",
    "SelectorError",
    "label_selector_from_spec",
    "parse_field_selector",
    "parse_label_selector",
    "selector_from_set",
    "validate_label_key",
    "validate_label_value",
]


class SelectorError(ValueError):
    """A selector that does not parse, or names a field/operator the server does not support."""


# ---------------------------------------------------------------------------------------------
# Label key / value syntax (k8s.io/apimachinery/pkg/util/validation: IsQualifiedName, IsValidLabelValue)

_NAME_RE = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS1123_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_NAME_MAX = 63
_PREFIX_MAX = 253


def validate_label_key(key: str) -> None:
    """Raise SelectorError unless `key` is a qualified name: [DNS-subdomain prefix '/'] name."""
    prefix, slash, name = key.rpartition("/")
    if slash and not prefix:
        raise SelectorError(f"invalid label key {key!r}: prefix part must be non-empty")
    if prefix and (len(prefix) > _PREFIX_MAX or not _DNS1123_SUBDOMAIN_RE.match(prefix)):
        raise SelectorError(
            f"invalid label key {key!r}: prefix part must be a lowercase RFC 1123 subdomain "
            f"of at most {_PREFIX_MAX} characters"
        )
    if not name:
        raise SelectorError(f"invalid label key {key!r}: name part must be non-empty")
    if len(name) > _NAME_MAX or not _NAME_RE.match(name):
        raise SelectorError(
            f"invalid label key {key!r}: name part must consist of alphanumeric characters, '-', '_' "
            f"or '.', start and end with an alphanumeric character and be at most {_NAME_MAX} characters"
        )


def validate_label_value(value: str) -> None:
    """Raise SelectorError unless `value` is empty or a valid label value (<= 63, name charset)."""
    if value == "":
        return
    if len(value) > _NAME_MAX or not _NAME_RE.match(value):
        raise SelectorError(
            f"invalid label value {value!r}: must be {_NAME_MAX} characters or less and consist of "
            "alphanumeric characters, '-', '_' or '.', starting and ending with an alphanumeric character"
        )


# ---------------------------------------------------------------------------------------------
# Requirements and label selectors

EQUALS, DOUBLE_EQUALS, NOT_EQUALS = "=", "==", "!="
IN, NOT_IN, EXISTS, DOES_NOT_EXIST, GREATER, LESS = "in", "notin", "exists", "!", "gt", "lt"
_SET_OPS = frozenset({IN, NOT_IN})
_VALUE_OPS = frozenset({EQUALS, DOUBLE_EQUALS, NOT_EQUALS})


@dataclass(frozen=True)
class Requirement:
    """One `key op values` term; values are kept sorted like upstream's sets.String."""

    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.operator in (EQUALS, DOUBLE_EQUALS, IN):
            return present and value in self.values
        if self.operator in (NOT_EQUALS, NOT_IN):
            return not present or value not in self.values
        if self.operator == EXISTS:
            return present
        if self.operator == DOES_NOT_EXIST:
            return not present
        return present and _compare_int(str(value), self.operator, self.values[0])

    def __str__(self) -> str:
        if self.operator == EXISTS:
            return self.key
        if self.operator == DOES_NOT_EXIST:
            return "!" + self.key
        if self.operator in _SET_OPS:
            return f"{self.key} {self.operator} ({','.join(self.values)})"
        symbol = {GREATER: ">", LESS: "<"}.get(self.operator, self.operator)
        return f"{self.key}{symbol}{self.values[0]}"


def _compare_int(label_value: str, operator: str, bound: str) -> bool:
    # Upstream: a label value that is not an integer never matches gt/lt.
    try:
        number = int(label_value)
    except ValueError:
        return False
    return number > int(bound) if operator == GREATER else number < int(bound)


def make_requirement(key: str, operator: str, values: Iterable[str]) -> Requirement:
    """Validate like upstream labels.NewRequirement and build the Requirement."""
    validate_label_key(key)
    vals = sorted(set(values))
    if operator in _SET_OPS and not vals:
        raise SelectorError("for 'in', 'notin' operators, values set can't be empty")
    if operator in _VALUE_OPS and len(vals) != 1:
        raise SelectorError("exact-match compatibility requires one single value")
    if operator in (EXISTS, DOES_NOT_EXIST) and vals:
        raise SelectorError("values set must be empty for exists and does not exist")
    if operator in (GREATER, LESS):
        if len(vals) != 1:
            raise SelectorError("for 'Gt', 'Lt' operators, exactly one value is required")
        try:
            int(vals[0])
        except ValueError:
            raise SelectorError(
                f"for 'Gt', 'Lt' operators, the value must be an integer, not {vals[0]!r}"
            ) from None
    else:
        for value in vals:
            validate_label_value(value)
    return Requirement(key, operator, tuple(vals))


@dataclass(frozen=True)
class LabelSelector:
    """A conjunction of requirements; no requirements = everything, `nothing` = matches no object."""

    requirements: tuple[Requirement, ...] = ()
    nothing: bool = False

    @property
    def empty(self) -> bool:
        """True when the selector selects everything (upstream Selector.Empty())."""
        return not self.requirements and not self.nothing

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        if self.nothing:
            return False
        found = labels or {}
        return all(req.matches(found) for req in self.requirements)

    def __str__(self) -> str:
        return ",".join(str(req) for req in self.requirements)


EVERYTHING = LabelSelector()
NOTHING = LabelSelector(nothing=True)


# ---------------------------------------------------------------------------------------------
# Label selector lexer and parser (mirrors upstream's Lexer/Parser so errors fall at the same terms)

_TOKEN_RE = re.compile(r"\s*(?:(==|!=|[=!(),<>])|([^\s=!(),<>]+))")
_END = ("end", "")


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN_RE.match(text, pos)
        if match is None:  # pragma: no cover - the regex accepts every non-space character
            raise SelectorError(f"unable to parse requirement: unexpected text at {text[pos:]!r}")
        symbol, ident = match.groups()
        tokens.append(("sym", symbol) if symbol else ("id", ident))
        pos = match.end()
    return tokens


class _LabelParser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.pos = 0

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else _END

    def take(self) -> tuple[str, str]:
        token = self.peek()
        self.pos += 1
        return token

    def parse(self) -> list[Requirement]:
        requirements: list[Requirement] = []
        while self.peek() != _END:
            requirements.append(self.requirement())
            kind, text = self.take()
            if (kind, text) == _END:
                break
            if (kind, text) != ("sym", ","):
                raise SelectorError(f"found '{text}', expected: ',' or 'end of string'")
            if self.peek() == _END:
                raise SelectorError("found '', expected: identifier after ','")
        return requirements

    def requirement(self) -> Requirement:
        kind, text = self.take()
        if (kind, text) == ("sym", "!"):
            return make_requirement(self.identifier("key"), DOES_NOT_EXIST, ())
        if kind != "id":
            raise SelectorError(f"found '{text}', expected: !, identifier, or 'end of string'")
        key = text
        if self.peek() in (_END, ("sym", ",")):
            return make_requirement(key, EXISTS, ())
        operator = self.operator()
        if operator in _SET_OPS:
            return make_requirement(key, operator, self.value_set())
        return make_requirement(key, operator, (self.exact_value(),))

    def identifier(self, what: str) -> str:
        kind, text = self.take()
        if kind != "id":
            raise SelectorError(f"found '{text}', expected: {what}")
        return text

    def operator(self) -> str:
        kind, text = self.take()
        operators = {"in": IN, "notin": NOT_IN, "=": EQUALS, "==": DOUBLE_EQUALS, "!=": NOT_EQUALS,
                     ">": GREATER, "<": LESS}
        if text in operators and (kind == "sym" or text in ("in", "notin")):
            return operators[text]
        raise SelectorError(f"found '{text}', expected: in, notin, =, ==, !=, gt, lt")

    def exact_value(self) -> str:
        # `k=` (nothing before ',' or the end) means the empty value, as upstream.
        if self.peek() in (_END, ("sym", ",")):
            return ""
        return self.identifier("identifier")

    def value_set(self) -> list[str]:
        # Mirrors upstream parseIdentifiersList: `(a,)`, `(,a)` and `(a,,b)` carry an empty value.
        if self.take() != ("sym", "("):
            raise SelectorError("found '', expected: '('")
        values: list[str] = []
        if self.peek() == ("sym", ")"):
            self.take()
            return values
        while True:
            kind, text = self.take()
            if kind == "id":
                values.append(text)
                separator = self.take()
                if separator == ("sym", ")"):
                    return values
                if separator != ("sym", ","):
                    raise SelectorError(f"found '{separator[1]}', expected: ',' or ')'")
            elif (kind, text) == ("sym", ","):
                values.append("")
            else:
                raise SelectorError(f"found '{text}', expected: ',', or identifier")
            if self.peek() == ("sym", ")"):
                self.take()
                values.append("")
                return values


def parse_label_selector(text: str | None) -> LabelSelector:
    """Parse a `labelSelector` query value; "" (or None) selects everything."""
    if text is None or text.strip() == "":
        return EVERYTHING
    requirements = _LabelParser(text).parse()
    # Upstream sorts by key (stable) so the canonical string is independent of term order.
    return LabelSelector(tuple(sorted(requirements, key=lambda req: req.key)))


def selector_from_set(labels: Mapping[str, str] | None) -> LabelSelector:
    """Equality selector for a plain map selector (Service.spec.selector, RC spec.selector)."""
    reqs = [make_requirement(key, EQUALS, (value,)) for key, value in sorted((labels or {}).items())]
    return LabelSelector(tuple(reqs))


_EXPRESSION_OPS = {"In": IN, "NotIn": NOT_IN, "Exists": EXISTS, "DoesNotExist": DOES_NOT_EXIST}


def label_selector_from_spec(spec: Mapping[str, Any] | None) -> LabelSelector:
    """metav1.LabelSelectorAsSelector: matchLabels AND matchExpressions; None matches nothing."""
    if spec is None:
        return NOTHING
    requirements: list[Requirement] = []
    for key, value in sorted((spec.get("matchLabels") or {}).items()):
        requirements.append(make_requirement(str(key), EQUALS, (str(value),)))
    for expression in spec.get("matchExpressions") or []:
        operator = _EXPRESSION_OPS.get(expression.get("operator", ""))
        if operator is None:
            raise SelectorError(f"{expression.get('operator')!r} is not a valid label selector operator")
        values = [str(v) for v in expression.get("values") or []]
        requirements.append(make_requirement(str(expression.get("key", "")), operator, values))
    return LabelSelector(tuple(sorted(requirements, key=lambda req: req.key)))


# ---------------------------------------------------------------------------------------------
# Field selectors


@dataclass(frozen=True)
class FieldSelector:
    """Conjunction of (field, op, value) with op in '=', '!='; fields are dotted object paths."""

    requirements: tuple[tuple[str, str, str], ...] = ()

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, obj: Mapping[str, Any]) -> bool:
        for field, op, value in self.requirements:
            actual = field_value(obj, field)
            if (actual == value) != (op == "="):
                return False
        return True

    def value_for(self, field: str) -> str | None:
        """The value an `=` requirement pins `field` to (for index lookups), else None."""
        for name, op, value in self.requirements:
            if name == field and op == "=":
                return value
        return None

    def __str__(self) -> str:
        return ",".join(f"{field}{op}{_escape(value)}" for field, op, value in self.requirements)


# Fields whose upstream field-set value is not "" when unset: the registries format Go zero values
# (pods: strconv.FormatBool(spec.hostNetwork); nodes: spec.unschedulable; rc/rs: strconv.Itoa(replicas)).
_UNSET_DEFAULTS = {"spec.hostNetwork": "false", "spec.unschedulable": "false", "status.replicas": "0"}
# Selectable fields that are not the object's JSON path (events: "source" is Source.Component).
_FIELD_PATHS = {"source": "source.component"}


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """The string form upstream puts in an object's fields.Set for `path` ("" when unset)."""
    current: Any = obj
    for part in _FIELD_PATHS.get(path, path).split("."):
        if not isinstance(current, Mapping) or part not in current:
            return _UNSET_DEFAULTS.get(path, "")
        current = current[part]
    if current is None:
        return _UNSET_DEFAULTS.get(path, "")
    if isinstance(current, bool):
        return "true" if current else "false"
    return str(current)


def _split_unescaped(text: str, separator: str) -> list[str]:
    parts, current, escaped = [], [], False
    for char in text:
        if escaped:
            current.append("\\" + char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if escaped:
        current.append("\\")
    parts.append("".join(current))
    return parts


def _unescape(value: str) -> str:
    out, escaped = [], False
    for char in value:
        if escaped:
            if char not in "\\,=":
                raise SelectorError(f"invalid field selector value {value!r}: invalid escape sequence")
            out.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in ",=":
            raise SelectorError(f"invalid field selector value {value!r}: unescaped {char!r}")
        else:
            out.append(char)
    if escaped:
        raise SelectorError(f"invalid field selector value {value!r}: invalid escape sequence")
    return "".join(out)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=")


def _split_term(term: str) -> tuple[str, str, str] | None:
    # Upstream splitTerm: the first position where '!=', '==' or '=' starts (outside escapes).
    index = 0
    while index < len(term):
        if term[index] == "\\":
            index += 2
            continue
        for op in ("!=", "==", "="):
            if term.startswith(op, index):
                return term[:index], op, term[index + len(op):]
        index += 1
    return None


def parse_field_selector(text: str | None, allowed: Iterable[str]) -> FieldSelector:
    """Parse a `fieldSelector` query value, refusing fields not in `allowed` like upstream."""
    if text is None or text.strip() == "":
        return FieldSelector()
    allowed_fields = set(allowed)
    requirements: list[tuple[str, str, str]] = []
    for term in sorted(_split_unescaped(text, ",")):
        if term.strip() == "":
            continue
        parts = _split_term(term)
        if parts is None:
            raise SelectorError(f"invalid selector: '{text}'; can't understand '{term}'")
        field, op, raw_value = parts
        field = field.strip()
        if field not in allowed_fields:
            raise SelectorError(f"field label not supported: {field}")
        requirements.append((field, "!=" if op == "!=" else "=", _unescape(raw_value.strip())))
    return FieldSelector(tuple(requirements))
