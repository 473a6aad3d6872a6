"""ResourceClaims (raw JSON) ↔ the allocator's terms. Pure: no I/O.

- `claim_request`: a claim + its DeviceClasses → an allocator `ClaimRequest` (selectors compiled,
  sizes from VgpuConfig layers and capacity requests), or `ClaimRejected` with a sentence a user
  can act on.
- `allocation_status`: a placed claim → the exact ``status.allocation`` the design specifies.
- `booked_consumptions`: any claim's allocation (ours or anybody's) → what it takes per GPU.
"""
from __future__ import annotations

import os
import random
import threading
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from vgpu_dra.api.config import InvalidConfigError, VgpuConfig, merge_configs, parse_config
from vgpu_dra.api.names import (ALLOCATOR_CONTROLLER, ALLOCATOR_LABEL, CAPACITY_CORES, CAPACITY_MEMORY, CORES_MAX,
                                DRIVER_NAME, FINALIZER, GPU_POLICY_ANNOTATION, NODE_POLICY_ANNOTATION)
from vgpu_dra.api.quantity import QuantityError, format_bytes, parse_bytes
from vgpu_dra.driver.allocator import (AllocationInputError, ClaimPlacement, ClaimRequest, DeviceRequest,
                                       MatchAttribute)
from vgpu_dra.driver.ledger import Consumption
from vgpu_dra.driver.limits import LimitError, ShareRequest, parse_cores
from vgpu_dra.driver.placement_policy import PlacementPolicy
from vgpu_dra.driver.selectors import SelectorError, compile_selectors

JsonObject = dict[str, Any]

EXCLUSIVE_MEMORY_BYTES = 1 << 50
"""Booked for an exclusive (no shareID) allocation of a GPU this controller does not know yet."""


MAX_ALLOCATION_RESULTS = 32
"""`status.allocation.devices.results` holds at most this many entries (AllocationResultsMaxSize)."""


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


# --- claim → allocator request ----------------------------------------------------------------


def _our_configs(entries: Sequence[Mapping[str, Any]], where: str) -> list[tuple[tuple[str, ...], VgpuConfig]]:
    configs = []
    for index, entry in enumerate(entries):
        opaque = entry.get("opaque") or {}
        if opaque.get("driver") != DRIVER_NAME:
            continue  # addressed to another driver
        try:
            config = parse_config(opaque.get("parameters") or {})
        except InvalidConfigError as exc:
            raise ClaimRejected(f"{where} config[{index}]: {exc}") from None
        configs.append((tuple(entry.get("requests") or ()), config))
    return configs


def _applies(scope: tuple[str, ...], request: str) -> bool:
    return not scope or request in scope


def claim_policy(claim: Mapping[str, Any], default: PlacementPolicy) -> PlacementPolicy:
    """The placement policy for a claim: the controller default, overridden by annotations."""
    annotations = meta(claim).get("annotations") or {}
    node = annotations.get(NODE_POLICY_ANNOTATION)
    gpu = annotations.get(GPU_POLICY_ANNOTATION)
    if node is None and gpu is None:
        return default
    try:
        parsed = PlacementPolicy.parse(node or default.node.value, gpu or default.gpu.value)
    except ValueError as exc:
        raise ClaimRejected(f"annotation {NODE_POLICY_ANNOTATION if node else GPU_POLICY_ANNOTATION}: {exc}") from None
    return parsed


def claim_request(claim: Mapping[str, Any], classes: Mapping[str, Mapping[str, Any]]) -> ClaimRequest:
    """The allocator's view of a claim; raises `ClaimRejected` when it cannot be allocated as written."""
    label = claim_label(claim)
    spec_devices = (claim.get("spec") or {}).get("devices") or {}
    claim_configs = _our_configs(spec_devices.get("config") or [], "claim")
    requests: list[DeviceRequest] = []
    for raw in spec_devices.get("requests") or []:
        name = raw.get("name", "")
        if raw.get("firstAvailable"):
            raise ClaimRejected(f"request {name!r} uses firstAvailable, which the vgpu.dra.dev allocation "
                                "controller does not support: name one DeviceClass with `exactly`")
        exactly = raw.get("exactly") or {}
        class_name = exactly.get("deviceClassName", "")
        device_class = classes.get(class_name)
        if device_class is None:
            raise ClaimRejected(f"request {name!r}: DeviceClass {class_name!r} does not exist")
        if not is_controller_class(device_class):
            raise ClaimRejected(f"request {name!r}: DeviceClass {class_name!r} is not allocated by the vgpu.dra.dev "
                                "controller, and one claim cannot mix allocators")
        if exactly.get("adminAccess"):
            raise ClaimRejected(f"request {name!r}: adminAccess is not supported for fractional GPUs")
        mode = exactly.get("allocationMode") or "ExactCount"
        if mode != "ExactCount":
            raise ClaimRejected(f"request {name!r}: allocationMode {mode} is not supported; use ExactCount with a count")
        class_spec = device_class.get("spec") or {}
        expressions = [s["cel"]["expression"] for s in class_spec.get("selectors") or [] if s.get("cel")]
        expressions += [s["cel"]["expression"] for s in exactly.get("selectors") or [] if s.get("cel")]
        try:
            selector = compile_selectors(expressions) if expressions else None
        except SelectorError as exc:
            raise ClaimRejected(f"request {name!r}: {exc}") from None
        layers = [config for _, config in _our_configs(class_spec.get("config") or [], f"DeviceClass {class_name}")]
        layers += [config for scope, config in claim_configs if _applies(scope, name)]
        try:
            share = ShareRequest.from_sources(merge_configs(layers),
                                              (exactly.get("capacity") or {}).get("requests"))
        except (LimitError, InvalidConfigError) as exc:
            raise ClaimRejected(f"request {name!r}: {exc}") from None
        try:
            requests.append(DeviceRequest(name=name, share=share, count=int(exactly.get("count") or 1),
                                          selector=selector))
        except AllocationInputError as exc:
            raise ClaimRejected(str(exc)) from None
    results = sum(r.count for r in requests)
    if results > MAX_ALLOCATION_RESULTS:
        raise ClaimRejected(f"the claim asks for {results} GPUs in all; an allocation holds at most "
                            f"{MAX_ALLOCATION_RESULTS} devices")
    constraints = []
    for raw in spec_devices.get("constraints") or []:
        if raw.get("distinctAttribute"):
            raise ClaimRejected("constraint distinctAttribute is not supported by the vgpu.dra.dev controller "
                                "(the GPUs of one request are always distinct)")
        if raw.get("matchAttribute"):
            constraints.append(MatchAttribute(raw["matchAttribute"], tuple(raw.get("requests") or ())))
    try:
        return ClaimRequest(key=meta(claim)["uid"], requests=tuple(requests), match_attributes=tuple(constraints),
                            label=label)
    except AllocationInputError as exc:
        raise ClaimRejected(str(exc)) from None


# --- placement → status.allocation ------------------------------------------------------------


# shareIDs must be unique, not secret: a PRNG seeded from the OS once avoids a getrandom() call
# per allocation (slow on entropy-starved VMs).
_share_ids = random.Random(os.urandom(32))
_share_ids_lock = threading.Lock()


def new_share_id() -> str:
    """A random (version 4) UUID for a result's ``shareID``."""
    with _share_ids_lock:
        bits = _share_ids.getrandbits(128)
    return str(uuid.UUID(int=bits, version=4))


def _timestamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def allocation_status(claim: Mapping[str, Any], classes: Mapping[str, Mapping[str, Any]], node: str,
                      placed: ClaimPlacement, *, share_ids: Sequence[str] | None = None) -> JsonObject:
    """``status.allocation`` for a claim placed on `node`: results with shareID and full
    consumedCapacity, class configs (FromClass), claim configs (FromClaim), then one resolved
    VgpuConfig per request, the node selector and the allocation timestamp."""
    spec_devices = (claim.get("spec") or {}).get("devices") or {}
    results: list[JsonObject] = []
    class_configs: list[JsonObject] = []
    resolved_configs: list[JsonObject] = []
    ids = iter(share_ids or ())
    for raw in spec_devices.get("requests") or []:
        name = raw["name"]
        class_name = (raw.get("exactly") or {}).get("deviceClassName", "")
        for entry in ((classes.get(class_name) or {}).get("spec") or {}).get("config") or []:
            if entry.get("opaque"):
                class_configs.append({"source": "FromClass", "requests": [name], "opaque": entry["opaque"]})
        shares = placed.shares(name)
        for item in shares:
            results.append({
                "request": name, "driver": DRIVER_NAME, "pool": node, "device": item.device.name,
                "shareID": next(ids, None) or new_share_id(),
                "consumedCapacity": {CAPACITY_MEMORY: format_bytes(item.share.memory_bytes),
                                     CAPACITY_CORES: str(item.share.cores)},
            })
        if shares:
            # consumedCapacity is exact per GPU; the config entry (what a cluster without consumable
            # capacity goes by) holds for every GPU of the request, so it states the smallest share.
            first = shares[0].share
            memory = min(item.share.memory_bytes for item in shares)
            resolved = VgpuConfig.model_validate({"apiVersion": "vgpu.dra.dev/v1alpha1", "kind": "VgpuConfig",
                                                  "memory": memory, "cores": first.cores,
                                                  "corePolicy": first.core_policy})
            resolved_configs.append({"source": "FromClaim", "requests": [name],
                                     "opaque": {"driver": DRIVER_NAME, "parameters": resolved.to_parameters()}})
    claim_configs = [{"source": "FromClaim", **({"requests": list(e["requests"])} if e.get("requests") else {}),
                      "opaque": e["opaque"]}
                     for e in spec_devices.get("config") or [] if e.get("opaque")]
    return {
        "devices": {"results": results, "config": class_configs + claim_configs + resolved_configs},
        "nodeSelector": {"nodeSelectorTerms": [{"matchFields": [
            {"key": "metadata.name", "operator": "In", "values": [node]}]}]},
        "allocationTimestamp": _timestamp(),
    }


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
