"""Why a pod could not be placed, in one sentence a user can act on, with the nearest miss.

Internal to the allocator; runs only after every node was ruled out. It looks for the first thing
that cannot be satisfied, from the most basic up: no node at all, a request no GPU could ever give
(too large, no GPU matching, too few per node, taints), a request that does not fit what is free
now, a claim whose requests or constraints fit no node, and last the pod's claims together. Every
number a sentence states is taken from the facts that decided it (a "most free" figure is never
at or above what was asked), so a refusal never contradicts itself; where the search was cut
short by its budget, the refusal says so instead of "does not fit".
"""
from __future__ import annotations

from collections.abc import Sequence

from vgpu_dra.api.names import MEBIBYTE
from vgpu_dra.api.quantity import humanize_bytes
from vgpu_dra.driver.capacity_policy import driver_memory_policy
from vgpu_dra.driver.allocation_request import (DistinctAttribute, MatchAttribute, PodRequest, Refusal,
                                                RefusalKind)
from vgpu_dra.driver.device_taints import DeviceTaint
from vgpu_dra.driver.ledger import AttributeValue, GpuDevice, Ledger, NodeState
from vgpu_dra.driver.node_search import (SearchBudget, attribute_values, eligible, free_lists, greedy_claim,
                                         needs_search, place_searching, same_value)
from vgpu_dra.driver.placement_policy import Policy
from vgpu_dra.driver.prepared_request import Need


def diagnose(ledger: Ledger, pod: PodRequest, claims: Sequence[Sequence[Need]], policy: Policy,
             budget: SearchBudget) -> Refusal:
    """The refusal for a pod no node can take (``claims``: its requests as first preferred)."""
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
        refusal = _claim_refusal(considered, needs, policy, budget)
        if refusal is not None:
            return refusal
    if budget.exhausted:
        return budget_refusal(budget)
    if len(claims) == 1:
        return Refusal(f"claim {claims[0][0].claim.display}: no node has room for all its requests at once",
                       RefusalKind.NO_CAPACITY, claims[0][0].claim.key)
    return Refusal(
        f"each of the pod's {len(claims)} claims fits on some node, but no node has room for all of them "
        "at once (a pod's claims must share one node)", RefusalKind.NO_CAPACITY)


def budget_refusal(budget: SearchBudget) -> Refusal:
    """The search stopped before it could rule every placement out: say so, and where."""
    nodes = budget.cut_nodes
    where = ", ".join(nodes[:3]) + (f" and {len(nodes) - 3} more" if len(nodes) > 3 else "")
    return Refusal(f"no placement found before the search budget ran out ({budget.steps} GPU combinations "
                   f"tried; the search stopped early on {where}): one may exist — the pod is retried, and "
                   "fewer requests or GPUs per request make the search shorter", RefusalKind.SEARCH_BUDGET)


def _no_node_reason(pod: PodRequest, states: list[NodeState]) -> str:
    excluded = [state.name for state in states if state.gpus and not pod.allows(state.name)]
    avoided = [name for name in excluded if name in pod.avoid_nodes]
    parts = []
    if len(avoided) < len(excluded):
        parts.append(f"{len(excluded) - len(avoided)} excluded by the pod's node selection")
    if avoided:
        parts.append(f"{len(avoided)} where the pod could not be scheduled before ({', '.join(sorted(avoided)[:3])})")
    return f"no node with GPUs is eligible for this pod: {len(excluded)} node(s) with GPUs, " + "; ".join(parts)


def _below(value: int, asked: int | None) -> str:
    """``value`` for a sentence that says it is less than ``asked``: rounded for people, unless the
    rounding would make it read as much as what was asked (then to the MiB, rounded down)."""
    text = humanize_bytes(value)
    if asked is not None and value < asked and text == humanize_bytes(asked):
        return f"{value // MEBIBYTE} MiB"
    return text


def _policy_refuses(need: Need, gpu: GpuDevice) -> str:
    """Why a GPU with room for the raw request still cannot give it: its requestPolicy ('' if
    the request is simply larger than the GPU)."""
    share = need.request.share
    if need.memory_on(gpu) is None and share.memory_bytes is not None and share.memory_bytes <= gpu.memory_bytes:
        policy = gpu.memory_policy or driver_memory_policy(gpu.memory_bytes)
        rounded = policy.rounded(share.memory_bytes, gpu.memory_bytes)
        if rounded > gpu.memory_bytes:
            return (f"; its memory requestPolicy rounds {humanize_bytes(share.memory_bytes)} up to "
                    f"{humanize_bytes(rounded)}")
        return f"; its memory requestPolicy does not allow {humanize_bytes(share.memory_bytes)}"
    if need.memory_on(gpu) is not None and need.cores_on(gpu) is None:
        return f"; its cores requestPolicy does not allow {need.cores} %"
    return ""


def _gives(need: Need, gpu: GpuDevice) -> bool:
    return need.memory_on(gpu) is not None and need.cores_on(gpu) is not None


def _static_refusal(considered: list[NodeState], need: Need) -> Refusal | None:
    """What no GPU could give even if idle: too large, no GPU matching, too few per node, taints."""
    best_count, best_node = 0, ""
    matching = 0
    largest: GpuDevice | None = None
    taint: tuple[DeviceTaint, str, str] | None = None
    wanted = need.least_count
    for state in considered:
        fitting = usable = 0
        if need.selector is None and state.plain:
            for size, how_many in state.gpu_sizes:  # no GPU scan: sizes decide
                matching += how_many
                if need.memory_for_size(size) is not None:
                    fitting += how_many
            usable = fitting
            if largest is None or state.max_usable_memory > largest.memory_bytes:
                largest = state.largest_gpu
        else:
            for i, gpu in enumerate(state.gpus):
                if not need.selects(state, i):
                    continue
                matching += 1
                if largest is None or gpu.memory_bytes > largest.memory_bytes:
                    largest = gpu
                if not _gives(need, gpu):
                    continue
                fitting += 1
                blocking = need.blocking_taint(gpu)
                if blocking is None:
                    usable += 1
                elif taint is None:
                    taint = (blocking, state.name, gpu.name)
        if usable >= wanted:
            return None
        if fitting > best_count:
            best_count, best_node = fitting, state.name
    which = " matching its selectors" if matching < sum(len(s.gpus) for s in considered) else ""
    if matching == 0:
        # Callers append the compiled selectors' evaluation errors, the likeliest cause.
        return Refusal(f"{need.where()}no GPU matches the request's selectors on the "
                       f"{len(considered)} eligible node(s)", RefusalKind.NO_MATCHING_GPU,
                       need.claim.key, need.request.name)
    if best_count >= wanted and taint is not None:
        found, node, gpu_name = taint
        return Refusal(f"{need.where()}the GPUs{which} that can give {need.describe()} carry taints the request "
                       f"does not tolerate (e.g. {found} on {node} {gpu_name}): add a matching toleration to the "
                       "request, or have the taint removed", RefusalKind.TAINTED, need.claim.key, need.request.name)
    if best_count == 0:
        assert largest is not None
        product = f"{largest.product_name}, " if largest.product_name else ""
        policy = _policy_refuses(need, largest)
        size = humanize_bytes(largest.memory_bytes) if policy else _below(largest.memory_bytes, need.min_free_memory)
        return Refusal(f"{need.where()}{need.describe()} is more than any GPU{which} can give "
                       f"(largest: {product}{size}{policy})",
                       RefusalKind.TOO_LARGE, need.claim.key, need.request.name)
    return Refusal(f"{need.where()}needs {wanted} GPUs{which} that can give {need.describe()} on one node; "
                   f"the node with the most, {best_node}, has {best_count}",
                   RefusalKind.TOO_FEW_GPUS, need.claim.key, need.request.name)


def _capacity_refusal(ledger: Ledger, pod: PodRequest, considered: list[NodeState], need: Need,
                      policy: Policy) -> Refusal | None:
    """The request alone does not fit what is free now: say what is free at best."""
    best_count, best_node = 0, ""
    may_fit = _nodes_whose_best_gpu_may_fit(ledger, pod, need)
    for state in may_fit:
        if not need.summary_allows(state):
            continue
        free_memory, free_cores = free_lists(state)
        count = len(eligible(state, need, None, free_memory, free_cores, policy))
        if count >= need.least_count:
            return None
        if count > best_count:
            best_count, best_node = count, state.name
    which = " matching its selectors" if _selector_narrows(considered, need) else ""
    if need.least_count > 1:
        return Refusal(f"{need.where()}needs {need.count} GPUs{which} with {need.describe()} free on one node; "
                       f"the best node, {best_node or considered[0].name}, has {best_count}",
                       RefusalKind.NO_CAPACITY, need.claim.key, need.request.name)
    nearest = _best_free(ledger, pod, considered, may_fit, need)
    if nearest is None:
        return None  # something frees enough of it after all: the reason lies elsewhere
    return Refusal(f"{need.where()}no GPU{which} has {need.describe()} free; {nearest}",
                   RefusalKind.NO_CAPACITY, need.claim.key, need.request.name)


def _selector_narrows(considered: list[NodeState], need: Need) -> bool:
    """Whether the request's selectors rule out any GPU (a class selecting every GPU does not)."""
    if need.selector is None:
        return False
    return not all(need.selects(state, i) for state in considered for i in range(len(state.gpus)))


def _nodes_whose_best_gpu_may_fit(ledger: Ledger, pod: PodRequest, need: Need) -> list[NodeState]:
    by_memory = ledger.count_with_free_memory(need.prune_memory)
    by_fraction = ledger.count_with_free_fraction(need.prune_fraction)
    states = (ledger.with_free_memory(need.prune_memory) if by_memory <= by_fraction
              else ledger.with_free_fraction(need.prune_fraction))
    return [state for state in states if pod.allows(state.name)]


def _best_free(ledger: Ledger, pod: PodRequest, considered: list[NodeState], may_fit: list[NodeState],
               need: Need) -> str | None:
    """The nearest miss: the most cores free where the memory would fit, else the most memory
    free; None when that nearest miss would in fact satisfy the request."""
    percent = need.request.share.memory_percent is not None
    if need.cores:
        best_cores: tuple[int, str, GpuDevice] | None = None
        for state in may_fit:
            for i, gpu in enumerate(state.gpus):
                memory = need.memory_on(gpu)
                if memory is None or memory > state.free_memory(i) or not need.may_use(state, i):
                    continue
                cores = state.free_cores(i)
                if best_cores is None or cores > best_cores[0]:
                    best_cores = (cores, state.name, gpu)
        if best_cores is not None:
            cores, node, gpu = best_cores
            taken = need.cores_on(gpu)
            if taken is not None and cores >= taken:
                return None  # that GPU could take it after all: the reason lies elsewhere
            rounded = f", where the request takes {taken} %" if taken is not None and taken != need.cores else ""
            return f"where the memory fits, the most cores free is {cores} % (on {node} {gpu.name}{rounded})"
    best: tuple[NodeState, int] | None = None
    if need.selector is None and ledger.all_plain:
        # The index's tail is the node whose best GPU has the most free.
        for state in ledger.most_free(fraction=percent):
            if pod.allows(state.name):
                index = state.max_free_fraction_gpu if percent else state.max_free_memory_gpu
                best = (state, index) if index >= 0 else None
                break
    else:
        best_measure = -1.0
        for state in considered:
            for i, gpu in enumerate(state.gpus):
                if need.may_use(state, i) and _gives(need, gpu):  # GPUs that could give it when idle
                    free = state.free_memory(i)
                    measure = free / gpu.memory_bytes if percent else free
                    if measure > best_measure:
                        best_measure, best = measure, (state, i)
    if best is None:
        return "no GPU has any memory free"
    state, index = best
    free = state.free_memory(index)
    needed = need.memory_on(state.gpus[index])
    if needed is not None and free >= needed and not need.cores:
        return None
    text = _below(free, needed)
    if percent:
        text += f" ({100 * free // state.gpus[index].memory_bytes} %)"
    rounded = (f", where the request takes {humanize_bytes(needed)}"
               if needed is not None and not percent and needed != need.min_free_memory else "")
    return f"largest free: {text} on {state.name} {state.gpus[index].name}{rounded}"


def _claim_fits_alone(state: NodeState, needs: Sequence[Need], policy: Policy, budget: SearchBudget) -> bool:
    free_memory, free_cores = free_lists(state)
    if greedy_claim(state, needs, free_memory, free_cores, policy) is not None:
        return True
    return needs_search([needs]) and place_searching(state, [needs], policy, budget) is not None


def _claim_refusal(considered: list[NodeState], needs: Sequence[Need], policy: Policy,
                   budget: SearchBudget) -> Refusal | None:
    """The claim alone (all its requests, its constraints) fits no node."""
    claim = needs[0].claim
    if len(needs) == 1 and not claim.match_attributes and not claim.distinct_attributes:
        return None
    cut_before = len(budget.cut_nodes)
    if any(_claim_fits_alone(state, needs, policy, budget) for state in considered):
        return None
    for constraint in (*claim.match_attributes, *claim.distinct_attributes):
        refusal = _constraint_refusal(considered, needs, constraint, policy)
        if refusal is not None:
            return refusal
    if len(budget.cut_nodes) > cut_before:
        return budget_refusal(budget)
    return Refusal(f"claim {claim.display}: its {len(needs)} requests do not fit together on any one node",
                   RefusalKind.NO_CAPACITY, claim.key)


def _constraint_refusal(considered: list[NodeState], needs: Sequence[Need],
                        constraint: MatchAttribute | DistinctAttribute, policy: Policy) -> Refusal | None:
    claim = needs[0].claim
    covered = [need for need in needs if constraint.covers(need.request)]
    if not covered:
        return None
    wanted = sum(need.least_count for need in covered)
    name = constraint.key
    kind = "matchAttribute" if isinstance(constraint, MatchAttribute) else "distinctAttribute"
    if not any(name in gpu.attributes for state in considered for gpu in state.gpus):
        return Refusal(f"claim {claim.display}: {kind} {constraint.attribute}: no GPU has that "
                       "attribute", RefusalKind.CONSTRAINT, claim.key)
    largest = min(covered, key=Need.size_key)
    best: tuple[int, str, AttributeValue | None] = (0, considered[0].name, None)
    for state in considered:
        free_memory, free_cores = free_lists(state)
        found = eligible(state, largest, None, free_memory, free_cores, policy)
        values = [state.gpus[i].attributes.get(name) for _, i, _, _ in found]
        if isinstance(constraint, MatchAttribute):
            for value in attribute_values(state, constraint):
                count = sum(1 for seen in values if same_value(seen, value))
                if count > best[0]:
                    best = (count, state.name, value)
        else:
            distinct: list[AttributeValue] = []
            for seen in values:
                if seen is not None and not any(same_value(seen, other) for other in distinct):
                    distinct.append(seen)
            if len(distinct) > best[0]:
                best = (len(distinct), state.name, None)
    if best[0] >= wanted:
        return None
    if isinstance(constraint, MatchAttribute):
        detail = f" (all with {name}={best[2]})" if best[2] is not None else ""
        return Refusal(f"claim {claim.display}: needs {wanted} GPUs with matching {name} on one node, "
                       f"each with {largest.describe()} free; the best node, {best[1]}, has {best[0]}{detail}",
                       RefusalKind.CONSTRAINT, claim.key)
    return Refusal(f"claim {claim.display}: needs {wanted} GPUs with different {name} on one node, each with "
                   f"{largest.describe()} free; the best node, {best[1]}, has {best[0]} different values",
                   RefusalKind.CONSTRAINT, claim.key)
