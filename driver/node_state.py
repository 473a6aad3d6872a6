"""What the allocator knows of one node: its published GPUs, what is used of each, and its summary.

Pure data. `GpuDevice` is one GPU as its node publishes it (attributes, capacities, request
policies, taints); `NodeState` holds a node's GPUs with their used totals and the summary the
allocator filters on (largest free memory, free fraction and free cores on any one GPU). A
`NodeState` belongs to its `vgpu_dra.driver.ledger.Ledger`, which is the only writer.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from vgpu_dra.api.names import CORES_MAX
from vgpu_dra.driver.capacity_policy import RequestPolicy
from vgpu_dra.driver.device_taints import DeviceTaint


@dataclass(frozen=True, slots=True, order=True)
class Version:
    """A published attribute of type ``version`` (semantic version text, e.g. ``"8.6.0"``).

    Kept distinct from ``str`` so CEL evaluation can treat it as a semver and `matchAttribute`
    compares versions with versions only.
    """

    text: str

    def __str__(self) -> str:
        return self.text


AttributeValue = int | bool | str | Version
"""A typed device attribute value as published in a ResourceSlice (int, bool, string, version)."""


@dataclass(frozen=True, slots=True)
class GpuDevice:
    """One physical GPU as its node publishes it: a device ``gpu-<index>`` in the node's pool.

    ``attributes`` are the unqualified attribute names of the driver's domain (``uuid``,
    ``productName``, ``numaNode`` …) with their typed values; ``memory_bytes`` is the usable
    memory capacity and ``cores`` the cores capacity (always 100 for this driver).
    ``memory_policy`` / ``cores_policy`` are the published requestPolicies when they differ from
    the driver's own (None = what the kubelet plugin publishes, see `capacity_policy`);
    ``taints`` are the device's published taints.
    """

    name: str
    uuid: str
    memory_bytes: int
    cores: int = CORES_MAX
    numa_node: int = -1
    product_name: str = ""
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)
    memory_policy: RequestPolicy | None = None
    cores_policy: RequestPolicy | None = None
    taints: tuple[DeviceTaint, ...] = ()

    def __post_init__(self) -> None:
        if self.memory_bytes <= 0:
            raise ValueError(f"GPU {self.name}: usable memory must be positive, got {self.memory_bytes}")
        if self.cores <= 0:
            raise ValueError(f"GPU {self.name}: cores capacity must be positive, got {self.cores}")
        object.__setattr__(self, "attributes", MappingProxyType(dict(self.attributes)))

    @property
    def capacity(self) -> Mapping[str, int]:
        """Published capacities: ``memory`` (usable bytes) and ``cores``."""
        return {"memory": self.memory_bytes, "cores": self.cores}


@dataclass(frozen=True, slots=True)
class Consumption:
    """What one claim takes from one GPU (a result's ``consumedCapacity``)."""

    node: str
    device: str
    memory_bytes: int
    cores: int


@dataclass(frozen=True, slots=True)
class GpuCandidate:
    """A read-only view of one GPU and what is free on it, as selectors and reports see it."""

    node: str
    device: GpuDevice
    used_memory_bytes: int
    used_cores: int

    @property
    def name(self) -> str:
        """The device name, ``gpu-<index>``."""
        return self.device.name

    @property
    def attributes(self) -> Mapping[str, AttributeValue]:
        """Published attributes (unqualified names in the driver's domain)."""
        return self.device.attributes

    @property
    def capacity(self) -> Mapping[str, int]:
        """Published capacities: ``memory`` (usable bytes) and ``cores`` (100)."""
        return self.device.capacity

    @property
    def free_memory_bytes(self) -> int:
        return max(0, self.device.memory_bytes - self.used_memory_bytes)

    @property
    def free_cores(self) -> int:
        return max(0, self.device.cores - self.used_cores)


class _FreeView:
    """``capacity[i] - used[i]``, never negative, without building a list."""

    __slots__ = ("capacity", "used")

    def __init__(self, capacity: list[int], used: list[int]):
        self.capacity = capacity
        self.used = used

    def __getitem__(self, i: int) -> int:
        free = self.capacity[i] - self.used[i]
        return free if free > 0 else 0


class NodeState:
    """One node's GPUs, their used totals and the summary the allocator filters on.

    Owned by its `Ledger`; read by the allocator, never mutated outside the ledger.
    """

    __slots__ = ("name", "gpus", "index", "used_memory", "used_cores", "max_free_memory",
                 "max_free_memory_gpu", "max_free_fraction", "max_free_fraction_gpu", "max_free_cores",
                 "max_usable_memory", "largest_gpu", "gpu_sizes", "score", "total_memory", "total_cores",
                 "plain", "memory_capacity", "cores_capacity")

    def __init__(self, name: str, gpus: tuple[GpuDevice, ...]):
        self.name = name
        self.gpus = gpus
        self.index = {gpu.name: i for i, gpu in enumerate(gpus)}
        self.used_memory = [0] * len(gpus)
        self.used_cores = [0] * len(gpus)
        self.total_memory = sum(gpu.memory_bytes for gpu in gpus)
        self.total_cores = sum(gpu.cores for gpu in gpus)
        self.max_usable_memory = max((gpu.memory_bytes for gpu in gpus), default=0)
        self.largest_gpu = max(gpus, key=lambda gpu: gpu.memory_bytes) if gpus else None
        sizes: dict[int, int] = {}
        for gpu in gpus:
            sizes[gpu.memory_bytes] = sizes.get(gpu.memory_bytes, 0) + 1
        self.gpu_sizes = tuple(sorted(sizes.items()))
        """(usable bytes, how many GPUs of that size): static checks without a GPU scan."""
        self.plain = all(not gpu.taints and gpu.memory_policy is None and gpu.cores_policy is None
                         and gpu.cores == CORES_MAX for gpu in gpus)
        """No taints and the driver's own request policies: sizes alone decide what fits."""
        self.memory_capacity = [gpu.memory_bytes for gpu in gpus]
        self.cores_capacity = [gpu.cores for gpu in gpus]
        self.max_free_memory = 0
        self.max_free_memory_gpu = -1
        self.max_free_fraction = 0.0
        self.max_free_fraction_gpu = -1
        self.max_free_cores = 0
        self.score = 0.0

    def free_memory(self, i: int) -> int:
        return max(0, self.gpus[i].memory_bytes - self.used_memory[i])

    def free_now(self) -> tuple[_FreeView, _FreeView]:
        """What is free on each GPU now, read in place (indexable like `free_lists`, not copied)."""
        return _FreeView(self.memory_capacity, self.used_memory), _FreeView(self.cores_capacity, self.used_cores)

    def free_lists(self) -> tuple[list[int], list[int]]:
        """What is free on each GPU now, (memory bytes, cores): fresh lists a decision may change."""
        return ([c - u if c > u else 0 for c, u in zip(self.memory_capacity, self.used_memory)],
                [c - u if c > u else 0 for c, u in zip(self.cores_capacity, self.used_cores)])

    def free_cores(self, i: int) -> int:
        return max(0, self.gpus[i].cores - self.used_cores[i])

    def candidate(self, i: int) -> GpuCandidate:
        return GpuCandidate(self.name, self.gpus[i], self.used_memory[i], self.used_cores[i])

    def refresh(self) -> None:
        """Recompute the summary after the used totals changed (O(GPUs on the node))."""
        best_memory, best_memory_gpu = 0, -1
        best_fraction, best_fraction_gpu = 0.0, -1
        best_cores = 0
        free_memory_sum = 0
        free_cores_sum = 0
        for i, gpu in enumerate(self.gpus):
            free_memory = gpu.memory_bytes - self.used_memory[i]
            free_memory = free_memory if free_memory > 0 else 0
            free_cores = gpu.cores - self.used_cores[i]
            free_cores = free_cores if free_cores > 0 else 0
            free_memory_sum += free_memory
            free_cores_sum += free_cores
            if free_memory > best_memory:
                best_memory, best_memory_gpu = free_memory, i
            fraction = free_memory / gpu.memory_bytes
            if fraction > best_fraction:
                best_fraction, best_fraction_gpu = fraction, i
            if free_cores > best_cores:
                best_cores = free_cores
        self.max_free_memory, self.max_free_memory_gpu = best_memory, best_memory_gpu
        self.max_free_fraction, self.max_free_fraction_gpu = best_fraction, best_fraction_gpu
        self.max_free_cores = best_cores
        self.score = _free_share(free_memory_sum, self.total_memory, free_cores_sum, self.total_cores)


def _free_share(free_memory: int, total_memory: int, free_cores: int, total_cores: int) -> float:
    """How much of a node is free, 0.0 (full) to 1.0 (idle): memory and cores weigh equally."""
    if not total_memory:
        return 0.0
    return (free_memory / total_memory + free_cores / total_cores) / 2
