"""Placing one pod's concrete requests on one node: the greedy order first, then a bounded search.

Internal to the allocator. Two passes over the same node:

1. `place_greedy` — the cheap path, what decides almost every pod: each claim's requests largest
   first, each taking the GPUs the GPU policy prefers (NUMA-close ones first for ``count > 1``);
   with ``matchAttribute`` each combination of attribute values is tried in turn.
2. `place_searching` — only when the greedy pass fails on a pod with several requests: a
   depth-first search over every way to give each request its GPUs (most constrained request
   first, preferred GPUs first), checking capacity, selectors, taints, ``matchAttribute`` and
   ``distinctAttribute`` as it goes, like kube-scheduler's structured allocator. It is complete
   within `SearchBudget`: a node whose search is cut short is recorded, so a refusal can say that
   the budget ran out instead of claiming the pod does not fit.

A single request without constraints needs no search: it fits exactly when enough GPUs can take
it, which is what the greedy pass checks.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

from vgpu_dra.driver.allocation_request import MAX_ALLOCATION_RESULTS, DistinctAttribute, MatchAttribute
from vgpu_dra.driver.ledger import AttributeValue, GpuDevice, NodeState
from vgpu_dra.driver.placement_policy import Policy, gpu_free_after, gpu_sort_key
from vgpu_dra.driver.prepared_request import Need

Picks = list[dict[int, list[int]]]
"""Per claim (pod order): the request's order in the claim → the indices of its GPUs."""

Eligible = tuple[tuple[float, int], int, int, int]
"""(policy sort key, GPU index, memory it would take, cores it would take)."""

MAX_ATTRIBUTE_COMBINATIONS = 256
"""matchAttribute value combinations the greedy pass tries per claim and node."""
STEPS_PER_NODE = 5_000
"""GPU combinations the search may try on one node …"""
STEPS_PER_DECISION = 50_000
"""… and in one decision over all nodes (a refused pod is retried when capacity changes)."""


class SearchBudget:
    """How many GPU combinations one decision may still try, and where the search was cut short."""

    __slots__ = ("per_node", "left", "cut_nodes", "steps", "_node_steps")

    def __init__(self, per_node: int = STEPS_PER_NODE, per_decision: int = STEPS_PER_DECISION):
        self.per_node = per_node
        self.left = per_decision
        self.cut_nodes: list[str] = []
        self.steps = 0
        self._node_steps = 0

    @property
    def exhausted(self) -> bool:
        """Whether any search of this decision stopped before it was done."""
        return bool(self.cut_nodes)

    def start_node(self) -> bool:
        """Begin a node's search; False when the decision has no steps left."""
        self._node_steps = 0
        return self.left > 0

    def step(self) -> None:
        self.steps += 1
        self._node_steps += 1
        self.left -= 1
        if self._node_steps > self.per_node or self.left < 0:
            raise _OutOfSteps


class _OutOfSteps(Exception):
    pass


def same_value(left: AttributeValue | None, right: AttributeValue | None) -> bool:
    """Equal attribute values of the same type (bool is an int in Python; the type is part of the value)."""
    return left is not None and type(left) is type(right) and left == right


def _value_key(value: AttributeValue) -> tuple[str, AttributeValue]:
    return (type(value).__name__, value)


def value_order(value: AttributeValue) -> tuple[str, str]:
    """A total order over attribute values of any type (for deterministic choices)."""
    return (type(value).__name__, str(value))


def free_lists(state: NodeState) -> tuple[list[int], list[int]]:
    """What is free on each GPU of the node now: (memory bytes, cores)."""
    return state.free_lists()


def eligible(state: NodeState, need: Need, mask: list[bool] | None, free_memory: list[int],
             free_cores: list[int], policy: Policy) -> list[Eligible]:
    """Every GPU the request may use and has room for it now, with its policy sort key."""
    found = []
    plain = state.plain
    selector = need.selector
    for i, gpu in enumerate(state.gpus):
        if mask is not None and not mask[i]:
            continue
        if plain:  # the common case: sizes decide, no taints (what this loop was before policies)
            memory = need.memory_for_size(gpu.memory_bytes)
            cores = need.cores
            if memory is None or memory > free_memory[i] or cores > free_cores[i]:
                continue
            if selector is not None and not need.selects(state, i):
                continue
        else:
            memory = need.memory_on(gpu)
            if memory is None or memory > free_memory[i]:
                continue
            cores = need.cores_on(gpu)
            if cores is None or cores > free_cores[i] or not need.may_use(state, i):
                continue
        free_after = gpu_free_after(free_memory[i], memory, gpu.memory_bytes, free_cores[i], cores, gpu.cores)
        found.append((gpu_sort_key(policy, free_after, i), i, memory, cores))
    return found


# --- pass 1: greedy ------------------------------------------------------------------------------

class _Distinct:
    """Values taken so far under each distinctAttribute constraint of one claim."""

    __slots__ = ("constraints", "used")

    def __init__(self, constraints: Sequence[DistinctAttribute]):
        self.constraints = tuple(constraints)
        self.used: list[set[tuple[str, AttributeValue]]] = [set() for _ in self.constraints]

    def covering(self, need: Need) -> list[int]:
        return [j for j, constraint in enumerate(self.constraints) if constraint.covers(need.request)]

    def allows(self, gpu: GpuDevice, which: list[int], also: Sequence[GpuDevice] = ()) -> bool:
        for j in which:
            value = gpu.attributes.get(self.constraints[j].key)
            if value is None or _value_key(value) in self.used[j]:
                return False
            if any(same_value(other.attributes.get(self.constraints[j].key), value) for other in also):
                return False
        return True

    def add(self, gpus: Sequence[GpuDevice], which: list[int]) -> None:
        for j in which:
            for gpu in gpus:
                self.used[j].add(_value_key(gpu.attributes[self.constraints[j].key]))

    def remove(self, gpus: Sequence[GpuDevice], which: list[int]) -> None:
        for j in which:
            for gpu in gpus:
                self.used[j].discard(_value_key(gpu.attributes[self.constraints[j].key]))


_NO_DISTINCT = _Distinct(())


def place_greedy(state: NodeState, claims: Sequence[Sequence[Need]], policy: Policy) -> Picks | None:
    """The greedy pass over all the pod's claims on one node; None when it does not fit."""
    if len(claims) == 1 and len(claims[0]) == 1:
        need = claims[0][0]
        claim = need.claim
        if not (need.all_devices or claim.match_attributes or claim.distinct_attributes):
            # One request, nothing to keep consistent: read what is free in place (most nodes
            # the walk looks at do not fit, and copying their free lists would dominate).
            memory, cores = state.free_now()
            found = eligible(state, need, None, memory, cores, policy)
            if len(found) < need.count:
                return None
            found.sort()
            return [{need.order: [i for _, i, _, _ in _choose(state, found, need.count, _NO_DISTINCT, [])]}]
    free_memory, free_cores = free_lists(state)
    picks = []
    for needs in claims:
        claim_picks = greedy_claim(state, needs, free_memory, free_cores, policy)
        if claim_picks is None:
            return None
        picks.append(claim_picks)
    return picks


def greedy_claim(state: NodeState, needs: Sequence[Need], free_memory: list[int], free_cores: list[int],
                 policy: Policy) -> dict[int, list[int]] | None:
    """Place one claim's requests greedily, updating the free lists on success."""
    ordered = sorted(needs, key=Need.size_key)
    constraints = needs[0].claim.match_attributes
    if not constraints:
        return _greedy_requests(state, ordered, None, free_memory, free_cores, policy)
    for masks in constraint_masks(state, needs, constraints, free_memory, policy):
        trial_memory, trial_cores = list(free_memory), list(free_cores)
        picks = _greedy_requests(state, ordered, masks, trial_memory, trial_cores, policy)
        if picks is not None:
            free_memory[:] = trial_memory
            free_cores[:] = trial_cores
            return picks
    return None


def _greedy_requests(state: NodeState, ordered: Sequence[Need], masks: dict[int, list[bool]] | None,
                     free_memory: list[int], free_cores: list[int], policy: Policy) -> dict[int, list[int]] | None:
    distinct = _Distinct(ordered[0].claim.distinct_attributes)
    picks: dict[int, list[int]] = {}
    results = 0
    for need in ordered:
        chosen = _greedy_pick(state, need, None if masks is None else masks[need.order],
                              free_memory, free_cores, policy, distinct)
        if chosen is None:
            return None
        results += len(chosen)
        if results > MAX_ALLOCATION_RESULTS:
            return None
        picks[need.order] = chosen
    return picks


def _greedy_pick(state: NodeState, need: Need, mask: list[bool] | None, free_memory: list[int],
                 free_cores: list[int], policy: Policy, distinct: _Distinct) -> list[int] | None:
    which = distinct.covering(need) if distinct.constraints else []
    if need.all_devices:
        wanted = need.all_set(state)
        entries = {i: (memory, cores) for _, i, memory, cores in eligible(state, need, mask, free_memory,
                                                                          free_cores, policy)}
        if not wanted or any(i not in entries for i in wanted):
            return None
        gpus = [state.gpus[i] for i in wanted]
        if which and not all(distinct.allows(gpu, which, gpus[:n]) for n, gpu in enumerate(gpus)):
            return None
        chosen_entries = [((0.0, i), i, *entries[i]) for i in wanted]
    else:
        found = eligible(state, need, mask, free_memory, free_cores, policy)
        if len(found) < need.count:
            return None
        found.sort()
        chosen_entries = _choose(state, found, need.count, distinct, which)
        if chosen_entries is None:
            return None
    for _, i, memory, cores in chosen_entries:
        free_memory[i] -= memory
        free_cores[i] -= cores
    chosen = [i for _, i, _, _ in chosen_entries]
    if which:
        distinct.add([state.gpus[i] for i in chosen], which)
    return chosen


def _choose(state: NodeState, found: list[Eligible], count: int, distinct: _Distinct,
            which: list[int]) -> list[Eligible] | None:
    """``count`` GPUs in policy order: the first NUMA node to collect them wins, else the first
    ``count`` overall (distinct values only, under distinctAttribute)."""
    if not which:
        if count > 1:
            groups_plain: dict[int, list[Eligible]] = {}
            for entry in found:
                group = groups_plain.setdefault(state.gpus[entry[1]].numa_node, [])
                group.append(entry)
                if len(group) == count:
                    return group
        return found[:count]

    def fits(entry: Eligible, group: list[Eligible]) -> bool:
        return distinct.allows(state.gpus[entry[1]], which, [state.gpus[e[1]] for e in group])

    if count > 1:
        groups: dict[int, list[Eligible]] = {}
        for entry in found:
            group = groups.setdefault(state.gpus[entry[1]].numa_node, [])
            if fits(entry, group):
                group.append(entry)
                if len(group) == count:
                    return group
    chosen: list[Eligible] = []
    for entry in found:
        if fits(entry, chosen):
            chosen.append(entry)
            if len(chosen) == count:
                return chosen
    return None


def constraint_masks(state: NodeState, needs: Sequence[Need], constraints: Sequence[MatchAttribute],
                     free_memory: list[int], policy: Policy) -> Iterator[dict[int, list[bool]]]:
    """Per request, which GPUs it may use, for each combination of matchAttribute values."""
    options: list[list[AttributeValue]] = []
    for constraint in constraints:
        values = attribute_values(state, constraint)
        if not values:
            return
        # Prefer the group with the least (binpack) or most (spread) free memory.
        def group_free(value: AttributeValue, name: str = constraint.key) -> int:
            return sum(free_memory[i] for i, gpu in enumerate(state.gpus) if same_value(gpu.attributes.get(name), value))
        values.sort(key=lambda value: (group_free(value) if policy is Policy.BINPACK else -group_free(value),
                                       value_order(value)))
        options.append(values)
    for combination in itertools.islice(itertools.product(*options), MAX_ATTRIBUTE_COMBINATIONS):
        masks: dict[int, list[bool]] = {}
        for need in needs:
            mask = [True] * len(state.gpus)
            for constraint, value in zip(constraints, combination):
                if not constraint.covers(need.request):
                    continue
                name = constraint.key
                for i, gpu in enumerate(state.gpus):
                    if mask[i] and not same_value(gpu.attributes.get(name), value):
                        mask[i] = False
            masks[need.order] = mask
        yield masks


def attribute_values(state: NodeState, constraint: MatchAttribute | DistinctAttribute) -> list[AttributeValue]:
    """The distinct values of the constraint's attribute among the node's GPUs."""
    name = constraint.key
    values: list[AttributeValue] = []
    for gpu in state.gpus:
        value = gpu.attributes.get(name)
        if value is not None and not any(same_value(value, seen) for seen in values):
            values.append(value)
    return values


def needs_search(claims: Sequence[Sequence[Need]]) -> bool:
    """Whether a failed greedy pass can be wrong: only a pod with several requests can be."""
    return sum(len(needs) for needs in claims) > 1


# --- pass 2: bounded backtracking ----------------------------------------------------------------

def place_searching(state: NodeState, claims: Sequence[Sequence[Need]], policy: Policy,
                    budget: SearchBudget) -> Picks | None:
    """Every way to place the pod on this node, within the budget; None when none exists or the
    budget ran out (then the node is in ``budget.cut_nodes``)."""
    if not budget.start_node():
        budget.cut_nodes.append(state.name)
        return None
    search = _Search(state, claims, policy, budget)
    try:
        return search.run()
    except _OutOfSteps:
        budget.cut_nodes.append(state.name)
        return None


class _Search:
    """One node's depth-first search; the free lists and constraint state change and change back."""

    def __init__(self, state: NodeState, claims: Sequence[Sequence[Need]], policy: Policy, budget: SearchBudget):
        self.state = state
        self.claims = claims
        self.policy = policy
        self.budget = budget
        self.free_memory, self.free_cores = free_lists(state)
        self.picks: Picks = [{} for _ in claims]
        self.results = [0] * len(claims)
        self.match: list[list[tuple[tuple[str, AttributeValue] | None, int]]] = [
            [(None, 0)] * len(needs[0].claim.match_attributes) for needs in claims]
        self.distinct = [_Distinct(needs[0].claim.distinct_attributes) for needs in claims]

    def run(self) -> Picks | None:
        order: list[tuple[int, Need, list[int]]] = []
        for claim, needs in enumerate(self.claims):
            for need in needs:
                if need.all_devices:
                    candidates = need.all_set(self.state)
                else:
                    candidates = [i for i, gpu in enumerate(self.state.gpus) if self._fits(need, gpu, i)
                                  and need.may_use(self.state, i)]
                if len(candidates) < need.least_count:
                    return None
                order.append((claim, need, candidates))
        # Forced (All) requests first, then the most constrained: fewest candidate GPUs.
        order.sort(key=lambda entry: (0 if entry[1].all_devices else 1, len(entry[2]), entry[1].size_key()))
        self.order = order
        return self.picks if self._place(0) else None

    def _fits(self, need: Need, gpu: GpuDevice, i: int) -> bool:
        memory, cores = need.memory_on(gpu), need.cores_on(gpu)
        return (memory is not None and cores is not None and memory <= self.free_memory[i]
                and cores <= self.free_cores[i])

    def _place(self, position: int) -> bool:
        if position == len(self.order):
            return True
        claim, need, candidates = self.order[position]
        constraints = need.claim.match_attributes
        covering = [j for j, constraint in enumerate(constraints) if constraint.covers(need.request)]
        distinct = self.distinct[claim]
        which = distinct.covering(need) if distinct.constraints else []
        entries = []
        for i in candidates:
            gpu = self.state.gpus[i]
            memory, cores = need.memory_on(gpu), need.cores_on(gpu)
            assert memory is not None and cores is not None
            if memory > self.free_memory[i] or cores > self.free_cores[i] or (
                    need.all_devices and not need.may_use(self.state, i)):  # All takes tainted ones too: or fails
                if need.all_devices:
                    return False
                continue
            if not self._matches_fixed(claim, covering, gpu) or (which and not distinct.allows(gpu, which)):
                if need.all_devices:
                    return False
                continue
            free_after = gpu_free_after(self.free_memory[i], memory, gpu.memory_bytes, self.free_cores[i], cores,
                                        gpu.cores)
            entries.append((gpu_sort_key(self.policy, free_after, i), i, memory, cores))
        if need.all_devices:
            combinations: Iterator[tuple[Eligible, ...]] = iter([tuple(entries)])
        else:
            if len(entries) < need.count:
                return False
            entries.sort()
            combinations = self._combinations(claim, covering, entries, need.count)
        for combo in combinations:
            self.budget.step()
            if self.results[claim] + len(combo) > MAX_ALLOCATION_RESULTS:
                return False
            gpus = [self.state.gpus[i] for _, i, _, _ in combo]
            if which and not all(distinct.allows(gpu, which, gpus[:n]) for n, gpu in enumerate(gpus)):
                continue
            if covering and not self._uniform(claim, covering, gpus):
                continue
            self._apply(claim, need, combo, covering, which, +1)
            if self._place(position + 1):
                return True
            self._apply(claim, need, combo, covering, which, -1)
        return False

    def _combinations(self, claim: int, covering: list[int], entries: list[Eligible],
                      count: int) -> Iterator[tuple[Eligible, ...]]:
        unset = [j for j in covering if self.match[claim][j][0] is None]
        if not unset:
            yield from itertools.combinations(entries, count)
            return
        # A constraint not fixed yet: the request's GPUs must share a value, so only groups of
        # GPUs with one value each (in preference order of their best GPU) are combined.
        constraints = self.claims[claim][0].claim.match_attributes
        groups: dict[tuple[object, ...], list[Eligible]] = {}
        for entry in entries:
            attributes = self.state.gpus[entry[1]].attributes
            values = [attributes.get(constraints[j].key) for j in unset]
            if any(value is None for value in values):
                continue
            groups.setdefault(tuple(_value_key(v) for v in values if v is not None), []).append(entry)
        for group in groups.values():
            yield from itertools.combinations(group, count)

    def _matches_fixed(self, claim: int, covering: list[int], gpu: GpuDevice) -> bool:
        constraints = self.claims[claim][0].claim.match_attributes
        for j in covering:
            fixed, _ = self.match[claim][j]
            value = gpu.attributes.get(constraints[j].key)
            if value is None or (fixed is not None and _value_key(value) != fixed):
                return False
        return True

    def _uniform(self, claim: int, covering: list[int], gpus: list[GpuDevice]) -> bool:
        constraints = self.claims[claim][0].claim.match_attributes
        for j in covering:
            name = constraints[j].key
            if not all(same_value(gpu.attributes.get(name), gpus[0].attributes.get(name)) for gpu in gpus):
                return False
        return True

    def _apply(self, claim: int, need: Need, combo: tuple[Eligible, ...], covering: list[int], which: list[int],
               sign: int) -> None:
        gpus = [self.state.gpus[i] for _, i, _, _ in combo]
        for _, i, memory, cores in combo:
            self.free_memory[i] -= sign * memory
            self.free_cores[i] -= sign * cores
        self.results[claim] += sign * len(combo)
        constraints = self.claims[claim][0].claim.match_attributes
        for j in covering:
            fixed, count = self.match[claim][j]
            count += sign * len(combo)
            if sign > 0 and fixed is None:
                fixed = _value_key(gpus[0].attributes[constraints[j].key])
            self.match[claim][j] = (fixed if count else None, count)
        if which:
            if sign > 0:
                self.distinct[claim].add(gpus, which)
            else:
                self.distinct[claim].remove(gpus, which)
        if sign > 0:
            self.picks[claim][need.order] = [i for _, i, _, _ in combo]
        else:
            self.picks[claim].pop(need.order, None)
