"""One leadership term of the allocation controller: caches, ledger, work queue, workers.

Everything here is created when the replica becomes leader and dropped when it stops leading, so
a new term always starts from a full list (the ledger is rebuilt from every claim's allocation,
ours and anybody else's) and nothing is allocated before that first full sync.

Work items are ``("pod", namespace/name)`` — allocate a pending pod's claims — and
``("claim", namespace/name)`` — finalizer and deallocation housekeeping of one claim.

Bookkeeping invariant: the ledger holds, per claim UID, exactly what the cached claim's allocation
consumes — except while this controller is writing an allocation (`_in_flight`), when it holds the
placement being written, so no concurrent decision can hand out the same capacity.
"""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from vgpu_dra.api.names import DRIVER_NAME, FINALIZER, SCHEDULING_GATE
from vgpu_dra.driver.allocator import Placement, PodRequest, Refusal, allocate
from vgpu_dra.driver.ledger import Ledger
from vgpu_dra.driver.placement_policy import PlacementPolicy

from vgpu_dra.driver.claim_model import (EXCLUSIVE_MEMORY_BYTES, ClaimRejected, allocated_node, allocation, allocation_status,
                          booked_consumptions, claim_label, claim_policy, claim_request, has_finalizer, is_ours, meta,
                          reserved_for)
from .events import EventRecorder
from .informer import Informer, object_key
from .kubeapi import DEVICE_CLASSES, NODES, PODS, RESOURCE_CLAIMS, RESOURCE_SLICES, ApiError, JsonObject, KubeApi
from .metrics import ClaimView, ControllerMetrics, GpuView
from .node_fit import pod_fits_node
from vgpu_dra.driver.published_gpus import gpus_by_node
from .workqueue import WorkQueue

log = structlog.get_logger(__name__)

POD_CLAIM_ANNOTATION = "resource.kubernetes.io/pod-claim-name"
"""Set by kube-controller-manager on claims it generates from a pod's template reference."""

REASON_FAILED = "AllocationFailed"

Key = tuple[str, str]


@dataclass(frozen=True)
class TermSettings:
    """Knobs of the controller (from CLI flags)."""

    policy: PlacementPolicy = PlacementPolicy()
    workers: int = 4
    retry_refused_after_s: float = 30.0
    refusal_event_interval_s: float = 60.0
    watch_timeout_s: int = 60
    write_retries: int = 8


_PERMANENT_WRITE_ERRORS = (400, 403, 422)
"""Write failures that repeat until someone acts (bad request, missing RBAC, invalid object)."""


class _Abandon(Exception):
    """The claim changed under us in a way that ends this write (deleted, allocated elsewhere)."""


def _pod_pending(pod: Mapping[str, Any] | None) -> bool:
    if not pod:
        return False
    if meta(pod).get("deletionTimestamp"):
        return False
    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return False
    return not (pod.get("spec") or {}).get("nodeName")


def pod_essentials(pod: JsonObject) -> JsonObject:
    """The part of a pod the controller reads (placement constraints, claims, phase), so the pod
    cache stays small however large the cluster's pod specs are."""
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    status = pod.get("status") or {}
    trimmed_spec = {k: spec[k] for k in ("nodeName", "nodeSelector", "tolerations", "resourceClaims", "schedulingGates")
                    if k in spec}
    if (spec.get("affinity") or {}).get("nodeAffinity"):
        trimmed_spec["affinity"] = {"nodeAffinity": spec["affinity"]["nodeAffinity"]}
    return {
        "apiVersion": pod.get("apiVersion", "v1"), "kind": pod.get("kind", "Pod"),
        "metadata": {k: metadata[k] for k in ("name", "namespace", "uid", "resourceVersion", "deletionTimestamp")
                     if k in metadata},
        "spec": trimmed_spec,
        "status": {k: status[k] for k in ("phase", "resourceClaimStatuses") if k in status},
    }


def _pod_awaits_claims(pod: Mapping[str, Any] | None) -> bool:
    """Pending, or already bound by whoever created it (``spec.nodeName`` set, scheduler bypassed)
    but not finished or being deleted: its unallocated claims are still to be allocated."""
    if not pod or meta(pod).get("deletionTimestamp"):
        return False
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


def _pod_alive(pod: Mapping[str, Any] | None) -> bool:
    return bool(pod) and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


class AllocationTerm:
    """Runs the controller for one leadership term; `run(stop)` returns when `stop` is set."""

    def __init__(self, api: KubeApi, settings: TermSettings, metrics: ControllerMetrics, events: EventRecorder):
        self.api = api
        self.settings = settings
        self.metrics = metrics
        self.events = events
        self.lock = threading.RLock()
        self.ledger = Ledger()
        self.ready = threading.Event()
        self.queue = WorkQueue()
        timeout = settings.watch_timeout_s
        self.slices = Informer(api, RESOURCE_SLICES, self._on_slice, watch_timeout_s=timeout,
                               field_selector=f"spec.driver={DRIVER_NAME}")
        self.claims = Informer(api, RESOURCE_CLAIMS, self._on_claim, watch_timeout_s=timeout)
        self.classes = Informer(api, DEVICE_CLASSES, self._on_class, watch_timeout_s=timeout)
        self.pods = Informer(api, PODS, self._on_pod, watch_timeout_s=timeout, transform=pod_essentials)
        self.nodes = Informer(api, NODES, self._on_node, watch_timeout_s=timeout)
        self.informers = (self.slices, self.classes, self.nodes, self.claims, self.pods)
        # Indexes (guarded by self.lock).
        self._booked_uid: dict[str, str] = {}            # claim key -> uid booked in the ledger
        self._claim_names: dict[str, str] = {}           # claim uid -> key (metrics view)
        self._owned: dict[str, set[str]] = {}            # pod uid -> claim keys it owns
        self._claim_owner: dict[str, str] = {}           # claim key -> owner pod uid
        self._pod_key: dict[str, str] = {}               # pod uid -> pod key
        self._pod_claims: dict[str, tuple[str, ...]] = {}  # pod key -> claim keys it references
        self._claim_users: dict[str, set[str]] = {}      # claim key -> pod keys referencing it
        self._in_flight: set[str] = set()                # claim uids being written
        self._clearing: set[str] = set()                 # claim uids we deallocate ourselves
        self._avoid: dict[str, set[str]] = {}            # pod uid -> nodes the scheduler rejected
        self._refused: set[str] = set()                  # pod keys waiting for capacity
        self._last_refusal: dict[str, tuple[str, float]] = {}
        self._first_seen: dict[str, float] = {}          # pod uid -> monotonic time first seen pending
        self._finished: set[str] = set()                 # pod uids whose claims were all allocated
        self._pending_claims: set[str] = set()           # claim keys of pending pods not yet allocated
        self._unsized: dict[str, set[str]] = {}          # node -> claims booked whole-GPU before its slices
        self._node_generation = 0                        # bumped when a Node's labels/spec change
        self._fit_cache: dict[str, tuple[int, frozenset[str]]] = {}  # pod constraints -> allowed nodes

    # ------------------------------------------------------------------ lifecycle

    def run(self, stop: threading.Event) -> None:
        """Sync caches, then process the queue with `settings.workers` threads until `stop`."""
        threads = [threading.Thread(target=i.run, args=(stop,), name=f"informer-{i.resource.plural}", daemon=True)
                   for i in self.informers]
        for thread in threads:
            thread.start()
        for informer in self.informers:
            while not informer.synced.wait(0.1):
                if stop.is_set():
                    self._stop(threads)
                    return
        with self.lock:
            gpus = sum(len(self.ledger.candidates(n)) for n in self.ledger.node_names())
            log.info("caches synced, ledger rebuilt", nodes=len(self.ledger.node_names()), gpus=gpus,
                     claims=len(self.claims.snapshot()), booked=len(self.ledger.claim_keys()))
        self.ready.set()
        self.metrics.ready.set(1)
        for key in self.pods.snapshot():
            self.queue.add(("pod", key))
        for key, claim in self.claims.snapshot().items():
            if has_finalizer(claim):
                self.queue.add(("claim", key))
        workers = [threading.Thread(target=self._work, name=f"worker-{i}", daemon=True)
                   for i in range(self.settings.workers)]
        for worker in workers:
            worker.start()
        stop.wait()
        self.queue.shut_down()
        for worker in workers:
            worker.join(timeout=30)
        self._stop(threads)

    def _stop(self, threads: list[threading.Thread]) -> None:
        self.metrics.ready.set(0)
        for informer in self.informers:
            informer.close()
        for thread in threads:
            thread.join(timeout=5)

    def _work(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            kind, key = item  # type: ignore[misc]
            started = time.perf_counter()
            try:
                if kind == "pod":
                    self._sync_pod(key)
                else:
                    self._sync_claim(key)
                self.queue.forget(item)
            except ApiError as exc:
                delay = self.queue.add_rate_limited(item)
                log.warning("sync failed, will retry", kind=kind, key=key, error=str(exc), retry_in_s=round(delay, 3))
            except Exception:
                delay = self.queue.add_rate_limited(item)
                log.exception("sync crashed, will retry", kind=kind, key=key, retry_in_s=round(delay, 3))
            finally:
                self.queue.done(item)
                self.metrics.sync_duration.labels(kind).observe(time.perf_counter() - started)
                self.metrics.queue_depth.set(len(self.queue))

    # ------------------------------------------------------------------ event handlers

    def _device_capacity(self) -> Mapping[tuple[str, str], tuple[int, int]]:
        return _LedgerCapacity(self.ledger)

    def _on_slice(self, key: str, old: JsonObject | None, new: JsonObject | None) -> None:
        nodes = {(o.get("spec") or {}).get("nodeName") for o in (old, new) if o}
        nodes.discard(None)
        with self.lock:
            for node in nodes:
                found = gpus_by_node(s for s in self.slices.items() if (s.get("spec") or {}).get("nodeName") == node)
                if node in found:
                    self.ledger.set_node(node, found[node].gpus)
                    # Whole-GPU allocations booked before their GPU was known get its real size.
                    for claim_key in self._unsized.pop(node, set()):
                        claim = self.claims.get(claim_key)
                        if claim is not None and meta(claim).get("uid") not in self._in_flight:
                            self.ledger.record(meta(claim)["uid"],
                                               booked_consumptions(claim, self._device_capacity()))
                else:
                    self.ledger.remove_node(node)
        self._capacity_changed()

    def _on_class(self, key: str, old: JsonObject | None, new: JsonObject | None) -> None:
        # A class appearing or changing can make a claim ours, fix its config or its selectors:
        # every pending pod is looked at again (classes change rarely).
        self._capacity_changed()
        if self.ready.is_set():
            for pod_key, pod in self.pods.snapshot().items():
                if _pod_awaits_claims(pod):
                    self.queue.add(("pod", pod_key))

    def _on_node(self, key: str, old: JsonObject | None, new: JsonObject | None) -> None:
        if old is None or new is None or old.get("spec") != new.get("spec") or \
                meta(old).get("labels") != meta(new).get("labels"):
            with self.lock:
                self._node_generation += 1
            self._capacity_changed()

    def _capacity_changed(self) -> None:
        """Something that can turn a refusal into a placement happened: retry refused pods."""
        with self.lock:
            refused, self._refused = self._refused, set()
        for pod_key in refused:
            self.queue.add(("pod", pod_key))

    def _on_claim(self, key: str, old: JsonObject | None, new: JsonObject | None) -> None:
        freed = False
        wiped_on: str | None = None
        with self.lock:
            current = self.claims.get(key)
            booked = self._booked_uid.get(key)
            uid = meta(current).get("uid") if current else None
            if booked and booked != uid:
                freed |= self.ledger.release(booked)
                self._booked_uid.pop(key, None)
                self._claim_names.pop(booked, None)
                self._drop_owner(key)
            if current is not None and uid:
                if uid not in self._in_flight or allocation(current):
                    consumptions = booked_consumptions(current, self._device_capacity())
                    before = self.ledger.booked(uid)
                    self.ledger.record(uid, consumptions)
                    for item in consumptions:
                        if item.memory_bytes == EXCLUSIVE_MEMORY_BYTES:  # GPU not published yet
                            self._unsized.setdefault(item.node, set()).add(key)
                    freed |= bool(before) and sum(c.memory_bytes for c in before) > sum(
                        c.memory_bytes for c in consumptions)
                self._booked_uid[key] = uid
                self._claim_names[uid] = key
                self._index_owner(key, current)
                if allocation(current):
                    self._pending_claims.discard(key)
            else:
                self._pending_claims.discard(key)
            if old is not None and current is not None and allocation(old) and not allocation(current) \
                    and meta(old).get("uid") == uid and uid not in self._clearing \
                    and has_finalizer(current) and not meta(current).get("deletionTimestamp"):
                wiped_on = allocated_node(old)
            users = set(self._claim_users.get(key, ()))
            owner_uid = self._claim_owner.get(key)
            if owner_uid and owner_uid in self._pod_key:
                users.add(self._pod_key[owner_uid])
            if wiped_on:
                self.metrics.wipes.inc()
                for pod_key in users:
                    pod = self.pods.get(pod_key)
                    if _pod_pending(pod):
                        self._avoid.setdefault(meta(pod)["uid"], set()).add(wiped_on)
                        self._finished.discard(meta(pod)["uid"])
                        self._first_seen.setdefault(meta(pod)["uid"], time.monotonic())
                        log.info("allocation wiped while pod pending; avoiding node", claim=key, pod=pod_key,
                                 node=wiped_on)
            self.metrics.pending_claims.set(len(self._pending_claims))
        if freed:
            self._capacity_changed()
        self.queue.add(("claim", key))
        for pod_key in users:
            self.queue.add(("pod", pod_key))

    def _index_owner(self, key: str, claim: Mapping[str, Any]) -> None:
        owner = next((ref.get("uid") for ref in meta(claim).get("ownerReferences") or []
                      if ref.get("kind") == "Pod" and ref.get("controller")), None)
        previous = self._claim_owner.get(key)
        if previous == owner:
            return
        self._drop_owner(key)
        if owner:
            self._claim_owner[key] = owner
            self._owned.setdefault(owner, set()).add(key)

    def _drop_owner(self, key: str) -> None:
        previous = self._claim_owner.pop(key, None)
        if previous and previous in self._owned:
            self._owned[previous].discard(key)
            if not self._owned[previous]:
                del self._owned[previous]

    def _on_pod(self, key: str, old: JsonObject | None, new: JsonObject | None) -> None:
        to_check: set[str] = set()
        with self.lock:
            current = self.pods.get(key)
            previous_claims = self._pod_claims.pop(key, ())
            for claim_key in previous_claims:
                users = self._claim_users.get(claim_key)
                if users:
                    users.discard(key)
                    if not users:
                        del self._claim_users[claim_key]
            if current is None:
                uid = meta(old or {}).get("uid")
                if uid:
                    self._pod_key.pop(uid, None)
                    self._avoid.pop(uid, None)
                    self._first_seen.pop(uid, None)
                    self._finished.discard(uid)
                    self._last_refusal.pop(key, None)
                    to_check |= self._owned.get(uid, set())
                self._refused.discard(key)
                to_check |= set(previous_claims)
                self._pending_claims.difference_update(to_check)
                self.metrics.pending_claims.set(len(self._pending_claims))
            else:
                uid = meta(current)["uid"]
                self._pod_key[uid] = key
                claim_keys = tuple(k for _, k in self._resolve_pod_claims(current) if k)
                self._pod_claims[key] = claim_keys
                for claim_key in claim_keys:
                    self._claim_users.setdefault(claim_key, set()).add(key)
                if _pod_pending(current):
                    if uid not in self._finished:
                        self._first_seen.setdefault(uid, time.monotonic())
                else:
                    self._first_seen.pop(uid, None)
                    to_check |= set(claim_keys) | set(previous_claims)
        for claim_key in to_check:
            self.queue.add(("claim", claim_key))
        if current is not None and _pod_awaits_claims(current):
            self.queue.add(("pod", key))

    def _resolve_pod_claims(self, pod: Mapping[str, Any]) -> list[tuple[str, str | None]]:
        """(pod claim name, claim key or None when not created yet) for each pod claim."""
        namespace = meta(pod).get("namespace", "default")
        statuses = {s.get("name"): s.get("resourceClaimName")
                    for s in (pod.get("status") or {}).get("resourceClaimStatuses") or []}
        owned = self._owned.get(meta(pod).get("uid", ""), set())
        found: list[tuple[str, str | None]] = []
        for entry in (pod.get("spec") or {}).get("resourceClaims") or []:
            name = entry.get("name", "")
            if entry.get("resourceClaimName"):
                found.append((name, f"{namespace}/{entry['resourceClaimName']}"))
            elif entry.get("resourceClaimTemplateName"):
                if statuses.get(name):
                    found.append((name, f"{namespace}/{statuses[name]}"))
                    continue
                match = next((k for k in sorted(owned)
                              if (meta(self.claims.get(k) or {}).get("annotations") or {}).get(POD_CLAIM_ANNOTATION)
                              == name), None)
                found.append((name, match))
        return found

    # ------------------------------------------------------------------ pod sync: allocate

    def _classes(self) -> dict[str, JsonObject]:
        return self.classes.snapshot()

    def _sync_pod(self, key: str) -> None:
        pod = self.pods.get(key)
        if not _pod_awaits_claims(pod):
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
            if isinstance(decision, Placement):
                for claim_key, consumptions in decision.claim_consumptions():
                    self._in_flight.add(claim_key)
                    self.ledger.record(claim_key, consumptions)
        if isinstance(decision, Exception):
            self._refuse(pod, pending, f"cannot allocate: {decision}", "invalid-claim")
            return
        if isinstance(decision, Refusal):
            self._refuse(pod, pending, decision.reason + _selector_errors(requests), decision.kind.value)
            return
        self._commit(pod, pending, decision, classes)

    def _allowed_nodes(self, pod: JsonObject) -> frozenset[str]:
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

    def _commit(self, pod: JsonObject, pending: list[JsonObject], placement: Placement,
                classes: Mapping[str, JsonObject]) -> None:
        written = 0
        rejected: tuple[JsonObject, ApiError] | None = None
        try:
            for claim in pending:
                uid = meta(claim)["uid"]
                try:
                    self._write_allocation(object_key(claim), uid, placement, classes)
                    written += 1
                    self.metrics.allocations.inc()
                except _Abandon as exc:
                    log.info("allocation abandoned", claim=object_key(claim), reason=str(exc))
                except ApiError as exc:
                    if exc.status not in _PERMANENT_WRITE_ERRORS:
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

    def _rebook(self, key: str, uid: str) -> None:
        """Make the ledger match the cached claim again (after a write finished either way)."""
        current = self.claims.get(key)
        if current is None or meta(current).get("uid") != uid:
            if self.ledger.release(uid):
                self._capacity_changed_locked()
            return
        self.ledger.record(uid, booked_consumptions(current, self._device_capacity()))

    def _capacity_changed_locked(self) -> None:
        refused, self._refused = self._refused, set()
        for pod_key in refused:
            self.queue.add(("pod", pod_key))

    def _write_allocation(self, key: str, uid: str, placement: Placement, classes: Mapping[str, JsonObject]) -> None:
        def attempt(claim: JsonObject) -> None:
            if meta(claim).get("uid") != uid:
                raise _Abandon("claim was deleted or replaced")
            if allocation(claim):
                raise _Abandon(f"claim got allocated by someone else in the meantime (node {allocated_node(claim)})")
            if meta(claim).get("deletionTimestamp"):
                raise _Abandon("claim is being deleted")
            if not has_finalizer(claim):
                claim = self._patch_finalizers(claim, [*(meta(claim).get("finalizers") or []), FINALIZER])
            self._patch_status(claim, {"allocation": allocation_status(claim, classes, placement.node,
                                                                       placement.claim(uid))})

        if not self._write_resolving_conflicts(RESOURCE_CLAIMS, key, self.claims.get(key), attempt,
                                               observe=self.claims.observe):
            raise _Abandon("claim was deleted")

    def _patch_finalizers(self, claim: JsonObject, finalizers: list[str]) -> JsonObject:
        """Set the claim's finalizers with a conditional merge patch of its metadata alone.

        Never a PUT of the whole claim: the API server keeps opaque parameters as the bytes it was
        sent, so a re-serialised spec reads as a change to an immutable field (422). Naming the
        resourceVersion makes the patch fail with 409 when the claim changed since we read it."""
        name, namespace = meta(claim)["name"], meta(claim).get("namespace")
        patch = {"metadata": {"resourceVersion": meta(claim)["resourceVersion"], "finalizers": finalizers or None}}
        try:
            updated = self.api.patch(RESOURCE_CLAIMS, name, patch, namespace)
        except ApiError as exc:
            if not (exc.status == 422 and "field is immutable" in exc.message):
                raise
            updated = self._put_finalizers_verbatim(name, namespace, meta(claim)["resourceVersion"], finalizers)
        self.claims.observe(updated)
        return updated

    def _put_finalizers_verbatim(self, name: str, namespace: str | None, version: str,
                                 finalizers: list[str]) -> JsonObject:
        """The fallback for a claim whose opaque parameters were stored in a non-compact form.

        The API server compares the immutable spec byte for byte, and applies any patch to the
        compact JSON it serves, so no patch can change such a claim's metadata (kubectl's cannot
        either). The one other client in wide use, the Python `kubernetes` client, sends
        `json.dumps` output; a PUT of the claim exactly as served, re-encoded the same way,
        reproduces those bytes. It cannot alter the spec: any other bytes are refused as immutable
        again, and the resourceVersion makes it conditional."""
        current = self.api.get(RESOURCE_CLAIMS, name, namespace)
        if meta(current).get("resourceVersion") != version:
            raise ApiError(409, "Conflict", f"claim {namespace}/{name} changed since it was read")
        current["metadata"]["finalizers"] = finalizers
        log.info("claim parameters stored in a non-compact form: finalizer written with a verbatim PUT",
                 claim=f"{namespace}/{name}")
        return self.api.update(RESOURCE_CLAIMS, current)

    def _patch_status(self, claim: JsonObject, status: JsonObject) -> JsonObject:
        """Merge `status` (None removes a field) into the claim's status subresource, conditional
        on the resourceVersion read."""
        patch = {"metadata": {"resourceVersion": meta(claim)["resourceVersion"]}, "status": status}
        updated = self.api.patch(RESOURCE_CLAIMS, meta(claim)["name"], patch, meta(claim).get("namespace"),
                                 subresource="status")
        self.claims.observe(updated)
        return updated

    def _write_resolving_conflicts(self, resource: str, key: str, current: JsonObject | None,
                                   attempt: Callable[[JsonObject], None], *,
                                   observe: Callable[[JsonObject], None] | None) -> bool:
        """Run `attempt` (checks, then writes) on the newest copy of an object, re-reading it after
        each 409. False when the object is gone (404, or never cached); ApiError 409 when conflicts
        outlast the retries, so the work item is retried later with backoff."""
        namespace, name = key.split("/", 1)
        for _ in range(self.settings.write_retries):
            if current is None:
                return False
            try:
                attempt(current)
                return True
            except ApiError as exc:
                if exc.not_found:
                    return False
                if not exc.conflict:
                    raise
                self.metrics.conflicts.inc()
            try:
                current = self.api.get(resource, name, namespace)
            except ApiError as exc:
                if exc.not_found:
                    return False
                raise
            if observe is not None:
                observe(current)
        raise ApiError(409, "Conflict", f"{key}: still conflicting after {self.settings.write_retries} attempts")

    def _finish_pod(self, pod: JsonObject) -> None:
        """All the pod's claims are allocated: record latency, lift our scheduling gate."""
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
        def lift_gate(current: JsonObject) -> None:
            gates = (current.get("spec") or {}).get("schedulingGates") or []
            if not any(g.get("name") == SCHEDULING_GATE for g in gates):
                return
            remaining = [g for g in gates if g.get("name") != SCHEDULING_GATE]
            # A JSON patch (the cache keeps only part of each pod, so no PUT); naming the
            # resourceVersion makes it conditional: a changed pod answers 409.
            patch = [{"op": "replace", "path": "/metadata/resourceVersion", "value": meta(current)["resourceVersion"]},
                     {"op": "replace", "path": "/spec/schedulingGates", "value": remaining} if remaining
                     else {"op": "remove", "path": "/spec/schedulingGates"}]
            namespace, name = key.split("/", 1)
            self.pods.observe(self.api.patch(PODS, name, patch, namespace, patch_type="application/json-patch+json"))
            log.info("removed scheduling gate", pod=key)

        self._write_resolving_conflicts(PODS, key, pod, lift_gate, observe=None)

    def _refuse(self, pod: JsonObject, claims: Iterable[JsonObject], reason: str, kind: str) -> None:
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
                self.events.record(claim, "Warning", REASON_FAILED, reason)
            self.events.record(pod, "Warning", REASON_FAILED, reason)
        self.queue.add_after(("pod", key), self.settings.retry_refused_after_s)

    # ------------------------------------------------------------------ claim sync: deallocate

    def _pods_using(self, key: str) -> list[JsonObject]:
        """The cached pods that reference the claim (through spec, status or ownership)."""
        with self.lock:
            users = set(self._claim_users.get(key, ()))
            owner = self._claim_owner.get(key)
            if owner and owner in self._pod_key:
                users.add(self._pod_key[owner])
        return [pod for pod in (self.pods.get(user) for user in users) if pod is not None]

    def _live_reservations(self, claim: Mapping[str, Any]) -> bool:
        """Whether a pod that still exists and has not finished holds a reservation."""
        for entry in reserved_for(claim):
            with self.lock:
                pod_key = self._pod_key.get(entry.get("uid", ""))
            if pod_key and _pod_alive(self.pods.get(pod_key)):
                return True
        return False

    def _sync_claim(self, key: str) -> None:
        """Deallocate a claim of ours that nothing uses or will use, and drop our finalizer.

        In use = reserved by a live pod, or referenced by a live pod already bound to a node (the
        pod watch can run ahead of the claim watch: a pod is bound only after its claims were
        reserved, so a bound pod's claim is never treated as free). Needed = a pending pod
        references it (unless the claim is being deleted).
        """
        claim = self.claims.get(key)
        if claim is None or not has_finalizer(claim):
            return
        uid = meta(claim)["uid"]
        with self.lock:
            if uid in self._in_flight:
                return
        deleting = bool(meta(claim).get("deletionTimestamp"))
        users = self._pods_using(key)
        if self._live_reservations(claim) or any(
                _pod_alive(p) and (p.get("spec") or {}).get("nodeName") for p in users):
            return
        if not deleting and any(_pod_pending(p) for p in users):
            return
        if allocation(claim) and _is_our_allocation(claim):
            self._clear_allocation(key, uid)
        self._drop_finalizer(key, uid)

    def _clear_allocation(self, key: str, uid: str) -> None:
        def clear(claim: JsonObject) -> None:
            if meta(claim).get("uid") != uid or not allocation(claim):
                return
            self._patch_status(claim, {"allocation": None, "reservedFor": None, "devices": None})
            self.metrics.deallocations.inc()
            log.info("deallocated", claim=key)

        with self.lock:
            self._clearing.add(uid)
        try:
            self._write_resolving_conflicts(RESOURCE_CLAIMS, key, self.claims.get(key), clear,
                                            observe=self.claims.observe)
        finally:
            with self.lock:
                self._clearing.discard(uid)

    def _drop_finalizer(self, key: str, uid: str) -> None:
        def drop(claim: JsonObject) -> None:
            if meta(claim).get("uid") != uid or not has_finalizer(claim):
                return
            if allocation(claim) and _is_our_allocation(claim):
                return  # never leave an allocation of ours without our finalizer
            self._patch_finalizers(claim, [f for f in meta(claim).get("finalizers") or [] if f != FINALIZER])

        self._write_resolving_conflicts(RESOURCE_CLAIMS, key, self.claims.get(key), drop, observe=self.claims.observe)

    # ------------------------------------------------------------------ metrics view

    def allocation_view(self) -> tuple[list[GpuView], list[ClaimView]]:
        """Per-GPU and per-claim allocation as booked now."""
        gpus: list[GpuView] = []
        claims: list[ClaimView] = []
        with self.lock:
            for node in self.ledger.node_names():
                for candidate in self.ledger.candidates(node):
                    holders = self.ledger.holders(node, candidate.name)
                    gpus.append(GpuView(node, candidate.name, candidate.device.uuid, candidate.device.memory_bytes,
                                        candidate.used_memory_bytes, candidate.used_cores, len(holders)))
                    for uid, (memory, cores) in holders.items():
                        claim_key = self._claim_names.get(uid, f"?/{uid}")
                        namespace, _, claim_name = claim_key.partition("/")
                        claims.append(ClaimView(namespace, claim_name, node, candidate.name, memory, cores))
        return gpus, claims


def _selector_errors(requests: Iterable[Any]) -> str:
    """Selector evaluation errors seen for these requests, for a refusal message ('' if none):
    a GPU a selector failed on did not match, and the user should learn why."""
    errors: list[str] = []
    for claim in requests:
        for request in claim.requests:
            for error in getattr(request.selector, "errors", ()):
                if error not in errors:
                    errors.append(error)
    return f" ({'; '.join(errors[:3])})" if errors else ""


def _is_our_allocation(claim: Mapping[str, Any]) -> bool:
    found = allocation(claim) or {}
    return any(r.get("driver") == DRIVER_NAME for r in (found.get("devices") or {}).get("results") or [])


def _rejects(claim: JsonObject, classes: Mapping[str, JsonObject], policy: PlacementPolicy) -> bool:
    try:
        claim_request(claim, classes)
        claim_policy(claim, policy)
    except ClaimRejected:
        return True
    return False


class _LedgerCapacity(Mapping[tuple[str, str], tuple[int, int]]):
    """(pool, device) → (memory, cores) of GPUs the ledger knows (pool = node name)."""

    def __init__(self, ledger: Ledger):
        self._ledger = ledger

    def __getitem__(self, key: tuple[str, str]) -> tuple[int, int]:
        state = self._ledger.node(key[0])
        if state is None or key[1] not in state.index:
            raise KeyError(key)
        gpu = state.gpus[state.index[key[1]]]
        return gpu.memory_bytes, gpu.cores

    def __iter__(self):  # type: ignore[override]
        return iter(())

    def __len__(self) -> int:
        return 0
