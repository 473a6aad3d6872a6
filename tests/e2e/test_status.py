"""`vgpu-dra status` on the real control plane: what the real API server answers to its lists
(pending pods by field selector, webhook configurations by label) is what the user sees."""
from __future__ import annotations

import json

import pytest

from tests.cli.conftest import vgpu_dra
from tests.cluster.real_cluster import wait_until
from tests.e2e.install import Installation
from vgpu_dra.controller.kubeapi import PODS

pytestmark = pytest.mark.e2e

# A pod from the users' HAMi manifests, applied where no HAMi webhook translates it: nothing serves
# nvidia.com/gpumem, so it waits with no event of ours.
HAMI_POD = """apiVersion: v1
kind: Pod
metadata: {name: hami-trainer, namespace: default}
spec:
  containers:
  - name: trainer
    image: registry.example/trainer:1
    resources:
      limits: {nvidia.com/gpu: "1", nvidia.com/gpumem: "3000", nvidia.com/gpucores: "30"}
"""


def test_a_pod_still_written_for_hami_is_named_with_the_way_over(installation: Installation) -> None:
    cluster = installation.cluster
    kubeconfig = str(cluster.kubeconfig)
    cluster.kubectl("apply", "-f", "-", input=HAMI_POD)
    try:
        wait_until(lambda: cluster.kube.get(PODS, "hami-trainer", "default").get("status", {}).get("phase") == "Pending",
                   30, "the HAMi pod pending")
        table = vgpu_dra("status", "--kubeconfig", kubeconfig)
        assert table.returncode == 0, table.stderr
        section = table.stdout[table.stdout.index("Pods written for HAMi"):].splitlines()
        assert "1 pending pod(s) ask for HAMi resources that nothing here serves (default/hami-trainer)" in section[1]
        assert "hamiWebhook.enabled=true" in section[2]
    finally:
        cluster.kubectl("delete", "--wait=false", "-f", "-", input=HAMI_POD, check=False)
    wait_until(lambda: not cluster.kube.list(PODS, "default", field_selector="metadata.name=hami-trainer")["items"],
               60, "the HAMi pod deleted")
    document = json.loads(vgpu_dra("status", "--kubeconfig", kubeconfig, "-o", "json").stdout)
    assert document["hamiPods"]["status"] == "ok", document["hamiPods"]
