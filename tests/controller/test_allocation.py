"""Allocation of fractional-GPU claims: what the controller writes, and where."""
from __future__ import annotations

import uuid

from vgpu_dra.api.names import FINALIZER, SCHEDULING_GATE
from vgpu_dra.api.quantity import parse_bytes

from .cluster import add_device_class, add_node, claim, gpu, pod, rtx3080_usable, running_controller, vgpu_config
from .waiting import wait_for


def allocated(server, name, namespace="default"):
    obj = server.get("ResourceClaim", name, namespace)
    return obj if obj and (obj.get("status") or {}).get("allocation") else None


def test_seed_workers_share_one_rtx3080(fake_apiserver):
    server = fake_apiserver
    add_node(server, "homelab", [gpu(0)])
    add_device_class(server)
    server.create(claim("worker-a", config=vgpu_config(memoryPercent=20, cores=25)))
    server.create(claim("worker-b", config=vgpu_config(memoryPercent=30, cores=40)))
    server.create(pod("worker-a", ["worker-a"]))
    server.create(pod("worker-b", ["worker-b"]))
    with running_controller(server):
        a = wait_for(lambda: allocated(server, "worker-a"), what="worker-a allocated")
        b = wait_for(lambda: allocated(server, "worker-b"), what="worker-b allocated")
        wait_for(lambda: not server.get("Pod", "worker-b", "default")["spec"].get("schedulingGates"),
                 what="gate removed")
    usable = rtx3080_usable()
    for obj, percent, cores in ((a, 20, 25), (b, 30, 40)):
        assert FINALIZER in obj["metadata"]["finalizers"]
        alloc = obj["status"]["allocation"]
        [result] = alloc["devices"]["results"]
        assert (result["request"], result["driver"], result["pool"], result["device"]) == \
            ("gpu", "vgpu.dra.dev", "homelab", "gpu-0")
        uuid.UUID(result["shareID"])
        want = usable * percent // 100 // (1 << 20) * (1 << 20)
        assert parse_bytes(result["consumedCapacity"]["memory"]) == want
        assert result["consumedCapacity"]["cores"] == str(cores)
        configs = alloc["devices"]["config"]
        assert [c["source"] for c in configs] == ["FromClaim", "FromClaim"]
        assert configs[0]["opaque"]["parameters"]["memoryPercent"] == percent
        resolved = configs[-1]
        assert resolved["requests"] == ["gpu"]
        assert resolved["opaque"]["parameters"] == {"apiVersion": "vgpu.dra.dev/v1alpha1", "kind": "VgpuConfig",
                                                    "memory": want, "cores": cores, "corePolicy": "soft"}
        assert alloc["nodeSelector"] == {"nodeSelectorTerms": [{"matchFields": [
            {"key": "metadata.name", "operator": "In", "values": ["homelab"]}]}]}
        assert alloc["allocationTimestamp"]
    assert a["status"]["allocation"]["devices"]["results"][0]["shareID"] != \
        b["status"]["allocation"]["devices"]["results"][0]["shareID"]
    for name in ("worker-a", "worker-b"):
        gates = server.get("Pod", name, "default")["spec"].get("schedulingGates") or []
        assert SCHEDULING_GATE not in [g["name"] for g in gates]
