"""Standard 1.36 claims through the running controller: firstAvailable, allocationMode All,
distinctAttribute, adminAccess, device taints and tolerations — allocated and accepted by the API
server as kube-scheduler would allocate them, or refused with a reason."""
from __future__ import annotations

from vgpu_dra.driver.devices import build_slices
from vgpu_dra.driver.inventory import NodeInventory

from .cluster import add_device_class, add_node, claim, gpu, pod, running_controller
from .waiting import wait_for

EXACT = {"deviceClassName": "vgpu.dra.dev"}


def results_of(server, name):
    def allocated():
        obj = server.get("ResourceClaim", name, "default")
        return ((obj.get("status") or {}).get("allocation") or {}).get("devices", {}).get("results") if obj else None
    return wait_for(allocated, what=f"{name} allocated")


def refusal_of(server, name):
    return wait_for(lambda: next((e.message for e in server.events() if e.regarding_kind == "ResourceClaim"
                                  and e.regarding_name == name and e.reason == "AllocationFailed"), None),
                    what=f"refusal event for {name}")


def add_tainted_node(server, name, taint):
    server.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name,
                                                                    "labels": {"kubernetes.io/hostname": name}}})
    for i, spec in enumerate(build_slices(NodeInventory(name, (gpu(0),)), generation=1,
                                          allow_multiple_allocations=True)):
        for device in spec["devices"]:
            device["taints"] = [dict(taint)]
        server.create({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
                       "metadata": {"name": f"{name}-vgpu.dra.dev-{i}"}, "spec": spec})


def test_first_available_all_and_distinct(fake_apiserver):
    server = fake_apiserver
    add_node(server, "node", [gpu(0), gpu(1), gpu(2)])
    add_device_class(server)
    server.create(claim("fallback", requests=[{"name": "gpu", "firstAvailable": [
        {"name": "whole-card", **EXACT, "capacity": {"requests": {"memory": "64Gi"}}},
        {"name": "slice", **EXACT, "capacity": {"requests": {"memory": "2Gi", "cores": "20"}}}]}]))
    server.create(claim("everything", requests=[{"name": "gpu", "exactly": {
        **EXACT, "allocationMode": "All", "capacity": {"requests": {"memory": "1Gi"}}}}]))
    server.create(claim("apart", requests=[
        {"name": "a", "exactly": {**EXACT, "capacity": {"requests": {"memory": "1Gi"}}}},
        {"name": "b", "exactly": {**EXACT, "capacity": {"requests": {"memory": "1Gi"}}}}],
        constraints=[{"distinctAttribute": "vgpu.dra.dev/uuid"}]))
    with running_controller(server):
        server.create(pod("fallback", ["fallback"]))
        (result,) = results_of(server, "fallback")
        assert (result["request"], result["consumedCapacity"]) == ("gpu/slice", {"memory": "2Gi", "cores": "20"})
        server.create(pod("everything", ["everything"]))
        assert sorted(r["device"] for r in results_of(server, "everything")) == ["gpu-0", "gpu-1", "gpu-2"]
        server.create(pod("apart", ["apart"]))
        apart = results_of(server, "apart")
        assert [r["request"] for r in apart] == ["a", "b"] and apart[0]["device"] != apart[1]["device"]


def test_device_taints_admin_access_and_tolerations(fake_apiserver):
    server = fake_apiserver
    add_tainted_node(server, "quarantine", {"key": "gpu.example.com/ecc", "value": "errors", "effect": "NoExecute"})
    add_device_class(server)
    small = {"capacity": {"requests": {"memory": "1Gi"}}}
    server.create(claim("plain", requests=[{"name": "gpu", "exactly": {**EXACT, **small}}]))
    server.create(claim("tolerant", requests=[{"name": "gpu", "exactly": {
        **EXACT, **small, "tolerations": [{"key": "gpu.example.com/ecc", "operator": "Exists", "effect": "NoExecute"}]}}]))
    server.create(claim("monitor", requests=[{"name": "gpu", "exactly": {
        **EXACT, **small, "adminAccess": True, "tolerations": [{"operator": "Exists"}]}}]))
    with running_controller(server):
        for name in ("plain", "tolerant", "monitor"):
            server.create(pod(name, [name]))
        assert "carry taints the request does not tolerate (e.g. gpu.example.com/ecc=errors:NoExecute on " \
               "quarantine gpu-0)" in refusal_of(server, "plain")
        (tolerant,) = results_of(server, "tolerant")
        assert tolerant["tolerations"] == [{"key": "gpu.example.com/ecc", "operator": "Exists", "effect": "NoExecute"}]
        (monitor,) = results_of(server, "monitor")
        assert monitor["adminAccess"] is True
        assert "adminAccess" not in tolerant
    assert server.get("ResourceClaim", "plain", "default").get("status", {}).get("allocation") is None
