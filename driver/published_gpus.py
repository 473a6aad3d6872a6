"""Published ResourceSlices (raw JSON) → the allocator's per-node GPU records.

Only slices of our driver with a node scope count. A pool may be split over several slices and is
republished with a bumped ``pool.generation``; like kube-scheduler, only the slices of a pool's
highest generation are used. A device that does not parse (missing capacity, bad quantity) is
skipped with a log line rather than poisoning its whole node.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from vgpu_dra.api.names import (ATTR_NUMA_NODE, ATTR_PRODUCT_NAME, ATTR_UUID, CAPACITY_CORES, CAPACITY_MEMORY,
                                CORES_MAX, DRIVER_NAME)
from vgpu_dra.api.quantity import QuantityError, parse_bytes
from vgpu_dra.driver.capacity_policy import PolicyError, RequestPolicy, driver_cores_policy, driver_memory_policy
from vgpu_dra.driver.device_taints import DeviceTaint, TaintError
from vgpu_dra.driver.ledger import AttributeValue, GpuDevice, Version
from vgpu_dra.driver.limits import LimitError, parse_cores

log = structlog.get_logger(__name__)

JsonObject = dict[str, Any]


class SliceDeviceError(ValueError):
    """A published device this controller cannot use; the message names the device and field."""


@dataclass(frozen=True, slots=True)
class NodeGpus:
    """The GPUs one node publishes (pool = node name) at the pool's newest generation."""

    node: str
    pool: str
    generation: int
    gpus: tuple[GpuDevice, ...]


def _attribute_value(name: str, raw: Mapping[str, Any]) -> AttributeValue:
    if "string" in raw:
        return str(raw["string"])
    if "bool" in raw:
        return bool(raw["bool"])
    if "int" in raw:
        return int(raw["int"])
    if "version" in raw:
        return Version(str(raw["version"]))
    raise SliceDeviceError(f"attribute {name!r} has no value of a known type: {sorted(raw)}")


def _unqualified(name: str) -> str | None:
    """Our domain's attribute names unqualified; other domains kept qualified; None = skip."""
    domain, _, short = name.rpartition("/")
    if not domain or domain == DRIVER_NAME:
        return short
    return name


def gpu_from_device(device: Mapping[str, Any]) -> GpuDevice:
    """One ResourceSlice device (JSON) as a `GpuDevice`; raises `SliceDeviceError`."""
    name = device.get("name") or ""
    if not name:
        raise SliceDeviceError("device without a name")
    attributes: dict[str, AttributeValue] = {}
    for key, raw in (device.get("attributes") or {}).items():
        short = _unqualified(key)
        if short is not None and isinstance(raw, Mapping):
            attributes[short] = _attribute_value(key, raw)
    capacity = {(_unqualified(k) or k): v for k, v in (device.get("capacity") or {}).items()}
    if CAPACITY_MEMORY not in capacity:
        raise SliceDeviceError(f"device {name}: no {CAPACITY_MEMORY!r} capacity")
    try:
        memory = parse_bytes(capacity[CAPACITY_MEMORY].get("value"))
    except (QuantityError, AttributeError) as exc:
        raise SliceDeviceError(f"device {name}: capacity {CAPACITY_MEMORY}: {exc}") from None
    cores = CORES_MAX
    if CAPACITY_CORES in capacity:
        try:
            cores = parse_cores(capacity[CAPACITY_CORES].get("value"), field=f"device {name} capacity cores")
        except (LimitError, AttributeError) as exc:
            raise SliceDeviceError(str(exc)) from None
    cores = cores or CORES_MAX
    try:
        memory_policy = _policy(capacity[CAPACITY_MEMORY], f"device {name} capacity memory",
                                driver_memory_policy(memory))
        cores_policy = _policy(capacity.get(CAPACITY_CORES) or {}, f"device {name} capacity cores",
                               driver_cores_policy(cores))
        taints = tuple(DeviceTaint.parse(raw, field=f"device {name} taints[{i}]")
                       for i, raw in enumerate(device.get("taints") or ()))
    except (PolicyError, TaintError) as exc:
        raise SliceDeviceError(str(exc)) from None
    numa = attributes.get(ATTR_NUMA_NODE, -1)
    try:
        return GpuDevice(name=name, uuid=str(attributes.get(ATTR_UUID, name)), memory_bytes=memory,
                         cores=cores, numa_node=numa if isinstance(numa, int) else -1,
                         product_name=str(attributes.get(ATTR_PRODUCT_NAME, "")), attributes=attributes,
                         memory_policy=memory_policy, cores_policy=cores_policy, taints=taints)
    except ValueError as exc:
        raise SliceDeviceError(str(exc)) from None


def _policy(capacity: Mapping[str, Any], field: str, driver_default: RequestPolicy) -> RequestPolicy | None:
    """The capacity's published policy; None when it is the driver's own or absent (a server that
    dropped allowMultipleAllocations dropped the policy with it: the driver's own applies)."""
    if not isinstance(capacity, Mapping):
        return None
    published = RequestPolicy.parse(capacity.get("requestPolicy"), field=f"{field} requestPolicy")
    return None if published is None or published == driver_default else published


def slice_node(resource_slice: Mapping[str, Any]) -> str | None:
    """The node a slice's devices live on, or None for slices that are not node-local."""
    spec = resource_slice.get("spec") or {}
    return spec.get("nodeName") or None


def gpus_by_node(slices: Iterable[Mapping[str, Any]], *, driver: str = DRIVER_NAME) -> dict[str, NodeGpus]:
    """Group our driver's node-local slices into per-node GPU lists (newest pool generation)."""
    newest: dict[tuple[str, str], int] = {}
    chosen: list[Mapping[str, Any]] = []
    for item in slices:
        spec = item.get("spec") or {}
        if spec.get("driver") != driver or not slice_node(item):
            continue
        pool = spec.get("pool") or {}
        key = (spec["nodeName"], pool.get("name", spec["nodeName"]))
        generation = int(pool.get("generation") or 0)
        if generation > newest.get(key, -1):
            newest[key] = generation
        chosen.append(item)
    devices: dict[str, dict[str, GpuDevice]] = {}
    pools: dict[str, tuple[str, int]] = {}
    for item in chosen:
        spec = item["spec"]
        pool = spec.get("pool") or {}
        key = (spec["nodeName"], pool.get("name", spec["nodeName"]))
        if int(pool.get("generation") or 0) != newest[key]:
            continue
        pools[key[0]] = (key[1], newest[key])
        node_devices = devices.setdefault(key[0], {})
        for raw in spec.get("devices") or []:
            try:
                gpu = gpu_from_device(raw)
            except SliceDeviceError as exc:
                log.warning("skipping published device", slice=item.get("metadata", {}).get("name"),
                            node=key[0], problem=str(exc))
                continue
            node_devices[gpu.name] = gpu
    return {node: NodeGpus(node, pools[node][0], pools[node][1],
                           tuple(sorted(found.values(), key=_device_order)))
            for node, found in devices.items()}


def _device_order(gpu: GpuDevice) -> tuple[int, str]:
    index = gpu.attributes.get("index")
    return (index if isinstance(index, int) and not isinstance(index, bool) else 1 << 30, gpu.name)
