"""Namespace GPU quotas on the real control plane, as a HAMi user writes them: a ResourceQuota on
limits.nvidia.com/gpumem applied with kubectl, pods from a ResourceClaimTemplate, the controller
under its own ServiceAccount (so the chart's RBAC must let it watch ResourceQuotas)."""
from __future__ import annotations

import json
from typing import Any

import pytest

from tests.cli.conftest import vgpu_dra
from tests.cluster.real_cluster import wait_until
from tests.e2e.install import Installation
from tests.e2e.test_lifecycle import _claims, _delete, _template_and_pods
from vgpu_dra.controller.kubeapi import EVENTS, PODS

pytestmark = pytest.mark.e2e

NAMESPACE = "default"
QUOTA = """apiVersion: v1
kind: ResourceQuota
metadata: {name: team-gpu}
spec:
  hard:
    limits.nvidia.com/gpumem: "3072"
"""


def _allocated(installation: Installation) -> list[dict[str, Any]]:
    return [c for c in _claims(installation) if (c.get("status") or {}).get("allocation")]


def _status(installation: Installation) -> dict[str, Any]:
    result = vgpu_dra("status", "--kubeconfig", str(installation.cluster.kubeconfig), "-o", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["quotas"]


def test_a_team_quota_holds_its_claims_to_the_budget_and_frees_with_a_pod(installation: Installation) -> None:
    cluster = installation.cluster
    manifest = _template_and_pods("team", 4, "1Gi")
    cluster.kubectl("apply", "-f", "-", input=QUOTA)
    try:
        cluster.kubectl("apply", "-f", "-", input=manifest)
        if installation.allocator == "scheduler":
            # kube-scheduler allocates: nothing refuses, and status says who does not enforce.
            wait_until(lambda: len(_allocated(installation)) == 4, 90, "all four claims allocated by kube-scheduler")
            [row] = _status(installation)["namespaces"]
            assert row["memoryUsedBytes"] == 4 << 30 and row["memoryFreeBytes"] == 0
            assert any("kube-scheduler" in note and "never refused" in note for note in _status(installation)["notes"])
            return

        def refusal() -> str:
            # Events outlive their claims: only one about a claim of this run counts.
            names = {c["metadata"]["name"] for c in _claims(installation)}
            events = cluster.kube.list(EVENTS, NAMESPACE).get("items") or []
            return next((e["message"] for e in events if e.get("reason") == "QuotaExceeded"
                         and e["involvedObject"]["kind"] == "ResourceClaim"
                         and e["involvedObject"]["name"] in names), "")

        message = wait_until(refusal, 90, "a QuotaExceeded event on the fourth claim")
        assert "ResourceQuota team-gpu is 3072 MiB (3 GiB)" in message, message
        wait_until(lambda: len(_allocated(installation)) == 3, 60, "three claims allocated")
        [row] = _status(installation)["namespaces"]
        assert (row["namespace"], row["memoryBytes"], row["memoryUsedBytes"], row["memoryFreeBytes"]) == \
            (NAMESPACE, 3 << 30, 3 << 30, 0)
        assert row["resourceQuotas"] == ["team-gpu"]
        waiting = next(c for c in _claims(installation) if not (c.get("status") or {}).get("allocation"))
        holder = next(p for p in cluster.kube.list(PODS, NAMESPACE, label_selector="test=team")["items"]
                      if p["spec"].get("nodeName"))
        cluster.kubectl("delete", "pod", holder["metadata"]["name"], "--grace-period=0", "--force")
        wait_until(lambda: any(c["metadata"]["name"] == waiting["metadata"]["name"] for c in _allocated(installation)),
                   90, "the waiting claim allocated once a pod (and its claim) was deleted")
        assert len(_allocated(installation)) <= 3
    finally:
        _delete(installation, manifest)
        cluster.kubectl("delete", "-f", "-", input=QUOTA, check=False)
