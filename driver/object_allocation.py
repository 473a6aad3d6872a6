"""The controller's allocation decision as pure data, in the API server's own JSON shapes.

    allocate_objects(resource_slices, device_classes, claims, allocated_claims=..., allowed_nodes=...)
        -> ObjectAllocation(node, allocations={"namespace/name": status.allocation}, refusal, refusal_kind)

What the allocation controller does for one pending pod, without a cluster: ResourceSlices →
the GPUs of each node (newest pool generation), every already allocated claim → what it books,
the pod's unallocated claims (ResourceClaim objects naming controller DeviceClasses) → one
decision → for each claim the exact ``status.allocation`` the controller would write, or the
refusal the controller would put in its Event. Same code path as the controller
(`claim_requests.claim_request`, `allocator.allocate`, `allocation_status.allocation_status`), so
a test can feed the same objects to kube-scheduler and to this function and compare: both
allocate or both refuse, and each allocation here is a valid claim status for the API server.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vgpu_dra.driver.allocation_request import ClaimRequest, PodRequest, Refusal, selector_errors
from vgpu_dra.driver.allocation_status import allocation_status
from vgpu_dra.driver.allocator import allocate
from vgpu_dra.driver.claim_model import ClaimRejected, allocation, booked_consumptions, claim_label, meta
from vgpu_dra.driver.claim_requests import claim_policy, claim_request
from vgpu_dra.driver.ledger import Ledger
from vgpu_dra.driver.placement_policy import PlacementPolicy
from vgpu_dra.driver.published_gpus import gpus_by_node

JsonObject = dict[str, Any]


@dataclass(frozen=True)
class ObjectAllocation:
    """One pod's outcome: the node and each claim's ``status.allocation``, or why not."""

    node: str | None
    allocations: Mapping[str, JsonObject] = field(default_factory=dict)
    """``namespace/name`` of each claim → the ``status.allocation`` the controller writes."""
    refusal: str | None = None
    """The sentence of the controller's ``AllocationFailed`` Event."""
    refusal_kind: str | None = None
    """The controller's refusal metric label (`RefusalKind` value, or ``invalid-claim``)."""

    @property
    def allocated(self) -> bool:
        return self.node is not None


def ledger_from_objects(resource_slices: Iterable[Mapping[str, Any]],
                        allocated_claims: Iterable[Mapping[str, Any]] = ()) -> Ledger:
    """A ledger of the published GPUs with every allocated claim booked, as the controller keeps it."""
    ledger = Ledger()
    capacity: dict[tuple[str, str], tuple[int, int]] = {}
    for node, found in gpus_by_node(resource_slices).items():
        ledger.set_node(node, found.gpus)
        capacity.update({(found.pool, gpu.name): (gpu.memory_bytes, gpu.cores) for gpu in found.gpus})
    for claim in allocated_claims:
        if allocation(claim):
            ledger.record(_key(claim), booked_consumptions(claim, capacity))
    return ledger


def allocate_objects(resource_slices: Iterable[Mapping[str, Any]], device_classes: Iterable[Mapping[str, Any]],
                     claims: Sequence[Mapping[str, Any]], *, allocated_claims: Iterable[Mapping[str, Any]] = (),
                     allowed_nodes: Iterable[str] | None = None, policy: PlacementPolicy = PlacementPolicy(),
                     share_ids: Callable[[], str] | None = None, timestamp: str | None = None) -> ObjectAllocation:
    """Allocate one pod's ``claims`` (ResourceClaim JSON, all to land on one node) on the nodes of
    ``resource_slices`` (ResourceSlice JSON), given ``device_classes`` (DeviceClass JSON) and the
    claims already allocated in the cluster (any allocator's; they book what they consume).

    ``allowed_nodes`` restricts the nodes as the pod's node selection would (None = all);
    ``policy`` is the controller's default (claim annotations override it); ``share_ids`` and
    ``timestamp`` pin the otherwise fresh shareIDs and allocationTimestamp. Never raises for a bad
    claim: that is a refusal, as in the controller.
    """
    classes = {meta(c).get("name", ""): c for c in device_classes}
    ledger = ledger_from_objects(resource_slices, allocated_claims)
    requests: list[ClaimRequest] = []
    chosen = policy
    for claim in claims:
        try:
            request = claim_request({**claim, "metadata": {**meta(claim), "uid": _key(claim)}}, classes)
            claim_chosen = claim_policy(claim, policy)
        except ClaimRejected as exc:
            return ObjectAllocation(None, refusal=f"claim {claim_label(claim)}: {exc}", refusal_kind="invalid-claim")
        requests.append(request)
        if chosen == policy and claim_chosen != policy:
            chosen = claim_chosen  # like the controller: the first claim overriding the policy decides
    pod = PodRequest(tuple(requests), allowed_nodes=None if allowed_nodes is None else frozenset(allowed_nodes))
    decision = allocate(ledger, pod, chosen)
    if isinstance(decision, Refusal):
        errors = selector_errors(requests)
        note = f" ({'; '.join(errors)})" if errors else ""
        return ObjectAllocation(None, refusal=decision.reason + note, refusal_kind=decision.kind.value)
    allocations = {claim_label(claim): allocation_status(claim, classes, decision.node,
                                                         decision.claim(request.key), share_ids=share_ids,
                                                         timestamp=timestamp)
                   for claim, request in zip(claims, requests)}
    return ObjectAllocation(decision.node, allocations)


def _key(claim: Mapping[str, Any]) -> str:
    return meta(claim).get("uid") or claim_label(claim)
