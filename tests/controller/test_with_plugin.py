"""The contract between the controller and the kubelet plugin: what one writes the other enforces.

The seed's two workers on the home lab's RTX 3080: the controller allocates from the slices the
real plugin publishes (GPUs from the fake NVML); the test plays kube-scheduler (reserve + bind)
and the kubelet (NodePrepareResources over the plugin's socket), then checks the limits the shim
will read.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.fakes.kubeconfig import api_client_for
from vgpu_dra.api.quantity import parse_bytes

from .cluster import add_device_class, claim, pod, running_controller, vgpu_config
from .invariants import CapacityWatch
from .test_lifecycle import bind
from .waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
INVENTORY = REPO / "tests" / "fakes" / "inventories" / "rtx3080-homelab.yaml"


@pytest.fixture
def plugin_root():
    subprocess.run(["make", "--no-print-directory", "-f", "kubeletplugin/protos.mk", f"PY={sys.executable}"],
                   cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    path = Path(tempfile.mkdtemp(prefix="vgpu-"))  # short: AF_UNIX paths are limited
    yield path
    shutil.rmtree(path, ignore_errors=True)


def reserve(server, name, pod_obj):
    obj = server.get("ResourceClaim", name, "default")
    obj["status"]["reservedFor"] = [{"resource": "pods", "name": pod_obj["metadata"]["name"],
                                     "uid": pod_obj["metadata"]["uid"]}]
    server.update_status(obj, user="kube-scheduler")
    return server.get("ResourceClaim", name, "default")


def test_seed_workers_allocated_by_controller_are_prepared_with_their_shares(fake_apiserver, fake_nvml, plugin_root):
    from tests.plugin.kubelet_client import Claim
    from tests.plugin.node import kubelet_for, node_settings, shim_library
    from vgpu_dra.driver.claimconfig import parse
    from vgpu_dra.kubeletplugin.plugin import KubeletPlugin

    server = fake_apiserver
    server.create({"apiVersion": "v1", "kind": "Node",
                   "metadata": {"name": "homelab", "labels": {"kubernetes.io/hostname": "homelab"}}})
    add_device_class(server)
    fake_nvml.use(INVENTORY)
    settings = node_settings(plugin_root, "homelab", shim_library(plugin_root), metrics_port=None)
    plugin = KubeletPlugin(settings, api_client_for(server, user="kubelet-plugin"))
    plugin.start()
    kubelet = None
    try:
        wait_for(lambda: server.objects("ResourceSlice"), what="the plugin's slices")
        watch = CapacityWatch()
        watch.load_slices(server.objects("ResourceSlice"))
        server.add_observer(watch)
        shares = {"worker-a": (20, 25), "worker-b": (30, 40)}
        for name, (percent, cores) in shares.items():
            server.create(claim(name, config=vgpu_config(memoryPercent=percent, cores=cores)))
            server.create(pod(name, [name]))
        with running_controller(server):
            for name in shares:
                wait_for(lambda name=name: (server.get("ResourceClaim", name, "default").get("status") or {})
                         .get("allocation"), what=f"{name} allocated")
        kubelet = kubelet_for(settings)
        usable = watch.capacity[("homelab", "gpu-0")][0]
        for name, (percent, cores) in shares.items():
            pod_obj = server.get("Pod", name, "default")
            assert not pod_obj["spec"].get("schedulingGates")
            claimed = reserve(server, name, pod_obj)
            bind(server, name, "homelab")
            ref = Claim("default", claimed["metadata"]["uid"], name)
            answer = kubelet.prepare([ref])[ref.uid]
            assert answer.error == ""
            [device] = answer.devices
            [result] = claimed["status"]["allocation"]["devices"]["results"]
            assert (device.pool_name, device.device_name, device.share_id) == ("homelab", "gpu-0", result["shareID"])
            [limits] = parse((settings.claims_dir / ref.uid / "config").read_text()).gpus
            assert limits.uuid == "GPU-6b1f2c3d-8e4a-4f5b-9c7d-0a1b2c3d4e5f"
            assert limits.memory_bytes == parse_bytes(result["consumedCapacity"]["memory"])
            assert limits.memory_bytes == usable * percent // 100 // (1 << 20) * (1 << 20)
            assert limits.cores == cores
        assert watch.violations == []
    finally:
        if kubelet is not None:
            kubelet.close()
        plugin.stop()
