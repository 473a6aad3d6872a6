"""Namespace GPU quotas at the controller's edge: the ResourceQuota watch, the check-and-book call
made under the term's lock, and the view metrics read.

`QuotaGate` is mixed into `AllocationTerm` (like `PodSync`) and works on its lock, ledger (a
`NamespacedLedger`) and queue. ResourceQuota objects are only read (their status belongs to
kube-controller-manager). The pure rules are in `driver.namespace_quota`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from vgpu_dra.driver.allocator import Placement
from vgpu_dra.driver.claim_model import meta
from vgpu_dra.driver.namespace_quota import KIND_INVALID, NamespaceQuota, QuotaRefusal, Usage, quota_from_objects

from .kubeapi import JsonObject

if TYPE_CHECKING:
    from .allocation_term import AllocationTerm

log = structlog.get_logger(__name__)

REASON_OVER_QUOTA = "QuotaExceeded"
REASON_INVALID_QUOTA = "QuotaInvalid"


@dataclass(frozen=True, slots=True)
class QuotaView:
    """One namespace's quota (None where it sets none) and what its claims count now."""

    namespace: str
    quota: NamespaceQuota | None
    used: Usage


class QuotaGate:
    """Quota bookkeeping of a leadership term (see the module docstring)."""

    def _on_quota(self: AllocationTerm, key: str, old: JsonObject | None, new: JsonObject | None) -> None:
        namespace = meta(new or old or {}).get("namespace", "")
        objects = [q for q in self.quotas.items() if meta(q).get("namespace") == namespace]
        quota = quota_from_objects(namespace, objects)
        with self.lock:
            before = self._quotas.get(namespace)
            if quota is None:
                self._quotas.pop(namespace, None)
            else:
                self._quotas[namespace] = quota
        if quota is not None and quota.problem and (before is None or before.problem != quota.problem):
            self.metrics.invalid_quotas.inc()
            log.warning("namespace GPU quota cannot be read; refusing its claims until fixed",
                        namespace=namespace, problem=quota.problem)
        if before != quota:
            self._capacity_changed()  # a raised or fixed quota can let a refused pod through

    def _book_within_quota(self: AllocationTerm, namespace: str, placement: Placement) -> QuotaRefusal | None:
        """Check the namespace's quota and book `placement` in one step. Call with `self.lock` held:
        the lock is what makes the check and the booking one step for all workers."""
        refusal = self.ledger.book_within_quota(namespace, self._quotas.get(namespace), placement)
        if refusal is None:
            for claim_key, _ in placement.claim_consumptions():
                self._in_flight.add(claim_key)
        return refusal

    def _refuse_over_quota(self: AllocationTerm, pod: JsonObject, claims: list[JsonObject],
                           refusal: QuotaRefusal) -> None:
        namespace = meta(pod).get("namespace", "")
        self.metrics.quota_refusals.labels(namespace, refusal.kind).inc()
        reason = REASON_INVALID_QUOTA if refusal.kind == KIND_INVALID else REASON_OVER_QUOTA
        self._refuse(pod, claims, refusal.message, refusal.kind, event_reason=reason)

    def quota_view(self: AllocationTerm) -> list[QuotaView]:
        """Every namespace with a quota or with claims counted, sorted."""
        with self.lock:
            names = sorted(set(self._quotas) | set(self.ledger.usage.namespaces()))
            return [QuotaView(n, self._quotas.get(n), self.ledger.usage.used(n)) for n in names]
