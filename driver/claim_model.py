"""ResourceClaims (raw JSON): what the controller reads of them, and what an allocation books. Pure.

- small readers: `meta`, `claim_label`, `allocation`, `allocated_node`, `has_finalizer`,
  `reserved_for`, `is_ours` (a claim naming a controller DeviceClass);
- `booked_consumptions`: any claim's allocation (ours or anybody's) → what it takes per GPU.

The claim → allocator translation is `vgpu_dra.driver.claim_requests`; the placement →
``status.allocation`` writer is `vgpu_dra.driver.allocation_status`.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vgpu_dra.api.config import InvalidConfigError, parse_config
from vgpu_dra.api.names import (ALLOCATOR_CONTROLLER, ALLOCATOR_LABEL, CAPACITY_CORES, CAPACITY_MEMORY, CORES_MAX,
                                DRIVER_NAME, FINALIZER)
from vgpu_dra.api.quantity import QuantityError, parse_bytes
from vgpu_dra.driver.ledger import Consumption
from vgpu_dra.driver.limits import LimitError, parse_cores

JsonObject = dict[str, Any]

EXCLUSIVE_MEMORY_BYTES = 1 << 50
"""Booked for an exclusive (no shareID) allocation of a GPU this controller does not know yet."""


class ClaimRejected(ValueError):
    """A claim that can never be allocated as written; ``str()`` is the user-facing reason."""


def meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """``metadata`` of a raw object."""
    return obj.get("metadata") or {}


def claim_label(claim: Mapping[str, Any]) -> str:
    """``namespace/name`` of a claim."""
    return f"{meta(claim).get('namespace', '')}/{meta(claim).get('name', '')}"


def is_controller_class(device_class: Mapping[str, Any] | None) -> bool:
    """A DeviceClass this controller allocates (label ``vgpu.dra.dev/allocator: controller``)."""
    return bool(device_class) and (meta(device_class).get("labels") or {}).get(ALLOCATOR_LABEL) == ALLOCATOR_CONTROLLER


def request_class_names(claim: Mapping[str, Any]) -> list[str]:
    """The DeviceClass names a claim's requests (and sub-requests) name."""
    names = []
    for request in ((claim.get("spec") or {}).get("devices") or {}).get("requests") or []:
        if request.get("exactly"):
            names.append(request["exactly"].get("deviceClassName", ""))
        for sub in request.get("firstAvailable") or []:
            names.append(sub.get("deviceClassName", ""))
    return names


def is_ours(claim: Mapping[str, Any], classes: Mapping[str, Mapping[str, Any]],
            controller_classes: frozenset[str] = frozenset()) -> bool:
    """Whether any request of the claim names a controller-allocated DeviceClass."""
    return any(name in controller_classes or is_controller_class(classes.get(name))
               for name in request_class_names(claim))


def allocation(claim: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """``status.allocation`` or None."""
    return (claim.get("status") or {}).get("allocation") or None


def allocated_node(claim: Mapping[str, Any]) -> str | None:
    """The node an allocation is pinned to (its ``metadata.name`` selector), or None."""
    found = allocation(claim)
    if not found:
        return None
    for term in (found.get("nodeSelector") or {}).get("nodeSelectorTerms") or []:
        for field in term.get("matchFields") or []:
            if field.get("key") == "metadata.name" and field.get("operator") == "In" and field.get("values"):
                return field["values"][0]
    for result in (found.get("devices") or {}).get("results") or []:
        if result.get("driver") == DRIVER_NAME:
            return result.get("pool")
    return None


def has_finalizer(claim: Mapping[str, Any]) -> bool:
    """Whether our finalizer is on the claim."""
    return FINALIZER in (meta(claim).get("finalizers") or [])


def reserved_for(claim: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """``status.reservedFor`` entries."""
    return (claim.get("status") or {}).get("reservedFor") or []


# --- any allocation → consumption -------------------------------------------------------------


def booked_consumptions(claim: Mapping[str, Any], device_capacity: Mapping[tuple[str, str], tuple[int, int]]
                        ) -> list[Consumption]:
    """What an allocated claim takes from our GPUs, whoever allocated it.

    A result with a shareID takes its consumedCapacity (a capacity it does not list takes the
    device's default: all memory, 0 cores); a result without shareID holds the whole GPU.
    adminAccess results take nothing. `device_capacity` maps (pool, device) → (memory, cores).
    """
    found = allocation(claim)
    if not found:
        return []
    items: list[Consumption] = []
    ours = has_finalizer(claim)
    for result in (found.get("devices") or {}).get("results") or []:
        if result.get("driver") != DRIVER_NAME or result.get("adminAccess"):
            continue
        pool, device = result.get("pool", ""), result.get("device", "")
        whole_memory, whole_cores = device_capacity.get((pool, device), (EXCLUSIVE_MEMORY_BYTES, CORES_MAX))
        if not result.get("shareID"):
            # Ours without shareID: an API server with DRAConsumableCapacity off dropped shareID and
            # consumedCapacity; the share is the resolved VgpuConfig we wrote for the request.
            share = _resolved_share(found, result.get("request", "")) if ours else None
            items.append(Consumption(pool, device, *(share or (whole_memory, whole_cores))))
            continue
        consumed = result.get("consumedCapacity") or {}
        memory_text = consumed.get(CAPACITY_MEMORY, consumed.get(f"{DRIVER_NAME}/{CAPACITY_MEMORY}"))
        cores_text = consumed.get(CAPACITY_CORES, consumed.get(f"{DRIVER_NAME}/{CAPACITY_CORES}"))
        try:
            memory = parse_bytes(memory_text) if memory_text is not None else whole_memory
        except QuantityError:
            memory = whole_memory
        try:
            cores = parse_cores(cores_text) if cores_text is not None else 0
        except LimitError:
            cores = whole_cores
        items.append(Consumption(pool, device, memory, cores))
    return items


def _resolved_share(found: Mapping[str, Any], request: str) -> tuple[int, int] | None:
    """(memory bytes, cores) of the last VgpuConfig entry scoped to `request` that states memory in
    bytes (the resolved entry `allocation_status` writes), or None."""
    for entry in reversed((found.get("devices") or {}).get("config") or []):
        opaque = entry.get("opaque") or {}
        if opaque.get("driver") != DRIVER_NAME or request not in (entry.get("requests") or ()):
            continue
        try:
            config = parse_config(opaque.get("parameters") or {})
        except InvalidConfigError:
            continue
        if config.memory is not None:
            return config.memory, config.cores or 0
    return None
