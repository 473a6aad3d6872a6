"""One leadership term of the allocation controller: caches, ledger, work queue, workers.

Everything here is created when the replica becomes leader and dropped when it stops leading, so
a new term always starts from a full list (the ledger is rebuilt from every claim's allocation,
ours and anybody else's) and nothing is allocated before that first full sync.

Work items are ``("pod", namespace/name)`` — allocate a pending pod's claims — and
``("claim", namespace/name)`` — finalizer and deallocation housekeeping of one claim.

Split by concern: this module holds the lifecycle, the watch handlers and the indexes they keep,
and deallocation; `pod_sync.PodSync` (mixed in) the allocation of pending pods;
`quota_gate.QuotaGate` (mixed in) namespace GPU quotas; `claim_writes` every write to the API
server; `pod_view` what is read of a pod.

Bookkeeping invariant: the ledger holds, per claim UID, exactly what the cached claim's allocation
consumes — except while this controller is writing an allocation (`_in_flight`), when it holds the
placement being written, so no concurrent decision can hand out the same capacity.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import structlog

from vgpu_dra.api.names import DRIVER_NAME
from vgpu_dra.driver.claim_model import (EXCLUSIVE_MEMORY_BYTES, allocated_node, allocation, booked_consumptions,
                                         has_finalizer, meta, reserved_for)
from vgpu_dra.driver.ledger import Ledger
from vgpu_dra.driver.namespace_quota import NamespaceQuota
from vgpu_dra.driver.namespace_usage import NamespacedLedger
from vgpu_dra.driver.placement_policy import PlacementPolicy
from vgpu_dra.driver.published_gpus import gpus_by_node

from .claim_writes import ClaimWriter, is_our_allocation
from .events import EventRecorder
from .informer import Informer
from .kubeapi import (DEVICE_CLASSES, NODES, PODS, RESOURCE_CLAIMS, RESOURCE_QUOTAS, RESOURCE_SLICES, ApiError,
                      JsonObject, KubeApi)
from .metrics import ClaimView, ControllerMetrics, GpuView
from .pod_sync import PodSync
from .pod_view import pod_alive, pod_awaits_claims, pod_essentials, pod_pending
from .quota_gate import QuotaGate
from .workqueue import WorkQueue

log = structlog.get_logger(__name__)

POD_CLAIM_ANNOTATION = "resource.kubernetes.io/pod-claim-name"
"""Set by kube-controller-manager on claims it generates from a pod's template reference."""

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
    # How long a claim whose owning pod is gone waits for the garbage collector to delete it
    # before the controller deallocates it itself.
    owner_gone_grace_s: float = 10.0
    # Write each pod's nominatedNodeName, in parallel with its allocation (`ClaimWriter.nominate_node`),
    # and how long its gate waits for that write at most (0: not at all).
    nominate_node: bool = True
    nomination_wait_s: float = 1.0


class AllocationTerm(PodSync, QuotaGate):
    """Runs the controller for one leadership term; `run(stop)` returns when `stop` is set."""

    def __init__(self, api: KubeApi, settings: TermSettings, metrics: ControllerMetrics, events: EventRecorder):
        self.api = api
        self.settings = settings
        self.metrics = metrics
        self.events = events
        self.lock = threading.RLock()
        # Books per namespace too (quotas); a claim UID's namespace is that of its cached key.
        self.ledger = NamespacedLedger(lambda uid: (self._claim_names.get(uid) or "/").partition("/")[0] or None)
        self.ready = threading.Event()
        self.queue = WorkQueue()
        timeout = settings.watch_timeout_s
        self.slices = Informer(api, RESOURCE_SLICES, self._on_slice, watch_timeout_s=timeout,
                               field_selector=f"spec.driver={DRIVER_NAME}")
        self.claims = Informer(api, RESOURCE_CLAIMS, self._on_claim, watch_timeout_s=timeout)
        self.classes = Informer(api, DEVICE_CLASSES, self._on_class, watch_timeout_s=timeout)
        self.pods = Informer(api, PODS, self._on_pod, watch_timeout_s=timeout, transform=pod_essentials)
        self.nodes = Informer(api, NODES, self._on_node, watch_timeout_s=timeout)
        self.quotas = Informer(api, RESOURCE_QUOTAS, self._on_quota, watch_timeout_s=timeout)
        self.informers = (self.slices, self.classes, self.nodes, self.quotas, self.claims, self.pods)
        self.writer = ClaimWriter(api, self.claims, self.pods, metrics, settings.write_retries)
        # The nominations run beside the allocations' writes (one per worker at most).
        self.nominations = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="nominate")
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
        self._owner_gone_since: dict[str, float] = {}    # claim uid -> when its owning pod was found gone
        self._pending_claims: set[str] = set()           # claim keys of pending pods not yet allocated
        self._unsized: dict[str, set[str]] = {}          # node -> claims booked whole-GPU before its slices
        self._node_generation = 0                        # bumped when a Node's labels/spec change
        self._fit_cache: dict[str, tuple[int, frozenset[str]]] = {}  # pod constraints -> allowed nodes
        self._quotas: dict[str, NamespaceQuota] = {}     # namespace -> its GPU quota (where it has one)
        self._nominating: dict[str, tuple[Future[None], float]] = {}  # pod uid -> its nomination, gate deadline

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
        self.nominations.shutdown(wait=True, cancel_futures=True)
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
                if pod_awaits_claims(pod):
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
                self._owner_gone_since.pop(booked, None)
                self._booked_uid.pop(key, None)
                self._claim_names.pop(booked, None)
                self._drop_owner(key)
            if current is not None and uid:
                self._claim_names[uid] = key  # before booking: the ledger counts it in this namespace
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
                    if pod_pending(pod):
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
                    self._nominating.pop(uid, None)
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
                if pod_pending(current):
                    if uid not in self._finished:
                        self._first_seen.setdefault(uid, time.monotonic())
                else:
                    self._first_seen.pop(uid, None)
                    to_check |= set(claim_keys) | set(previous_claims)
        for claim_key in to_check:
            self.queue.add(("claim", claim_key))
        if current is not None and pod_awaits_claims(current):
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
            if pod_key and pod_alive(self.pods.get(pod_key)):
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
                pod_alive(p) and (p.get("spec") or {}).get("nodeName") for p in users):
            return
        if not deleting and any(pod_pending(p) for p in users):
            return
        if deleting:
            # The allocation goes with the claim: one write (the finalizer) instead of a status
            # write first, which raced kube-controller-manager's own status write dropping the
            # dead pod from reservedFor (a 409 for one of the two on most claims of a deleted
            # pod). The ledger frees the booking when the claim's deletion is seen.
            self.writer.drop_finalizer(key, uid, allocation_goes_with_claim=True)
            return
        if self._awaiting_garbage_collection(key, uid):
            return
        if allocation(claim) and is_our_allocation(claim):
            self._clear_allocation(key, uid)
        self.writer.drop_finalizer(key, uid)

    def _awaiting_garbage_collection(self, key: str, uid: str) -> bool:
        """True while a claim whose owning pod is gone (a template's claim) waits for the garbage
        collector, which deletes it moments after the pod: deallocating it now would be two more
        writes racing kube-controller-manager's. After `owner_gone_grace_s` without the deletion
        (no garbage collector running, or the claim was orphaned) the controller releases it."""
        with self.lock:
            owner = self._claim_owner.get(key)
            if not owner or owner in self._pod_key:
                self._owner_gone_since.pop(uid, None)
                return False
            since = self._owner_gone_since.setdefault(uid, time.monotonic())
        waited = time.monotonic() - since
        if waited < self.settings.owner_gone_grace_s:
            self.queue.add_after(("claim", key), self.settings.owner_gone_grace_s - waited)
            return True
        log.warning("the claim's pod is gone but the claim was not deleted; releasing it", claim=key,
                    waited_s=round(waited, 1))
        return False

    def _clear_allocation(self, key: str, uid: str) -> None:
        with self.lock:
            self._clearing.add(uid)  # our own deallocation is not a wipe by the scheduler
        try:
            self.writer.clear_allocation(key, uid)
        finally:
            with self.lock:
                self._clearing.discard(uid)

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
