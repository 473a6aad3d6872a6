"""Builders for the objects a controller test puts into the fake API server.

Nodes publish their GPUs through the kubelet plugin's own slice renderer (`driver.devices`), so the
controller reads exactly what a node would publish.
"""
from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from vgpu_dra.api.names import ALLOCATOR_CONTROLLER, ALLOCATOR_LABEL, DEVICE_CLASS, SCHEDULING_GATE
from vgpu_dra.controller.allocation_term import TermSettings
from vgpu_dra.controller.metrics import ControllerMetrics
from vgpu_dra.controller.service import ControllerService, LeaderSettings
from vgpu_dra.driver.devices import build_slices
from vgpu_dra.driver.inventory import GpuInfo, NodeInventory

from tests.fakes.apiserver import FakeApiServer
from tests.controller.backends import client_for

GIB = 1 << 30
MIB = 1 << 20
VGPU_SELECTOR = 'device.driver == "vgpu.dra.dev" && device.attributes["vgpu.dra.dev"].type == "vgpu"'


def gpu(index: int, *, memory: int = 10240 * MIB, reserved: int = 243 * MIB, numa: int = -1,
        product: str = "NVIDIA GeForce RTX 3080", uuid_prefix: str = "GPU") -> GpuInfo:
    return GpuInfo(uuid=f"{uuid_prefix}-{index:04d}-0000-0000-0000-000000000000", index=index, minor_number=index,
                   product_name=product, brand="GeForce", architecture="Ampere", cuda_compute_capability="8.6",
                   driver_version="550.54.15", cuda_driver_version="12.4",
                   pci_bus_id=f"0000:{index + 1:02x}:00.0", numa_node=numa, memory_total_bytes=memory,
                   memory_reserved_bytes=reserved, mig_mode_enabled=False)


def rtx3080_usable() -> int:
    return gpu(0).usable_memory_bytes


def add_node(server: FakeApiServer, name: str, gpus: Sequence[GpuInfo], *, labels: Mapping[str, str] | None = None,
             taints: Sequence[Mapping[str, str]] = (), generation: int = 1) -> None:
    """A Node object and the ResourceSlices its kubelet plugin would publish."""
    server.create({"apiVersion": "v1", "kind": "Node",
                   "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
                   "spec": {"taints": [dict(t) for t in taints]} if taints else {}})
    inventory = NodeInventory(name, tuple(gpus))
    for i, spec in enumerate(build_slices(inventory, generation=generation, allow_multiple_allocations=True)):
        server.create({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
                       "metadata": {"name": f"{name}-vgpu.dra.dev-{i}"}, "spec": spec})


def add_device_class(server: FakeApiServer, name: str = DEVICE_CLASS, *, config: Mapping[str, Any] | None = None,
                     selectors: Sequence[str] = (VGPU_SELECTOR,), allocator: str = ALLOCATOR_CONTROLLER) -> None:
    spec: dict[str, Any] = {"selectors": [{"cel": {"expression": e}} for e in selectors]}
    if config is not None:
        spec["config"] = [{"opaque": {"driver": "vgpu.dra.dev", "parameters": dict(config)}}]
    server.create({"apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass",
                   "metadata": {"name": name, "labels": {ALLOCATOR_LABEL: allocator}}, "spec": spec})


def vgpu_config(**fields: Any) -> dict[str, Any]:
    return {"apiVersion": "vgpu.dra.dev/v1alpha1", "kind": "VgpuConfig", **fields}


def claim(name: str, *, namespace: str = "default", config: Mapping[str, Any] | None = None,
          capacity: Mapping[str, str] | None = None, count: int = 1, device_class: str = DEVICE_CLASS,
          requests: Sequence[Mapping[str, Any]] | None = None, constraints: Sequence[Mapping[str, Any]] = (),
          selectors: Sequence[str] = (), annotations: Mapping[str, str] | None = None,
          owner: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A ResourceClaim with one request named "gpu" (or the given requests)."""
    if requests is None:
        exactly: dict[str, Any] = {"deviceClassName": device_class, "count": count}
        if capacity:
            exactly["capacity"] = {"requests": dict(capacity)}
        if selectors:
            exactly["selectors"] = [{"cel": {"expression": e}} for e in selectors]
        requests = [{"name": "gpu", "exactly": exactly}]
    devices: dict[str, Any] = {"requests": [dict(r) for r in requests]}
    if config is not None:
        devices["config"] = [{"opaque": {"driver": "vgpu.dra.dev", "parameters": dict(config)}}]
    if constraints:
        devices["constraints"] = [dict(c) for c in constraints]
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if annotations:
        metadata["annotations"] = dict(annotations)
    if owner:
        metadata["ownerReferences"] = [{"apiVersion": "v1", "kind": "Pod", "name": owner["metadata"]["name"],
                                        "uid": owner["metadata"]["uid"], "controller": True,
                                        "blockOwnerDeletion": True}]
        metadata["annotations"] = {**metadata.get("annotations", {}),
                                   "resource.kubernetes.io/pod-claim-name": "gpu"}
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim", "metadata": metadata,
            "spec": {"devices": devices}}


def pod(name: str, claims: Iterable[str] = (), *, namespace: str = "default", gate: bool = True,
        templates: Mapping[str, str] | None = None, node_selector: Mapping[str, str] | None = None,
        affinity: Mapping[str, Any] | None = None, tolerations: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """A pending pod referencing standalone claims (and/or claim templates)."""
    resource_claims = [{"name": f"c{i}", "resourceClaimName": c} for i, c in enumerate(claims)]
    resource_claims += [{"name": n, "resourceClaimTemplateName": t} for n, t in (templates or {}).items()]
    spec: dict[str, Any] = {
        "containers": [{"name": "main", "image": "busybox",
                        "resources": {"claims": [{"name": rc["name"]} for rc in resource_claims]}}],
        "resourceClaims": resource_claims,
    }
    if gate:
        spec["schedulingGates"] = [{"name": SCHEDULING_GATE}]
    if node_selector:
        spec["nodeSelector"] = dict(node_selector)
    if affinity:
        spec["affinity"] = dict(affinity)
    if tolerations:
        spec["tolerations"] = [dict(t) for t in tolerations]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


@dataclass
class RunningController:
    """A controller service running on a thread against the fake server."""

    service: ControllerService
    stop: threading.Event
    thread: threading.Thread
    user: str
    extra: dict[str, Any] = field(default_factory=dict)

    def halt(self) -> None:
        self.stop.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "controller did not stop"


def start_controller(server: FakeApiServer, *, user: str = "vgpu-controller", settings: TermSettings | None = None,
                     leader: LeaderSettings | None = None) -> RunningController:
    api_client = client_for(server, user)
    service = ControllerService(api_client, settings or TermSettings(watch_timeout_s=30, retry_refused_after_s=2.0),
                                leader or LeaderSettings(enabled=False), ControllerMetrics())
    stop = threading.Event()
    thread = threading.Thread(target=service.run, args=(stop,), name=f"controller-{user}", daemon=True)
    thread.start()
    return RunningController(service, stop, thread, user)


@contextmanager
def running_controller(server: FakeApiServer, **kwargs: Any) -> Iterator[RunningController]:
    controller = start_controller(server, **kwargs)
    try:
        yield controller
    finally:
        controller.halt()
