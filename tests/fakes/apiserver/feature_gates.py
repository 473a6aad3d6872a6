"""Fields the real API server silently drops when their feature gate is off.

A 1.36 cluster with `DRAConsumableCapacity` disabled (or an older one) stores a ResourceSlice
without `allowMultipleAllocations` and capacity `requestPolicy`, and a claim without capacity
requests, `shareID` and `consumedCapacity`, unless the old object already used them
(pkg/registry/resource/*/strategy.go dropDisabledFields). The kubelet plugin must notice and
degrade; tests flip the gate with `FakeApiServer.disable_feature(...)`.
"""

from __future__ import annotations

from typing import Any

CONSUMABLE_CAPACITY = "DRAConsumableCapacity"
KNOWN_GATES = frozenset({CONSUMABLE_CAPACITY})


def _slice_uses_capacity_sharing(obj: dict[str, Any] | None) -> bool:
    for dev in ((obj or {}).get("spec") or {}).get("devices") or []:
        if dev.get("allowMultipleAllocations") is not None:
            return True
        if any(isinstance(c, dict) and c.get("requestPolicy") for c in (dev.get("capacity") or {}).values()):
            return True
    return False


def _drop_slice_fields(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj.get("spec") or {}
    devices = []
    for dev in spec.get("devices") or []:
        dev = {k: v for k, v in dev.items() if k != "allowMultipleAllocations"}
        if dev.get("capacity"):
            dev["capacity"] = {name: {k: v for k, v in cap.items() if k != "requestPolicy"}
                               for name, cap in dev["capacity"].items()}
        devices.append(dev)
    return {**obj, "spec": {**spec, "devices": devices}} if "devices" in spec else obj


def _requests(spec: dict[str, Any] | None) -> list[dict[str, Any]]:
    return (((spec or {}).get("devices") or {}).get("requests")) or []


def _claim_spec_uses_capacity(spec: dict[str, Any] | None) -> bool:
    for req in _requests(spec):
        if (req.get("exactly") or {}).get("capacity"):
            return True
        if any(sub.get("capacity") for sub in req.get("firstAvailable") or []):
            return True
    return False


def _drop_claim_spec_capacity(spec: dict[str, Any]) -> dict[str, Any]:
    requests = []
    for req in _requests(spec):
        req = dict(req)
        if isinstance(req.get("exactly"), dict):
            req["exactly"] = {k: v for k, v in req["exactly"].items() if k != "capacity"}
        if isinstance(req.get("firstAvailable"), list):
            req["firstAvailable"] = [{k: v for k, v in sub.items() if k != "capacity"} for sub in req["firstAvailable"]]
        requests.append(req)
    return {**spec, "devices": {**spec["devices"], "requests": requests}} if requests else spec


def _status_uses_shares(status: dict[str, Any] | None) -> bool:
    results = (((status or {}).get("allocation") or {}).get("devices") or {}).get("results") or []
    return any(r.get("shareID") or r.get("consumedCapacity") for r in results)


def _drop_status_shares(status: dict[str, Any]) -> dict[str, Any]:
    allocation = status.get("allocation")
    if not allocation or not (allocation.get("devices") or {}).get("results"):
        return status
    results = [{k: v for k, v in r.items() if k not in ("shareID", "consumedCapacity")}
               for r in allocation["devices"]["results"]]
    out = {**status, "allocation": {**allocation, "devices": {**allocation["devices"], "results": results}}}
    if status.get("devices"):
        out["devices"] = [{k: v for k, v in d.items() if k != "shareID"} for d in status["devices"]]
    return out


def drop_disabled_fields(kind: str, obj: dict[str, Any], old: dict[str, Any] | None,
                         disabled: frozenset[str]) -> dict[str, Any]:
    """`obj` without the fields of disabled gates that `old` did not already use."""
    if CONSUMABLE_CAPACITY not in disabled:
        return obj
    if kind == "ResourceSlice" and not _slice_uses_capacity_sharing(old):
        return _drop_slice_fields(obj)
    if kind == "ResourceClaim":
        if isinstance(obj.get("spec"), dict) and not _claim_spec_uses_capacity((old or {}).get("spec")):
            obj = {**obj, "spec": _drop_claim_spec_capacity(obj["spec"])}
        if isinstance(obj.get("status"), dict) and not _status_uses_shares((old or {}).get("status")):
            obj = {**obj, "status": _drop_status_shares(obj["status"])}
        return obj
    if kind == "ResourceClaimTemplate":
        inner = (obj.get("spec") or {}).get("spec")
        old_inner = ((old or {}).get("spec") or {}).get("spec")
        if isinstance(inner, dict) and not _claim_spec_uses_capacity(old_inner):
            return {**obj, "spec": {**obj["spec"], "spec": _drop_claim_spec_capacity(inner)}}
    return obj
