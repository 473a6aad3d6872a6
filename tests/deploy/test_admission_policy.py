"""The rendered ValidatingAdmissionPolicy, evaluated as the API server evaluates it (match
conditions, then variables in order, then every validation), on the ResourceSlice writes a
kubelet plugin, a compromised plugin and other users make."""
from __future__ import annotations

from typing import Any

import celpy
import pytest

from tests.deploy.chart import NAMESPACE, render

PLUGIN_USER = f"system:serviceaccount:{NAMESPACE}:vgpu-dra-kubelet-plugin"
NODE_NAME_KEY = "authentication.kubernetes.io/node-name"
ENV = celpy.Environment()


def _slice(node: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"driver": "vgpu.dra.dev", "pool": {"name": node or "shared", "generation": 1,
                                                               "resourceSliceCount": 1}}
    spec.update({"nodeName": node} if node else {"allNodes": True})
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice", "metadata": {"name": "s"}, "spec": spec}


def _evaluate(expression: str, activation: dict[str, Any]) -> Any:
    result = ENV.program(ENV.compile(expression)).evaluate(activation)
    if isinstance(result, Exception):
        raise result
    return result


NO_EXTRA = object()


def admit(operation: str, user: str, node_of_token: str | None, old: dict | None, new: dict | None, *,
          extra: Any = None, policy_suffix: str = "-resourceslices") -> str | None:
    """None when the write is allowed, else the denial message. The request's `userInfo.extra`
    holds the token's node name, or `extra` when given; `NO_EXTRA` leaves the field out, as the
    API server does for a user without extras."""
    policy = render().one("ValidatingAdmissionPolicy", policy_suffix)
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    if operation not in rule["operations"]:
        return None
    if extra is None:
        extra = {NODE_NAME_KEY: [node_of_token]} if node_of_token else {}
    user_info: dict[str, Any] = {"username": user, **({} if extra is NO_EXTRA else {"extra": extra})}
    activation: dict[str, Any] = {
        "request": celpy.json_to_cel({"operation": operation, "userInfo": user_info}),
        "object": celpy.json_to_cel(new), "oldObject": celpy.json_to_cel(old),
    }
    if not all(_evaluate(c["expression"], activation) for c in policy["spec"]["matchConditions"]):
        return None
    variables: dict[str, Any] = {}
    for variable in policy["spec"]["variables"]:
        activation["variables"] = celpy.celtypes.MapType(
            {celpy.celtypes.StringType(k): v for k, v in variables.items()})
        variables[variable["name"]] = _evaluate(variable["expression"], activation)
    activation["variables"] = celpy.celtypes.MapType({celpy.celtypes.StringType(k): v for k, v in variables.items()})
    for validation in policy["spec"]["validations"]:
        if not _evaluate(validation["expression"], activation):
            if "messageExpression" in validation:
                return str(_evaluate(validation["messageExpression"], activation))
            return validation["message"]
    return None


def test_a_plugin_publishes_and_updates_its_own_nodes_slices():
    assert admit("CREATE", PLUGIN_USER, "node-a", None, _slice("node-a")) is None
    assert admit("UPDATE", PLUGIN_USER, "node-a", _slice("node-a"), _slice("node-a")) is None
    assert admit("DELETE", PLUGIN_USER, "node-a", _slice("node-a"), None) is None


@pytest.mark.parametrize(("operation", "old", "new"), [
    ("CREATE", None, _slice("node-b")),
    ("UPDATE", _slice("node-b"), _slice("node-b")),
    ("DELETE", _slice("node-b"), None),
])
def test_a_plugin_cannot_touch_another_nodes_slices(operation, old, new):
    message = admit(operation, PLUGIN_USER, "node-a", old, new)
    assert message == "the vgpu-dra kubelet plugin on node node-a may not modify ResourceSlices of node node-b"


def test_a_plugin_cannot_publish_slices_for_all_nodes():
    message = admit("CREATE", PLUGIN_USER, "node-a", None, _slice(None))
    assert message == "the vgpu-dra kubelet plugin on node node-a may not modify ResourceSlices without a node"


@pytest.mark.parametrize("extra", [{}, NO_EXTRA, {"authentication.kubernetes.io/pod-name": ["plugin-x"]},
                                   {NODE_NAME_KEY: []}],
                         ids=["empty extras", "no extras at all", "extras without the node name", "empty node name"])
def test_a_token_without_a_node_is_refused_with_the_policys_own_reason(extra):
    message = admit("CREATE", PLUGIN_USER, None, None, _slice("node-a"), extra=extra)
    assert message is not None and "names no node" in message, message


@pytest.mark.parametrize("user", ["system:node:node-b", f"system:serviceaccount:{NAMESPACE}:vgpu-dra-controller",
                                  "system:serviceaccount:other:vgpu-dra-kubelet-plugin"])
def test_other_users_are_left_to_rbac(user):
    assert admit("CREATE", user, "node-a", None, _slice("node-b")) is None
