"""Which nodes a pod may run on: nodeSelector, required node affinity, taints vs tolerations.

The same checks kube-scheduler applies before it would bind the pod, so the controller never
allocates a claim on a node the pod cannot land on. Pure functions over raw JSON.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from vgpu_dra.driver.device_taints import DeviceTaint, TaintError, Toleration

JsonObject = Mapping[str, Any]

_BLOCKING_EFFECTS = ("NoSchedule", "NoExecute")


def _labels(node: JsonObject) -> Mapping[str, str]:
    return (node.get("metadata") or {}).get("labels") or {}


def _match_expression(labels: Mapping[str, str], expression: JsonObject) -> bool:
    key = expression.get("key", "")
    operator = expression.get("operator", "")
    values = expression.get("values") or []
    present = key in labels
    if operator == "In":
        return present and labels[key] in values
    if operator == "NotIn":
        return not present or labels[key] not in values
    if operator == "Exists":
        return present
    if operator == "DoesNotExist":
        return not present
    if operator in ("Gt", "Lt"):
        if not present or len(values) != 1:
            return False
        try:
            have, want = int(labels[key]), int(values[0])
        except ValueError:
            return False
        return have > want if operator == "Gt" else have < want
    return False


def _match_field(node: JsonObject, expression: JsonObject) -> bool:
    # The only field the API server accepts in node selector terms is metadata.name.
    if expression.get("key") != "metadata.name":
        return False
    name = (node.get("metadata") or {}).get("name", "")
    values = expression.get("values") or []
    operator = expression.get("operator")
    if operator == "In":
        return name in values
    if operator == "NotIn":
        return name not in values
    return False


def _match_term(node: JsonObject, term: JsonObject) -> bool:
    expressions = term.get("matchExpressions") or []
    fields = term.get("matchFields") or []
    if not expressions and not fields:
        return False  # an empty term matches nothing
    labels = _labels(node)
    return all(_match_expression(labels, e) for e in expressions) and all(_match_field(node, f) for f in fields)


def node_selector_matches(node: JsonObject, selector: JsonObject | None) -> bool:
    """A v1.NodeSelector: the terms are ORed, each term's requirements ANDed. None matches all."""
    if not selector:
        return True
    return any(_match_term(node, term) for term in selector.get("nodeSelectorTerms") or [])


def _tolerates(tolerations: Sequence[JsonObject], taint: JsonObject) -> bool:
    # Node taints and pod tolerations match by the same rule as device taints and request
    # tolerations (core/v1 ToleratesTaint): one implementation for both.
    node_taint = DeviceTaint(str(taint.get("key") or ""), str(taint.get("value") or ""), str(taint.get("effect") or ""))
    for raw in tolerations:
        try:
            toleration = Toleration.parse(raw, field="toleration")
        except TaintError:
            continue  # an operator the API server would not have accepted tolerates nothing
        if toleration.tolerates(node_taint):
            return True
    return False


def untolerated_taint(pod: JsonObject, node: JsonObject) -> JsonObject | None:
    """The first NoSchedule/NoExecute taint of `node` the pod does not tolerate, else None."""
    tolerations = (pod.get("spec") or {}).get("tolerations") or []
    for taint in (node.get("spec") or {}).get("taints") or []:
        if taint.get("effect") in _BLOCKING_EFFECTS and not _tolerates(tolerations, taint):
            return taint
    return None


def pod_fits_node(pod: JsonObject, node: JsonObject) -> str | None:
    """None when the pod may run on `node`, else a short reason (for refusal messages)."""
    spec = pod.get("spec") or {}
    name = (node.get("metadata") or {}).get("name", "")
    if spec.get("nodeName") and spec["nodeName"] != name:
        return "pod is bound to another node"
    labels = _labels(node)
    for key, value in (spec.get("nodeSelector") or {}).items():
        if labels.get(key) != value:
            return "pod nodeSelector does not match"
    affinity = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution")
    if affinity and not node_selector_matches(node, affinity):
        return "pod node affinity does not match"
    taint = untolerated_taint(pod, node)
    if taint is not None:
        return f"node has taint {taint.get('key')}={taint.get('value', '')}:{taint.get('effect')} the pod does not tolerate"
    if (node.get("spec") or {}).get("unschedulable"):
        return "node is cordoned"
    return None
