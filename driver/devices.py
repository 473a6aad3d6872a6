"""A node's GPUs as ResourceSlice devices and slices (pure: inventory in, API JSON out).

Shapes follow ``resource.k8s.io/v1`` (``io.k8s.api.resource.v1.Device`` and
``ResourceSliceSpec``) as plain JSON dicts, ready to send as they are: the kubelet plugin reads
and writes slices as raw JSON so no field is lost or invented by a client's models.

Attributes live in the driver's own domain and are therefore written unqualified. Versions
must be semver 2.0: compute capability ``8.6`` is published as ``8.6.0``, CUDA ``12.4`` as
``12.4.0``, and NVIDIA driver versions by :func:`driver_semver`.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from vgpu_dra.api.names import (
    ATTR_ARCHITECTURE,
    ATTR_BRAND,
    ATTR_CUDA_COMPUTE_CAPABILITY,
    ATTR_CUDA_DRIVER_VERSION,
    ATTR_DRIVER_VERSION,
    ATTR_INDEX,
    ATTR_NUMA_NODE,
    ATTR_PCI_BUS_ID,
    ATTR_PRODUCT_NAME,
    ATTR_TYPE,
    ATTR_UUID,
    CAPACITY_CORES,
    CAPACITY_MEMORY,
    CORES_MAX,
    DEVICE_TYPE_GPU,
    DRIVER_NAME,
    MEMORY_MIN_BYTES,
    MEMORY_STEP_BYTES,
)
from vgpu_dra.api.quantity import format_bytes
from vgpu_dra.driver.inventory import GpuInfo, NodeInventory

log = structlog.get_logger(__name__)

JsonObject = dict[str, Any]

MAX_DEVICES_PER_SLICE = 128
"""ResourceSliceMaxDevices."""
MAX_DEVICES_PER_SLICE_WITH_TAINTS_OR_COUNTERS = 64
"""The lower limit once any device of a slice has taints, consumesCounters or list attributes."""
MAX_STRING_ATTRIBUTE_LENGTH = 64
"""String and version attribute values longer than this are rejected by the API server."""

_LIST_ATTRIBUTE_FORMS = ("ints", "bools", "strings", "versions")
_SEMVER_CORE = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")


def device_name(gpu: GpuInfo) -> str:
    """The device's name in the slice: ``gpu-<NVML index>``."""
    return f"gpu-{gpu.index}"


def driver_semver(version: str) -> str:
    """An NVIDIA driver version as semver 2.0.

    NVIDIA versions are dot-separated numbers that are not semver: ``535.183.01`` has a leading
    zero, ``470.82`` has two parts, Windows and GRID builds have four or five. Each part is read
    as a number (dropping leading zeros), missing parts become 0, and parts past the third go to
    build metadata, which semver ignores for ordering: ``535.183.01`` → ``535.183.1``,
    ``470.82`` → ``470.82.0``, ``551.61.2.1`` → ``551.61.2+1``.
    """
    parts = version.strip().split(".")
    if not parts or not all(part.isdigit() for part in parts):
        raise ValueError(f"driver version {version!r} is not dot-separated numbers")
    numbers = [str(int(part)) for part in parts]
    core = ".".join((numbers + ["0", "0"])[:3])
    extra = numbers[3:]
    return f"{core}+{'.'.join(extra)}" if extra else core


def major_minor_semver(version: str) -> str:
    """``major.minor`` (a compute capability, a CUDA version) as semver: ``8.6`` → ``8.6.0``."""
    major, minor = version.split(".")
    result = f"{int(major)}.{int(minor)}.0"
    if not _SEMVER_CORE.match(result):
        raise ValueError(f"{version!r} is not major.minor")
    return result


def publishable_memory_bytes(gpu: GpuInfo) -> int:
    """The `memory` capacity: usable bytes rounded down to the share step.

    requestPolicy needs its max and default to be multiples of the step, and a remainder under
    one step could never be handed out anyway.
    """
    return gpu.usable_memory_bytes // MEMORY_STEP_BYTES * MEMORY_STEP_BYTES


def unpublishable_reason(gpu: GpuInfo) -> str | None:
    """Why this GPU cannot be offered as a shareable device, or None when it can."""
    if gpu.mig_mode_enabled:
        return ("MIG mode is enabled; vgpu-dra shares whole GPUs and does not manage MIG "
                "instances (disable MIG with `nvidia-smi -i <index> -mig 0` to share this GPU)")
    if publishable_memory_bytes(gpu) < MEMORY_MIN_BYTES + MEMORY_STEP_BYTES:
        return (f"only {gpu.usable_memory_bytes} bytes of usable memory, less than the smallest "
                f"share ({format_bytes(MEMORY_MIN_BYTES)}) plus one step")
    return None


def _string(value: str) -> JsonObject:
    # A product name is far shorter in practice; cutting one is better than a slice the API
    # server rejects, which would hide every GPU of the node.
    return {"string": value[:MAX_STRING_ATTRIBUTE_LENGTH]}


def to_device(gpu: GpuInfo, *, allow_multiple_allocations: bool) -> JsonObject:
    """One GPU as an ``io.k8s.api.resource.v1.Device``.

    With ``allow_multiple_allocations`` the device is shareable (consumable capacity): it carries
    ``allowMultipleAllocations: true`` and a requestPolicy per capacity (the API server accepts a
    requestPolicy only on such devices). Without it, the same attributes and capacities and no
    policy, for servers that do not keep the field.
    """
    memory = format_bytes(publishable_memory_bytes(gpu))
    cores = str(CORES_MAX)
    memory_capacity: JsonObject = {"value": memory}
    cores_capacity: JsonObject = {"value": cores}
    device: JsonObject = {
        "name": device_name(gpu),
        "attributes": {
            ATTR_TYPE: {"string": DEVICE_TYPE_GPU},
            ATTR_UUID: _string(gpu.uuid),
            ATTR_INDEX: {"int": gpu.index},
            ATTR_PRODUCT_NAME: _string(gpu.product_name),
            ATTR_BRAND: _string(gpu.brand),
            ATTR_ARCHITECTURE: _string(gpu.architecture),
            ATTR_CUDA_COMPUTE_CAPABILITY: {"version": major_minor_semver(gpu.cuda_compute_capability)},
            ATTR_DRIVER_VERSION: {"version": driver_semver(gpu.driver_version)},
            ATTR_CUDA_DRIVER_VERSION: {"version": major_minor_semver(gpu.cuda_driver_version)},
            ATTR_PCI_BUS_ID: _string(gpu.pci_bus_id),
            ATTR_NUMA_NODE: {"int": gpu.numa_node},
        },
        "capacity": {CAPACITY_MEMORY: memory_capacity, CAPACITY_CORES: cores_capacity},
    }
    if allow_multiple_allocations:
        device["allowMultipleAllocations"] = True
        # A request without a memory entry takes the whole GPU; one without cores takes none
        # (0 = no SM cap, no reservation).
        memory_capacity["requestPolicy"] = {
            "default": memory,
            "validRange": {"min": format_bytes(MEMORY_MIN_BYTES), "max": memory,
                           "step": format_bytes(MEMORY_STEP_BYTES)},
        }
        cores_capacity["requestPolicy"] = {
            "default": "0",
            "validRange": {"min": "0", "max": cores, "step": "1"},
        }
    return device


def slice_device_limit(devices: Sequence[JsonObject], max_devices_per_slice: int = MAX_DEVICES_PER_SLICE) -> int:
    """How many of these devices one slice may hold (128, or 64 once a device uses taints,
    consumesCounters or list attributes)."""
    def lowers_limit(device: JsonObject) -> bool:
        if device.get("taints") or device.get("consumesCounters"):
            return True
        return any(form in value for value in device.get("attributes", {}).values() for form in _LIST_ATTRIBUTE_FORMS)

    limit = min(max_devices_per_slice, MAX_DEVICES_PER_SLICE)
    if any(lowers_limit(device) for device in devices):
        limit = min(limit, MAX_DEVICES_PER_SLICE_WITH_TAINTS_OR_COUNTERS)
    return limit


def publishable_gpus(inventory: NodeInventory) -> list[GpuInfo]:
    """The GPUs this driver offers, logging once per call why any other is left out."""
    offered = []
    for gpu in inventory.gpus:
        reason = unpublishable_reason(gpu)
        if reason is None:
            offered.append(gpu)
        else:
            log.warning("gpu not published", node=inventory.node_name, gpu=device_name(gpu),
                        uuid=gpu.uuid, reason=reason)
    return offered


def build_slices(
    inventory: NodeInventory,
    *,
    generation: int,
    allow_multiple_allocations: bool,
    max_devices_per_slice: int = MAX_DEVICES_PER_SLICE,
    taints: Mapping[str, Sequence[JsonObject]] | None = None,
) -> list[JsonObject]:
    """The node's pool as ResourceSlice specs (``io.k8s.api.resource.v1.ResourceSliceSpec``).

    One pool named after the node, devices in index order, split into as many slices as the
    per-slice limit needs; always at least one slice, so a node without shareable GPUs publishes
    an empty pool rather than none. Every slice carries the same ``generation`` and the total
    ``resourceSliceCount``. MIG-enabled GPUs are left out with a warning. ``taints`` (device name →
    ``taints[]`` entries, from the node's health loop) are put on their devices.
    """
    if generation < 0:
        raise ValueError(f"pool generation must not be negative, got {generation}")
    if max_devices_per_slice < 1:
        raise ValueError(f"max_devices_per_slice must be at least 1, got {max_devices_per_slice}")
    devices = [to_device(gpu, allow_multiple_allocations=allow_multiple_allocations)
               for gpu in publishable_gpus(inventory)]
    for device in devices:
        if (taints or {}).get(device["name"]):
            device["taints"] = [dict(t) for t in (taints or {})[device["name"]]]
    limit = slice_device_limit(devices, max_devices_per_slice)
    chunks = [devices[start:start + limit] for start in range(0, len(devices), limit)] or [[]]
    return [
        {
            "driver": DRIVER_NAME,
            "pool": {"name": inventory.node_name, "generation": generation, "resourceSliceCount": len(chunks)},
            "nodeName": inventory.node_name,
            "devices": chunk,
        }
        for chunk in chunks
    ]
