"""The limits in force on a prepared claim, as its ``status.devices[]`` entries.

Pure. After Prepare the kubelet plugin writes one entry per device it prepared (driver, pool,
device, shareID; ``data`` with the memory wall, SM cap, policy and shim version; a ``Ready``
condition), so ``kubectl get resourceclaim -o yaml`` says what limit a pod has without node
access. Entries of other drivers and other nodes' devices are never touched; Unprepare removes
ours again. The ``data`` shape is documented in docs/kubelet-plugin.md.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from vgpu_dra.api.quantity import format_bytes
from vgpu_dra.driver.checkpoint import PreparedClaim

JsonObject = dict[str, Any]
READY_REASON = "LimitsApplied"
DATA_KIND = "VgpuLimits"


def _key(entry: Mapping[str, Any]) -> tuple[str, str, str, str]:
    return (str(entry.get("driver", "")), str(entry.get("pool", "")), str(entry.get("device", "")),
            str(entry.get("shareID") or ""))


def shim_version(claim: PreparedClaim) -> str:
    """The installed shim version the claim's containers load (its directory's name)."""
    return Path(claim.shim_host_path).parent.name


def device_statuses(claim: PreparedClaim, driver: str, now: str) -> list[JsonObject]:
    """One ``AllocatedDeviceStatus`` per device of ``claim``; ``now`` is the RFC 3339 time of
    the Ready condition."""
    entries = []
    for device in claim.devices:
        data = {
            "kind": DATA_KIND,
            "gpuUUID": device.gpu_uuid,
            "memoryLimit": format_bytes(device.memory_bytes),
            "memoryLimitBytes": device.memory_bytes,
            "coreLimitPercent": device.cores,
            "corePolicy": device.core_policy,
            "shimVersion": shim_version(claim),
        }
        cap = f"{device.cores} % of the SMs ({device.core_policy})" if device.cores else "no SM cap"
        entry: JsonObject = {
            "driver": driver, "pool": device.pool, "device": device.device,
            "conditions": [{
                "type": "Ready", "status": "True", "reason": READY_REASON, "lastTransitionTime": now,
                "message": f"memory wall {format_bytes(device.memory_bytes)}, {cap}, enforced by libvgpu.so "
                           f"{shim_version(claim)}",
            }],
            "data": data,
        }
        if device.share_id:
            entry["shareID"] = device.share_id
        entries.append(entry)
    return entries


def _same_ignoring_time(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    def strip(entry: Mapping[str, Any]) -> Any:
        conditions = [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in entry.get("conditions") or ()]
        return {**entry, "conditions": conditions}
    return strip(a) == strip(b)


def with_ours(existing: Sequence[Mapping[str, Any]], ours: Iterable[JsonObject]) -> list[JsonObject] | None:
    """``existing`` with our entries put in (replacing any of the same key); None when nothing
    would change (a repeat Prepare writes nothing). A condition that did not change keeps its
    ``lastTransitionTime``."""
    by_key = {_key(e): dict(e) for e in existing}
    changed = False
    for entry in ours:
        held = by_key.get(_key(entry))
        if held is not None and _same_ignoring_time(held, entry):
            continue
        by_key[_key(entry)] = entry
        changed = True
    return list(by_key.values()) if changed else None


def without_ours(existing: Sequence[Mapping[str, Any]], driver: str, pool: str) -> list[JsonObject] | None:
    """``existing`` without this node's entries (driver and pool ours); None when there are none."""
    kept = [dict(e) for e in existing if not (e.get("driver") == driver and e.get("pool") == pool)]
    return kept if len(kept) != len(existing) else None
