"""Node inventories written down as YAML, for planning without a GPU (`vgpu-dra plan`).

A file holds one or more YAML documents, each one node::

    apiVersion: vgpu.dra.dev/v1alpha1
    kind: NodeInventory
    nodeName: homelab
    driverVersion: "550.54.15"
    cudaDriverVersion: "12.4"
    gpus:
      - index: 0
        uuid: GPU-6b1f2c3d-8e4a-4f5b-9c7d-0a1b2c3d4e5f
        productName: NVIDIA GeForce RTX 3080
        brand: GeForce
        architecture: Ampere
        cudaComputeCapability: "8.6"
        pciBusID: "00000000:01:00.0"
        numaNode: -1            # optional, -1 = unknown
        memory: 10240Mi         # total, a Kubernetes quantity or bytes
        reservedMemory: 243Mi   # optional, default 0
        minorNumber: 0          # optional, default = index
        migEnabled: false       # optional

Field meanings are those of :class:`~vgpu_dra.driver.inventory.GpuInfo`. A GPU may also carry
``fakeNvml``, read only by the fake NVML library of the test suite and ignored here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vgpu_dra.api.names import CONFIG_API_VERSION
from vgpu_dra.api.quantity import QuantityError, parse_bytes
from vgpu_dra.driver.inventory import (
    ARCHITECTURE_NAMES,
    BRAND_NAMES,
    UNKNOWN,
    GpuInfo,
    InventoryError,
    NodeInventory,
    normalize_pci_bus_id,
)

INVENTORY_KIND = "NodeInventory"

_KNOWN_ARCHITECTURES = sorted({*ARCHITECTURE_NAMES.values(), UNKNOWN})
_KNOWN_BRANDS = sorted(set(BRAND_NAMES.values()))


class InventoryFileError(InventoryError):
    """An inventory file that cannot be read; the message names the file and the field."""


def _bytes(value: Any) -> int:
    try:
        return parse_bytes(value)
    except QuantityError as exc:
        raise ValueError(str(exc)) from None


def _quoted_version(value: Any) -> Any:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raise ValueError(f"{value!r} must be a quoted string like \"8.6\" (unquoted YAML reads it as a number)")
    return value


def _major_minor(value: str) -> str:
    parts = value.split(".")
    if len(parts) != 2 or not all(part.isdigit() for part in parts):
        raise ValueError(f"{value!r} is not major.minor (write it quoted, e.g. \"8.6\")")
    return value


class _GpuDocument(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    index: int = Field(ge=0)
    minor_number: int | None = Field(default=None, alias="minorNumber", ge=0)
    uuid: str = Field(min_length=1)
    product_name: str = Field(alias="productName", min_length=1)
    brand: str = UNKNOWN
    architecture: str = UNKNOWN
    cuda_compute_capability: str = Field(alias="cudaComputeCapability")
    pci_bus_id: str = Field(alias="pciBusID")
    numa_node: int = Field(default=-1, alias="numaNode", ge=-1)
    memory: int | str
    reserved_memory: int | str = Field(default=0, alias="reservedMemory")
    mig_enabled: bool = Field(default=False, alias="migEnabled")
    fake_nvml: dict[str, Any] | None = Field(default=None, alias="fakeNvml")

    @field_validator("brand")
    @classmethod
    def _known_brand(cls, value: str) -> str:
        if value not in _KNOWN_BRANDS:
            raise ValueError(f"unknown brand {value!r}; one of: {', '.join(_KNOWN_BRANDS)}")
        return value

    @field_validator("architecture")
    @classmethod
    def _known_architecture(cls, value: str) -> str:
        if value not in _KNOWN_ARCHITECTURES:
            raise ValueError(f"unknown architecture {value!r}; one of: {', '.join(_KNOWN_ARCHITECTURES)}")
        return value

    @field_validator("cuda_compute_capability", mode="before")
    @classmethod
    def _compute_capability_quoted(cls, value: Any) -> Any:
        return _quoted_version(value)

    @field_validator("cuda_compute_capability")
    @classmethod
    def _compute_capability(cls, value: str) -> str:
        return _major_minor(value)

    @field_validator("pci_bus_id")
    @classmethod
    def _pci_bus_id(cls, value: str) -> str:
        return normalize_pci_bus_id(value)

    @field_validator("memory", "reserved_memory")
    @classmethod
    def _quantity(cls, value: int | str) -> int:
        return _bytes(value)


class _NodeDocument(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    api_version: Literal[CONFIG_API_VERSION] = Field(alias="apiVersion")  # type: ignore[valid-type]
    kind: Literal["NodeInventory"]
    node_name: str = Field(alias="nodeName", min_length=1)
    driver_version: str = Field(alias="driverVersion", min_length=1)
    cuda_driver_version: str = Field(alias="cudaDriverVersion")
    gpus: list[_GpuDocument]
    fake_nvml: dict[str, Any] | None = Field(default=None, alias="fakeNvml")

    @field_validator("cuda_driver_version", mode="before")
    @classmethod
    def _cuda_version_quoted(cls, value: Any) -> Any:
        return _quoted_version(value)

    @field_validator("cuda_driver_version")
    @classmethod
    def _cuda_version(cls, value: str) -> str:
        return _major_minor(value)


def is_inventory_document(document: object) -> bool:
    """Whether a parsed YAML document is a NodeInventory (for readers of mixed folders)."""
    return isinstance(document, dict) and document.get("kind") == INVENTORY_KIND


def parse_inventory(document: object, *, source: str = "<inventory>") -> NodeInventory:
    """Turn one parsed YAML document into a :class:`NodeInventory`.

    Raises :class:`InventoryFileError` naming ``source`` and every bad field.
    """
    try:
        node = _NodeDocument.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(_describe(error) for error in exc.errors())
        raise InventoryFileError(f"{source}: invalid NodeInventory: {problems}") from None
    try:
        gpus = tuple(_to_gpu(gpu, node) for gpu in sorted(node.gpus, key=lambda g: g.index))
        return NodeInventory(node_name=node.node_name, gpus=gpus)
    except ValueError as exc:
        raise InventoryFileError(f"{source}: {exc}") from None


def load_inventories(path: Path) -> list[NodeInventory]:
    """Every node of an inventory file (one YAML document per node)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InventoryFileError(f"cannot read inventory {path}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise InventoryFileError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); an "
                                 "inventory is a YAML file of NodeInventory documents") from None
    try:
        documents = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        raise InventoryFileError(f"{path}: not valid YAML: {exc}") from None
    if not documents:
        raise InventoryFileError(f"{path}: no NodeInventory document in the file")
    nodes = [parse_inventory(doc, source=f"{path} (document {i + 1})") for i, doc in enumerate(documents)]
    names = [node.node_name for node in nodes]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InventoryFileError(f"{path}: node {', '.join(duplicates)} appears more than once")
    return nodes


def load_inventory(path: Path) -> NodeInventory:
    """The single node of an inventory file; an error if the file holds more than one."""
    nodes = load_inventories(path)
    if len(nodes) != 1:
        raise InventoryFileError(f"{path}: expected one NodeInventory, found {len(nodes)}")
    return nodes[0]


def _to_gpu(gpu: _GpuDocument, node: _NodeDocument) -> GpuInfo:
    return GpuInfo(
        uuid=gpu.uuid,
        index=gpu.index,
        minor_number=gpu.index if gpu.minor_number is None else gpu.minor_number,
        product_name=gpu.product_name,
        brand=gpu.brand,
        architecture=gpu.architecture,
        cuda_compute_capability=gpu.cuda_compute_capability,
        driver_version=node.driver_version,
        cuda_driver_version=node.cuda_driver_version,
        pci_bus_id=gpu.pci_bus_id,
        numa_node=gpu.numa_node,
        memory_total_bytes=int(gpu.memory),
        memory_reserved_bytes=int(gpu.reserved_memory),
        mig_mode_enabled=gpu.mig_enabled,
    )


def _describe(error: Any) -> str:
    location = ""
    for part in error["loc"]:
        location += f"[{part}]" if isinstance(part, int) else (f".{part}" if location else str(part))
    message = error["msg"].removeprefix("Value error, ")
    return f"{location or '(document)'}: {message}"
