"""The allocator: one pod's claims + a `Ledger` snapshot → a `Placement` or a `Refusal`.

Pure: no I/O, no clock, no randomness, and it never changes the ledger (the caller books a
placement with `Ledger.apply` once it is committed, and `Ledger.release` when the claim is gone).

Public API (stable; the allocation controller and `vgpu-dra plan` build on it):

    allocate(ledger, PodRequest(...), PlacementPolicy(node=..., gpu=...)) -> Placement | Refusal

- `PodRequest`: the ``claims`` of ONE pod (all land on one node), plus the node restrictions the
  caller evaluated: ``allowed_nodes`` (a set, or None for every node), ``node_filter`` (a callable
  on the node name, e.g. nodeSelector/affinity/taints), ``avoid_nodes`` (nodes where the scheduler
  already failed to fit this pod).
- `ClaimRequest`: ``key`` (unique, the ledger key: the claim UID in the controller), its
  ``requests`` and its ``match_attributes`` constraints (`MatchAttribute`: same attribute value on
  every GPU of the listed requests, all requests when none are listed).
- `DeviceRequest`: ``name``, ``share`` (a `vgpu_dra.driver.limits.ShareRequest`: bytes, percent or
  whole GPU, cores), ``count`` of distinct GPUs (≥ 1), and an optional ``selector`` — a predicate
  on a `GpuCandidate` (the controller passes compiled CEL selectors).
- `Placement`: the ``node`` and per claim (`ClaimPlacement`) per request the list of `GpuShare`
  (the `GpuDevice` and the `ResolvedShare` it gets: percent requests resolve against that GPU).
- `Refusal`: ``reason`` (a sentence for a Kubernetes Event), ``kind`` (`RefusalKind`, a stable
  label for metrics) and the claim/request it is about when there is one.

Rules: a GPU never gets more memory or cores than its capacity (cores 0 reserves nothing); the
``count`` GPUs of one request are distinct; different requests and claims of the pod may share a
GPU. Requests are placed largest first, greedily per node (no exhaustive search): with
``matchAttribute`` each distinct attribute value is tried in turn. Multi-GPU requests take GPUs of
one NUMA node when one has enough.

Nodes are walked in the node policy's order (`Ledger.nodes_by_free`) and rejected on their summary
(largest free memory, free fraction and free cores on any one GPU, GPU count) before any GPU is
looked at; the first node on which every claim fits wins, GPUs chosen by the GPU policy. Only a
refusal pays for a wider look, to say what is missing and where the best near-miss is.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum

from vgpu_dra.api.names import DRIVER_NAME, MEMORY_MIN_BYTES
from vgpu_dra.api.quantity import humanize_bytes
from vgpu_dra.driver.ledger import AttributeValue, Consumption, GpuCandidate, GpuDevice, Ledger, NodeState
from vgpu_dra.driver.limits import LimitError, ResolvedShare, ShareRequest
from vgpu_dra.driver.placement_policy import PlacementPolicy, Policy, gpu_free_after, gpu_sort_key

__all__ = [
    "AllocationInputError", "ClaimPlacement", "ClaimRequest", "DeviceRequest", "GpuCandidate",
    "GpuDevice", "GpuPredicate", "GpuShare", "Ledger", "MatchAttribute", "Placement",
    "PlacementPolicy", "PodRequest", "Policy", "Refusal", "RefusalKind", "allocate",
]

GpuPredicate = Callable[[GpuCandidate], bool]
"""A request's device filter (compiled CEL selectors); must not depend on what is used."""

_MAX_ATTRIBUTE_COMBINATIONS = 256  # matchAttribute value combinations tried per claim and node


class AllocationInputError(ValueError):
    """A request that is malformed in itself (not merely unsatisfiable)."""


@dataclass(frozen=True, slots=True)
class DeviceRequest:
    """One request of a claim: ``count`` distinct GPUs, each giving ``share``."""

    name: str
    share: ShareRequest
    count: int = 1
    selector: GpuPredicate | None = None

    def __post_init__(self) -> None:
        if self.count < 1:
            raise AllocationInputError(f"request {self.name!r}: count must be at least 1, got {self.count}")


@dataclass(frozen=True, slots=True)
class MatchAttribute:
    """``constraints[].matchAttribute``: every GPU of ``requests`` (empty = all) has the same value.

    ``attribute`` is fully qualified (``vgpu.dra.dev/numaNode``) or, for our own domain, bare;
    a GPU without the attribute never satisfies it.
    """

    attribute: str
    requests: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """The key in `GpuDevice.attributes`: bare for our domain, qualified for any other."""
        domain, slash, name = self.attribute.rpartition("/")
        return name if slash and domain == DRIVER_NAME else self.attribute


@dataclass(frozen=True, slots=True)
class ClaimRequest:
    """A claim to place: its ledger ``key``, its requests, and its constraints."""

    key: str
    requests: tuple[DeviceRequest, ...]
    match_attributes: tuple[MatchAttribute, ...] = ()
    label: str = ""
    """How messages name the claim (``namespace/name``); defaults to the key."""

    def __post_init__(self) -> None:
        if not self.requests:
            raise AllocationInputError(f"claim {self.display}: has no requests")
        names = [request.name for request in self.requests]
        if len(set(names)) != len(names):
            raise AllocationInputError(f"claim {self.display}: request names are not unique: {names}")
        for constraint in self.match_attributes:
            unknown = [name for name in constraint.requests if name not in names]
            if unknown:
                raise AllocationInputError(
                    f"claim {self.display}: matchAttribute {constraint.attribute} names unknown "
                    f"request(s) {unknown} (requests: {names})")

    @property
    def display(self) -> str:
        return self.label or self.key


@dataclass(frozen=True, slots=True)
class PodRequest:
    """All claims one pod still needs allocated, and where the pod may run."""

    claims: tuple[ClaimRequest, ...]
    allowed_nodes: frozenset[str] | None = None
    node_filter: Callable[[str], bool] | None = None
    avoid_nodes: frozenset[str] = frozenset()
    label: str = ""

    def __post_init__(self) -> None:
        if not self.claims:
            raise AllocationInputError(f"pod {self.label}: has no claims to allocate")
        keys = [claim.key for claim in self.claims]
        if len(set(keys)) != len(keys):
            raise AllocationInputError(f"pod {self.label}: claim keys are not unique: {keys}")

    @property
    def restricted(self) -> bool:
        """Whether any node restriction is set."""
        return self.allowed_nodes is not None or self.node_filter is not None or bool(self.avoid_nodes)

    def allows(self, node: str) -> bool:
        """Whether the pod may be placed on ``node``."""
        if self.allowed_nodes is not None and node not in self.allowed_nodes:
            return False
        if node in self.avoid_nodes:
            return False
        return self.node_filter is None or self.node_filter(node)


@dataclass(frozen=True, slots=True)
class GpuShare:
    """One GPU of a placement and the share it gives."""

    device: GpuDevice
    share: ResolvedShare


@dataclass(frozen=True, slots=True)
class ClaimPlacement:
    """Where one claim landed: request name → its GPUs, in the claim's request order."""

    key: str
    requests: tuple[tuple[str, tuple[GpuShare, ...]], ...]

    def shares(self, request: str) -> tuple[GpuShare, ...]:
        """The GPUs (and shares) of one request."""
        for name, shares in self.requests:
            if name == request:
                return shares
        raise KeyError(request)

    def consumptions(self, node: str) -> tuple[Consumption, ...]:
        return tuple(Consumption(node, item.device.name, item.share.memory_bytes, item.share.cores)
                     for _, shares in self.requests for item in shares)


@dataclass(frozen=True, slots=True)
class Placement:
    """A pod's claims placed on one node."""

    node: str
    claims: tuple[ClaimPlacement, ...]

    def claim(self, key: str) -> ClaimPlacement:
        for claim in self.claims:
            if claim.key == key:
                return claim
        raise KeyError(key)

    def claim_consumptions(self) -> Iterator[tuple[str, tuple[Consumption, ...]]]:
        """(claim key, what it consumes) pairs, the form `Ledger.apply` books."""
        for claim in self.claims:
            yield claim.key, claim.consumptions(self.node)


class RefusalKind(StrEnum):
    """Why a pod's claims could not be placed; stable values for metric labels."""

    NO_NODE = "no-node"                  # no node publishes GPUs, or the pod may use none of them
    NO_MATCHING_GPU = "no-matching-gpu"  # no GPU passes the request's selectors
    TOO_LARGE = "too-large"              # more than any (matching) GPU can give even when idle
    TOO_FEW_GPUS = "too-few-gpus"        # no node has that many suitable GPUs
    NO_CAPACITY = "no-capacity"          # would fit idle GPUs, but not what is free now
    CONSTRAINT = "constraint"            # matchAttribute cannot be met
    SELECTOR_ERROR = "selector-error"    # a selector failed to evaluate


@dataclass(frozen=True, slots=True)
class Refusal:
    """No placement, and a reason a user can act on."""

    reason: str
    kind: RefusalKind
    claim_key: str | None = None
    request: str | None = None

    def __str__(self) -> str:
        return self.reason


# --- the decision ------------------------------------------------------------------------------

class _SelectorFailed(Exception):
    def __init__(self, refusal: Refusal):
        super().__init__(refusal.reason)
        self.refusal = refusal


_UNRESOLVED = object()


class _Need:
    """A request prepared for one decision: memory per GPU size cached, filter thresholds."""

    __slots__ = ("claim", "request", "cores", "count", "selector", "min_free_memory",
                 "min_free_fraction", "_memory", "_selected", "order", "prefix")

    def __init__(self, claim: ClaimRequest, request: DeviceRequest, order: int):
        self.claim = claim
        self.request = request
        self.order = order
        self.prefix = ""
        self.cores = request.share.cores
        self.count = request.count
        self.selector = request.selector
        self._memory: dict[int, int | None] = {}
        self._selected: dict[tuple[str, int], bool] = {}
        share = request.share
        # Necessary conditions on a node's best GPU, checked before any GPU is looked at.
        if share.memory_percent is not None:
            # memory_for rounds down to the 1 MiB step; 1/64 covers that on any GPU ≥ 64 MiB.
            self.min_free_memory = MEMORY_MIN_BYTES
            self.min_free_fraction = share.memory_percent / 100 - 1 / 64
        elif share.memory_bytes is not None:
            self.min_free_memory = share.memory_for(1 << 62)
            self.min_free_fraction = 0.0
        else:
            self.min_free_memory = MEMORY_MIN_BYTES
            self.min_free_fraction = 1.0

    def memory_on(self, usable: int) -> int | None:
        """Bytes this request takes on a GPU of ``usable`` bytes, None if it can never fit."""
        memory = self._memory.get(usable, _UNRESOLVED)
        if memory is _UNRESOLVED:
            try:
                memory = self.request.share.memory_for(usable)
            except LimitError:
                memory = None
            self._memory[usable] = memory
        return memory  # type: ignore[return-value]

    def selects(self, state: NodeState, i: int) -> bool:
        """Whether the request's selector accepts GPU ``i`` of ``state`` (cached per decision)."""
        if self.selector is None:
            return True
        key = (state.name, i)
        chosen = self._selected.get(key)
        if chosen is None:
            try:
                chosen = bool(self.selector(state.candidate(i)))
            except Exception as exc:  # a CEL runtime error aborts the decision, as in Kubernetes
                raise _SelectorFailed(Refusal(
                    f"{self.where()}selector failed on {state.name} {state.gpus[i].name}: {exc}",
                    RefusalKind.SELECTOR_ERROR, self.claim.key, self.request.name)) from None
            self._selected[key] = chosen
        return chosen

    def summary_allows(self, state: NodeState) -> bool:
        return (state.max_free_memory >= self.min_free_memory
                and state.max_free_fraction >= self.min_free_fraction
                and state.max_free_cores >= self.cores
                and len(state.gpus) >= self.count)

    def size_key(self) -> tuple[int, float, int, int]:
        return (-self.count, -self.min_free_fraction, -self.min_free_memory, -self.cores)

    def describe(self) -> str:
        """``6 GiB`` / ``20 % of GPU memory`` / ``a whole GPU``, plus cores when capped."""
        share = self.request.share
        if share.memory_percent is not None:
            memory = f"{share.memory_percent} % of GPU memory"
        elif share.memory_bytes is not None:
            memory = humanize_bytes(self.min_free_memory)
        else:
            memory = "a whole GPU's memory"
        return f"{memory} and {self.cores} % cores" if self.cores else memory

    def where(self) -> str:
        """Message prefix naming the request when the pod has more than one."""
        return self.prefix


def allocate(ledger: Ledger, pod: PodRequest, policy: PlacementPolicy = PlacementPolicy()) -> Placement | Refusal:
    """Place all of one pod's claims on one node, or say why not. Never changes ``ledger``."""
    claims = _prepare(pod)
    flat = [need for needs in claims for need in needs]
    # What the node's best GPU must have free for the pod's largest request (a necessary condition).
    min_memory = max(need.min_free_memory for need in flat)
    min_fraction = max(need.min_free_fraction for need in flat)
    min_cores = max(need.cores for need in flat)
    min_count = max(need.count for need in flat)
    try:
        for state in _candidate_nodes(ledger, pod, policy, min_memory, min_fraction, min_cores):
            if (state.max_free_memory < min_memory or state.max_free_fraction < min_fraction
                    or state.max_free_cores < min_cores or len(state.gpus) < min_count
                    or not pod.allows(state.name)):
                continue
            if len(flat) > 1 and not all(need.summary_allows(state) for need in flat):
                continue
            picks = _place_pod(state, claims, policy.gpu)
            if picks is not None:
                return _placement(state, claims, picks)
        return _diagnose(ledger, pod, claims, policy.gpu)
    except _SelectorFailed as failure:
        return failure.refusal


_FEW_NODES = 64  # below this many possible nodes, rank them directly instead of walking all


def _candidate_nodes(ledger: Ledger, pod: PodRequest, policy: PlacementPolicy, min_memory: int,
                     min_fraction: float, min_cores: int) -> Iterable[NodeState]:
    """Nodes in the node policy's order, skipping (by bisect) those whose best GPU is too small."""
    spread = policy.node is Policy.SPREAD
    if pod.allowed_nodes is not None and len(pod.allowed_nodes) <= _FEW_NODES:
        # A short allow-list (a claim shared with a pod already placed): rank just those.
        states = [state for name in pod.allowed_nodes if (state := ledger.node(name)) is not None]
    else:
        narrowed = ledger.nodes_that_may_fit(min_memory, min_fraction, min_cores, _FEW_NODES)
        if narrowed is None:
            return ledger.nodes_by_free(most_free_first=spread)
        states = narrowed
    states.sort(key=(lambda s: (-s.score, s.name)) if spread else (lambda s: (s.score, s.name)))
    return states


def _prepare(pod: PodRequest) -> list[list[_Need]]:
    many_requests = len(pod.claims) > 1 or len(pod.claims[0].requests) > 1
    prepared = []
    for claim in pod.claims:
        needs = [_Need(claim, request, order) for order, request in enumerate(claim.requests)]
        for need in needs:
            prefix = ""
            if len(pod.claims) > 1:
                prefix = f"claim {claim.display}"
            if many_requests:
                prefix = f"{prefix} request {need.request.name}".strip()
            need.prefix = f"{prefix}: " if prefix else ""
        prepared.append(needs)
    return prepared


def _place_pod(state: NodeState, claims: list[list[_Need]], policy: Policy) -> list[dict[int, list[int]]] | None:
    free_memory = [state.free_memory(i) for i in range(len(state.gpus))]
    free_cores = [state.free_cores(i) for i in range(len(state.gpus))]
    picks = []
    for needs in claims:
        claim_picks = _place_claim(state, needs, free_memory, free_cores, policy)
        if claim_picks is None:
            return None
        picks.append(claim_picks)
    return picks


def _place_claim(state: NodeState, needs: list[_Need], free_memory: list[int], free_cores: list[int],
                 policy: Policy) -> dict[int, list[int]] | None:
    """Place one claim's requests, updating the free lists on success; None if it cannot fit."""
    ordered = sorted(needs, key=_Need.size_key)
    constraints = needs[0].claim.match_attributes
    if not constraints:
        return _place_requests(state, ordered, None, free_memory, free_cores, policy)
    for masks in _constraint_masks(state, needs, constraints, free_memory, policy):
        trial_memory, trial_cores = list(free_memory), list(free_cores)
        picks = _place_requests(state, ordered, masks, trial_memory, trial_cores, policy)
        if picks is not None:
            free_memory[:] = trial_memory
            free_cores[:] = trial_cores
            return picks
    return None


def _constraint_masks(state: NodeState, needs: list[_Need], constraints: tuple[MatchAttribute, ...],
                      free_memory: list[int], policy: Policy) -> Iterator[dict[int, list[bool]]]:
    """Per request, which GPUs it may use, for each combination of matchAttribute values."""
    options: list[list[AttributeValue]] = []
    for constraint in constraints:
        values = _attribute_values(state, constraint)
        if not values:
            return
        # Prefer the group with the least (binpack) or most (spread) free memory.
        def group_free(value: AttributeValue, name: str = constraint.key) -> int:
            return sum(free_memory[i] for i, gpu in enumerate(state.gpus) if _same(gpu.attributes.get(name), value))
        values.sort(key=lambda value: (group_free(value) if policy is Policy.BINPACK else -group_free(value),
                                       _value_order(value)))
        options.append(values)
    for combination in itertools.islice(itertools.product(*options), _MAX_ATTRIBUTE_COMBINATIONS):
        masks: dict[int, list[bool]] = {}
        for need in needs:
            mask = [True] * len(state.gpus)
            for constraint, value in zip(constraints, combination):
                if constraint.requests and need.request.name not in constraint.requests:
                    continue
                name = constraint.key
                for i, gpu in enumerate(state.gpus):
                    if mask[i] and not _same(gpu.attributes.get(name), value):
                        mask[i] = False
            masks[need.order] = mask
        yield masks


def _attribute_values(state: NodeState, constraint: MatchAttribute) -> list[AttributeValue]:
    name = constraint.key
    values: list[AttributeValue] = []
    for gpu in state.gpus:
        value = gpu.attributes.get(name)
        if value is not None and not any(_same(value, seen) for seen in values):
            values.append(value)
    return values


def _same(left: AttributeValue | None, right: AttributeValue | None) -> bool:
    # bool is an int in Python; an attribute's type is part of its value.
    return left is not None and type(left) is type(right) and left == right


def _value_order(value: AttributeValue) -> tuple[str, str]:
    return (type(value).__name__, str(value))


def _place_requests(state: NodeState, ordered: Sequence[_Need], masks: dict[int, list[bool]] | None,
                    free_memory: list[int], free_cores: list[int], policy: Policy) -> dict[int, list[int]] | None:
    picks: dict[int, list[int]] = {}
    for need in ordered:
        chosen = _pick_gpus(state, need, None if masks is None else masks[need.order],
                            free_memory, free_cores, policy)
        if chosen is None:
            return None
        picks[need.order] = chosen
    return picks


def _eligible(state: NodeState, need: _Need, mask: list[bool] | None, free_memory: list[int],
              free_cores: list[int], policy: Policy) -> list[tuple[tuple[float, int], int, int]]:
    """(sort key, GPU index, memory it would take) for every GPU the request fits now."""
    eligible = []
    cores = need.cores
    for i, gpu in enumerate(state.gpus):
        if mask is not None and not mask[i]:
            continue
        memory = need.memory_on(gpu.memory_bytes)
        if memory is None or memory > free_memory[i] or cores > free_cores[i]:
            continue
        if need.selector is not None and not need.selects(state, i):
            continue
        free_after = gpu_free_after(free_memory[i], memory, gpu.memory_bytes, free_cores[i], cores, gpu.cores)
        eligible.append((gpu_sort_key(policy, free_after, i), i, memory))
    return eligible


def _pick_gpus(state: NodeState, need: _Need, mask: list[bool] | None, free_memory: list[int],
               free_cores: list[int], policy: Policy) -> list[int] | None:
    eligible = _eligible(state, need, mask, free_memory, free_cores, policy)
    if len(eligible) < need.count:
        return None
    eligible.sort()
    chosen = eligible[:need.count]
    if need.count > 1:
        # NUMA-close first: the first NUMA node to collect `count` GPUs in policy order wins.
        groups: dict[int, list[tuple[tuple[float, int], int, int]]] = {}
        for entry in eligible:
            group = groups.setdefault(state.gpus[entry[1]].numa_node, [])
            group.append(entry)
            if len(group) == need.count:
                chosen = group
                break
    for _, i, memory in chosen:
        free_memory[i] -= memory
        free_cores[i] -= need.cores
    return [i for _, i, _ in chosen]


def _placement(state: NodeState, claims: list[list[_Need]], picks: list[dict[int, list[int]]]) -> Placement:
    placed = []
    for needs, claim_picks in zip(claims, picks):
        requests = []
        for need in needs:
            shares = tuple(GpuShare(state.gpus[i], need.request.share.resolve(state.gpus[i].memory_bytes))
                           for i in claim_picks[need.order])
            requests.append((need.request.name, shares))
        placed.append(ClaimPlacement(needs[0].claim.key, tuple(requests)))
    return Placement(state.name, tuple(placed))


# --- refusals ----------------------------------------------------------------------------------

def _diagnose(ledger: Ledger, pod: PodRequest, claims: list[list[_Need]], policy: Policy) -> Refusal:
    """Find the first thing that cannot be satisfied and describe it, with the nearest miss."""
    states = ledger.states()
    if not any(state.gpus for state in states):
        return Refusal("no node publishes GPUs of driver vgpu.dra.dev", RefusalKind.NO_NODE)
    considered = [state for state in states if state.gpus and pod.allows(state.name)] if pod.restricted \
        else [state for state in states if state.gpus]
    if not considered:
        return Refusal(_no_node_reason(pod, states), RefusalKind.NO_NODE)
    for needs in claims:
        for need in needs:
            refusal = (_static_refusal(considered, need)
                       or _capacity_refusal(ledger, pod, considered, need, policy))
            if refusal is not None:
                return refusal
    for needs in claims:
        refusal = _claim_refusal(considered, needs, policy)
        if refusal is not None:
            return refusal
    return Refusal(
        f"each of the pod's {len(claims)} claims fits on some node, but no node has room for all of them "
        "at once (a pod's claims must share one node)", RefusalKind.NO_CAPACITY)


def _no_node_reason(pod: PodRequest, states: list[NodeState]) -> str:
    excluded = [state.name for state in states if state.gpus and not pod.allows(state.name)]
    avoided = [name for name in excluded if name in pod.avoid_nodes]
    parts = []
    if len(avoided) < len(excluded):
        parts.append(f"{len(excluded) - len(avoided)} excluded by the pod's node selection")
    if avoided:
        parts.append(f"{len(avoided)} where the pod could not be scheduled before ({', '.join(sorted(avoided)[:3])})")
    return f"no node with GPUs is eligible for this pod: {len(excluded)} node(s) with GPUs, " + "; ".join(parts)


def _static_refusal(considered: list[NodeState], need: _Need) -> Refusal | None:
    """What no GPU could give even if idle: too large, no GPU matching, too few per node."""
    best_count, best_node = 0, ""
    matching = 0
    largest: GpuDevice | None = None
    for state in considered:
        fitting = 0
        if need.selector is None:
            for size, how_many in state.gpu_sizes:  # no GPU scan: sizes decide
                matching += how_many
                if need.memory_on(size) is not None:
                    fitting += how_many
            if largest is None or state.max_usable_memory > largest.memory_bytes:
                largest = state.largest_gpu
        else:
            for i, gpu in enumerate(state.gpus):
                if not need.selects(state, i):
                    continue
                matching += 1
                if largest is None or gpu.memory_bytes > largest.memory_bytes:
                    largest = gpu
                if need.memory_on(gpu.memory_bytes) is not None:
                    fitting += 1
        if fitting >= need.count:
            return None
        if fitting > best_count:
            best_count, best_node = fitting, state.name
    which = " matching its selectors" if matching < sum(len(s.gpus) for s in considered) else ""
    if matching == 0:
        # Callers append the compiled selectors' evaluation errors, the likeliest cause.
        return Refusal(f"{need.where()}no GPU matches the request's selectors on the "
                       f"{len(considered)} eligible node(s)", RefusalKind.NO_MATCHING_GPU,
                       need.claim.key, need.request.name)
    if best_count == 0:
        assert largest is not None
        product = f"{largest.product_name}, " if largest.product_name else ""
        return Refusal(f"{need.where()}{need.describe()} is more than any GPU{which} can give "
                       f"(largest: {product}{humanize_bytes(largest.memory_bytes)})",
                       RefusalKind.TOO_LARGE, need.claim.key, need.request.name)
    return Refusal(f"{need.where()}needs {need.count} GPUs{which} that can give {need.describe()} on one node; "
                   f"the node with the most, {best_node}, has {best_count}",
                   RefusalKind.TOO_FEW_GPUS, need.claim.key, need.request.name)


def _capacity_refusal(ledger: Ledger, pod: PodRequest, considered: list[NodeState], need: _Need,
                      policy: Policy) -> Refusal | None:
    """The request alone does not fit what is free now: say what is free at best."""
    best_count, best_node = 0, ""
    may_fit = _nodes_whose_best_gpu_may_fit(ledger, pod, need)
    for state in may_fit:
        if not need.summary_allows(state):
            continue
        free_memory = [state.free_memory(i) for i in range(len(state.gpus))]
        free_cores = [state.free_cores(i) for i in range(len(state.gpus))]
        count = len(_eligible(state, need, None, free_memory, free_cores, policy))
        if count >= need.count:
            return None
        if count > best_count:
            best_count, best_node = count, state.name
    which = " matching its selectors" if _selector_narrows(considered, need) else ""
    if need.count > 1:
        return Refusal(f"{need.where()}needs {need.count} GPUs{which} with {need.describe()} free on one node; "
                       f"the best node, {best_node or considered[0].name}, has {best_count}",
                       RefusalKind.NO_CAPACITY, need.claim.key, need.request.name)
    return Refusal(f"{need.where()}no GPU{which} has {need.describe()} free; "
                   f"{_best_free(ledger, pod, considered, may_fit, need)}",
                   RefusalKind.NO_CAPACITY, need.claim.key, need.request.name)


def _selector_narrows(considered: list[NodeState], need: _Need) -> bool:
    """Whether the request's selectors rule out any GPU (a class selecting every GPU does not)."""
    if need.selector is None:
        return False
    return not all(need.selects(state, i) for state in considered for i in range(len(state.gpus)))


def _nodes_whose_best_gpu_may_fit(ledger: Ledger, pod: PodRequest, need: _Need) -> list[NodeState]:
    by_memory = ledger.count_with_free_memory(need.min_free_memory)
    by_fraction = ledger.count_with_free_fraction(need.min_free_fraction)
    states = (ledger.with_free_memory(need.min_free_memory) if by_memory <= by_fraction
              else ledger.with_free_fraction(need.min_free_fraction))
    return [state for state in states if pod.allows(state.name)]


def _best_free(ledger: Ledger, pod: PodRequest, considered: list[NodeState], may_fit: list[NodeState],
               need: _Need) -> str:
    """The nearest miss: the most cores free where the memory would fit, else the most memory free."""
    percent = need.request.share.memory_percent is not None
    if need.cores:
        best_cores: tuple[int, str, str] | None = None
        for state in may_fit:
            for i, gpu in enumerate(state.gpus):
                memory = need.memory_on(gpu.memory_bytes)
                if memory is None or memory > state.free_memory(i):
                    continue
                if need.selector is not None and not need.selects(state, i):
                    continue
                cores = state.free_cores(i)
                if best_cores is None or cores > best_cores[0]:
                    best_cores = (cores, state.name, gpu.name)
        if best_cores is not None:
            cores, node, gpu_name = best_cores
            return f"where the memory fits, the most cores free is {cores} % (on {node} {gpu_name})"
    best: tuple[NodeState, int] | None = None
    if need.selector is None:
        # The index's tail is the node whose best GPU has the most free.
        ordered = ledger.with_free_fraction(0.0) if percent else ledger.with_free_memory(0)
        for state in reversed(ordered):
            if pod.allows(state.name):
                index = state.max_free_fraction_gpu if percent else state.max_free_memory_gpu
                best = (state, index) if index >= 0 else None
                break
    else:
        best_measure = -1.0
        for state in considered:
            for i, gpu in enumerate(state.gpus):
                if need.selects(state, i):
                    free = state.free_memory(i)
                    measure = free / gpu.memory_bytes if percent else free
                    if measure > best_measure:
                        best_measure, best = measure, (state, i)
    if best is None:
        return "no GPU has any memory free"
    state, index = best
    free = state.free_memory(index)
    text = humanize_bytes(free)
    if percent:
        text += f" ({100 * free // state.gpus[index].memory_bytes} %)"
    return f"largest free: {text} on {state.name} {state.gpus[index].name}"


def _claim_refusal(considered: list[NodeState], needs: list[_Need], policy: Policy) -> Refusal | None:
    """The claim alone (all its requests, its constraints) fits no node."""
    if len(needs) == 1 and not needs[0].claim.match_attributes:
        return None
    for state in considered:
        free_memory = [state.free_memory(i) for i in range(len(state.gpus))]
        free_cores = [state.free_cores(i) for i in range(len(state.gpus))]
        if _place_claim(state, needs, free_memory, free_cores, policy) is not None:
            return None
    claim = needs[0].claim
    for constraint in claim.match_attributes:
        covered = [need for need in needs if not constraint.requests or need.request.name in constraint.requests]
        wanted = sum(need.count for need in covered)
        name = constraint.key
        if not any(name in gpu.attributes for state in considered for gpu in state.gpus):
            return Refusal(f"claim {claim.display}: matchAttribute {constraint.attribute}: no GPU has that "
                           "attribute", RefusalKind.CONSTRAINT, claim.key)
        best: tuple[int, str, AttributeValue | None] = (0, considered[0].name, None)
        largest = min(covered, key=_Need.size_key)
        for state in considered:
            free_memory = [state.free_memory(i) for i in range(len(state.gpus))]
            free_cores = [state.free_cores(i) for i in range(len(state.gpus))]
            eligible = _eligible(state, largest, None, free_memory, free_cores, policy)
            for value in _attribute_values(state, constraint):
                count = sum(1 for _, i, _ in eligible if _same(state.gpus[i].attributes.get(name), value))
                if count > best[0]:
                    best = (count, state.name, value)
        if best[0] < wanted:
            detail = f" (all with {name}={best[2]})" if best[2] is not None else ""
            return Refusal(f"claim {claim.display}: needs {wanted} GPUs with matching {name} on one node, "
                           f"each with {largest.describe()} free; the best node, {best[1]}, has {best[0]}{detail}",
                           RefusalKind.CONSTRAINT, claim.key)
    return Refusal(f"claim {claim.display}: its {len(needs)} requests do not fit together on any one node",
                   RefusalKind.NO_CAPACITY, claim.key)
