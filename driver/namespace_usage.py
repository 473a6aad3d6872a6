"""Per-namespace totals of what the ledger books, kept as the ledger changes.

Pure and in-memory. `NamespacedLedger` is a `Ledger` that also adds up, per namespace, what its
claims count against a quota (`namespace_quota.claim_usage`), so every path that books or releases
a claim (a watched allocation, a decision being written, a GPU published late) keeps the totals
right without knowing about quotas. The namespace of a claim key comes from a lookup the owner
supplies; `book_within_quota` is the one place that checks a quota and books, in one call, so a
caller holding its lock can never let two claims both pass a quota that fits only one.
"""
from __future__ import annotations

from collections.abc import Callable, Collection, Iterable

from vgpu_dra.driver.ledger import HasConsumptions, Ledger
from vgpu_dra.driver.namespace_quota import NamespaceQuota, QuotaRefusal, Usage, check, claim_usage
from vgpu_dra.driver.node_state import Consumption


class NamespaceUsage:
    """Claim key → (namespace, usage), and the sum per namespace."""

    def __init__(self) -> None:
        self._claims: dict[str, tuple[str, Usage]] = {}
        self._totals: dict[str, Usage] = {}

    def set(self, key: str, namespace: str, usage: Usage) -> None:
        """Count `usage` for `key` in `namespace`, replacing what it counted before."""
        self.drop(key)
        if not usage.claims:
            return
        self._claims[key] = (namespace, usage)
        self._totals[namespace] = self._totals.get(namespace, Usage()) + usage

    def drop(self, key: str) -> None:
        """Stop counting `key` (unknown keys are a no-op)."""
        entry = self._claims.pop(key, None)
        if entry is None:
            return
        namespace, usage = entry
        left = self._totals[namespace] - usage
        if left.claims:
            self._totals[namespace] = left
        else:
            del self._totals[namespace]

    def namespace(self, key: str) -> str | None:
        """The namespace `key` is counted in, or None."""
        entry = self._claims.get(key)
        return entry[0] if entry else None

    def used(self, namespace: str, excluding: Collection[str] = ()) -> Usage:
        """What the namespace's claims count now, leaving out the keys in `excluding`."""
        total = self._totals.get(namespace, Usage())
        for key in excluding:
            entry = self._claims.get(key)
            if entry is not None and entry[0] == namespace:
                total -= entry[1]
        return total

    def namespaces(self) -> list[str]:
        """Namespaces with at least one counted claim, sorted."""
        return sorted(self._totals)


class NamespacedLedger(Ledger):
    """A `Ledger` that keeps `usage` per namespace; `namespace_of(claim key)` names the namespace
    (None: not known; the key keeps the namespace it was counted in, and a key never counted in one
    counts nowhere until it is booked again with a known namespace)."""

    def __init__(self, namespace_of: Callable[[str], str | None]) -> None:
        super().__init__()
        self.usage = NamespaceUsage()
        self._namespace_of = namespace_of

    def record(self, claim_key: str, consumptions: Iterable[Consumption]) -> None:
        items = tuple(consumptions)
        namespace = self._namespace_of(claim_key) or self.usage.namespace(claim_key)
        super().record(claim_key, items)
        if namespace is not None:
            self.usage.set(claim_key, namespace, claim_usage(items))

    def release(self, claim_key: str) -> bool:
        self.usage.drop(claim_key)
        return super().release(claim_key)

    def book_within_quota(self, namespace: str, quota: NamespaceQuota | None,
                          placement: HasConsumptions) -> QuotaRefusal | None:
        """Book every claim of `placement` (all in `namespace`) if together they fit its quota on
        top of what the namespace's other claims count; otherwise book nothing and say why."""
        claims = [(key, consumptions, claim_usage(consumptions)) for key, consumptions in placement.claim_consumptions()]
        if quota is not None:
            request = Usage()
            for _, _, usage in claims:
                request += usage
            refusal = check(quota, self.usage.used(namespace, excluding=[key for key, _, _ in claims]), request)
            if refusal is not None:
                return refusal
        for key, consumptions, usage in claims:
            super().record(key, consumptions)
            self.usage.set(key, namespace, usage)
        return None
