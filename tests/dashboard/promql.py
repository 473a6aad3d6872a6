"""What a dashboard query reads: the metric selectors and grouping labels of a PromQL expression,
parsed with a real PromQL parser after Grafana's variables are substituted."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import promql_parser

# Grafana substitutes these before Prometheus sees the query; any valid value will do for parsing.
_GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
_USER_VARIABLE = re.compile(r"\$\{?(\w+)\}?")


@dataclass
class QueryReads:
    """Selectors (metric name → label names matched) and labels named in by/on/ignoring clauses."""

    selectors: list[tuple[str, frozenset[str]]] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)


def substitute(expr: str) -> str:
    """The query as Prometheus receives it, with every variable replaced by a plausible value."""
    for variable, value in _GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return _USER_VARIABLE.sub(".*", expr)


def reads(expr: str) -> QueryReads:
    """Parse ``expr`` (ValueError on bad PromQL) and collect what it reads."""
    found = QueryReads()
    _walk(promql_parser.parse(substitute(expr)), found)
    return found


def _walk(node: object, found: QueryReads) -> None:
    if isinstance(node, promql_parser.VectorSelector):
        labels = frozenset(m.name for m in node.matchers.matchers if m.name != "__name__")
        found.selectors.append((node.name, labels))
        return
    if isinstance(node, promql_parser.MatrixSelector):
        _walk(node.vector_selector, found)
        return
    if isinstance(node, promql_parser.AggregateExpr):
        if node.modifier is not None:
            found.grouping.update(node.modifier.labels)
        _walk(node.expr, found)
        if node.param is not None:
            _walk(node.param, found)
        return
    if isinstance(node, promql_parser.BinaryExpr):
        if node.modifier is not None and node.modifier.matching is not None:
            found.grouping.update(node.modifier.matching.labels)
        _walk(node.lhs, found)
        _walk(node.rhs, found)
        return
    if isinstance(node, promql_parser.Call):
        for arg in node.args:
            _walk(arg, found)
        return
    if isinstance(node, (promql_parser.ParenExpr, promql_parser.UnaryExpr, promql_parser.SubqueryExpr)):
        _walk(node.expr, found)
