"""Every write the allocation controller makes: conditional patches, re-read and retried on conflict.

Claims are never written back whole. A real API server keeps opaque parameters as the bytes it was
sent, so a re-serialised spec reads as a change to an immutable field (422); so finalizers change
through a merge patch of the metadata alone and allocations (and deallocations) through a merge
patch of the status subresource. Each patch names the resourceVersion it was computed from, which
makes it fail with 409 when the object changed since; `ClaimWriter.resolve_conflicts` then
re-reads the object and runs the attempt again, up to ``write_retries`` times. The one exception,
a claim whose parameters were not stored compact, is in `ClaimWriter._put_finalizers_verbatim`.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import structlog

from vgpu_dra.api.names import DRIVER_NAME, FINALIZER, SCHEDULING_GATE
from vgpu_dra.driver.allocation_request import Placement
from vgpu_dra.driver.allocation_status import allocation_status
from vgpu_dra.driver.claim_model import allocated_node, allocation, has_finalizer, meta

from .informer import Informer
from .kubeapi import PODS, RESOURCE_CLAIMS, ApiError, JsonObject, KubeApi
from .metrics import ControllerMetrics

log = structlog.get_logger(__name__)

PERMANENT_WRITE_ERRORS = (400, 403, 422)
"""Write failures that repeat until someone acts (bad request, missing RBAC, invalid object)."""


class Abandon(Exception):
    """The claim changed under us in a way that ends this write (deleted, allocated elsewhere)."""


def is_our_allocation(claim: Mapping[str, Any]) -> bool:
    """Whether the claim's allocation has results of this driver."""
    found = allocation(claim) or {}
    return any(r.get("driver") == DRIVER_NAME for r in (found.get("devices") or {}).get("results") or [])


class ClaimWriter:
    """The controller's writes to claims and pods, each conditional and conflict-resolving."""

    def __init__(self, api: KubeApi, claims: Informer, pods: Informer, metrics: ControllerMetrics,
                 write_retries: int):
        self.api = api
        self.claims = claims
        self.pods = pods
        self.metrics = metrics
        self.write_retries = write_retries

    def write_allocation(self, key: str, uid: str, placement: Placement, classes: Mapping[str, JsonObject],
                         pod: JsonObject | None = None) -> None:
        """Our finalizer (when missing), then the claim's allocation, reserved for `pod` in the same
        write; `Abandon` when the claim was deleted, replaced or allocated by someone else meanwhile.

        Reserving here saves kube-scheduler its own status write before it binds (it skips claims
        already reserved for the pod it binds), lets a pod that names its node itself start (the
        kubelet runs only pods a claim is reserved for), and keeps kube-scheduler from deallocating
        our allocation when the pod does not fit the node for other reasons (it frees only claims
        nobody reserved). kube-controller-manager drops the entry when the pod goes away."""
        def attempt(claim: JsonObject) -> None:
            if meta(claim).get("uid") != uid:
                raise Abandon("claim was deleted or replaced")
            if allocation(claim):
                raise Abandon(f"claim got allocated by someone else in the meantime (node {allocated_node(claim)})")
            if meta(claim).get("deletionTimestamp"):
                if has_finalizer(claim):
                    # Added by an earlier try of this write, which the deletion then outran: with
                    # no allocation it protects nothing, and would hold the claim forever.
                    self.patch_finalizers(claim, [f for f in meta(claim).get("finalizers") or [] if f != FINALIZER])
                raise Abandon("claim is being deleted")
            if not has_finalizer(claim):
                claim = self.patch_finalizers(claim, [*(meta(claim).get("finalizers") or []), FINALIZER])
            status: JsonObject = {"allocation": allocation_status(claim, classes, placement.node,
                                                                  placement.claim(uid))}
            if pod is not None and not (claim.get("status") or {}).get("reservedFor"):
                status["reservedFor"] = [{"resource": "pods", "name": meta(pod)["name"], "uid": meta(pod)["uid"]}]
            self.patch_status(claim, status)

        if not self.resolve_conflicts(RESOURCE_CLAIMS, key, self.claims.get(key), attempt,
                                      observe=self.claims.observe):
            raise Abandon("claim was deleted")

    def clear_allocation(self, key: str, uid: str) -> None:
        """Deallocate a claim of ours: allocation, reservations and device status go."""
        def clear(claim: JsonObject) -> None:
            if meta(claim).get("uid") != uid or not allocation(claim):
                return
            self.patch_status(claim, {"allocation": None, "reservedFor": None, "devices": None})
            self.metrics.deallocations.inc()
            log.info("deallocated", claim=key)

        self.resolve_conflicts(RESOURCE_CLAIMS, key, self.claims.get(key), clear, observe=self.claims.observe)

    def drop_finalizer(self, key: str, uid: str, *, allocation_goes_with_claim: bool = False) -> None:
        """Remove our finalizer, never from a claim that still holds an allocation of ours, except
        (`allocation_goes_with_claim`) from one being deleted: the API server removes it with our
        finalizer, allocation and all, and the caller has checked that no live pod uses it."""
        def drop(claim: JsonObject) -> None:
            if meta(claim).get("uid") != uid or not has_finalizer(claim):
                return
            ours = bool(allocation(claim)) and is_our_allocation(claim)
            ends_with_claim = allocation_goes_with_claim and bool(meta(claim).get("deletionTimestamp"))
            if ours and not ends_with_claim:
                return  # never leave an allocation of ours without our finalizer
            self.patch_finalizers(claim, [f for f in meta(claim).get("finalizers") or [] if f != FINALIZER])
            if ours:
                self.metrics.deallocations.inc()
                log.info("deallocated with the claim's deletion", claim=key)

        self.resolve_conflicts(RESOURCE_CLAIMS, key, self.claims.get(key), drop, observe=self.claims.observe)

    def lift_gate(self, key: str, pod: JsonObject) -> None:
        """Remove our scheduling gate from the pod, when it has it."""
        def lift(current: JsonObject) -> None:
            gates = (current.get("spec") or {}).get("schedulingGates") or []
            if not any(g.get("name") == SCHEDULING_GATE for g in gates):
                return
            remaining = [g for g in gates if g.get("name") != SCHEDULING_GATE]
            # A JSON patch (the cache keeps only part of each pod, so no PUT), conditional on the
            # gates alone: a `test` of the list read, not the resourceVersion, which
            # kube-controller-manager's status write of the pod's claims has usually moved on
            # since the pod was cached (a 409, a re-read and a second patch on every pod's path
            # to kube-scheduler). A failed test answers 422: re-read and try again.
            patch = [{"op": "test", "path": "/spec/schedulingGates", "value": gates},
                     {"op": "replace", "path": "/spec/schedulingGates", "value": remaining} if remaining
                     else {"op": "remove", "path": "/spec/schedulingGates"}]
            namespace, name = key.split("/", 1)
            try:
                updated = self.api.patch(PODS, name, patch, namespace, patch_type="application/json-patch+json")
            except ApiError as exc:
                if exc.status != 422:
                    raise
                raise ApiError(409, "Conflict", f"pod {key}: its scheduling gates changed since read") from exc
            self.pods.observe(updated)
            log.info("removed scheduling gate", pod=key)

        self.resolve_conflicts(PODS, key, pod, lift, observe=None)

    def nominate_node(self, key: str, node: str) -> None:
        """Write `node`, where the pod's claims are allocated, as its ``status.nominatedNodeName``.

        kube-scheduler (1.35 and later) nominates a pod's node before a binding that has work to
        do, any pod with claims included, and skips that write when the pod already names the node:
        written here, in parallel with the allocation, it takes one write off the pod's way to its
        binding; the scheduler also tries the nominated node before all the others. A merge patch
        of the status alone, unconditional: no other writer sets this field on a gated pod, and a
        conflict would only delay a hint."""
        namespace, name = key.split("/", 1)
        self.api.patch(PODS, name, {"status": {"nominatedNodeName": node}}, namespace, subresource="status")

    def patch_finalizers(self, claim: JsonObject, finalizers: list[str]) -> JsonObject:
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

    def patch_status(self, claim: JsonObject, status: JsonObject) -> JsonObject:
        """Merge `status` (None removes a field) into the claim's status subresource, conditional
        on the resourceVersion read."""
        patch = {"metadata": {"resourceVersion": meta(claim)["resourceVersion"]}, "status": status}
        updated = self.api.patch(RESOURCE_CLAIMS, meta(claim)["name"], patch, meta(claim).get("namespace"),
                                 subresource="status")
        self.claims.observe(updated)
        return updated

    def resolve_conflicts(self, resource: str, key: str, current: JsonObject | None,
                          attempt: Callable[[JsonObject], None], *,
                          observe: Callable[[JsonObject], None] | None) -> bool:
        """Run `attempt` (checks, then writes) on the newest copy of an object, re-reading it after
        each 409. False when the object is gone (404, or never cached); ApiError 409 when conflicts
        outlast the retries, so the work item is retried later with backoff."""
        namespace, name = key.split("/", 1)
        for _ in range(self.write_retries):
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
        raise ApiError(409, "Conflict", f"{key}: still conflicting after {self.write_retries} attempts")
