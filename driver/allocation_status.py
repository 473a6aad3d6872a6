"""A placed claim → the ``status.allocation`` the controller writes, in the API server's JSON shape.

Pure (apart from fresh shareIDs and the timestamp, which callers may pin). Written as
kube-scheduler writes its own allocations, so its accounting of our shares is right:

- ``devices.results[]``: ``request`` (``req`` or, for firstAvailable, ``req/subrequest``),
  ``driver``, ``pool`` (= node), ``device``, a fresh ``shareID`` and the full
  ``consumedCapacity`` {memory, cores}; ``adminAccess: true`` and a copy of the request's
  ``tolerations`` when it has them;
- ``devices.config[]``: the configs of each placed request's DeviceClass (``FromClass``), the
  claim's configs that apply to what was placed (``FromClaim``), then one ``FromClaim`` entry per
  placed request with the resolved ``VgpuConfig`` in bytes (what a cluster without consumable
  capacity goes by);
- ``nodeSelector`` matching the node's ``metadata.name``, and ``allocationTimestamp``.
"""
from __future__ import annotations

import os
import random
import threading
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from vgpu_dra.api.config import VgpuConfig
from vgpu_dra.api.names import CAPACITY_CORES, CAPACITY_MEMORY, DRIVER_NAME
from vgpu_dra.api.quantity import format_bytes
from vgpu_dra.driver.allocation_request import ClaimPlacement

JsonObject = dict[str, Any]

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


def _request_fields(raw: Mapping[str, Any], result_name: str) -> Mapping[str, Any]:
    """The ``exactly`` fields, or those of the subrequest a result name picks."""
    if raw.get("exactly"):
        return raw["exactly"]
    wanted = result_name.split("/", 1)[1] if "/" in result_name else ""
    return next((sub for sub in raw.get("firstAvailable") or [] if sub.get("name") == wanted), {})


def allocation_status(claim: Mapping[str, Any], classes: Mapping[str, Mapping[str, Any]], node: str,
                      placed: ClaimPlacement, *, share_ids: Callable[[], str] | None = None,
                      timestamp: str | None = None) -> JsonObject:
    """``status.allocation`` for a claim placed on `node` (see the module docstring)."""
    spec_devices = (claim.get("spec") or {}).get("devices") or {}
    next_id = share_ids or new_share_id
    results: list[JsonObject] = []
    class_configs: list[JsonObject] = []
    resolved_configs: list[JsonObject] = []
    placed_names: set[str] = set()
    for raw in spec_devices.get("requests") or []:
        name = placed.chosen(raw["name"])
        placed_names |= {name, raw["name"]}
        fields = _request_fields(raw, name)
        class_name = fields.get("deviceClassName", "")
        for entry in ((classes.get(class_name) or {}).get("spec") or {}).get("config") or []:
            if entry.get("opaque"):
                class_configs.append({"source": "FromClass", "requests": [name], "opaque": entry["opaque"]})
        shares = placed.shares(name)
        tolerations = [dict(t) for t in fields.get("tolerations") or ()]
        for item in shares:
            result: JsonObject = {
                "request": name, "driver": DRIVER_NAME, "pool": node, "device": item.device.name,
                "shareID": next_id(),
                "consumedCapacity": {CAPACITY_MEMORY: format_bytes(item.share.memory_bytes),
                                     CAPACITY_CORES: str(item.share.cores)},
            }
            if item.admin_access:
                result["adminAccess"] = True
            if tolerations:
                result["tolerations"] = tolerations
            results.append(result)
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
                     for e in spec_devices.get("config") or []
                     if e.get("opaque") and (not e.get("requests") or placed_names & set(e["requests"]))]
    return {
        "devices": {"results": results, "config": class_configs + claim_configs + resolved_configs},
        "nodeSelector": {"nodeSelectorTerms": [{"matchFields": [
            {"key": "metadata.name", "operator": "In", "values": [node]}]}]},
        "allocationTimestamp": timestamp or _timestamp(),
    }
