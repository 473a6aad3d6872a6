"""CDI specs of prepared claims: pure builders, no file I/O.

One transient spec per claim, kind ``k8s.vgpu.dra.dev/claim``, one CDI device per allocated GPU
named ``<claim uid>-<device>``. A host share (``vgpu-dra cdi``, no Kubernetes) is the same spec
under kind ``vgpu.dra.dev/claim`` with one device named after the share. What a container of the claim gets:

* the GPU: its device node ``/dev/nvidia<minor>`` plus the control nodes, **or**, when the node has
  NVIDIA's generated CDI spec, that spec's device for the GPU (its ID is returned next to ours and
  our spec adds only the vGPU edits);
* ``NVIDIA_VISIBLE_DEVICES=void``, so a legacy NVIDIA runtime hook does not inject every GPU;
* ``libvgpu.so`` bind-mounted read-only from an immutable, versioned host path, and a read-only
  ``/etc/ld.so.preload`` naming it, so every dynamically linked process loads the shim;
* the claim directory's ``config`` (read-only) and ``region`` (read-write) at
  ``CONTAINER_CLAIMS_ROOT/<uid>/``. No limit travels in an environment variable.

``cdiVersion`` is the lowest version that covers the fields used, so older CDI libraries in
container runtimes accept the file.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from vgpu_dra.api.names import CDI_CLASS, CDI_VENDOR, CONTAINER_CLAIMS_ROOT

CDI_KIND = f"{CDI_VENDOR}/{CDI_CLASS}"
NVIDIA_GPU_KIND = "nvidia.com/gpu"
CONTROL_DEVICE_NODES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools")
PRELOAD_CONTAINER_PATH = "/etc/ld.so.preload"
CONFIG_FILE = "config"
REGION_FILE = "region"
_RO = ["ro", "nosuid", "nodev", "bind"]
_RW = ["rw", "nosuid", "nodev", "bind"]
_NAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.:-]*[A-Za-z0-9])?$")
# Released CDI spec versions we may emit, oldest first (see minimum_cdi_version).
_V030, _V040, _V050, _V060, _V070 = "0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0"


class CdiError(ValueError):
    """Inputs that cannot make a valid CDI spec (bad names, no devices)."""


@dataclass(frozen=True, slots=True)
class CdiGpu:
    """One allocated GPU of a claim as CDI needs it."""

    device_name: str
    """The published device name, e.g. ``gpu-0``."""
    minor: int
    """The NVIDIA device minor number: the node is ``/dev/nvidia<minor>``."""
    nvidia_cdi_device: str | None = None
    """Fully qualified ID of this GPU in NVIDIA's generated spec, when the node has one."""


@dataclass(frozen=True, slots=True)
class ClaimCdiRequest:
    """Everything that goes into one claim's CDI spec."""

    claim_uid: str
    gpus: tuple[CdiGpu, ...]
    shim_host_path: str
    shim_container_path: str
    preload_host_path: str
    """Host file whose content is the shim's container path; mounted at /etc/ld.so.preload."""
    claim_dir_host_path: str
    host_dev_dir: str = "/dev"
    container_claims_root: str = CONTAINER_CLAIMS_ROOT
    kind: str = CDI_KIND
    share_name: str | None = None
    """A host share (``vgpu-dra cdi``): the claim is one CDI device of this name, carrying all its
    GPUs, so a user passes one ID (``kind=share_name``) for the whole share."""


def spec_file_name(claim_uid: str, kind: str = CDI_KIND) -> str:
    """File name of a claim's spec: ``<vendor>-<class>_<uid>.json``."""
    return f"{kind.replace('/', '-')}_{claim_uid}.json"


def device_name(claim_uid: str, gpu_device_name: str) -> str:
    """The CDI device name of one GPU of a claim (claim UID first: no stale runtime cache hits)."""
    name = f"{claim_uid}-{gpu_device_name}"
    if not _NAME_RE.match(name):
        raise CdiError(f"CDI device name {name!r} is not valid (letters, digits, '_', '.', ':', '-')")
    return name


def qualified_id(name: str, kind: str = CDI_KIND) -> str:
    """``vendor/class=name``, as the kubelet passes it to the runtime."""
    return f"{kind}={name}"


def device_ids(request: ClaimCdiRequest, gpu: CdiGpu) -> tuple[str, ...]:
    """The CDI IDs the kubelet must pass for one GPU: NVIDIA's device (if used) first, then ours."""
    ours = qualified_id(_device_name_of(request, gpu), request.kind)
    return (gpu.nvidia_cdi_device, ours) if gpu.nvidia_cdi_device else (ours,)


def _device_name_of(request: ClaimCdiRequest, gpu: CdiGpu) -> str:
    if request.share_name is None:
        return device_name(request.claim_uid, gpu.device_name)
    if not _NAME_RE.match(request.share_name):
        raise CdiError(f"CDI device name {request.share_name!r} is not valid (letters, digits, '_', '.', ':', '-')")
    return request.share_name


def _device_node(host_dev_dir: str, name: str) -> dict[str, str]:
    path = f"/dev/{name}"
    host = f"{host_dev_dir.rstrip('/')}/{name}"
    # hostPath only when the host path differs (it needs cdiVersion 0.5.0).
    return {"path": path} if host == path else {"path": path, "hostPath": host}


def build_claim_spec(request: ClaimCdiRequest) -> dict[str, Any]:
    """The CDI spec (as a JSON-ready dict) for one prepared claim."""
    if not request.gpus:
        raise CdiError(f"claim {request.claim_uid}: a CDI spec needs at least one device")
    claim_dir_container = f"{request.container_claims_root.rstrip('/')}/{request.claim_uid}"
    claim_dir_host = request.claim_dir_host_path.rstrip("/")
    claim_mounts = [
        {"hostPath": f"{claim_dir_host}/{CONFIG_FILE}", "containerPath": f"{claim_dir_container}/{CONFIG_FILE}",
         "options": list(_RO)},
        {"hostPath": f"{claim_dir_host}/{REGION_FILE}", "containerPath": f"{claim_dir_container}/{REGION_FILE}",
         "options": list(_RW)},
    ]
    devices: list[dict[str, Any]] = []
    by_name: dict[str, dict[str, Any]] = {}
    needs_control_nodes = False
    for gpu in request.gpus:
        name = _device_name_of(request, gpu)
        edits = by_name.get(name)
        if edits is None:
            # Every device carries the claim mounts, so each has non-empty edits even when NVIDIA's
            # spec supplies the GPU itself; the runtime de-duplicates mounts by container path.
            edits = {"mounts": [dict(m, options=list(m["options"])) for m in claim_mounts]}
            by_name[name] = edits
            devices.append({"name": name, "containerEdits": edits})
        if gpu.nvidia_cdi_device is None:
            node = _device_node(request.host_dev_dir, f"nvidia{gpu.minor}")
            nodes = edits.setdefault("deviceNodes", [])
            # Two shares of one GPU in one claim: one CDI device (and one node) serves both.
            if node not in nodes:
                nodes.append(node)
            needs_control_nodes = True
    common: dict[str, Any] = {
        "env": ["NVIDIA_VISIBLE_DEVICES=void"],
        "mounts": [
            {"hostPath": request.shim_host_path, "containerPath": request.shim_container_path,
             "options": list(_RO)},
            {"hostPath": request.preload_host_path, "containerPath": PRELOAD_CONTAINER_PATH,
             "options": list(_RO)},
        ],
    }
    if needs_control_nodes:
        common["deviceNodes"] = [_device_node(request.host_dev_dir, n) for n in CONTROL_DEVICE_NODES]
    spec: dict[str, Any] = {"cdiVersion": _V030, "kind": request.kind, "devices": devices, "containerEdits": common}
    spec["cdiVersion"] = minimum_cdi_version(spec)
    return spec


def _all_edits(spec: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    yield spec.get("containerEdits") or {}
    for device in spec.get("devices") or ():
        yield device.get("containerEdits") or {}


def minimum_cdi_version(spec: Mapping[str, Any]) -> str:
    """The lowest CDI spec version whose loaders accept every field `spec` uses.

    Mirrors the CDI library's own rules (specs-go/version.go): 0.4.0 for a mount ``type``,
    0.5.0 for a device-node ``hostPath`` or a device name not starting with a letter, 0.6.0 for
    annotations or a dot in the class, 0.7.0 for ``intelRdt`` or ``additionalGids``.
    """
    edits = list(_all_edits(spec))
    if any(e.get("intelRdt") is not None or e.get("additionalGids") for e in edits):
        return _V070
    kind_class = str(spec.get("kind", "")).partition("/")[2]
    if spec.get("annotations") or any(d.get("annotations") for d in spec.get("devices") or ()) \
            or "." in kind_class:
        return _V060
    if any(not str(d.get("name", "a"))[:1].isalpha() for d in spec.get("devices") or ()) \
            or any(n.get("hostPath") for e in edits for n in e.get("deviceNodes") or ()):
        return _V050
    if any(m.get("type") for e in edits for m in e.get("mounts") or ()):
        return _V040
    return _V030


def nvidia_gpu_device_names(specs: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    """Names of the GPU devices (kind ``nvidia.com/gpu``) in NVIDIA's generated CDI specs."""
    names: set[str] = set()
    for spec in specs:
        if spec.get("kind") != NVIDIA_GPU_KIND:
            continue
        for device in spec.get("devices") or ():
            if isinstance(device, Mapping) and isinstance(device.get("name"), str):
                names.add(device["name"])
    return frozenset(names)


def nvidia_device_for(gpu_uuid: str, gpu_index: int, available: frozenset[str]) -> str | None:
    """NVIDIA's CDI ID for a GPU (by UUID, else by index) when its spec lists it, else None."""
    for candidate in (gpu_uuid, str(gpu_index)):
        if candidate in available:
            return qualified_id(candidate, NVIDIA_GPU_KIND)
    return None


def preload_file_content(shim_container_path: str) -> str:
    """Text of the /etc/ld.so.preload file mounted into containers."""
    return shim_container_path + "\n"
