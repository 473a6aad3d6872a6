"""Names that users and clusters see: the driver, its DeviceClasses, attributes and capacities.

Everything here is part of the user-facing contract; renaming a value is a breaking change.
"""
from __future__ import annotations

from typing import Final

DRIVER_NAME: Final = "vgpu.dra.dev"
"""The DRA driver name, also the attribute/capacity domain and the opaque-config driver."""

CONFIG_API_VERSION: Final = "vgpu.dra.dev/v1alpha1"
CONFIG_KIND: Final = "VgpuConfig"

# DeviceClasses. The plain class is "a fraction, size from the claim"; the sized ones carry a
# default VgpuConfig so a claim can say only `deviceClassName: medium.vgpu.dra.dev`.
DEVICE_CLASS: Final = "vgpu.dra.dev"
DEVICE_CLASS_SMALL: Final = "small.vgpu.dra.dev"
DEVICE_CLASS_MEDIUM: Final = "medium.vgpu.dra.dev"
DEVICE_CLASS_LARGE: Final = "large.vgpu.dra.dev"

ALLOCATOR_LABEL: Final = "vgpu.dra.dev/allocator"
"""Label on a DeviceClass naming who allocates its claims: ``controller`` or ``scheduler``."""
ALLOCATOR_CONTROLLER: Final = "controller"
ALLOCATOR_SCHEDULER: Final = "scheduler"

FINALIZER: Final = "vgpu.dra.dev/allocation"
"""Finalizer the allocation controller puts on claims it allocated."""
SCHEDULING_GATE: Final = "vgpu.dra.dev/allocation"
"""Optional pod scheduling gate, removed once all the pod's claims are allocated."""

NODE_POLICY_ANNOTATION: Final = "vgpu.dra.dev/node-policy"
"""Claim annotation overriding the controller's node placement policy (binpack|spread)."""
GPU_POLICY_ANNOTATION: Final = "vgpu.dra.dev/gpu-policy"
"""Claim annotation overriding the controller's GPU placement policy (binpack|spread)."""

# Device attributes as published in ResourceSlices (domain = DRIVER_NAME, written unqualified).
ATTR_TYPE: Final = "type"
ATTR_UUID: Final = "uuid"
ATTR_INDEX: Final = "index"
ATTR_PRODUCT_NAME: Final = "productName"
ATTR_BRAND: Final = "brand"
ATTR_ARCHITECTURE: Final = "architecture"
ATTR_CUDA_COMPUTE_CAPABILITY: Final = "cudaComputeCapability"
ATTR_DRIVER_VERSION: Final = "driverVersion"
ATTR_CUDA_DRIVER_VERSION: Final = "cudaDriverVersion"
ATTR_PCI_BUS_ID: Final = "pciBusID"
ATTR_NUMA_NODE: Final = "numaNode"

DEVICE_TYPE_GPU: Final = "gpu"
"""`type` of every published device."""
DEVICE_TYPE_VGPU: Final = "vgpu"
"""`type` the controller-mode DeviceClasses select: no published device has it, so
kube-scheduler never allocates them; the controller presents each GPU as a vGPU candidate."""

CAPACITY_MEMORY: Final = "memory"
CAPACITY_CORES: Final = "cores"

MEBIBYTE: Final = 1 << 20
GIBIBYTE: Final = 1 << 30
MEMORY_MIN_BYTES: Final = 64 * MEBIBYTE
"""Smallest memory share a claim may get (validRange.min of the `memory` capacity)."""
MEMORY_STEP_BYTES: Final = MEBIBYTE
"""Granularity of memory shares (validRange.step); requests are rounded up to it."""
CORES_MAX: Final = 100
"""`cores` is a percentage of the GPU's SMs; 0 means no cap and no reservation."""

# CDI: one transient spec per claim, vendor `k8s.<driver>`, class `claim`.
CDI_VENDOR: Final = "k8s.vgpu.dra.dev"
CDI_CLASS: Final = "claim"
HOST_CDI_KIND: Final = "vgpu.dra.dev/claim"
"""Kind of the specs `vgpu-dra cdi` writes for Docker and Podman (``--device vgpu.dra.dev/claim=NAME``);
not the plugin's ``k8s.`` kind, so the plugin never sweeps them as its own."""

CONTAINER_CLAIMS_ROOT: Final = "/var/run/vgpu-dra/claims"
"""Where claim directories appear inside containers; compiled into libvgpu.so."""
