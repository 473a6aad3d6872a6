"""One claim, two allocators: the limits a pod gets do not depend on the install's `allocator`.

Controller mode: the controller's own path — `claim_request`, `allocate`, `allocation_status`
(its finalizer on the claim). Scheduler mode: the allocation kube-scheduler writes from the
ResourceSlice's requestPolicy (tests/fakes/kube_scheduler.py). Both end in the kubelet plugin's
`claim_allocation`, which gives the wall and the cap the shim enforces.
"""
from __future__ import annotations

import copy
from typing import Any

import pytest

from vgpu_dra.api.names import ALLOCATOR_CONTROLLER, ALLOCATOR_LABEL, DEVICE_CLASS, DRIVER_NAME, FINALIZER
from vgpu_dra.driver.allocation_limits import claim_allocation
from vgpu_dra.driver.allocation_request import Placement, PodRequest
from vgpu_dra.driver.allocation_status import allocation_status
from vgpu_dra.driver.allocator import allocate
from vgpu_dra.driver.claim_requests import claim_request
from vgpu_dra.driver.devices import build_slices, publishable_memory_bytes, to_device
from vgpu_dra.driver.inventory import GpuInfo, NodeInventory
from vgpu_dra.driver.ledger import Ledger
from vgpu_dra.driver.placement_policy import PlacementPolicy
from vgpu_dra.driver.published_gpus import gpus_by_node

from tests.fakes.kube_scheduler import allocate_share

MIB = 1 << 20
NODE = "node-a"
GPU = GpuInfo(uuid="GPU-0000", index=0, minor_number=0, product_name="NVIDIA GeForce RTX 3080", brand="GeForce",
              architecture="Ampere", cuda_compute_capability="8.6", driver_version="550.54.15",
              cuda_driver_version="12.4", pci_bus_id="0000:01:00.0", numa_node=-1,
              memory_total_bytes=10240 * MIB, memory_reserved_bytes=243 * MIB, mig_mode_enabled=False)
WHOLE = publishable_memory_bytes(GPU)

CONTROLLER_CLASS = {"apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass",
                    "metadata": {"name": DEVICE_CLASS, "labels": {ALLOCATOR_LABEL: ALLOCATOR_CONTROLLER}},
                    "spec": {"selectors": [{"cel": {"expression":
                             f'device.driver == "{DRIVER_NAME}" && device.attributes["{DRIVER_NAME}"].type == "vgpu"'}}]}}
SCHEDULER_CLASS = {"apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass",
                   "metadata": {"name": DEVICE_CLASS, "labels": {ALLOCATOR_LABEL: "scheduler"}},
                   "spec": {"selectors": [{"cel": {"expression":
                            f'device.driver == "{DRIVER_NAME}" && device.attributes["{DRIVER_NAME}"].type == "gpu"'}}]}}


def _claim(capacity: dict[str, str] | None = None, config: dict[str, Any] | None = None) -> dict[str, Any]:
    exactly: dict[str, Any] = {"deviceClassName": DEVICE_CLASS}
    if capacity:
        exactly["capacity"] = {"requests": capacity}
    devices: dict[str, Any] = {"requests": [{"name": "gpu", "exactly": exactly}]}
    if config:
        devices["config"] = [{"requests": ["gpu"], "opaque": {"driver": DRIVER_NAME, "parameters": {
            "apiVersion": "vgpu.dra.dev/v1alpha1", "kind": "VgpuConfig", **config}}}]
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
            "metadata": {"name": "claim", "namespace": "default", "uid": "uid-1"}, "spec": {"devices": devices}}


def _limits(claim: dict[str, Any]) -> tuple[int, int, str]:
    (device,) = claim_allocation(claim, expected_uid="uid-1", node_name=NODE,
                                 usable_memory={"gpu-0": WHOLE}).devices
    return device.share.memory_bytes, device.share.cores, device.share.core_policy


def controller_mode(claim: dict[str, Any]) -> tuple[int, int, str]:
    classes = {DEVICE_CLASS: CONTROLLER_CLASS}
    ledger = Ledger()
    for node, found in gpus_by_node([{"metadata": {"name": f"{NODE}-{i}"}, "spec": spec} for i, spec in
                                     enumerate(build_slices(NodeInventory(NODE, (GPU,)), generation=1,
                                                            allow_multiple_allocations=True))]).items():
        ledger.set_node(node, found.gpus)
    placement = allocate(ledger, PodRequest(claims=(claim_request(claim, classes),), allowed_nodes=None),
                         PlacementPolicy())
    assert isinstance(placement, Placement), placement
    allocated = copy.deepcopy(claim)
    allocated["metadata"]["finalizers"] = [FINALIZER]
    allocated["status"] = {"allocation": allocation_status(claim, classes, placement.node,
                                                           placement.claim("uid-1"))}
    return _limits(allocated)


def scheduler_mode(claim: dict[str, Any]) -> tuple[int, int, str]:
    device = to_device(GPU, allow_multiple_allocations=True)
    return _limits(allocate_share(claim, SCHEDULER_CLASS, device, node=NODE, driver=DRIVER_NAME))


SHAPES = {
    "memory capacity alone": (_claim({"memory": "2Gi"}), (2048 * MIB, 0, "soft")),
    "memory and cores capacity": (_claim({"memory": "2Gi", "cores": "25"}), (2048 * MIB, 25, "soft")),
    "unrounded memory capacity": (_claim({"memory": "1500000000"}), (1431 * MIB, 0, "soft")),
    "config memory alone": (_claim(config={"memory": "2Gi"}), (2048 * MIB, 0, "soft")),
    "config memory and cores": (_claim(config={"memory": "2Gi", "cores": 25}), (2048 * MIB, 25, "soft")),
    "config memory percent": (_claim(config={"memoryPercent": 20}), (WHOLE * 20 // 100 // MIB * MIB, 0, "soft")),
    "capacity memory, config cores and policy": (
        _claim({"memory": "2Gi"}, {"cores": 25, "corePolicy": "hard"}), (2048 * MIB, 25, "hard")),
    "capacity wins over config": (_claim({"memory": "3Gi", "cores": "10"}, {"memory": "1Gi", "cores": 40}),
                                  (3072 * MIB, 10, "soft")),
    "config cores alone": (_claim(config={"cores": 30}), (WHOLE, 30, "soft")),
    "nothing said": (_claim(), (WHOLE, 0, "soft")),
}


@pytest.mark.parametrize("claim, expected", SHAPES.values(), ids=SHAPES.keys())
def test_the_same_claim_gets_the_same_wall_and_cap_from_either_allocator(claim, expected):
    assert controller_mode(claim) == expected
    assert scheduler_mode(claim) == expected


def test_memory_alone_means_a_wall_and_no_core_cap_in_both_modes():
    # What "memory: 2Gi" alone promises: 2 GiB of memory, the SMs shared as CUDA shares them.
    claim = _claim({"memory": "2Gi"})
    for mode in (controller_mode, scheduler_mode):
        memory, cores, _ = mode(claim)
        assert (memory, cores) == (2 << 30, 0), mode.__name__
    # ... which is the slice's own default for a request that names no cores.
    cores_policy = to_device(GPU, allow_multiple_allocations=True)["capacity"]["cores"]["requestPolicy"]
    assert cores_policy["default"] == "0"
