"""A named GPU share on a host without Kubernetes (``vgpu-dra cdi``): pure data, no I/O.

A share is a claim whose UID is its name: the same claim directory (config + region) and the same
CDI spec the kubelet plugin writes, under kind ``vgpu.dra.dev/claim`` with one CDI device named
after the share, so ``docker run --device vgpu.dra.dev/claim=NAME`` gets the wall. Every container
started with one share shares its one wall, like the pods of one shared ResourceClaim.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from vgpu_dra.api.names import CONTAINER_CLAIMS_ROOT, HOST_CDI_KIND
from vgpu_dra.api.quantity import format_bytes, humanize_bytes
from vgpu_dra.driver import cdi
from vgpu_dra.driver.claimconfig import ClaimConfig, GpuLimit, Policy
from vgpu_dra.driver.inventory import GpuInfo

# A share name is a claim UID, a file name and a CDI device name at once: the narrowest of the three.
_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?$")
RECORD_VERSION = 1


class ShareError(ValueError):
    """Input that cannot make a share; the message names the problem and the fix."""


def check_share_name(name: str) -> str:
    """`name` if it can name a share, else ShareError."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ShareError(f"share name {name!r} is not valid: 1-63 letters, digits, '-' or '_', "
                         "starting and ending with a letter or digit (e.g. worker-a)")
    return name


@dataclass(frozen=True, slots=True)
class ShareGpu:
    """One GPU of a share, as discovered when the share was created."""

    index: int
    uuid: str
    minor: int
    product_name: str
    usable_memory_bytes: int
    nvidia_cdi_device: str | None = None
    """NVIDIA's CDI ID for this GPU when the host has its generated spec; it then supplies the GPU."""

    @classmethod
    def of(cls, gpu: GpuInfo, nvidia_cdi_device: str | None) -> ShareGpu:
        """From a discovered GPU."""
        return cls(gpu.index, gpu.uuid, gpu.minor_number, gpu.product_name, gpu.usable_memory_bytes,
                   nvidia_cdi_device)

    @property
    def device_name(self) -> str:
        return f"gpu-{self.index}"


@dataclass(frozen=True, slots=True)
class HostShare:
    """Everything `vgpu-dra cdi` keeps about one share (its record file is this, as JSON)."""

    name: str
    memory_bytes: int
    cores: int
    core_policy: Policy
    gpus: tuple[ShareGpu, ...]
    shim_host_path: str
    preload_host_path: str
    shim_container_path: str
    claim_dir: str
    spec_path: str
    dev_dir: str = "/dev"

    def claim_config(self) -> ClaimConfig:
        """The shim's limits: the same wall and cap on each GPU of the share."""
        return ClaimConfig(claim_uid=self.name, gpus=tuple(
            GpuLimit(gpu.uuid, self.memory_bytes, self.cores, self.core_policy) for gpu in self.gpus))

    def cdi_request(self) -> cdi.ClaimCdiRequest:
        """The spec builder's input, as the kubelet plugin's for a prepared claim, under the host kind."""
        return cdi.ClaimCdiRequest(
            claim_uid=self.name,
            gpus=tuple(cdi.CdiGpu(gpu.device_name, gpu.minor, gpu.nvidia_cdi_device) for gpu in self.gpus),
            shim_host_path=self.shim_host_path, shim_container_path=self.shim_container_path,
            preload_host_path=self.preload_host_path, claim_dir_host_path=self.claim_dir,
            host_dev_dir=self.dev_dir, container_claims_root=CONTAINER_CLAIMS_ROOT,
            kind=HOST_CDI_KIND, share_name=self.name)

    def spec(self) -> dict[str, Any]:
        """The share's CDI spec, built by the plugin's builder."""
        return cdi.build_claim_spec(self.cdi_request())

    def device_ids(self) -> tuple[str, ...]:
        """The CDI IDs a container needs: NVIDIA's GPU devices (when used) first, then the share."""
        request = self.cdi_request()
        ids = [device_id for gpu in request.gpus for device_id in cdi.device_ids(request, gpu)]
        ours = cdi.qualified_id(self.name, HOST_CDI_KIND)
        return (*dict.fromkeys(i for i in ids if i != ours), ours)

    def to_record(self) -> dict[str, Any]:
        """The JSON-ready record."""
        return {"version": RECORD_VERSION, **asdict(self), "gpus": [asdict(gpu) for gpu in self.gpus]}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> HostShare:
        """Read a record back; ShareError when it is not one this version wrote."""
        if record.get("version") != RECORD_VERSION:
            raise ShareError(f"share record version {record.get('version')!r} is not {RECORD_VERSION}")
        try:
            fields = {k: v for k, v in record.items() if k != "version"}
            gpus = tuple(ShareGpu(**gpu) for gpu in fields.pop("gpus"))
            return cls(**fields, gpus=gpus)
        except (TypeError, KeyError) as exc:
            raise ShareError(f"share record is incomplete: {exc}") from None


def check_request(memory_bytes: int, cores: int) -> None:
    """The limits of a new share, checked before any GPU is looked at."""
    if memory_bytes <= 0:
        raise ShareError("--memory must be more than 0 bytes (e.g. --memory 2Gi)")
    if not 0 <= cores <= 100:
        raise ShareError(f"--cores {cores} must be 0-100 (percent of the GPU's SMs; 0 = no cap)")


def check_fits(new: HostShare, existing: Iterable[HostShare]) -> None:
    """Refuse a share that, with the shares already on its GPUs, would promise more memory or more
    SM cores than a GPU has: the walls would then no longer protect anyone."""
    others = [share for share in existing if share.name != new.name]
    for gpu in new.gpus:
        on_gpu = [share for share in others if any(g.uuid == gpu.uuid for g in share.gpus)]
        used = sum(share.memory_bytes for share in on_gpu)
        if used + new.memory_bytes > gpu.usable_memory_bytes:
            held = ", ".join(f"{s.name} ({format_bytes(s.memory_bytes)})" for s in on_gpu)
            raise ShareError(
                f"--memory {format_bytes(new.memory_bytes)} does not fit on GPU {gpu.index} ({gpu.product_name}): "
                f"{humanize_bytes(gpu.usable_memory_bytes)} usable"
                + (f", shares {held} hold {humanize_bytes(used)}" if on_gpu else "")
                + "; ask for less or delete a share (vgpu-dra cdi delete NAME)")
        cores = sum(share.cores for share in on_gpu)
        if new.cores and cores + new.cores > 100:
            held = ", ".join(f"{s.name} ({s.cores} %)" for s in on_gpu if s.cores)
            raise ShareError(f"--cores {new.cores} does not fit on GPU {gpu.index}: shares {held} cap "
                             f"{cores} % of its SMs already; ask for at most {100 - cores}")
