"""The claim-status ValidatingAdmissionPolicy, evaluated as the API server evaluates it: the kubelet
plugin's status writes may change only its driver's status.devices entries in its node's pool."""
from __future__ import annotations

import copy
from typing import Any

from tests.deploy.test_admission_policy import PLUGIN_USER, admit

POLICY = "-claim-status"


def _claim(devices: list[dict[str, Any]] | None = None, *, reserved: str = "pod-a") -> dict[str, Any]:
    status: dict[str, Any] = {
        "allocation": {"devices": {"results": [{"request": "gpu", "driver": "vgpu.dra.dev", "pool": "node-a",
                                                "device": "gpu-0"}]}},
        "reservedFor": [{"resource": "pods", "name": reserved, "uid": "1"}],
    }
    if devices is not None:
        status["devices"] = devices
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim", "metadata": {"name": "c"},
            "spec": {}, "status": status}


def _ours(pool: str = "node-a", wall: str = "2Gi", driver: str = "vgpu.dra.dev") -> dict[str, Any]:
    return {"driver": driver, "pool": pool, "device": "gpu-0", "data": {"memoryLimit": wall}}


def _admit(old: dict[str, Any], new: dict[str, Any], node: str | None = "node-a") -> str | None:
    return admit("UPDATE", PLUGIN_USER, node, old, new, policy_suffix=POLICY)


def test_the_plugin_writes_and_removes_its_own_entries():
    assert _admit(_claim(), _claim([_ours()])) is None
    assert _admit(_claim([_ours()]), _claim([_ours(wall="4Gi")])) is None
    other = {"driver": "net.example.com", "pool": "node-a", "device": "eth0"}
    assert _admit(_claim([other]), _claim([other, _ours()])) is None
    assert _admit(_claim([other, _ours()]), _claim([other])) is None


def test_the_plugin_may_not_touch_other_drivers_other_nodes_or_the_allocation():
    other = {"driver": "net.example.com", "pool": "node-a", "device": "eth0"}
    assert "may change only the status.devices entries" in _admit(_claim([other]), _claim([]))
    assert "may change only" in _admit(_claim(), _claim([_ours(driver="net.example.com")]))
    assert "may change only" in _admit(_claim(), _claim([_ours(pool="node-b")]))
    assert _admit(_claim(), _claim(reserved="pod-b")) == \
        "the vgpu-dra kubelet plugin may not change a claim's allocation or reservedFor"
    moved = copy.deepcopy(_claim())
    moved["status"]["allocation"]["devices"]["results"][0]["device"] = "gpu-1"
    assert "may not change a claim's allocation" in _admit(_claim(), moved)
    dropped = _claim()
    del dropped["status"]["allocation"]
    assert "may not change a claim's allocation" in _admit(_claim(), dropped)


def test_a_token_without_a_node_is_refused():
    assert "names no node" in _admit(_claim(), _claim([_ours()]), node=None)


def test_other_users_are_not_matched():
    assert admit("UPDATE", "system:serviceaccount:kube-system:other", "node-a", _claim(), _claim(reserved="x"),
                 policy_suffix=POLICY) is None
