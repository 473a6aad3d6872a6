"""The GPUs of one node: the data model, and its discovery through NVML (``pynvml``).

Discovery is the only place that talks to NVML. Everything downstream (ResourceSlice devices,
the allocator, `vgpu-dra plan`) takes a :class:`NodeInventory` and never calls NVML itself, so
it runs the same on a laptop without a GPU as on a node.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pynvml

T = TypeVar("T")

NVML_LIBRARY = "libnvidia-ml.so.1"

# nvmlDeviceArchitecture_t values (nvml.h), spelt as NVIDIA names the architectures.
ARCHITECTURE_NAMES: dict[int, str] = {
    2: "Kepler",
    3: "Maxwell",
    4: "Pascal",
    5: "Volta",
    6: "Turing",
    7: "Ampere",
    8: "Ada Lovelace",
    9: "Hopper",
    10: "Blackwell",
}
UNKNOWN = "Unknown"

# nvmlBrandType_t values (nvml.h), spelt as nvidia-smi prints "Product Brand".
BRAND_NAMES: dict[int, str] = {
    0: UNKNOWN,
    1: "Quadro",
    2: "Tesla",
    3: "NVS",
    4: "GRID",
    5: "GeForce",
    6: "Titan",
    7: "NVIDIA Virtual Applications",
    8: "NVIDIA Virtual PC",
    9: "NVIDIA Virtual Compute Server",
    10: "NVIDIA RTX Virtual Workstation",
    11: "NVIDIA Cloud Gaming",
    12: "Quadro RTX",
    13: "NVIDIA RTX",
    14: "NVIDIA",
    15: "GeForce RTX",
    16: "Titan RTX",
}

NUMA_NODE_UNKNOWN = -1

_PCI_BUS_ID = re.compile(
    r"^(?:(?P<domain>[0-9a-fA-F]{1,8}):)?(?P<bus>[0-9a-fA-F]{1,2}):(?P<device>[0-9a-fA-F]{1,2})"
    r"\.(?P<function>[0-7])$"
)
_COMPUTE_CAPABILITY = re.compile(r"^\d+\.\d+$")


class InventoryError(RuntimeError):
    """The node's GPUs could not be listed; the message says why and what to check."""


@dataclass(frozen=True)
class GpuInfo:
    """One physical GPU as NVML describes it."""

    uuid: str
    index: int
    minor_number: int
    product_name: str
    brand: str
    architecture: str
    cuda_compute_capability: str
    """``major.minor``, e.g. ``"8.6"``."""
    driver_version: str
    """As NVIDIA spells it, e.g. ``"550.54.15"`` or ``"535.183.01"`` (not necessarily semver)."""
    cuda_driver_version: str
    """Highest CUDA version the driver supports, ``major.minor``, e.g. ``"12.4"``."""
    pci_bus_id: str
    """Linux form ``dddd:bb:dd.f`` in lower case, as under /sys/bus/pci/devices."""
    numa_node: int
    """NUMA node the GPU is attached to; ``-1`` when unknown or not a NUMA machine."""
    memory_total_bytes: int
    memory_reserved_bytes: int
    """Memory the driver and firmware keep for themselves; never available to applications."""
    mig_mode_enabled: bool

    def __post_init__(self) -> None:
        if self.index < 0 or self.minor_number < 0:
            raise ValueError(f"GPU {self.uuid}: index and minor number must not be negative")
        if not _COMPUTE_CAPABILITY.match(self.cuda_compute_capability):
            raise ValueError(
                f"GPU {self.uuid}: compute capability {self.cuda_compute_capability!r} is not major.minor"
            )
        if self.memory_total_bytes <= 0:
            raise ValueError(f"GPU {self.uuid}: total memory must be positive")
        if not 0 <= self.memory_reserved_bytes <= self.memory_total_bytes:
            raise ValueError(f"GPU {self.uuid}: reserved memory must be between 0 and the total memory")

    @property
    def usable_memory_bytes(self) -> int:
        """Memory applications can allocate: total minus what the driver reserves."""
        return self.memory_total_bytes - self.memory_reserved_bytes


@dataclass(frozen=True)
class NodeInventory:
    """All GPUs of one node, in NVML index order."""

    node_name: str
    gpus: tuple[GpuInfo, ...]

    def __post_init__(self) -> None:
        if not self.node_name:
            raise ValueError("a node inventory needs a node name")
        for names, what in (([g.uuid for g in self.gpus], "UUID"), ([g.index for g in self.gpus], "index")):
            duplicates = sorted({str(n) for n in names if names.count(n) > 1})
            if duplicates:
                raise ValueError(f"node {self.node_name}: duplicate GPU {what} {', '.join(duplicates)}")


def normalize_pci_bus_id(value: str) -> str:
    """Turn NVML's ``00000000:3B:00.0`` (or ``3b:00.0``) into Linux's ``0000:3b:00.0``."""
    match = _PCI_BUS_ID.match(value.strip())
    if match is None:
        raise ValueError(f"{value!r} is not a PCI address of the form domain:bus:device.function")
    domain = int(match["domain"] or "0", 16)
    return f"{domain:04x}:{int(match['bus'], 16):02x}:{int(match['device'], 16):02x}.{match['function']}"


def format_cuda_version(encoded: int) -> str:
    """NVML encodes CUDA 12.4 as 12040 (1000 × major + 10 × minor); return ``"12.4"``."""
    if encoded <= 0:
        raise ValueError(f"{encoded} is not a CUDA version")
    return f"{encoded // 1000}.{(encoded % 1000) // 10}"


def discover(node_name: str, *, sysfs_root: Path = Path("/sys")) -> NodeInventory:
    """List this node's GPUs through NVML.

    Raises :class:`InventoryError` with an actionable message when NVML is missing, the driver is
    not loaded, NVML fails, or there is no GPU. Queries that older drivers or some boards do not
    support fall back to documented defaults (NUMA node from sysfs or -1, reserved memory 0,
    MIG off, architecture and brand "Unknown").
    """
    _init_nvml()
    try:
        driver_version = _system_query("nvmlSystemGetDriverVersion", pynvml.nvmlSystemGetDriverVersion)
        cuda_driver_version = format_cuda_version(_cuda_driver_version())
        count = _system_query("nvmlDeviceGetCount", pynvml.nvmlDeviceGetCount)
        if count == 0:
            raise InventoryError(
                f"NVML found no GPU on node {node_name}: check that the GPUs are visible to this "
                "container (NVIDIA container runtime or device mounts) and listed by nvidia-smi"
            )
        gpus = tuple(
            _read_gpu(index, driver_version, cuda_driver_version, sysfs_root) for index in range(count)
        )
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass  # nothing useful to do; the inventory (or the error being raised) stands
    return NodeInventory(node_name=node_name, gpus=gpus)


def _init_nvml() -> None:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError_LibraryNotFound:
        raise InventoryError(
            f"NVML library {NVML_LIBRARY} not found: is the NVIDIA driver installed on this node, "
            "and are its libraries visible to this process (LD_LIBRARY_PATH or the container's "
            "driver mounts)?"
        ) from None
    except pynvml.NVMLError_DriverNotLoaded:
        raise InventoryError(
            "NVML could not reach the NVIDIA kernel driver (driver not loaded): check `nvidia-smi` "
            "on the node and that the nvidia kernel module is loaded"
        ) from None
    except pynvml.NVMLError_NoPermission:
        raise InventoryError(
            "NVML was denied access to the GPUs (insufficient permissions): the process needs "
            "access to /dev/nvidiactl and /dev/nvidia*"
        ) from None
    except pynvml.NVMLError as exc:
        raise InventoryError(f"NVML failed to initialise: {exc}") from None


def _system_query(what: str, call: Callable[[], T]) -> T:
    try:
        return call()
    except pynvml.NVMLError as exc:
        raise InventoryError(f"NVML {what} failed: {exc}") from None


def _cuda_driver_version() -> int:
    try:
        return pynvml.nvmlSystemGetCudaDriverVersion_v2()
    except pynvml.NVMLError_FunctionNotFound:
        return _system_query("nvmlSystemGetCudaDriverVersion", pynvml.nvmlSystemGetCudaDriverVersion)
    except pynvml.NVMLError as exc:
        raise InventoryError(f"NVML nvmlSystemGetCudaDriverVersion_v2 failed: {exc}") from None


# Answers meaning "this driver or this board cannot tell", as opposed to a failure.
_UNSUPPORTED = (pynvml.NVMLError_NotSupported, pynvml.NVMLError_FunctionNotFound)


class _GpuReader:
    """Queries one GPU, naming the GPU and the NVML call in every error."""

    def __init__(self, index: int) -> None:
        self.index = index
        try:
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        except pynvml.NVMLError as exc:
            raise InventoryError(f"NVML cannot open GPU {index}: {exc}") from None

    def required(self, what: str, call: Callable[..., T]) -> T:
        try:
            return call(self.handle)
        except pynvml.NVMLError as exc:
            raise InventoryError(f"NVML {what} failed for GPU {self.index}: {exc}") from None

    def optional(self, what: str, call: Callable[..., T], fallback: Callable[[], T]) -> T:
        try:
            return call(self.handle)
        except _UNSUPPORTED:
            return fallback()
        except pynvml.NVMLError as exc:
            raise InventoryError(f"NVML {what} failed for GPU {self.index}: {exc}") from None


def _read_gpu(index: int, driver_version: str, cuda_driver_version: str, sysfs_root: Path) -> GpuInfo:
    gpu = _GpuReader(index)
    pci_bus_id = normalize_pci_bus_id(gpu.required("nvmlDeviceGetPciInfo", pynvml.nvmlDeviceGetPciInfo).busId)
    major, minor = gpu.required("nvmlDeviceGetCudaComputeCapability", pynvml.nvmlDeviceGetCudaComputeCapability)
    total, reserved = _memory(gpu)
    architecture = gpu.optional("nvmlDeviceGetArchitecture", pynvml.nvmlDeviceGetArchitecture, lambda: -1)
    brand = gpu.optional("nvmlDeviceGetBrand", pynvml.nvmlDeviceGetBrand, lambda: 0)
    current_mig_mode, _pending = gpu.optional(
        "nvmlDeviceGetMigMode", pynvml.nvmlDeviceGetMigMode, lambda: [pynvml.NVML_DEVICE_MIG_DISABLE] * 2
    )
    numa_node = gpu.optional(
        "nvmlDeviceGetNumaNodeId", pynvml.nvmlDeviceGetNumaNodeId, lambda: _sysfs_numa_node(sysfs_root, pci_bus_id)
    )
    return GpuInfo(
        uuid=gpu.required("nvmlDeviceGetUUID", pynvml.nvmlDeviceGetUUID),
        index=index,
        minor_number=gpu.required("nvmlDeviceGetMinorNumber", pynvml.nvmlDeviceGetMinorNumber),
        product_name=gpu.required("nvmlDeviceGetName", pynvml.nvmlDeviceGetName),
        brand=BRAND_NAMES.get(brand, UNKNOWN),
        architecture=ARCHITECTURE_NAMES.get(architecture, UNKNOWN),
        cuda_compute_capability=f"{major}.{minor}",
        driver_version=driver_version,
        cuda_driver_version=cuda_driver_version,
        pci_bus_id=pci_bus_id,
        numa_node=numa_node if numa_node >= 0 else NUMA_NODE_UNKNOWN,
        memory_total_bytes=total,
        memory_reserved_bytes=reserved,
        mig_mode_enabled=current_mig_mode == pynvml.NVML_DEVICE_MIG_ENABLE,
    )


def _memory(gpu: _GpuReader) -> tuple[int, int]:
    """(total, reserved) bytes; drivers before R510 have no _v2 query and report no reservation."""
    try:
        info = pynvml.nvmlDeviceGetMemoryInfo(gpu.handle, version=pynvml.nvmlMemory_v2)
        return int(info.total), int(info.reserved)
    except (*_UNSUPPORTED, pynvml.NVMLError_ArgumentVersionMismatch):
        pass
    except pynvml.NVMLError as exc:
        raise InventoryError(f"NVML nvmlDeviceGetMemoryInfo_v2 failed for GPU {gpu.index}: {exc}") from None
    info = gpu.required("nvmlDeviceGetMemoryInfo", pynvml.nvmlDeviceGetMemoryInfo)
    return int(info.total), 0


def _sysfs_numa_node(sysfs_root: Path, pci_bus_id: str) -> int:
    """The kernel's view when NVML cannot tell: /sys/bus/pci/devices/<address>/numa_node."""
    try:
        return int((sysfs_root / "bus/pci/devices" / pci_bus_id / "numa_node").read_text().strip())
    except (OSError, ValueError):
        return NUMA_NODE_UNKNOWN
