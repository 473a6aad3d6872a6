"""Namespace GPU quotas: ResourceQuota objects in, a namespace's limits out; usage + request in, a
decision out.

Pure. A team's budget is written the way HAMi users already write it, as a core/v1 ResourceQuota:

    spec:
      hard:
        limits.nvidia.com/gpumem: "20480"   # MiB of GPU memory, summed over the namespace's claims
        limits.nvidia.com/gpucores: "150"   # percent of one GPU's SMs, summed (150 = 1.5 GPUs)

kube-controller-manager owns such a quota's status and ignores these two names (its pod evaluator
counts only ``requests.``-prefixed extended resources), so reading ``spec.hard`` is safe and the
object is never written. What a claim counts is its effective wall and cap on every device it
holds (`claim_usage`); `check` is the comparison the allocation controller makes, under the same
lock as the booking, before any allocation is written.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from vgpu_dra.api.names import CORES_MAX, MEBIBYTE
from vgpu_dra.api.quantity import humanize_bytes
from vgpu_dra.driver.node_state import Consumption

QUOTA_MEMORY = "limits.nvidia.com/gpumem"
"""GPU memory in MiB (HAMi's unit), as a plain number: ``20480`` is 20 GiB."""
QUOTA_CORES = "limits.nvidia.com/gpucores"
"""Percent of one GPU's SMs, summed over claims and devices: ``200`` is two whole GPUs' worth."""
QUOTA_KEYS = (QUOTA_MEMORY, QUOTA_CORES)

KIND_OVER = "over-quota"
KIND_INVALID = "invalid-quota"


@dataclass(frozen=True, slots=True)
class Usage:
    """GPU memory and cores taken (or asked for) by claims; `claims` counts them."""

    memory_bytes: int = 0
    cores: int = 0
    claims: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.memory_bytes + other.memory_bytes, self.cores + other.cores, self.claims + other.claims)

    def __sub__(self, other: Usage) -> Usage:
        return Usage(self.memory_bytes - other.memory_bytes, self.cores - other.cores, self.claims - other.claims)


@dataclass(frozen=True, slots=True)
class Limit:
    """One limit of a namespace: the tightest value among its ResourceQuotas, and which one set it."""

    value: int   # bytes for memory, percent for cores
    source: str  # the ResourceQuota's name


@dataclass(frozen=True, slots=True)
class NamespaceQuota:
    """What a namespace may use. `problem` (a value that cannot be read) refuses every claim there."""

    namespace: str
    memory: Limit | None = None
    cores: Limit | None = None
    problem: str | None = None

    def free(self, used: Usage) -> tuple[int | None, int | None]:
        """(memory bytes, cores) still free under each limit (None: no such limit; never negative)."""
        return (None if self.memory is None else max(0, self.memory.value - used.memory_bytes),
                None if self.cores is None else max(0, self.cores.value - used.cores))


@dataclass(frozen=True, slots=True)
class QuotaRefusal:
    """Why a pod's claims may not be allocated in their namespace now."""

    kind: str  # KIND_OVER or KIND_INVALID (a metric label)
    message: str


def _count(text: Any, *, memory: bool) -> int:
    """A ResourceQuota value as a whole number (MiB or percent); ValueError with the reason."""
    raw = str(text).strip()
    if memory and raw.endswith("i"):
        raise ValueError("a binary suffix reads as bytes, but HAMi's unit is MiB as a plain number")
    try:
        amount: Decimal = parse_quantity(raw)
    except ValueError:
        raise ValueError("not a Kubernetes quantity") from None
    if amount < 0 or amount != amount.to_integral_value():
        raise ValueError("not a whole number 0 or more")
    return int(amount)


def _fix_for(key: str) -> str:
    if key == QUOTA_MEMORY:
        return "write GPU memory in MiB as a plain number, e.g. \"20480\" for 20 GiB"
    return "write percent of one GPU as a whole number, e.g. \"150\" for one and a half GPUs"


def quota_from_objects(namespace: str, quotas: Iterable[Mapping[str, Any]]) -> NamespaceQuota | None:
    """The namespace's limits from its ResourceQuota objects, or None when none names ours.

    Several quotas all apply (as Kubernetes applies them): the tightest value of each name wins.
    Scopes are ignored: they select pods, and a claim is not a pod, so a scoped quota applies to
    every claim (the stricter reading). One unreadable value makes the namespace's quota a problem
    (fail closed), named with its fix.
    """
    limits: dict[str, Limit] = {}
    problems: list[str] = []
    found = False
    for quota in sorted(quotas, key=lambda q: (q.get("metadata") or {}).get("name", "")):
        name = (quota.get("metadata") or {}).get("name", "")
        hard = (quota.get("spec") or {}).get("hard") or {}
        for key in QUOTA_KEYS:
            if key not in hard:
                continue
            found = True
            try:
                value = _count(hard[key], memory=key == QUOTA_MEMORY)
            except ValueError as exc:
                problems.append(f"ResourceQuota {namespace}/{name} sets {key} = {str(hard[key])!r}: {exc}; "
                                f"{_fix_for(key)}")
                continue
            if key == QUOTA_MEMORY:
                value *= MEBIBYTE
            if key not in limits or value < limits[key].value:
                limits[key] = Limit(value, name)
    if not found:
        return None
    return NamespaceQuota(namespace, limits.get(QUOTA_MEMORY), limits.get(QUOTA_CORES),
                          "; ".join(problems) or None)


def claim_usage(consumptions: Iterable[Consumption]) -> Usage:
    """What one claim counts against its namespace: the memory wall of every device it holds, and
    each device's core cap, where a device without a cap counts as the whole GPU (it may use every
    SM). A claim that takes nothing (admin access) counts nothing."""
    items = list(consumptions)
    if not items:
        return Usage()
    return Usage(sum(c.memory_bytes for c in items), sum(c.cores or CORES_MAX for c in items), 1)


def _mib(value: int) -> str:
    mib = value // MEBIBYTE
    return f"{mib} MiB" if value % MEBIBYTE == 0 and mib < 1024 else f"{mib} MiB ({humanize_bytes(value)})"


def check(quota: NamespaceQuota | None, used: Usage, request: Usage) -> QuotaRefusal | None:
    """None when `request` fits the namespace's quota on top of `used`, else why not.

    `used` must not include `request`. A quota already below `used` (lowered after the fact)
    evicts nothing but refuses every request that adds to it.
    """
    if quota is None:
        return None
    if quota.problem:
        return QuotaRefusal(KIND_INVALID, f"namespace {quota.namespace}'s GPU quota cannot be read, so no claim "
                                          f"there is allocated until it is fixed: {quota.problem}")
    over: list[str] = []
    if quota.memory is not None and request.memory_bytes and \
            used.memory_bytes + request.memory_bytes > quota.memory.value:
        over.append(f"{QUOTA_MEMORY} of ResourceQuota {quota.memory.source} is {_mib(quota.memory.value)}, "
                    f"{_mib(used.memory_bytes)} is in use by {used.claims} claim(s), "
                    f"this pod's claims need {_mib(request.memory_bytes)} more")
    if quota.cores is not None and request.cores and used.cores + request.cores > quota.cores.value:
        over.append(f"{QUOTA_CORES} of ResourceQuota {quota.cores.source} is {quota.cores.value} %, "
                    f"{used.cores} % is in use by {used.claims} claim(s), "
                    f"this pod's claims need {request.cores} % more")
    if not over:
        return None
    return QuotaRefusal(KIND_OVER, f"over the GPU quota of namespace {quota.namespace}: {'; '.join(over)} "
                                   f"(the claim stays pending until a claim there is deleted or the quota raised)")
