"""Capacity invariants checked on every state the fake API server stores (its write observer)."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from vgpu_dra.api.quantity import parse_bytes
from vgpu_dra.driver.published_gpus import gpus_by_node


@dataclass
class CapacityWatch:
    """Books every claim's allocation as the server commits it and records any GPU over capacity.

    Capacity comes from the ResourceSlices in the store. Also records allocations that changed in
    place (an allocation may only be set from nothing or cleared).
    """

    capacity: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    booked: dict[str, list[tuple[str, str, int, int]]] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    states_checked: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def load_slices(self, slices: list[dict[str, Any]]) -> None:
        for node, found in gpus_by_node(slices).items():
            for device in found.gpus:
                self.capacity[(node, device.name)] = (device.memory_bytes, device.cores)

    def __call__(self, record: Any) -> None:
        if record.resource.kind != "ResourceClaim":
            return
        uid = record.obj["metadata"]["uid"]
        with self.lock:
            self.states_checked += 1
            old_alloc = ((record.old or {}).get("status") or {}).get("allocation")
            new_alloc = (record.obj.get("status") or {}).get("allocation") if record.type != "DELETED" else None
            if old_alloc and new_alloc and old_alloc != new_alloc:
                self.violations.append(f"rv {record.rv}: allocation of {uid} changed in place")
            items = []
            for result in ((new_alloc or {}).get("devices") or {}).get("results") or []:
                consumed = result.get("consumedCapacity") or {}
                items.append((result["pool"], result["device"], parse_bytes(consumed.get("memory", "0")),
                              int(consumed.get("cores", "0"))))
            if items:
                self.booked[uid] = items
            else:
                self.booked.pop(uid, None)
            used: dict[tuple[str, str], list[int]] = {}
            for entries in self.booked.values():
                for node, device, memory, cores in entries:
                    total = used.setdefault((node, device), [0, 0])
                    total[0] += memory
                    total[1] += cores
            for gpu_key, (memory, cores) in used.items():
                cap_memory, cap_cores = self.capacity.get(gpu_key, (0, 0))
                if memory > cap_memory or cores > cap_cores:
                    self.violations.append(f"rv {record.rv}: {gpu_key} holds {memory} bytes / {cores} cores, "
                                           f"capacity {cap_memory} / {cap_cores}")

    def free(self) -> dict[tuple[str, str], tuple[int, int]]:
        with self.lock:
            free = {k: [m, c] for k, (m, c) in self.capacity.items()}
            for entries in self.booked.values():
                for node, device, memory, cores in entries:
                    free[(node, device)][0] -= memory
                    free[(node, device)][1] -= cores
            return {k: (m, c) for k, (m, c) in free.items()}
