"""Limit resolution: what a claim asked for (capacity requests, VgpuConfig layers) → bytes and cores.

Pure. The same rules serve the controller (sizing a share before placing it), the kubelet plugin
(limits from an allocation without consumedCapacity) and `vgpu-dra plan`, so they always agree.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from kubernetes.utils.quantity import parse_quantity

from vgpu_dra.api.config import CorePolicy, VgpuConfig
from vgpu_dra.api.names import CAPACITY_CORES, CAPACITY_MEMORY, CORES_MAX, MEMORY_MIN_BYTES, MEMORY_STEP_BYTES
from vgpu_dra.api.quantity import QuantityError, humanize_bytes, parse_bytes
from vgpu_dra.driver.capacity_policy import RequestPolicy, driver_cores_policy, driver_memory_policy

DEFAULT_CORE_POLICY: CorePolicy = "soft"


class LimitError(ValueError):
    """A request that no GPU (or not this GPU) can satisfy, or that is malformed."""


@dataclass(frozen=True, slots=True)
class ShareRequest:
    """A claim's size per device, before a GPU is chosen. ``None`` memory = the whole GPU (the
    memory policy's default). ``cores_requested`` tells a cores value of 0 that was asked for from
    one nobody set (which takes the cores policy's default; 0 for this driver's GPUs)."""

    memory_bytes: int | None = None
    memory_percent: int | None = None
    cores: int = 0
    core_policy: CorePolicy = DEFAULT_CORE_POLICY
    cores_requested: bool = False

    @classmethod
    def from_sources(cls, config: VgpuConfig | None,
                     capacity_requests: Mapping[str, str | int] | None = None) -> ShareRequest:
        """Combine a merged VgpuConfig with `exactly.capacity.requests`; capacity requests win."""
        memory_bytes = config.memory if config else None
        memory_percent = config.memory_percent if config else None
        cores = config.cores if config and config.cores is not None else 0
        cores_requested = bool(config and config.cores is not None)
        policy: CorePolicy = (config.core_policy if config and config.core_policy else DEFAULT_CORE_POLICY)
        for name, value in (capacity_requests or {}).items():
            if name in (CAPACITY_MEMORY, f"vgpu.dra.dev/{CAPACITY_MEMORY}"):
                try:
                    memory_bytes = parse_bytes(value)
                except QuantityError as exc:
                    raise LimitError(f"capacity request {name}: {exc}") from None
                memory_percent = None
            elif name in (CAPACITY_CORES, f"vgpu.dra.dev/{CAPACITY_CORES}"):
                cores = parse_cores(value, field=f"capacity request {name}")
                cores_requested = True
            else:
                raise LimitError(f"capacity request {name!r} is not a capacity of this driver "
                                 f"(known: {CAPACITY_MEMORY}, {CAPACITY_CORES})")
        return cls(memory_bytes=memory_bytes, memory_percent=memory_percent, cores=cores,
                   core_policy=policy, cores_requested=cores_requested)

    def consumed_memory(self, capacity: int, policy: RequestPolicy | None = None) -> int | None:
        """Bytes this request takes of a GPU with ``capacity`` usable bytes under the GPU's memory
        requestPolicy (None = the driver's own), or None when that GPU can never give it."""
        rules = policy or driver_memory_policy(capacity)
        if self.memory_percent is not None:
            amount = rules.consumed(rules.at_most(capacity * self.memory_percent // 100), capacity)
        else:
            amount = rules.consumed(self.memory_bytes, capacity)
        return amount if amount is not None and amount <= capacity else None

    def consumed_cores(self, capacity: int, policy: RequestPolicy | None = None) -> int | None:
        """Cores this request takes of a GPU with ``capacity`` cores under its cores policy, or None."""
        rules = policy or driver_cores_policy(capacity)
        amount = rules.consumed(self.cores if self.cores or self.cores_requested else None, capacity)
        return amount if amount is not None and amount <= capacity else None

    def memory_for(self, usable_memory_bytes: int) -> int:
        """Bytes this request takes on a GPU with `usable_memory_bytes`, rounded like the slice's
        requestPolicy (up to the 1 MiB step, at least 64 MiB); raises when it does not fit."""
        if self.memory_percent is not None:
            wanted = usable_memory_bytes * self.memory_percent // 100
            wanted -= wanted % MEMORY_STEP_BYTES  # round down: 100 % must fit the GPU
        elif self.memory_bytes is not None:
            wanted = -(-self.memory_bytes // MEMORY_STEP_BYTES) * MEMORY_STEP_BYTES
        else:
            return usable_memory_bytes
        wanted = max(wanted, MEMORY_MIN_BYTES)
        if wanted > usable_memory_bytes:
            raise LimitError(f"needs {humanize_bytes(wanted)} of GPU memory but the GPU has only "
                             f"{humanize_bytes(usable_memory_bytes)} usable")
        return wanted

    def resolve(self, usable_memory_bytes: int) -> ResolvedShare:
        """The concrete share on one GPU."""
        return ResolvedShare(memory_bytes=self.memory_for(usable_memory_bytes), cores=self.cores,
                             core_policy=self.core_policy)

    def describe(self) -> str:
        """Short human form: ``2 GiB, 25 % cores`` / ``20 % memory`` / ``whole GPU``."""
        if self.memory_percent is not None:
            memory = f"{self.memory_percent} % memory"
        elif self.memory_bytes is not None:
            memory = humanize_bytes(self.memory_bytes)
        else:
            memory = "whole GPU memory"
        return f"{memory}, {self.cores} % cores" if self.cores else memory


@dataclass(frozen=True, slots=True)
class ResolvedShare:
    """A share of one GPU in absolute terms: what the shim enforces."""

    memory_bytes: int
    cores: int
    core_policy: CorePolicy = DEFAULT_CORE_POLICY


def parse_cores(value: str | int, *, field: str = "cores") -> int:
    """A cores value (int or quantity string like ``"25"``) as an integer percentage 0..100."""
    try:
        amount = parse_quantity(value) if not isinstance(value, bool) else None
    except ValueError:
        amount = None
    if amount is None or amount != amount.to_integral_value() or not 0 <= amount <= CORES_MAX:
        raise LimitError(f"{field} = {value!r}: expected an integer from 0 to {CORES_MAX}")
    return int(amount)
