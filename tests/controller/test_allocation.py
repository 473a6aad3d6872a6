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


def test_seed_workers_share_one_rtx3080(api_backend):
    server = api_backend
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
        pod_obj = server.get("Pod", name, "default")
        gates = pod_obj["spec"].get("schedulingGates") or []
        assert SCHEDULING_GATE not in [g["name"] for g in gates]
        # Reserved for its pod in the allocation's own write: the kubelet starts only pods a claim
        # is reserved for, and kube-scheduler then binds without a status write of its own.
        reserved = server.get("ResourceClaim", name, "default")["status"].get("reservedFor")
        assert reserved == [{"resource": "pods", "name": name, "uid": pod_obj["metadata"]["uid"]}]


def test_without_consumable_capacity_the_books_come_from_the_resolved_configs(fake_apiserver):
    """A cluster with DRAConsumableCapacity off drops shareID and consumedCapacity from what the
    controller writes; its books then use the resolved VgpuConfig it wrote, so shares still pack
    onto one GPU and the GPU is still never overfilled."""
    from .test_lifecycle import refusals

    server = fake_apiserver
    server.disable_feature("DRAConsumableCapacity")
    add_node(server, "homelab", [gpu(0)])
    add_device_class(server)
    for name, memory in (("a", "4Gi"), ("b", "4Gi"), ("c", "4Gi")):
        server.create(claim(name, config=vgpu_config(memory=memory, cores=10)))
        server.create(pod(name, [name]))
    with running_controller(server):
        wait_for(lambda: sum(1 for n in "abc" if allocated(server, n)) == 2, what="two 4Gi shares on the 9.8 GiB GPU")
        refused = wait_for(lambda: [n for n in "abc" if not allocated(server, n) and refusals(server, n)],
                           what="the third refused")
    assert len(refused) == 1
    for name in "abc":
        obj = allocated(server, name)
        if obj:
            [result] = obj["status"]["allocation"]["devices"]["results"]
            assert "shareID" not in result and result["device"] == "gpu-0"
            assert obj["status"]["allocation"]["devices"]["config"][-1]["opaque"]["parameters"]["memory"] == 4 << 30


def test_only_our_gate_is_lifted_and_the_rest_of_the_pod_is_untouched(fake_apiserver):
    server = fake_apiserver
    add_node(server, "node", [gpu(0)])
    add_device_class(server)
    server.create(claim("c", config=vgpu_config(memory="1Gi")))
    spec = pod("app", ["c"])
    spec["spec"]["schedulingGates"].append({"name": "example.com/quota"})
    spec["spec"]["containers"][0]["env"] = [{"name": "MODEL", "value": "resnet50"}]
    spec["metadata"]["labels"] = {"app": "inference"}
    server.create(spec)
    server.faults.add(409, resource="pods", verbs=("patch",), count=1)
    with running_controller(server):
        wait_for(lambda: server.get("Pod", "app", "default")["spec"]["schedulingGates"] == [{"name": "example.com/quota"}],
                 what="our gate lifted, the other kept")
    stored = server.get("Pod", "app", "default")
    assert stored["spec"]["containers"][0]["env"] == [{"name": "MODEL", "value": "resnet50"}]
    assert stored["metadata"]["labels"] == {"app": "inference"}
