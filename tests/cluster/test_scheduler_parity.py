"""Controller mode against the real kube-scheduler: the same random claims, the same published GPUs,
allocated once by kube-scheduler's own DRA allocator (a scheduler-mode class) and once by the
controller's decision (`allocate_objects`, a controller-mode class). Both must allocate or both
refuse, and every allocation the controller makes must be a claim status the real API server
accepts.

Claims are the ones both allocators can express: capacity requests (`memory`, `cores`), `count`,
`matchAttribute` on the NUMA node, one or two requests per claim and one or two claims per pod, on
one or two nodes with GPUs of different sizes.
"""
from __future__ import annotations

import random
import uuid
from typing import Any

import pytest

from tests.cluster.real_cluster import RealCluster, wait_until
from vgpu_dra.api.names import ALLOCATOR_CONTROLLER, ALLOCATOR_LABEL, ALLOCATOR_SCHEDULER
from vgpu_dra.controller.kubeapi import DEVICE_CLASSES, EVENTS, PODS, RESOURCE_CLAIMS, RESOURCE_SLICES, ApiError
from vgpu_dra.driver.devices import build_slices
from vgpu_dra.driver.inventory import GpuInfo, NodeInventory
from vgpu_dra.driver.object_allocation import allocate_objects

pytestmark = pytest.mark.e2e

CASES = 30
NAMESPACE = "parity"
SCHEDULER_CLASS = "parity-scheduler.vgpu.dra.dev"
CONTROLLER_CLASS = "parity-controller.vgpu.dra.dev"
GIB = 1 << 30
MIB = 1 << 20


def _class(name: str, allocator: str) -> dict[str, Any]:
    """The class each allocator owns, as the chart writes it for that mode."""
    device_type = "vgpu" if allocator == ALLOCATOR_CONTROLLER else "gpu"
    expression = f'device.driver == "vgpu.dra.dev" && device.attributes["vgpu.dra.dev"].type == "{device_type}"'
    return {"apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass",
            "metadata": {"name": name, "labels": {ALLOCATOR_LABEL: allocator}},
            "spec": {"selectors": [{"cel": {"expression": expression}}]}}


def _gpu(rng: random.Random, index: int) -> GpuInfo:
    memory = rng.choice((4, 8, 16)) * GIB
    return GpuInfo(uuid=f"GPU-{uuid.UUID(int=rng.getrandbits(128))}", index=index, minor_number=index,
                   product_name="NVIDIA T4", brand="Tesla", architecture="Turing", cuda_compute_capability="7.5",
                   driver_version="550.54.15", cuda_driver_version="12.4", pci_bus_id=f"0000:{index + 1:02x}:00.0",
                   numa_node=rng.choice((0, 1)), memory_total_bytes=memory, memory_reserved_bytes=256 * MIB,
                   mig_mode_enabled=False)


def _request(rng: random.Random, name: str, device_class: str) -> dict[str, Any]:
    capacity = {"memory": f"{rng.choice((512, 1024, 2048, 3072, 6144, 12288))}Mi"}
    if rng.random() < 0.7:
        capacity["cores"] = str(rng.choice((0, 10, 25, 50, 75, 100)))
    exactly: dict[str, Any] = {"deviceClassName": device_class, "capacity": {"requests": capacity}}
    if rng.random() < 0.25:
        exactly["count"] = 2
    return {"name": name, "exactly": exactly}


def _claims(rng: random.Random, case: int) -> list[dict[str, Any]]:
    """One or two claims of one or two requests; `spec` only (the class is filled in per side)."""
    claims = []
    for c in range(rng.choice((1, 1, 2))):
        requests = [_request(rng, f"r{r}", "") for r in range(rng.choice((1, 1, 2)))]
        devices: dict[str, Any] = {"requests": requests}
        if (len(requests) > 1 or any(r["exactly"].get("count", 1) > 1 for r in requests)) and rng.random() < 0.5:
            devices["constraints"] = [{"matchAttribute": "vgpu.dra.dev/numaNode"}]
        claims.append({"name": f"c{case}-{c}", "devices": devices})
    return claims


def _claim_object(spec: dict[str, Any], device_class: str, suffix: str) -> dict[str, Any]:
    devices = {**spec["devices"], "requests": [
        {**r, "exactly": {**r["exactly"], "deviceClassName": device_class}} for r in spec["devices"]["requests"]]}
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
            "metadata": {"name": f"{spec['name']}-{suffix}", "namespace": NAMESPACE}, "spec": {"devices": devices}}


def _native_outcome(cluster: RealCluster, pod_name: str) -> bool | None:
    """True once kube-scheduler bound the pod, False once it said the claims cannot be allocated."""
    pod = cluster.kube.get(PODS, pod_name, NAMESPACE)
    if pod["spec"].get("nodeName"):
        return True
    events = cluster.kube.list(EVENTS, NAMESPACE, field_selector=f"involvedObject.name={pod_name}").get("items") or []
    if any(e.get("reason") == "FailedScheduling" and "cannot allocate all claims" in e.get("message", "")
           for e in events):
        return False
    return None


def _published(cluster: RealCluster, nodes: list[str], rng: random.Random) -> list[dict[str, Any]]:
    slices = []
    for node in nodes:
        inventory = NodeInventory(node, tuple(_gpu(rng, i) for i in range(rng.choice((1, 2, 3)))))
        for i, spec in enumerate(build_slices(inventory, generation=1, allow_multiple_allocations=True)):
            slices.append(cluster.kube.create(RESOURCE_SLICES, {
                "apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
                "metadata": {"name": f"{node}-parity-{i}"}, "spec": spec}))
    return slices


def _clean(cluster: RealCluster) -> None:
    kube = cluster.kube
    for item in kube.list(PODS, NAMESPACE).get("items") or []:
        cluster.delete_all(PODS, [item["metadata"]["name"]], NAMESPACE)
    for item in kube.list(RESOURCE_CLAIMS, NAMESPACE).get("items") or []:
        cluster.delete_all(RESOURCE_CLAIMS, [item["metadata"]["name"]], NAMESPACE)
    wait_until(lambda: not kube.list(RESOURCE_CLAIMS, NAMESPACE).get("items"), 60, "parity claims deleted")
    for item in kube.list(RESOURCE_SLICES).get("items") or []:
        if "-parity-" in item["metadata"]["name"]:
            cluster.delete_all(RESOURCE_SLICES, [item["metadata"]["name"]])


def test_controller_allocates_exactly_when_kube_scheduler_does(real_cluster: RealCluster) -> None:
    cluster = real_cluster
    rng = random.Random(20261206)
    nodes = ["parity-a", "parity-b"]
    cluster.create_namespace(NAMESPACE)
    for node in nodes:
        cluster.nodes.add(node, {"vgpu.dra.dev/parity": "true"})
    for device_class in (_class(SCHEDULER_CLASS, ALLOCATOR_SCHEDULER), _class(CONTROLLER_CLASS, ALLOCATOR_CONTROLLER)):
        cluster.kube.create(DEVICE_CLASSES, device_class)
    classes = [cluster.kube.get(DEVICE_CLASSES, name) for name in (SCHEDULER_CLASS, CONTROLLER_CLASS)]
    outcomes: list[tuple[int, bool, bool]] = []
    try:
        for case in range(CASES):
            used_nodes = nodes[:rng.choice((1, 2))]
            slices = _published(cluster, used_nodes, rng)
            specs = _claims(rng, case)
            native = [cluster.kube.create(RESOURCE_CLAIMS, _claim_object(s, SCHEDULER_CLASS, "native"), NAMESPACE)
                      for s in specs]
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"p{case}"},
                   "spec": {"nodeSelector": {"vgpu.dra.dev/parity": "true"},
                            "resourceClaims": [{"name": f"k{i}", "resourceClaimName": c["metadata"]["name"]}
                                               for i, c in enumerate(native)],
                            "containers": [{"name": "main", "image": "registry.example/none:1",
                                            "resources": {"claims": [{"name": f"k{i}"} for i in range(len(native))]}}]}}
            cluster.kube.create(PODS, pod, NAMESPACE)
            native_ok = wait_until(lambda case=case: _native_outcome(cluster, f"p{case}") is not None, 60,
                                   f"kube-scheduler's verdict on case {case}") and _native_outcome(cluster, f"p{case}")
            ours = [_claim_object(s, CONTROLLER_CLASS, "ctl") for s in specs]
            decision = allocate_objects(slices, classes, ours, allowed_nodes=used_nodes)
            outcomes.append((case, bool(native_ok), decision.allocated))
            assert decision.allocated == bool(native_ok), (
                f"case {case}: kube-scheduler {'allocated' if native_ok else 'refused'}, the controller "
                f"{'allocated' if decision.allocated else 'refused: ' + str(decision.refusal)}\nclaims: {specs}\n"
                f"GPUs: {[d['name'] + ' ' + d['capacity']['memory']['value'] for s in slices for d in s['spec']['devices']]}")
            if decision.allocated:
                for claim in ours:
                    stored = cluster.kube.create(RESOURCE_CLAIMS, claim, NAMESPACE)
                    status = decision.allocations[f"{NAMESPACE}/{claim['metadata']['name']}"]
                    try:
                        cluster.kube.patch(RESOURCE_CLAIMS, stored["metadata"]["name"], {"status": {"allocation": status}},
                                           NAMESPACE, subresource="status")
                    except ApiError as exc:
                        raise AssertionError(f"case {case}: the API server refused the controller's allocation: "
                                             f"{exc}\n{status}") from None
            _clean(cluster)
    finally:
        _clean(cluster)
        for node in nodes:
            cluster.nodes.remove(node)
        cluster.delete_all(DEVICE_CLASSES, [SCHEDULER_CLASS, CONTROLLER_CLASS])
        cluster.delete_namespace(NAMESPACE)
    # The draw must exercise both verdicts, or the comparison proves little.
    assert {native for _, native, _ in outcomes} == {True, False}, outcomes
