"""The namespace GPU quotas part of `vgpu-dra status`: each namespace's quota, what its allocated
claims count (as the controller counts them), and what is free.

Pure, except `list_quotas`. Usage is computed from the claims' allocations with the controller's
own rules (`booked_consumptions`, `claim_usage`), so both agree in either allocator mode; only the
allocation controller refuses claims over quota, which the note under the table says when some
DeviceClass of the driver is allocated by kube-scheduler.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vgpu_dra.api.names import ALLOCATOR_LABEL, ALLOCATOR_SCHEDULER
from vgpu_dra.cli.table_format import format_table
from vgpu_dra.controller.kubeapi import RESOURCE_QUOTAS, ApiError, KubeApi
from vgpu_dra.driver.claim_model import booked_consumptions, meta
from vgpu_dra.driver.namespace_quota import NamespaceQuota, Usage, claim_usage, quota_from_objects

JsonObject = Mapping[str, Any]


@dataclass(frozen=True)
class QuotaStatus:
    """One namespace with a GPU quota."""

    quota: NamespaceQuota
    used: Usage


@dataclass(frozen=True)
class QuotasStatus:
    """The quota part of `status`: rows, and what a reader must know about enforcement."""

    namespaces: tuple[QuotaStatus, ...] = ()
    notes: tuple[str, ...] = ()


def namespace_quotas(quotas: Sequence[JsonObject], claims: Sequence[JsonObject],
                     capacity: Mapping[tuple[str, str], tuple[int, int]], classes: Sequence[JsonObject],
                     unreadable: str | None = None) -> QuotasStatus:
    """Join ResourceQuota objects with the claims of each namespace that has a GPU quota."""
    by_namespace: dict[str, list[JsonObject]] = {}
    for quota in quotas:
        by_namespace.setdefault(meta(quota).get("namespace", ""), []).append(quota)
    used: dict[str, Usage] = {}
    for claim in claims:
        namespace = meta(claim).get("namespace", "")
        if namespace in by_namespace:
            used[namespace] = used.get(namespace, Usage()) + claim_usage(booked_consumptions(claim, capacity))
    rows = []
    for namespace in sorted(by_namespace):
        found = quota_from_objects(namespace, by_namespace[namespace])
        if found is not None:
            rows.append(QuotaStatus(found, used.get(namespace, Usage())))
    notes = []
    if unreadable:
        notes.append(unreadable)
    by_scheduler = sorted(meta(c).get("name", "") for c in classes
                          if (meta(c).get("labels") or {}).get(ALLOCATOR_LABEL) == ALLOCATOR_SCHEDULER)
    if rows and by_scheduler:
        notes.append(f"claims of DeviceClass(es) {', '.join(by_scheduler)} are allocated by kube-scheduler: they "
                     "count towards their namespace's quota but are never refused (only the allocation controller "
                     "enforces GPU quotas; see docs/quotas.md)")
    return QuotasStatus(tuple(rows), tuple(notes))


def _mib(value: int) -> str:
    return f"{value >> 20} MiB"


def _cell(used: int, limit: int | None, free: int | None, show: Any) -> tuple[str, str]:
    if limit is None:
        return f"{show(used)} (no limit)", "-"
    return f"{show(used)} of {show(limit)}", show(free)


def render_quotas(status: QuotasStatus) -> str:
    """The "Namespace GPU quotas" table (empty text when no namespace has one)."""
    text = ""
    if status.namespaces:
        rows = []
        for row in status.namespaces:
            quota = row.quota
            if quota.problem:
                rows.append([quota.namespace, "-", "-", "-", "-", f"INVALID, claims refused: {quota.problem}"])
                continue
            free_memory, free_cores = quota.free(row.used)
            memory, memory_free = _cell(row.used.memory_bytes, quota.memory.value if quota.memory else None,
                                        free_memory, _mib)
            cores, cores_free = _cell(row.used.cores, quota.cores.value if quota.cores else None, free_cores,
                                      lambda v: f"{v} %")
            sources = sorted({limit.source for limit in (quota.memory, quota.cores) if limit is not None})
            rows.append([quota.namespace, memory, memory_free, cores, cores_free, ", ".join(sources)])
        text = "\nNamespace GPU quotas\n" + format_table(
            ["NAMESPACE", "MEMORY USED", "MEMORY FREE", "CORES USED", "CORES FREE", "RESOURCEQUOTA"], rows)
    for note in status.notes:
        text += f"note: {note}\n"
    return text


def quotas_json(status: QuotasStatus) -> dict[str, Any]:
    """The ``quotas`` part of ``status -o json`` (bytes and percent, no rounding)."""
    entries = []
    for row in status.namespaces:
        quota = row.quota
        free_memory, free_cores = quota.free(row.used)
        entries.append({
            "namespace": quota.namespace, "problem": quota.problem,
            "memoryBytes": quota.memory.value if quota.memory and not quota.problem else None,
            "memoryUsedBytes": row.used.memory_bytes,
            "memoryFreeBytes": free_memory if not quota.problem else None,
            "cores": quota.cores.value if quota.cores and not quota.problem else None,
            "coresUsed": row.used.cores, "coresFree": free_cores if not quota.problem else None,
            "claims": row.used.claims,
            "resourceQuotas": sorted({limit.source for limit in (quota.memory, quota.cores) if limit is not None}),
        })
    return {"namespaces": entries, "notes": list(status.notes)}


def list_quotas(api: KubeApi) -> tuple[list[dict[str, Any]], str | None]:
    """Every ResourceQuota, or none and the reason it could not be read (the rest of `status`
    still works for a user who may not list quotas)."""
    try:
        return list(api.list(RESOURCE_QUOTAS).get("items") or []), None
    except ApiError as exc:
        return [], (f"ResourceQuotas could not be read ({exc.status} {exc.reason}), so namespace GPU quotas are not "
                    "shown")
