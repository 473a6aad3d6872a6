"""The controller's pure pieces: node fit, slice translation, claim ↔ allocator terms."""
from __future__ import annotations

import pytest

from vgpu_dra.driver.claim_model import EXCLUSIVE_MEMORY_BYTES, ClaimRejected, booked_consumptions
from vgpu_dra.driver.claim_requests import claim_request
from vgpu_dra.controller.node_fit import pod_fits_node
from vgpu_dra.driver.published_gpus import gpus_by_node
from vgpu_dra.driver.devices import build_slices
from vgpu_dra.driver.inventory import NodeInventory
from vgpu_dra.driver.ledger import Version

from .cluster import GIB, VGPU_SELECTOR, claim, gpu, vgpu_config

NODE = {"metadata": {"name": "n1", "labels": {"zone": "a", "gpus": "4"}},
        "spec": {"taints": [{"key": "gpu", "value": "yes", "effect": "NoSchedule"},
                            {"key": "soft", "effect": "PreferNoSchedule"}]}}
TOLERATE_GPU = [{"key": "gpu", "operator": "Exists"}]


def affinity(*expressions):
    return {"tolerations": TOLERATE_GPU, "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": list(expressions)}]}}}}


@pytest.mark.parametrize(("spec", "fits"), [
    ({}, False),                                                        # NoSchedule taint not tolerated
    ({"tolerations": TOLERATE_GPU}, True),                              # PreferNoSchedule never blocks
    ({"tolerations": [{"operator": "Exists"}]}, True),                  # tolerates everything
    ({"tolerations": [{"key": "gpu", "operator": "Equal", "value": "no"}]}, False),
    ({"tolerations": [{"key": "gpu", "value": "yes", "effect": "NoExecute"}]}, False),
    ({"tolerations": TOLERATE_GPU, "nodeSelector": {"zone": "a"}}, True),
    ({"tolerations": TOLERATE_GPU, "nodeSelector": {"zone": "b"}}, False),
    (affinity({"key": "gpus", "operator": "Gt", "values": ["3"]}), True),
    (affinity({"key": "gpus", "operator": "Lt", "values": ["3"]}), False),
    (affinity({"key": "zone", "operator": "Gt", "values": ["3"]}), False),  # not an integer
    (affinity({"key": "zone", "operator": "Exists"}, {"key": "rack", "operator": "DoesNotExist"}), True),
    (affinity({"key": "zone", "operator": "NotIn", "values": ["a"]}), False),
    ({"tolerations": TOLERATE_GPU, "nodeName": "n2"}, False),
])
def test_pod_fits_node(spec, fits):
    assert (pod_fits_node({"spec": spec}, NODE) is None) is fits


def slices_for(node, gpus, generation):
    return [{"spec": spec} for spec in build_slices(NodeInventory(node, tuple(gpus)), generation=generation,
                                                   allow_multiple_allocations=True, max_devices_per_slice=1)]


def test_slices_translate_to_gpus_of_the_newest_generation_only():
    old = slices_for("n1", [gpu(0), gpu(1)], 1)
    new = slices_for("n1", [gpu(0)], 2)
    foreign = [{"spec": {"driver": "gpu.nvidia.com", "nodeName": "n1", "pool": {"name": "n1", "generation": 9},
                         "devices": [{"name": "x"}]}}]
    found = gpus_by_node(old + new + foreign)
    assert [g.name for g in found["n1"].gpus] == ["gpu-0"]
    device = found["n1"].gpus[0]
    assert device.memory_bytes == gpu(0).usable_memory_bytes and device.cores == 100
    assert device.attributes["cudaComputeCapability"] == Version("8.6.0")
    assert device.attributes["productName"] == "NVIDIA GeForce RTX 3080"


def test_a_device_that_does_not_parse_is_skipped_not_the_node():
    slices = slices_for("n1", [gpu(0), gpu(1)], 1)
    del slices[0]["spec"]["devices"][0]["capacity"]["memory"]
    assert [g.name for g in gpus_by_node(slices)["n1"].gpus] == ["gpu-1"]


CLASSES = {"vgpu.dra.dev": {"metadata": {"name": "vgpu.dra.dev", "labels": {"vgpu.dra.dev/allocator": "controller"}},
                            "spec": {"selectors": [{"cel": {"expression": VGPU_SELECTOR}}],
                                     "config": [{"opaque": {"driver": "vgpu.dra.dev",
                                                            "parameters": vgpu_config(memory="1Gi", cores=10)}}]}},
           "other": {"metadata": {"name": "other"}, "spec": {}}}


def with_uid(obj):
    obj["metadata"]["uid"] = "uid-1"
    return obj


def test_sizes_layer_class_then_claim_then_capacity_requests():
    request = claim_request(with_uid(claim("c", config=vgpu_config(cores=30), capacity={"memory": "3Gi"})), CLASSES)
    [share] = [r.share for r in request.requests]
    assert (share.memory_bytes, share.cores) == (3 * GIB, 30)


@pytest.mark.parametrize(("obj", "message"), [
    (claim("c", device_class="missing"), "does not exist"),
    (claim("c", device_class="other"), "cannot mix allocators"),
    (claim("c", config=vgpu_config(memory="1Gi", memoryPercent=10)), "both set"),
    (claim("c", capacity={"gpus": "1"}), "not a capacity of this driver"),
    (claim("c", requests=[{"name": "gpu", "firstAvailable": [{"name": "a", "deviceClassName": "other"}]}]),
     "request 'gpu/a': DeviceClass 'other' is not allocated by the vgpu.dra.dev controller"),
    (claim("c", requests=[{"name": "gpu", "firstAvailable": [
        {"name": "a", "deviceClassName": "vgpu.dra.dev", "adminAccess": True}]}]),
     "firstAvailable\\[0\\]: field 'adminAccess' is not supported"),
    (claim("c", requests=[{"name": "gpu", "exactly": {"deviceClassName": "vgpu.dra.dev", "cuont": 2}}]),
     "request 'gpu' exactly: field 'cuont' is not supported"),
    (claim("c", requests=[{"name": "gpu", "exactly": {"deviceClassName": "vgpu.dra.dev", "allocationMode": "Some"}}]),
     "allocationMode 'Some' is not one of ExactCount, All"),
    (claim("c", requests=[{"name": "gpu", "exactly": {"deviceClassName": "vgpu.dra.dev", "allocationMode": "All",
                                                      "count": 2}}]), "count is set with allocationMode All"),
    (claim("c", requests=[{"name": "gpu", "exactly": {"deviceClassName": "vgpu.dra.dev",
                                                      "tolerations": [{"key": "k", "operator": "In"}]}}]),
     "tolerations\\[0\\].operator: 'In' is not Equal or Exists"),
    (claim("c", constraints=[{"matchAttribute": "vgpu.dra.dev/uuid", "distinctAttribute": "vgpu.dra.dev/uuid"}]),
     "sets both matchAttribute and distinctAttribute"),
    (claim("c", requests=[{"name": "gpu", "exactly": {"deviceClassName": "vgpu.dra.dev",
                                                      "selectors": [{"nvml": {"model": "A100"}}]}}]),
     "request 'gpu' selectors\\[0\\]: only CEL selectors are supported \\(got nvml\\)"),
    (claim("c", count=33), "at most 32"),
])
def test_claims_that_cannot_be_allocated_as_written(obj, message):
    with pytest.raises(ClaimRejected, match=message):
        claim_request(with_uid(obj), CLASSES)


def test_books_count_shares_exclusive_results_and_skip_admin_access():
    allocated = {"status": {"allocation": {"devices": {"results": [
        {"driver": "vgpu.dra.dev", "pool": "n1", "device": "gpu-0", "shareID": "s1",
         "consumedCapacity": {"memory": "2Gi", "cores": "25"}},
        {"driver": "vgpu.dra.dev", "pool": "n1", "device": "gpu-1"},
        {"driver": "vgpu.dra.dev", "pool": "n1", "device": "gpu-2"},
        {"driver": "vgpu.dra.dev", "pool": "n1", "device": "gpu-3", "adminAccess": True},
        {"driver": "gpu.nvidia.com", "pool": "n1", "device": "gpu-0"},
    ]}}}}
    books = booked_consumptions(allocated, {("n1", "gpu-1"): (8 * GIB, 100)})
    assert [(c.device, c.memory_bytes, c.cores) for c in books] == [
        ("gpu-0", 2 * GIB, 25), ("gpu-1", 8 * GIB, 100), ("gpu-2", EXCLUSIVE_MEMORY_BYTES, 100)]
