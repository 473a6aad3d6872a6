"""HAMi's request vocabulary → vgpu-dra claims. Pure: a pod template in, a pod template and the
ResourceClaimTemplates it needs out.

A HAMi pod asks for GPU shares with extended resources on each container (``nvidia.com/gpu``,
``nvidia.com/gpumem`` in MiB, ``nvidia.com/gpumem-percentage``, ``nvidia.com/gpucores``) and
steers placement with pod annotations. Each GPU container becomes one pod claim stamped from a
ResourceClaimTemplate of the same shape (kube-controller-manager creates and deletes the claim with
the pod). The template's name is derived from its content, so the admission webhook and
``vgpu-dra migrate`` name the same shape the same way and creating it twice is harmless.

HAMi semantics kept: limits are read before requests; ``gpumem`` wins over
``gpumem-percentage`` when both are given (HAMi ignores the percentage then); a container with
``gpumem``/``gpucores`` but no ``nvidia.com/gpu`` gets one GPU (HAMi's default count); nothing said
about memory is the whole GPU, nothing about cores is no cap. ``nvidia.com/priority`` has no
counterpart and is dropped with a note.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from kubernetes.utils.quantity import parse_quantity

from vgpu_dra.api.names import (
    CONFIG_API_VERSION, CONFIG_KIND, CORES_MAX, DEVICE_CLASS, DRIVER_NAME, GPU_POLICY_ANNOTATION,
    NODE_POLICY_ANNOTATION,
)

JsonObject = dict[str, Any]
Allocator = Literal["controller", "scheduler"]

RESOURCE_GPU = "nvidia.com/gpu"
RESOURCE_GPUMEM = "nvidia.com/gpumem"
RESOURCE_GPUMEM_PERCENTAGE = "nvidia.com/gpumem-percentage"
RESOURCE_GPUCORES = "nvidia.com/gpucores"
RESOURCE_PRIORITY = "nvidia.com/priority"
HAMI_RESOURCES = (RESOURCE_GPU, RESOURCE_GPUMEM, RESOURCE_GPUMEM_PERCENTAGE, RESOURCE_GPUCORES, RESOURCE_PRIORITY)
"""Every extended resource HAMi's device plugin advertises; no node has them under vgpu-dra."""

ANNOTATION_USE_TYPE = "nvidia.com/use-gputype"
ANNOTATION_NOUSE_TYPE = "nvidia.com/nouse-gputype"
ANNOTATION_USE_UUID = "nvidia.com/use-gpuuuid"
ANNOTATION_NOUSE_UUID = "nvidia.com/nouse-gpuuuid"
ANNOTATION_NODE_POLICY = "hami.io/node-scheduler-policy"
ANNOTATION_GPU_POLICY = "hami.io/gpu-scheduler-policy"
HAMI_ANNOTATIONS = (ANNOTATION_USE_TYPE, ANNOTATION_NOUSE_TYPE, ANNOTATION_USE_UUID, ANNOTATION_NOUSE_UUID,
                    ANNOTATION_NODE_POLICY, ANNOTATION_GPU_POLICY)

HAMI_SCHEDULER = "hami-scheduler"
DEFAULT_SCHEDULER = "default-scheduler"

TRANSLATION_ANNOTATION = "vgpu.dra.dev/hami-translation"
"""Pod annotation saying what was translated (one line a person reads in `kubectl describe`)."""
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "vgpu-dra-hami"
SHAPE_LABEL = "vgpu.dra.dev/hami-shape"
"""Label on generated templates: the shape digest their name ends with."""

CLAIM_PREFIX = "vgpu-"
_POLICIES = ("binpack", "spread")
_UUID = re.compile(r"^(GPU|MIG)-[0-9A-Za-z-]+$")
_BINARY_SUFFIX = re.compile(r"[KMGTPE]i$")
_DNS_LABEL_MAX = 63


class HamiTranslationError(ValueError):
    """A HAMi request that cannot be translated; ``str()`` is one line naming the field and the fix."""


@dataclass(frozen=True)
class GpuShape:
    """What one container asks for, per GPU, and where its GPUs may come from."""

    count: int = 1
    memory_mib: int | None = None
    memory_percent: int | None = None
    cores: int | None = None
    use_types: tuple[str, ...] = ()
    nouse_types: tuple[str, ...] = ()
    use_uuids: tuple[str, ...] = ()
    nouse_uuids: tuple[str, ...] = ()
    node_policy: str | None = None
    gpu_policy: str | None = None

    def describe(self) -> str:
        """`memoryPercent 20, cores 25`, the way a person compares it with the HAMi manifest."""
        parts = [f"{self.count} GPUs"] if self.count != 1 else []
        if self.memory_mib is not None:
            parts.append(f"memory {self.memory_mib}Mi")
        elif self.memory_percent is not None:
            parts.append(f"memoryPercent {self.memory_percent}")
        else:
            parts.append("whole GPU memory")
        parts.append(f"cores {self.cores}" if self.cores else "no core cap")
        return ", ".join(parts)


@dataclass(frozen=True)
class ContainerTranslation:
    """One GPU container: its HAMi request, the shape and the pod claim it now uses."""

    container: str
    init: bool
    request: tuple[tuple[str, str], ...]
    shape: GpuShape
    claim: str
    template: str


@dataclass(frozen=True)
class PodTranslation:
    """The result for one pod template. `changed` is False when there was nothing HAMi in it."""

    metadata: JsonObject
    spec: JsonObject
    templates: tuple[JsonObject, ...] = ()
    containers: tuple[ContainerTranslation, ...] = ()
    notes: tuple[str, ...] = ()
    changed: bool = False
    summary: str = ""


@dataclass
class _Context:
    where: str
    notes: list[str] = field(default_factory=list)


# --- reading HAMi values -------------------------------------------------------------------------

def _integer(value: Any, name: str, where: str, low: int, high: int | None, accepted: str) -> int:
    """A HAMi count as HAMi reads it: the quantity's plain value (`1k` is 1000). A binary suffix is
    refused: the API server keeps `2Gi` as written and HAMi would read it as 2147483648 units."""
    text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else None
    if text is not None and _BINARY_SUFFIX.search(text):
        raise HamiTranslationError(f"{where}: {name} = {value!r} has a binary suffix, but HAMi counts it in plain "
                                   f"units; expected {accepted}")
    try:
        amount = parse_quantity(text) if text is not None else None
    except ValueError:
        amount = None
    if amount is None or amount != amount.to_integral_value():
        raise HamiTranslationError(f"{where}: {name} = {value!r} is not a whole number; expected {accepted}")
    number = int(amount)
    if number < low or (high is not None and number > high):
        raise HamiTranslationError(f"{where}: {name} = {value!r} is out of range; expected {accepted}")
    return number


def _hami_values(container: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The HAMi resources a container names, limits first (HAMi reads limits, then requests)."""
    resources = container.get("resources") or {}
    if not isinstance(resources, Mapping):
        raise HamiTranslationError(f"{where}: resources must be a mapping")
    found: dict[str, Any] = {}
    limits = resources.get("limits") or {}
    requests = resources.get("requests") or {}
    for section, values in (("limits", limits), ("requests", requests)):
        if not isinstance(values, Mapping):
            raise HamiTranslationError(f"{where}: resources.{section} must be a mapping")
    for name in HAMI_RESOURCES:
        if name in limits and name in requests and str(limits[name]).strip() != str(requests[name]).strip():
            raise HamiTranslationError(
                f"{where}: {name} has requests {requests[name]!r} and limits {limits[name]!r}; an extended resource "
                "needs the same value in both (or only limits)")
        if name in limits:
            found[name] = limits[name]
        elif name in requests:
            found[name] = requests[name]
    return found


def _names(annotations: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = annotations.get(key)
    if value is None:
        return ()
    if not isinstance(value, str):
        raise HamiTranslationError(f"{where}: annotation {key} must be a string of comma-separated names")
    names = tuple(part.strip() for part in value.split(",") if part.strip())
    if not names:
        raise HamiTranslationError(f"{where}: annotation {key} is empty; list names separated by commas, or remove it")
    return names


def _uuids(annotations: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    uuids = _names(annotations, key, where)
    for uuid in uuids:
        if not _UUID.match(uuid):
            raise HamiTranslationError(
                f"{where}: annotation {key}: {uuid!r} is not a GPU UUID (GPU-… as nvidia-smi -L prints it)")
    return uuids


def _policy(annotations: Mapping[str, Any], key: str, where: str) -> str | None:
    value = annotations.get(key)
    if value is None:
        return None
    if value not in _POLICIES:
        raise HamiTranslationError(f"{where}: annotation {key} = {value!r}; expected 'binpack' or 'spread'")
    return str(value)


def container_shape(container: Mapping[str, Any], annotations: Mapping[str, Any],
                    where: str) -> tuple[GpuShape, dict[str, Any]] | None:
    """The container's share and the HAMi values it was read from; None when it asks for no GPU."""
    values = _hami_values(container, where)
    if not values:
        return None
    asks_share = any(name in values for name in (RESOURCE_GPUMEM, RESOURCE_GPUMEM_PERCENTAGE, RESOURCE_GPUCORES))
    count = _integer(values[RESOURCE_GPU], RESOURCE_GPU, where, 0, 16, "an integer from 1 to 16 (GPUs)") \
        if RESOURCE_GPU in values else (1 if asks_share else 0)
    if RESOURCE_PRIORITY in values:
        _integer(values[RESOURCE_PRIORITY], RESOURCE_PRIORITY, where, 0, None, "0 (high) or 1 (low)")
    if count == 0:
        return GpuShape(count=0), values
    memory_mib = _integer(values[RESOURCE_GPUMEM], RESOURCE_GPUMEM, where, 1, None,
                          "a positive integer (MiB of GPU memory per GPU)") if RESOURCE_GPUMEM in values else None
    percent = _integer(values[RESOURCE_GPUMEM_PERCENTAGE], RESOURCE_GPUMEM_PERCENTAGE, where, 1, 100,
                       "an integer from 1 to 100 (percent of each GPU's memory)") \
        if RESOURCE_GPUMEM_PERCENTAGE in values else None
    cores = _integer(values[RESOURCE_GPUCORES], RESOURCE_GPUCORES, where, 0, CORES_MAX,
                     "an integer from 0 to 100 (percent of each GPU's SMs)") if RESOURCE_GPUCORES in values else None
    return GpuShape(
        count=count, memory_mib=memory_mib, memory_percent=None if memory_mib is not None else percent,
        cores=cores or None,
        use_types=_names(annotations, ANNOTATION_USE_TYPE, where),
        nouse_types=_names(annotations, ANNOTATION_NOUSE_TYPE, where),
        use_uuids=_uuids(annotations, ANNOTATION_USE_UUID, where),
        nouse_uuids=_uuids(annotations, ANNOTATION_NOUSE_UUID, where),
        node_policy=_policy(annotations, ANNOTATION_NODE_POLICY, where),
        gpu_policy=_policy(annotations, ANNOTATION_GPU_POLICY, where)), values


# --- the ResourceClaimTemplate of a shape ---------------------------------------------------------

def _cel_strings(values: Sequence[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def selectors(shape: GpuShape) -> list[str]:
    """CEL selectors for the GPU-type and UUID annotations. A type matches as HAMi matches it: the
    name appears in the GPU's product name, case ignored (`A100` matches `NVIDIA A100-SXM4-40GB`)."""
    attrs = f'device.attributes["{DRIVER_NAME}"]'
    product = f"{attrs}.productName.upperAscii()"
    found = []
    if shape.use_types:
        found.append(" || ".join(f"{product}.contains({json.dumps(t.upper())})" for t in shape.use_types))
    if shape.nouse_types:
        found.append(" && ".join(f"!{product}.contains({json.dumps(t.upper())})" for t in shape.nouse_types))
    if shape.use_uuids:
        found.append(f"{attrs}.uuid in {_cel_strings(shape.use_uuids)}")
    if shape.nouse_uuids:
        found.append(f"!({attrs}.uuid in {_cel_strings(shape.nouse_uuids)})")
    return found


def template_spec(shape: GpuShape, allocator: Allocator) -> JsonObject:
    """`spec` of the ResourceClaimTemplate giving each pod a claim of `shape`.

    Controller mode sizes the share with an opaque VgpuConfig (the only form that can say a
    percentage of whichever GPU is chosen). Scheduler mode uses capacity requests, which
    kube-scheduler books; a percentage cannot be one, so it is refused there."""
    exactly: JsonObject = {"deviceClassName": DEVICE_CLASS}
    if shape.count != 1:
        exactly["allocationMode"] = "ExactCount"
        exactly["count"] = shape.count
    cel = selectors(shape)
    if cel:
        exactly["selectors"] = [{"cel": {"expression": e}} for e in cel]
    devices: JsonObject = {"requests": [{"name": "gpu", "exactly": exactly}]}
    if allocator == "scheduler":
        if shape.memory_percent is not None:
            raise HamiTranslationError(
                f"{RESOURCE_GPUMEM_PERCENTAGE} needs the controller allocator (kube-scheduler books capacity, not a "
                f"percentage of a GPU it has not chosen yet): give {RESOURCE_GPUMEM} in MiB, or install with "
                "allocator: controller")
        capacity: JsonObject = {}
        if shape.memory_mib is not None:
            capacity["memory"] = f"{shape.memory_mib}Mi"
        if shape.cores:
            capacity["cores"] = str(shape.cores)
        if capacity:
            exactly["capacity"] = {"requests": capacity}
    else:
        parameters: JsonObject = {"apiVersion": CONFIG_API_VERSION, "kind": CONFIG_KIND}
        if shape.memory_mib is not None:
            parameters["memory"] = f"{shape.memory_mib}Mi"
        elif shape.memory_percent is not None:
            parameters["memoryPercent"] = shape.memory_percent
        if shape.cores:
            parameters["cores"] = shape.cores
        if len(parameters) > 2:
            devices["config"] = [{"requests": ["gpu"], "opaque": {"driver": DRIVER_NAME, "parameters": parameters}}]
    spec: JsonObject = {"spec": {"devices": devices}}
    annotations = {}
    if shape.node_policy and allocator == "controller":
        annotations[NODE_POLICY_ANNOTATION] = shape.node_policy
    if shape.gpu_policy and allocator == "controller":
        annotations[GPU_POLICY_ANNOTATION] = shape.gpu_policy
    if annotations:
        spec["metadata"] = {"annotations": annotations}
    return spec


def digest(spec: Mapping[str, Any]) -> str:
    """Ten hex digits of the spec's SHA-256: equal specs, equal names."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:10]


def template_name(shape: GpuShape, spec: Mapping[str, Any]) -> str:
    """`hami-mem20pct-cores25-<digest>`: readable, and unique per spec."""
    parts = ["hami"]
    if shape.count != 1:
        parts.append(f"{shape.count}gpus")
    if shape.memory_mib is not None:
        parts.append(f"mem{shape.memory_mib}mi")
    elif shape.memory_percent is not None:
        parts.append(f"mem{shape.memory_percent}pct")
    if shape.cores:
        parts.append(f"cores{shape.cores}")
    parts.append(digest(spec))
    return "-".join(parts)


def claim_template(shape: GpuShape, namespace: str | None, allocator: Allocator) -> JsonObject:
    """The ResourceClaimTemplate object for `shape` (namespace left out when None)."""
    spec = template_spec(shape, allocator)
    metadata: JsonObject = {"name": template_name(shape, spec),
                            "labels": {MANAGED_BY_LABEL: MANAGED_BY, SHAPE_LABEL: digest(spec)}}
    if namespace:
        metadata["namespace"] = namespace
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate", "metadata": metadata, "spec": spec}


# --- the pod template -----------------------------------------------------------------------------

def claim_name(container: str, taken: set[str]) -> str:
    """The pod claim entry of a container: `vgpu-<container>`, shortened with a digest when it
    would not be a DNS label, and made unique among the pod's existing claim names."""
    name = CLAIM_PREFIX + container
    if len(name) > _DNS_LABEL_MAX or name in taken:
        suffix = hashlib.sha256(container.encode()).hexdigest()[:8]
        name = f"{name[:_DNS_LABEL_MAX - 9].rstrip('-')}-{suffix}"
    return name


def _strip_resources(container: JsonObject) -> JsonObject:
    resources = dict(container.get("resources") or {})
    for section in ("limits", "requests"):
        kept = {k: v for k, v in (resources.get(section) or {}).items() if k not in HAMI_RESOURCES}
        if kept:
            resources[section] = kept
        else:
            resources.pop(section, None)
    return resources


def _is_sidecar(container: Mapping[str, Any]) -> bool:
    return container.get("restartPolicy") == "Always"


def translate_pod_template(metadata: Mapping[str, Any] | None, spec: Mapping[str, Any], *, namespace: str | None,
                           allocator: Allocator = "controller", where: str = "pod") -> PodTranslation:
    """Rewrite one pod (or pod template): HAMi resources → claims, hami-scheduler → the default.

    Each GPU container gets its own claim. A plain init container (one that finishes before the
    app containers start) of the same shape as an app container uses that container's claim
    instead of booking a second share for the pod's whole life. Raises `HamiTranslationError`."""
    metadata = dict(metadata or {})
    annotations = metadata.get("annotations") or {}
    if not isinstance(annotations, Mapping):
        raise HamiTranslationError(f"{where}: metadata.annotations must be a mapping")
    new_spec: JsonObject = json.loads(json.dumps(spec))
    ctx = _Context(where)
    claims = list(new_spec.get("resourceClaims") or [])
    taken = {entry.get("name") for entry in claims if isinstance(entry, Mapping)}
    templates: dict[str, JsonObject] = {}
    done: list[ContainerTranslation] = []
    by_shape: dict[GpuShape, str] = {}
    for init in (False, True):
        field_name = "initContainers" if init else "containers"
        containers = new_spec.get(field_name) or []
        if not isinstance(containers, list):
            raise HamiTranslationError(f"{where}: spec.{field_name} must be a list")
        for container in containers:
            name = container.get("name") if isinstance(container, Mapping) else None
            if not isinstance(name, str) or not name:
                raise HamiTranslationError(f"{where}: a container in spec.{field_name} has no name")
            cwhere = f"{where}: {'init container' if init else 'container'} {name}"
            found = container_shape(container, annotations, cwhere)
            if found is None:
                continue
            shape, values = found
            resources = _strip_resources(container)
            if RESOURCE_PRIORITY in values:
                ctx.notes.append(f"{name}: {RESOURCE_PRIORITY} dropped (vgpu-dra has no task priority)")
            if shape.count == 0:
                container["resources"] = resources
                ctx.notes.append(f"{name}: {RESOURCE_GPU}=0, no GPU")
                continue
            if RESOURCE_GPUMEM in values and RESOURCE_GPUMEM_PERCENTAGE in values:
                ctx.notes.append(f"{name}: {RESOURCE_GPUMEM} wins over {RESOURCE_GPUMEM_PERCENTAGE}, as in HAMi")
            template = claim_template(shape, namespace, allocator)
            tname = template["metadata"]["name"]
            templates[tname] = template
            shared = by_shape.get(shape) if init and not _is_sidecar(container) else None
            if shared is None:
                claim = claim_name(name, taken)
                taken.add(claim)
                claims.append({"name": claim, "resourceClaimTemplateName": tname})
                if not init:
                    by_shape.setdefault(shape, claim)
            else:
                claim = shared
            resources["claims"] = [*(resources.get("claims") or []), {"name": claim}]
            container["resources"] = resources
            request = tuple(sorted((k, str(v)) for k, v in values.items()))
            done.append(ContainerTranslation(name, init, request, shape, claim, tname))
    scheduler_mapped = new_spec.get("schedulerName") == HAMI_SCHEDULER
    if scheduler_mapped:
        # Said explicitly, not removed: an admission patch is not defaulted again.
        new_spec["schedulerName"] = DEFAULT_SCHEDULER
    if not done and not scheduler_mapped and not ctx.notes:
        return PodTranslation(metadata=metadata, spec=dict(spec))
    if claims:
        new_spec["resourceClaims"] = claims
    if allocator == "scheduler" and any(s.shape.node_policy or s.shape.gpu_policy for s in done):
        ctx.notes.append("scheduler policy annotations ignored (kube-scheduler places the claims)")
    summary = _summary(done, scheduler_mapped, ctx.notes)
    new_metadata = dict(metadata)
    new_metadata["annotations"] = {**annotations, TRANSLATION_ANNOTATION: summary}
    return PodTranslation(new_metadata, new_spec, tuple(templates.values()), tuple(done), tuple(ctx.notes), True,
                          summary)


def _summary(done: Sequence[ContainerTranslation], scheduler_mapped: bool, notes: Sequence[str]) -> str:
    parts = []
    for item in done:
        asked = " ".join(f"{k.removeprefix('nvidia.com/')}={v}" for k, v in item.request)
        what = "init container" if item.init else "container"
        parts.append(f"{what} {item.container} ({asked}) -> claim {item.claim} from ResourceClaimTemplate "
                     f"{item.template} ({item.shape.describe()})")
    if scheduler_mapped:
        parts.append(f"schedulerName {HAMI_SCHEDULER} -> {DEFAULT_SCHEDULER}")
    parts.extend(notes)
    return "translated from HAMi: " + "; ".join(parts)
