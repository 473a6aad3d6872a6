"""Label and field selectors in the query-string syntax the real API server parses."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

Predicate = Callable[[dict[str, Any]], bool]


class SelectorError(ValueError):
    """A selector that does not parse, or names a field the resource cannot be selected on."""


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside parentheses ("a in (x,y),b" → ["a in (x,y)", "b"])."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


_SET_EXPR = re.compile(r"^([A-Za-z0-9_./-]+)\s+(in|notin)\s+\((.*)\)$")
_CMP_EXPR = re.compile(r"^([A-Za-z0-9_./-]+)\s*(==|!=|=)\s*([A-Za-z0-9_.-]*)$")
_KEY = re.compile(r"^[A-Za-z0-9_./-]+$")


@dataclass(frozen=True)
class _Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists"
    values: frozenset[str]

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op in ("=", "in"):
            return present and labels[self.key] in self.values
        return not present or labels[self.key] not in self.values


def parse_label_selector(text: str | None) -> Predicate | None:
    """A predicate over an object for ?labelSelector=, or None when there is no selector."""
    if not text:
        return None
    reqs: list[_Requirement] = []
    for part in _split_top_level(text):
        m = _SET_EXPR.match(part)
        if m:
            values = frozenset(v.strip() for v in m.group(3).split(",") if v.strip())
            reqs.append(_Requirement(m.group(1), m.group(2), values))
            continue
        m = _CMP_EXPR.match(part)
        if m:
            op = "!=" if m.group(2) == "!=" else "="
            reqs.append(_Requirement(m.group(1), op, frozenset([m.group(3)])))
            continue
        if part.startswith("!") and _KEY.match(part[1:].strip()):
            reqs.append(_Requirement(part[1:].strip(), "!exists", frozenset()))
            continue
        if _KEY.match(part):
            reqs.append(_Requirement(part, "exists", frozenset()))
            continue
        raise SelectorError(f"unable to parse requirement: {part!r}")

    def predicate(obj: dict[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(r.matches(labels) for r in reqs)

    return predicate


def _field_value(obj: dict[str, Any], path: str) -> str:
    node: Any = obj
    for part in path.split("."):
        if not isinstance(node, dict):
            return ""
        node = node.get(part)
    if node is None:
        return ""
    if isinstance(node, bool):
        return "true" if node else "false"
    return str(node)


def parse_field_selector(text: str | None, supported: frozenset[str], kind: str) -> Predicate | None:
    """A predicate for ?fieldSelector=; only metadata.name, metadata.namespace and `supported`."""
    if not text:
        return None
    terms: list[tuple[str, bool, str]] = []
    for part in _split_top_level(text):
        m = re.match(r"^([A-Za-z0-9_.]+)\s*(==|!=|=)\s*(.*)$", part)
        if not m:
            raise SelectorError(f"invalid selector: {part!r}; can't understand {part!r}")
        field, op, value = m.group(1), m.group(2), m.group(3)
        if field not in ("metadata.name", "metadata.namespace") and field not in supported:
            raise SelectorError(f'field label not supported: {field} (for {kind})')
        terms.append((field, op != "!=", value))

    def predicate(obj: dict[str, Any]) -> bool:
        return all((_field_value(obj, f) == v) == equal for f, equal, v in terms)

    return predicate
