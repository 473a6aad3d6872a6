"""The allocating half of a leadership term: a pending pod's claims → one decision → the writes.

`PodSync` is mixed into `AllocationTerm` and works on its caches, ledger, indexes and queue (all
guarded by the term's lock). Per pod: resolve its claims, turn the unallocated ones of our classes
into allocator terms, decide on the ledger under the lock (booking the placement in memory before
anything is written, so no concurrent decision hands out the same capacity; the namespace's GPU
quota is checked in that same step), then write each claim's allocation and lift the pod's
scheduling gate; a refusal becomes Events and a retry.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING

import structlog

from vgpu_dra.driver.allocation_request import ClaimRequest, selector_errors
from vgpu_dra.driver.allocator import Placement, PodRequest, Refusal, allocate
from vgpu_dra.driver.claim_model import (ClaimRejected, allocated_node, allocation, booked_consumptions, claim_label,
                                         is_ours, meta)
from vgpu_dra.driver.claim_requests import claim_policy, claim_request
from vgpu_dra.driver.namespace_quota import QuotaRefusal
from vgpu_dra.driver.placement_policy import PlacementPolicy

from .claim_writes import PERMANENT_WRITE_ERRORS, Abandon
from .informer import object_key
from .kubeapi import ApiError, JsonObject
from .node_fit import pod_fits_node
from .pod_view import pod_awaits_claims

if TYPE_CHECKING:
    from .allocation_term import AllocationTerm

log = structlog.get_logger(__name__)

REASON_FAILED = "AllocationFailed"


class PodSync:
    """Allocation of pending pods' claims (see the module docstring); part of `AllocationTerm`."""

    def _classes(self: AllocationTerm) -> dict[str, JsonObject]:
        return self.classes.snapshot()

    def _sync_pod(self: AllocationTerm, key: str) -> None:
        pod = self.pods.get(key)
        if not pod_awaits_claims(pod):
            return
        assert pod is not None
        with self.lock:
            resolved = self._resolve_pod_claims(pod)
        if not resolved:
            return
        if any(claim_key is None for _, claim_key in resolved):
            return  # a template claim is not created yet; its creation requeues the pod
        claims = [self.claims.get(claim_key) for _, claim_key in resolved]  # type: ignore[arg-type]
        if any(claim is None for claim in claims):
            return  # a referenced claim does not exist (yet)
        classes = self._classes()
        ours = [c for c in claims if c and is_ours(c, classes)]
        if not ours:
            # The chart's admission policy gates every pod with claims, since a pod's classes are
            # not known at admission; one without claims of ours goes on to kube-scheduler.
            self.writer.lift_gate(key, pod)
            return
        pending = [c for c in ours if not allocation(c)]
        if not pending:
            self._finish_pod(pod)
            return
        with self.lock:
            for claim in pending:
                self._pending_claims.add(object_key(claim))
            self.metrics.pending_claims.set(len(self._pending_claims))
        pinned = {allocated_node(c) for c in ours if allocation(c)}
        pinned.discard(None)
        if len(pinned) > 1:
            self._refuse(pod, pending, f"the pod's claims are already allocated on different nodes "
                                       f"({', '.join(sorted(pinned))}); they cannot all be used by one pod",
                         "conflicting-allocations")
            return
        try:
            requests = tuple(claim_request(c, classes) for c in pending)
            policy = next((claim_policy(c, self.settings.policy) for c in pending
                           if claim_policy(c, self.settings.policy) != self.settings.policy), self.settings.policy)
        except ClaimRejected as exc:
            bad = next((c for c in pending if _rejects(c, classes, self.settings.policy)), pending[0])
            self._refuse(pod, [bad], f"claim {claim_label(bad)}: {exc}", "invalid-claim")
            return
        allowed = self._allowed_nodes(pod)
        if pinned:
            allowed &= frozenset(pinned)  # type: ignore[arg-type]
        pod_uid = meta(pod)["uid"]
        with self.lock:
            if any(meta(c)["uid"] in self._in_flight for c in pending):
                self.queue.add_after(("pod", key), 0.05)
                return
            # Another worker may have allocated one of these claims (a claim shared by two pods)
            # since we read them: decide only on claims still unallocated, or booking them again
            # would hide the real allocation from the ledger for a moment.
            if any(allocation(self.claims.get(object_key(c)) or {}) for c in pending):
                self.queue.add(("pod", key))
                return
            avoid = frozenset(self._avoid.get(pod_uid, ()))
            try:
                decision = allocate(self.ledger, PodRequest(claims=requests, allowed_nodes=allowed,
                                                            avoid_nodes=avoid, label=key), policy)
            except ValueError as exc:
                decision = exc
            over_quota: QuotaRefusal | None = None
            if isinstance(decision, Placement):
                over_quota = self._book_within_quota(meta(pod).get("namespace", ""), decision)
        if over_quota is not None:
            self._refuse_over_quota(pod, pending, over_quota)
            return
        if isinstance(decision, Exception):
            self._refuse(pod, pending, f"cannot allocate: {decision}", "invalid-claim")
            return
        if isinstance(decision, Refusal):
            self._refuse(pod, pending, decision.reason + _selector_note(requests), decision.kind.value)
            return
        self._commit(pod, pending, decision, classes)

    def _allowed_nodes(self: AllocationTerm, pod: JsonObject) -> frozenset[str]:
        """Nodes the pod may run on; memoised per scheduling constraints (pods of one workload share
        them) until any Node changes."""
        spec = pod.get("spec") or {}
        key = json.dumps([spec.get("nodeName"), spec.get("nodeSelector"), spec.get("affinity"),
                          spec.get("tolerations")], sort_keys=True)
        with self.lock:
            generation = self._node_generation
            cached = self._fit_cache.get(key)
            if cached is not None and cached[0] == generation:
                return cached[1]
        allowed = frozenset(name for name, node in self.nodes.snapshot().items() if pod_fits_node(pod, node) is None)
        with self.lock:
            if generation == self._node_generation:
                if len(self._fit_cache) > 1024:
                    self._fit_cache.clear()
                self._fit_cache[key] = (generation, allowed)
        return allowed

    def _commit(self: AllocationTerm, pod: JsonObject, pending: list[JsonObject], placement: Placement,
                classes: Mapping[str, JsonObject]) -> None:
        self._nominate(pod, placement.node)
        written = 0
        rejected: tuple[JsonObject, ApiError] | None = None
        try:
            for claim in pending:
                uid = meta(claim)["uid"]
                try:
                    self.writer.write_allocation(object_key(claim), uid, placement, classes, pod)
                    written += 1
                    self.metrics.allocations.inc()
                except Abandon as exc:
                    log.info("allocation abandoned", claim=object_key(claim), reason=str(exc))
                except ApiError as exc:
                    if exc.status not in PERMANENT_WRITE_ERRORS:
                        raise
                    rejected = (claim, exc)  # retrying the same write cannot help: say so
                    break
                finally:
                    with self.lock:
                        self._in_flight.discard(uid)
                        self._rebook(object_key(claim), uid)
        finally:
            with self.lock:
                for claim in pending:  # an exception above leaves later claims unwritten: unbook them
                    uid = meta(claim)["uid"]
                    if uid in self._in_flight:
                        self._in_flight.discard(uid)
                        self._rebook(object_key(claim), uid)
        if written:
            log.info("allocated", pod=object_key(pod), node=placement.node,
                     claims=[object_key(c) for c in pending], written=written)
        if rejected is not None:
            claim, error = rejected
            self._refuse(pod, [claim], f"the API server rejected the allocation of claim {claim_label(claim)} "
                                       f"({error.status} {error.reason}): {error.message}", "write-rejected")
            return
        if written == len(pending):
            self._finish_pod(pod)
        else:
            self.queue.add_rate_limited(("pod", object_key(pod)))

    def _nominate(self: AllocationTerm, pod: JsonObject, node: str) -> None:
        """Start writing the pod's nominated node (`ClaimWriter.nominate_node`) beside its
        allocation, unless there is nothing to write (bound already, or named already)."""
        if not self.settings.nominate_node or (pod.get("spec") or {}).get("nodeName") or \
                (pod.get("status") or {}).get("nominatedNodeName") == node:
            return
        key = object_key(pod)
        try:
            nomination = self.nominations.submit(self.writer.nominate_node, key, node)
        except RuntimeError:  # the term is ending: its last writes go without the hint
            return
        with self.lock:
            self._nominating[meta(pod)["uid"]] = (nomination, time.monotonic() + self.settings.nomination_wait_s)
        nomination.add_done_callback(lambda done: self._nominated(key, done))

    def _nominated(self: AllocationTerm, key: str, nomination: Future[None]) -> None:
        """A nomination finished: the pod's sync may lift its gate now. Counted; a failed one is
        logged and costs only kube-scheduler's own write of the node."""
        if nomination.cancelled():
            return  # the term ended before it was sent: the next term's sync sees to the pod
        self.queue.add(("pod", key))
        error = nomination.exception()
        if error is None:
            self.metrics.nominations.labels("written").inc()
            return
        self.metrics.nominations.labels("failed").inc()
        detail = {"status": error.status, "reason": error.reason, "message": error.message} \
            if isinstance(error, ApiError) else {"error": repr(error)}
        log.warning("could not nominate the pod's node: kube-scheduler will choose it itself", pod=key, **detail)

    def _rebook(self: AllocationTerm, key: str, uid: str) -> None:
        """Make the ledger match the cached claim again (after a write finished either way)."""
        current = self.claims.get(key)
        if current is None or meta(current).get("uid") != uid:
            if self.ledger.release(uid):
                self._capacity_changed_locked()
            return
        self.ledger.record(uid, booked_consumptions(current, self._device_capacity()))

    def _capacity_changed_locked(self: AllocationTerm) -> None:
        refused, self._refused = self._refused, set()
        for pod_key in refused:
            self.queue.add(("pod", pod_key))

    def _finish_pod(self: AllocationTerm, pod: JsonObject) -> None:
        """All the pod's claims are allocated: record latency, lift our scheduling gate once its
        nomination has landed (`_nomination_pending`)."""
        uid = meta(pod)["uid"]
        key = object_key(pod)
        with self.lock:
            started = self._first_seen.pop(uid, None)
            self._finished.add(uid)
            self._refused.discard(key)
            self._last_refusal.pop(key, None)
            self._pending_claims.difference_update(self._pod_claims.get(key, ()))
            self.metrics.pending_claims.set(len(self._pending_claims))
        if started is not None:
            self.metrics.allocation_latency.observe(time.monotonic() - started)
        if self._nomination_pending(uid, key):
            return
        self.writer.lift_gate(key, pod)

    def _nomination_pending(self: AllocationTerm, uid: str, key: str) -> bool:
        """Whether the pod's nomination is still being written and its deadline not yet passed: its
        gate waits, so kube-scheduler finds the node named when it sees the pod. No worker waits:
        the write's end re-queues the pod (`_nominated`), and so does the deadline."""
        with self.lock:
            found = self._nominating.get(uid)
            if found is None:
                return False
            nomination, deadline = found
            remaining = deadline - time.monotonic()
            if nomination.done() or remaining <= 0 or self.settings.nomination_wait_s <= 0:
                del self._nominating[uid]
                if not nomination.done():
                    log.warning("nominating the pod's node is slow: lifting its gate without waiting", pod=key,
                                waited_s=self.settings.nomination_wait_s)
                return False
        self.queue.add_after(("pod", key), remaining)
        return True

    def _refuse(self: AllocationTerm, pod: JsonObject, claims: Iterable[JsonObject], reason: str, kind: str,
                event_reason: str = REASON_FAILED) -> None:
        key = object_key(pod)
        now = time.monotonic()
        self.metrics.refusals.labels(kind).inc()
        with self.lock:
            self._refused.add(key)
            last = self._last_refusal.get(key)
            announce = last is None or last[0] != reason or now - last[1] >= self.settings.refusal_event_interval_s
            if announce:
                self._last_refusal[key] = (reason, now)
        if announce:
            log.info("allocation refused", pod=key, reason=reason, kind=kind)
            for claim in claims:
                self.events.record(claim, "Warning", event_reason, reason)
            self.events.record(pod, "Warning", event_reason, reason)
        self.queue.add_after(("pod", key), self.settings.retry_refused_after_s)


def _selector_note(requests: Iterable[ClaimRequest]) -> str:
    errors = selector_errors(requests)
    return f" ({'; '.join(errors)})" if errors else ""


def _rejects(claim: JsonObject, classes: Mapping[str, JsonObject], policy: PlacementPolicy) -> bool:
    try:
        claim_request(claim, classes)
        claim_policy(claim, policy)
    except ClaimRejected:
        return True
    return False
