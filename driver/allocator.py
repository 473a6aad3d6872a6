"""The allocator: one pod's claims + a `Ledger` snapshot → a `Placement` or a `Refusal`.

Pure: no I/O, no clock, no randomness, and it never changes the ledger (the caller books a
placement with `Ledger.apply` once it is committed, and `Ledger.release` when the claim is gone).

Public API (stable; the allocation controller and `vgpu-dra plan` build on it):

    allocate(ledger, PodRequest(...), PlacementPolicy(node=..., gpu=...)) -> Placement | Refusal

The request and result types live in `vgpu_dra.driver.allocation_request` (re-exported here):

- `PodRequest`: the ``claims`` of ONE pod (all land on one node), plus the node restrictions the
  caller evaluated: ``allowed_nodes`` (a set, or None for every node), ``node_filter`` (a callable
  on the node name, e.g. nodeSelector/affinity/taints), ``avoid_nodes`` (nodes where the scheduler
  already failed to fit this pod).
- `ClaimRequest`: ``key`` (unique, the ledger key: the claim UID in the controller), its
  ``requests`` — each a `DeviceRequest` or a `FirstAvailable` list of them — and its constraints
  (`MatchAttribute`: same attribute value on every GPU of the listed requests; `DistinctAttribute`:
  pairwise different values; no requests listed = all of them).
- `DeviceRequest`: ``name``, ``share`` (a `vgpu_dra.driver.limits.ShareRequest`: bytes, percent or
  whole GPU, cores), ``count`` of distinct GPUs (≥ 1) or ``all_devices``, ``admin_access``,
  ``tolerations`` and an optional ``selector`` — a predicate on a `GpuCandidate` (the controller
  passes compiled CEL selectors).
- `Placement`: the ``node`` and per claim (`ClaimPlacement`) per request (result name ``req`` or
  ``req/subrequest``) the list of `GpuShare` (the `GpuDevice` and the `ResolvedShare` it gets).
- `Refusal`: ``reason`` (a sentence for a Kubernetes Event), ``kind`` (`RefusalKind`, a stable
  label for metrics) and the claim/request it is about when there is one.

Rules (kube-scheduler's, see docs/controller.md): a GPU never gets more memory or cores than its
capacity, and what a share takes is the request rounded by the GPU's requestPolicy; the ``count``
GPUs of one request are distinct; different requests and claims of the pod may share a GPU;
admin-access shares need room but book nothing; a GPU with a NoSchedule/NoExecute taint takes only
requests that tolerate it. ``firstAvailable`` alternatives are tried in order: the pod gets the
first combination of alternatives (in claim and request order) that fits on any node.

How a placement is found, cheapest first. Nodes are walked in the node policy's order
(`Ledger.nodes_by_free`) and rejected on their summary (largest free memory, free fraction and free
cores on any one GPU, GPU count) before any GPU is looked at; on each node the greedy pass places
requests largest first (`node_search.place_greedy`), and only when it fails on a pod with several
requests that node is searched completely, within a budget (`node_search.place_searching`); the
first node where either succeeds wins, GPUs chosen by the GPU policy. Only a refusal pays for a
wider look, to say what is missing and where the best near-miss is.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence

from vgpu_dra.driver.allocation_refusals import budget_refusal, diagnose
from vgpu_dra.driver.allocation_request import (AllocationInputError, ClaimEntry, ClaimPlacement, ClaimRequest,
                                                DeviceRequest, DistinctAttribute, FirstAvailable, GpuPredicate,
                                                GpuShare, MatchAttribute, Placement, PodRequest, Refusal,
                                                RefusalKind)
from vgpu_dra.driver.ledger import GpuCandidate, GpuDevice, Ledger, NodeState
from vgpu_dra.driver.node_search import (Picks, SearchBudget, needs_search, place_greedy, place_searching)
from vgpu_dra.driver.placement_policy import PlacementPolicy, Policy
from vgpu_dra.driver.prepared_request import Need, SelectorFailed

__all__ = [
    "AllocationInputError", "ClaimPlacement", "ClaimRequest", "DeviceRequest", "DistinctAttribute",
    "FirstAvailable", "GpuCandidate", "GpuDevice", "GpuPredicate", "GpuShare", "Ledger", "MatchAttribute",
    "Placement", "PlacementPolicy", "PodRequest", "Policy", "Refusal", "RefusalKind", "allocate",
]

MAX_ALTERNATIVE_COMBINATIONS = 512
"""firstAvailable combinations (over all the pod's requests) one decision tries at most."""

_FEW_NODES = 64  # below this many possible nodes, rank them directly instead of walking all


def allocate(ledger: Ledger, pod: PodRequest, policy: PlacementPolicy = PlacementPolicy()) -> Placement | Refusal:
    """Place all of one pod's claims on one node, or say why not. Never changes ``ledger``."""
    budget = SearchBudget()
    loose = ledger.has_custom_policies
    first: list[list[Need]] | None = None
    last: list[list[Need]] | None = None
    fallback: Refusal | None = None
    tried = 0
    try:
        for choice in _alternative_choices(pod):
            if tried == MAX_ALTERNATIVE_COMBINATIONS:
                budget.cut_nodes.append("(firstAvailable combinations)")
                break
            tried += 1
            last = _prepare(pod, choice, loose)
            first = first or last
            placed = _place(ledger, pod, last, policy, budget)
            if placed is not None:
                return placed
        assert first is not None and last is not None
        refusal = diagnose(ledger, pod, first, policy.gpu, budget)
        if tried > 1 and refusal.kind is not RefusalKind.SEARCH_BUDGET and not budget.exhausted:
            fallback = diagnose(ledger, pod, last, policy.gpu, budget)
    except SelectorFailed as failure:
        return failure.refusal
    if tried > 1 and refusal.kind is not RefusalKind.SEARCH_BUDGET:
        if budget.exhausted:
            return budget_refusal(budget)
        assert fallback is not None
        names = ", ".join(entry.name for claim in pod.claims for entry in claim.requests
                          if isinstance(entry, FirstAvailable))
        refusal = Refusal(f"no combination of the firstAvailable alternatives of {names} fits ({tried} tried): "
                          f"the first choice, {refusal.reason}; the last, {fallback.reason}", fallback.kind,
                          fallback.claim_key, fallback.request)
    return refusal


def _alternative_choices(pod: PodRequest) -> Iterator[tuple[int, ...]]:
    """Which alternative each firstAvailable request takes, most preferred first (lexicographic in
    claim and request order, as kube-scheduler's search meets them)."""
    sizes = [len(entry.alternatives) for claim in pod.claims for entry in claim.requests
             if isinstance(entry, FirstAvailable)]
    return itertools.product(*(range(size) for size in sizes))


def _prepare(pod: PodRequest, choice: tuple[int, ...], loose: bool) -> list[list[Need]]:
    picks = iter(choice)
    concrete: list[list[DeviceRequest]] = []
    for claim in pod.claims:
        concrete.append([_concrete(entry, picks) for entry in claim.requests])
    many_requests = len(pod.claims) > 1 or len(concrete[0]) > 1
    prepared = []
    for claim, requests in zip(pod.claims, concrete):
        needs = [Need(claim, request, order, loose=loose) for order, request in enumerate(requests)]
        for need in needs:
            prefix = ""
            if len(pod.claims) > 1:
                prefix = f"claim {claim.display}"
            if many_requests or need.request.name != need.request.parent:
                prefix = f"{prefix} request {need.request.name}".strip()
            need.prefix = f"{prefix}: " if prefix else ""
        prepared.append(needs)
    return prepared


def _concrete(entry: ClaimEntry, picks: Iterator[int]) -> DeviceRequest:
    return entry.alternatives[next(picks)] if isinstance(entry, FirstAvailable) else entry


def _place(ledger: Ledger, pod: PodRequest, claims: list[list[Need]], policy: PlacementPolicy,
           budget: SearchBudget) -> Placement | None:
    """The pod with these concrete requests: the greedy pass on every node first, then the search."""
    flat = [need for needs in claims for need in needs]
    # What the node's best GPU must have free for the pod's largest request (a necessary condition).
    min_memory = max(need.prune_memory for need in flat)
    min_fraction = max(need.prune_fraction for need in flat)
    min_cores = max(need.cores for need in flat)
    min_count = max(need.least_count for need in flat)
    searchable = needs_search(claims)
    # Nodes without a single GPU a request's compiled selectors accept are never looked at.
    selected = [ledger.nodes_selected_by(need.selector) for need in flat  # type: ignore[arg-type]
                if getattr(need.selector, "device_only", False)]
    narrowest = min(selected, key=len) if selected else None
    for state in _candidate_nodes(ledger, pod, policy, min_memory, min_fraction, min_cores, narrowest):
        if (state.max_free_memory < min_memory or state.max_free_fraction < min_fraction
                or state.max_free_cores < min_cores or len(state.gpus) < min_count
                or not pod.allows(state.name)):
            continue
        if selected and not all(state.name in nodes for nodes in selected):
            continue
        if len(flat) > 1 and not all(need.summary_allows(state) for need in flat):
            continue
        picks = place_greedy(state, claims, policy.gpu)
        if picks is None and searchable:
            picks = place_searching(state, claims, policy.gpu, budget)
        if picks is not None:
            return _placement(state, claims, picks)
    return None


def _candidate_nodes(ledger: Ledger, pod: PodRequest, policy: PlacementPolicy, min_memory: int,
                     min_fraction: float, min_cores: int, selected: frozenset[str] | None) -> Iterable[NodeState]:
    """Nodes in the node policy's order, skipping (by bisect) those whose best GPU is too small."""
    spread = policy.node is Policy.SPREAD
    # A short allow-list (a claim shared with a pod already placed) or the nodes a selector
    # matches when they are a small part of the cluster: rank just those (sorting a quarter of
    # the nodes costs less than walking all of them).
    limits = ((pod.allowed_nodes, _FEW_NODES), (selected, max(_FEW_NODES, ledger.node_count() // 4)))
    short = min((names for names, limit in limits if names is not None and len(names) <= limit), key=len, default=None)
    if short is not None:
        states = [state for name in short if (state := ledger.node(name)) is not None]
    else:
        narrowed = ledger.nodes_that_may_fit(min_memory, min_fraction, min_cores, _FEW_NODES)
        if narrowed is None:
            return ledger.nodes_by_free(most_free_first=spread)
        states = narrowed
    states.sort(key=(lambda s: (-s.score, s.name)) if spread else (lambda s: (s.score, s.name)))
    return states


def _placement(state: NodeState, claims: Sequence[Sequence[Need]], picks: Picks) -> Placement:
    placed = []
    for needs, claim_picks in zip(claims, picks):
        requests = []
        for need in needs:
            shares = tuple(GpuShare(state.gpus[i], need.resolve(state.gpus[i]), need.admin_access)
                           for i in claim_picks[need.order])
            requests.append((need.request.name, shares))
        placed.append(ClaimPlacement(needs[0].claim.key, tuple(requests)))
    return Placement(state.name, tuple(placed))
