"""`vgpu-dra plan` without the printing: manifests + node inventories → a `Plan`. Pure.

It does what the allocation controller would do with the same objects, in file order:

1. every ResourceClaim and ResourceClaimTemplate is turned into the allocator's terms once, with
   the controller's own rules (`vgpu_dra.driver.claim_model.claim_request`: DeviceClass
   config < claim config < capacity requests, CEL selectors compiled), so a claim the controller
   would reject is an input error here too;
2. workloads expand into pods (``replicas`` / ``parallelism``); each pod gets its own claim from
   each template it names (``<pod>-<podClaimName>``) and shares standalone ResourceClaims;
3. pods are placed one by one with `allocate` on a ledger of the inventories' GPUs (published
   exactly as the kubelet plugin would publish them); a claim already placed for an earlier pod
   is not placed again and pins the pod to its node; a pod that does not fit gets the refusal.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from vgpu_dra.driver.claim_model import ClaimRejected
from vgpu_dra.driver.claim_requests import claim_policy, claim_request
from vgpu_dra.driver.published_gpus import SliceDeviceError, gpu_from_device
from vgpu_dra.driver.allocation_request import selector_errors
from vgpu_dra.driver.allocator import (ClaimRequest, Placement, PlacementPolicy, PodRequest, Refusal, RefusalKind,
                                       allocate)
from vgpu_dra.driver.devices import publishable_gpus, to_device
from vgpu_dra.driver.inventory import NodeInventory
from vgpu_dra.driver.ledger import Ledger
from vgpu_dra.driver.manifests import ClaimRecord, ClaimTemplateRecord, Manifests, PodClaimRef, Source, WorkloadRecord

JsonObject = dict[str, Any]


class PlanInputError(ValueError):
    """Inputs that cannot be planned (a dangling reference, a claim the controller would reject);
    the message names the file and the object."""


@dataclass(frozen=True, slots=True)
class PlannedShare:
    """One claim's share of one GPU, and the pods using that claim."""

    claim: str
    request: str
    memory_bytes: int
    cores: int
    pods: tuple[str, ...]
    workloads: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class GpuPlan:
    """One GPU after planning: capacity, use, and the shares on it."""

    node: str
    device: str
    uuid: str
    product: str
    memory_bytes: int
    memory_used_bytes: int
    cores: int
    cores_used: int
    shares: tuple[PlannedShare, ...]

    @property
    def memory_free_bytes(self) -> int:
        return max(0, self.memory_bytes - self.memory_used_bytes)

    @property
    def cores_free(self) -> int:
        return max(0, self.cores - self.cores_used)


@dataclass(frozen=True, slots=True)
class PodPlan:
    """Where one pod went (``node``) or why it could not (``refusal``)."""

    namespace: str
    name: str
    workload: str
    claims: tuple[str, ...]
    node: str | None = None
    refusal: Refusal | None = None

    @property
    def placed(self) -> bool:
        return self.node is not None


@dataclass(frozen=True, slots=True)
class Plan:
    """The outcome for every GPU and every pod."""

    policy: PlacementPolicy
    gpus: tuple[GpuPlan, ...]
    pods: tuple[PodPlan, ...]
    skipped: tuple[str, ...] = field(default=())

    @property
    def refused(self) -> tuple[PodPlan, ...]:
        return tuple(pod for pod in self.pods if not pod.placed)


def ledger_from_inventories(inventories: Sequence[NodeInventory]) -> Ledger:
    """A ledger of the GPUs the kubelet plugin would publish for these nodes (MIG and tiny GPUs skipped)."""
    ledger = Ledger()
    seen: set[str] = set()
    for inventory in inventories:
        if inventory.node_name in seen:
            raise PlanInputError(f"node {inventory.node_name} appears in more than one inventory")
        seen.add(inventory.node_name)
        try:
            gpus = [gpu_from_device(to_device(gpu, allow_multiple_allocations=True))
                    for gpu in publishable_gpus(inventory)]
        except (SliceDeviceError, ValueError) as exc:
            raise PlanInputError(f"node {inventory.node_name}: {exc}") from None
        ledger.set_node(inventory.node_name, gpus)
    return ledger


def plan(manifests: Manifests, inventories: Sequence[NodeInventory], policy: PlacementPolicy = PlacementPolicy(),
         *, default_classes: Sequence[JsonObject] = ()) -> Plan:
    """Place every pod of ``manifests`` on ``inventories``; raises `PlanInputError` on bad input.

    ``default_classes`` are DeviceClasses used when the manifests do not define one of that name
    (`vgpu-dra plan` passes the built-in examples).
    """
    classes: dict[str, JsonObject] = {c["metadata"]["name"]: c for c in default_classes}
    classes.update({record.name: record.raw for record in manifests.device_classes})
    ledger = ledger_from_inventories(inventories)
    planner = _Planner(manifests, classes, ledger, policy)
    pods = planner.run()
    return Plan(policy, planner.gpu_plans(), tuple(pods), manifests.skipped)


@dataclass
class _PlacedClaim:
    node: str
    shares: list[tuple[str, str, int, int]]  # (request, device, memory, cores)
    pods: list[str]
    workloads: list[str]


class _Planner:
    def __init__(self, manifests: Manifests, classes: Mapping[str, JsonObject], ledger: Ledger,
                 policy: PlacementPolicy):
        self.ledger = ledger
        self.policy = policy
        self.classes = classes
        self.templates = {t.key: t for t in manifests.claim_templates}
        self.claims = {c.key: c for c in manifests.claims}
        self.workloads = manifests.workloads
        self.placed: dict[str, _PlacedClaim] = {}
        self.raw_claims: dict[str, JsonObject] = {}
        # Validate every claim and template up front: bad input is an error even if unused.
        self.claim_requests = {key: self._request(self._keyed(record), record.source, f"ResourceClaim {key}")
                               for key, record in self.claims.items()}
        for key, template in self.templates.items():
            self._request(self._stamp(template, template.name), template.source, f"ResourceClaimTemplate {key}")

    def _request(self, raw: JsonObject, source: Source, what: str) -> ClaimRequest:
        try:
            claim_policy(raw, self.policy)
            request = claim_request(raw, self.classes)
        except ClaimRejected as exc:
            raise PlanInputError(f"{source}: {what}: {exc}") from None
        self.raw_claims[request.key] = raw
        return request

    @staticmethod
    def _keyed(record: ClaimRecord) -> JsonObject:
        # The ledger keys claims by UID; files have none, namespace/name is unique among them.
        raw = dict(record.raw)
        raw["metadata"] = {**record.raw.get("metadata", {}), "uid": record.key}
        return raw

    @staticmethod
    def _stamp(template: ClaimTemplateRecord, claim_name: str) -> JsonObject:
        key = f"{template.namespace}/{claim_name}"
        return {"metadata": {"name": claim_name, "namespace": template.namespace, "uid": key,
                             "labels": dict(template.claim_labels), "annotations": dict(template.claim_annotations)},
                "spec": template.claim_spec}

    def run(self) -> list[PodPlan]:
        pods = []
        for workload in self.workloads:
            for replica in range(workload.replicas):
                name = workload.name if workload.kind == "Pod" else f"{workload.name}-{replica}"
                pod = self._place(workload, name)
                if pod is not None:
                    pods.append(pod)
        return pods

    def _claims_of(self, workload: WorkloadRecord, pod: str) -> list[tuple[str, ClaimRequest]]:
        found = []
        for ref in workload.pod.claims:
            found.append(self._resolve(workload, pod, ref))
        return found

    def _resolve(self, workload: WorkloadRecord, pod: str, ref: PodClaimRef) -> tuple[str, ClaimRequest]:
        where = f"{workload.source}: {workload.label}: resourceClaims {ref.name!r}"
        if ref.claim_name is not None:
            key = f"{workload.namespace}/{ref.claim_name}"
            if key not in self.claims:
                raise PlanInputError(f"{where} names ResourceClaim {key}, which none of the given files defines")
            return key, self.claim_requests[key]
        key = f"{workload.namespace}/{ref.template_name}"
        template = self.templates.get(key)
        if template is None:
            raise PlanInputError(f"{where} names ResourceClaimTemplate {key}, which none of the given files defines")
        claim_name = f"{pod}-{ref.name}"
        request = self._request(self._stamp(template, claim_name), template.source, f"ResourceClaimTemplate {key}")
        return f"{workload.namespace}/{claim_name}", request

    def _place(self, workload: WorkloadRecord, pod: str) -> PodPlan | None:
        claims = self._claims_of(workload, pod)
        if not claims:
            return None  # a pod without claims needs no GPU
        keys = tuple(key for key, _ in claims)
        pod_label = f"{workload.namespace}/{pod}"
        outcome = functools.partial(PodPlan, workload.namespace, pod, workload.label, keys)
        pinned = {self.placed[key].node for key in keys if key in self.placed}
        if len(pinned) > 1:
            return outcome(refusal=Refusal(f"its claims are already allocated on different nodes ({', '.join(sorted(pinned))}); "
                                           "a pod's claims must share one node", RefusalKind.NO_NODE))
        allowed = set(pinned) if pinned else None
        for wanted in (workload.pod.node_name, workload.pod.hostname_selector):
            if wanted is not None:
                allowed = {wanted} if allowed is None else allowed & {wanted}
        pending = tuple(dataclasses.replace(request, key=key, label=key)
                        for key, request in claims if key not in self.placed)
        if not pending:
            node = next(iter(pinned))
            if allowed is not None and node not in allowed:
                return outcome(refusal=Refusal(f"its claims are allocated on {node}, where the pod may not run",
                                               RefusalKind.NO_NODE))
            self._add_users(keys, pod_label, workload.label)
            return outcome(node=node)
        request = PodRequest(claims=pending, allowed_nodes=None if allowed is None else frozenset(allowed),
                             label=pod_label)
        # Like the controller: the first claim whose annotations override the policy decides.
        policy = next((p for claim in pending
                       if (p := claim_policy(self.raw_claims[claim.key], self.policy)) != self.policy), self.policy)
        decision = allocate(self.ledger, request, policy)
        if isinstance(decision, Refusal):
            errors = selector_errors(pending)
            if errors:  # a GPU a CEL selector failed on did not match: say why, as the controller does
                decision = dataclasses.replace(decision, reason=f"{decision.reason} ({'; '.join(errors)})")
            return outcome(refusal=decision)
        self._book(decision)
        self._add_users(keys, pod_label, workload.label)
        return outcome(node=decision.node)

    def _book(self, placement: Placement) -> None:
        self.ledger.apply(placement)
        for claim in placement.claims:
            shares = [(request, item.device.name, item.share.memory_bytes, item.share.cores)
                      for request, items in claim.requests for item in items]
            self.placed[claim.key] = _PlacedClaim(placement.node, shares, [], [])

    def _add_users(self, keys: Sequence[str], pod: str, workload: str) -> None:
        for key in keys:
            placed = self.placed[key]
            placed.pods.append(pod)
            if workload not in placed.workloads:
                placed.workloads.append(workload)

    def gpu_plans(self) -> tuple[GpuPlan, ...]:
        on_device: dict[tuple[str, str], list[PlannedShare]] = {}
        for key, placed in self.placed.items():
            for request, device, memory, cores in placed.shares:
                on_device.setdefault((placed.node, device), []).append(
                    PlannedShare(key, request, memory, cores, tuple(placed.pods), tuple(placed.workloads)))
        gpus = []
        for node in self.ledger.node_names():
            for candidate in self.ledger.candidates(node):
                gpus.append(GpuPlan(node, candidate.name, candidate.device.uuid, candidate.device.product_name,
                                    candidate.device.memory_bytes, candidate.used_memory_bytes,
                                    candidate.device.cores, candidate.used_cores,
                                    tuple(on_device.get((node, candidate.name), ()))))
        return tuple(gpus)
