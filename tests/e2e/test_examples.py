"""examples/ on a real cluster: controller allocates, kube-scheduler binds, the plugin prepares.

    VGPU_E2E_KUBECONFIG=~/.kube/config VGPU_E2E_FAKE_NODES=1 .venv/bin/python -m pytest -q tests/e2e

With ``VGPU_E2E_FAKE_NODES=1`` the test creates a Node ``e2e-<random>`` whose kubelet it plays
(use this on clusters where vgpu-dra is deployed, so nothing else publishes for that node);
otherwise it publishes fake-NVML GPUs for the existing node named by ``VGPU_E2E_NODE``. With an
allocation controller already deployed, point ``VGPU_E2E_LEASE_NAMESPACE`` (and
``VGPU_E2E_LEASE_NAME``) at its Lease: the in-process controller then stands by and the deployed
one does the allocating (default Lease: kube-system/vgpu-dra-controller).
"""
from __future__ import annotations

import os

import pytest

from tests.e2e.conftest import requires_cluster

pytestmark = [pytest.mark.e2e, requires_cluster]

# examples/workloads → the share each pod's claim asks for (memoryPercent, cores)
EXPECTED = {"worker-a-e2e": (20, 25), "worker-b-e2e": (30, 40)}


def test_examples_allocated_bound_and_prepared(e2e_api_client, fake_nvml, short_tmp, plugin_stubs):
    from tests.e2e.scenario import (EXAMPLES, PODS, RESOURCE_CLAIMS, KubeApi, controller_running, e2e_cluster,
                                    load_documents, pod_from_workload, wait_until)
    from tests.plugin.kubelet_client import Claim
    from tests.plugin.node import kubelet_for, node_settings, shim_library
    from vgpu_dra.api.quantity import parse_bytes
    from vgpu_dra.driver.claimconfig import parse
    from vgpu_dra.driver.inventory_file import load_inventory
    from vgpu_dra.kubeletplugin.plugin import KubeletPlugin

    make_fake_node = os.environ.get("VGPU_E2E_FAKE_NODES") == "1"
    node = None if make_fake_node else os.environ.get("VGPU_E2E_NODE")
    if not make_fake_node and not node:
        pytest.fail("set VGPU_E2E_FAKE_NODES=1, or VGPU_E2E_NODE to the node whose kubelet this test may play")
    kube = KubeApi(e2e_api_client)
    with e2e_cluster(kube, node=node, make_fake_node=make_fake_node) as cluster:
        fake_nvml.use(EXAMPLES / "inventory" / "rtx3080.yaml")
        settings = node_settings(short_tmp, cluster.node, shim_library(short_tmp), metrics_port=None)
        plugin = KubeletPlugin(settings, e2e_api_client)
        plugin.start()
        try:
            with controller_running(e2e_api_client, leader_elect=True):
                for workload in load_documents(EXAMPLES / "workloads"):
                    pod = pod_from_workload(workload, cluster.namespace, cluster.node,
                                            tolerate_unhealthy=make_fake_node)
                    kube.create(PODS, pod, cluster.namespace)
                    cluster.pods.append(pod["metadata"]["name"])
                assert sorted(cluster.pods) == sorted(EXPECTED)
                for name in cluster.pods:
                    wait_until(lambda name=name: kube.get(PODS, name, cluster.namespace)["spec"].get("nodeName"),
                               180, f"kube-scheduler to bind {name}")
                kubelet = kubelet_for(settings)
                try:
                    usable = load_inventory(EXAMPLES / "inventory" / "rtx3080.yaml").gpus[0].usable_memory_bytes
                    for name in cluster.pods:
                        pod = kube.get(PODS, name, cluster.namespace)
                        assert pod["spec"]["nodeName"] == cluster.node
                        [claim] = wait_until(lambda name=name: cluster.claims_of(name), 60, f"{name}'s claim")
                        uid = pod["metadata"]["uid"]
                        claim = wait_until(lambda claim=claim: next(
                            (c for c in [kube.get(RESOURCE_CLAIMS, claim["metadata"]["name"], cluster.namespace)]
                             if any(r.get("uid") == uid for r in c["status"].get("reservedFor") or [])), None),
                            60, f"{name} reserved in its claim")
                        [result] = claim["status"]["allocation"]["devices"]["results"]
                        assert result["pool"] == cluster.node and result["shareID"]
                        ref = Claim(cluster.namespace, claim["metadata"]["uid"], claim["metadata"]["name"])
                        answer = kubelet.prepare([ref])[ref.uid]
                        assert answer.error == ""
                        [device] = answer.devices
                        assert device.cdi_device_ids == (f"k8s.vgpu.dra.dev/claim={ref.uid}-{result['device']}",)
                        assert (settings.cdi_dir / f"k8s.vgpu.dra.dev-claim_{ref.uid}.json").is_file()
                        [gpu] = parse((settings.claims_dir / ref.uid / "config").read_text()).gpus
                        memory = parse_bytes(result["consumedCapacity"]["memory"])
                        percent, cores = EXPECTED[name]
                        assert (gpu.memory_bytes, gpu.cores) == (memory, cores)
                        assert memory == usable * percent // 100 // (1 << 20) * (1 << 20)
                        assert kubelet.unprepare([ref]) == {ref.uid: ""}
                        assert not (settings.cdi_dir / f"k8s.vgpu.dra.dev-claim_{ref.uid}.json").exists()
                finally:
                    kubelet.close()
                for name in list(cluster.pods):
                    kube.delete(PODS, name, cluster.namespace, grace_period_s=0)
                wait_until(lambda: not kube.list(RESOURCE_CLAIMS, cluster.namespace).get("items"), 120,
                           "generated claims deleted and released by the controller")
        finally:
            plugin.stop()
