"""Completeness: whenever a placement exists the allocator finds it — checked against an exhaustive
search on tiny clusters — and a refusal is true, says when the search budget ran out, and never
contradicts itself."""
from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vgpu_dra.api.names import GIBIBYTE, MEBIBYTE
from vgpu_dra.driver import allocation_refusals, node_search
from vgpu_dra.driver.allocator import (
    ClaimRequest, DeviceRequest, DistinctAttribute, FirstAvailable, GpuDevice, Ledger, MatchAttribute, Placement,
    PodRequest, Refusal, RefusalKind, allocate,
)
from vgpu_dra.driver.capacity_policy import RequestPolicy
from vgpu_dra.driver.device_taints import DeviceTaint, Toleration
from vgpu_dra.driver.ledger import Consumption
from vgpu_dra.driver.limits import ShareRequest


POLICIES = {
    "driver": (None, None),
    "steps": (RequestPolicy(default=2 * GIBIBYTE, minimum=GIBIBYTE, maximum=4 * GIBIBYTE, step=GIBIBYTE,
                            has_range=True), RequestPolicy(default=0, minimum=0, maximum=100, step=25, has_range=True)),
    "values": (RequestPolicy(default=GIBIBYTE, valid_values=(GIBIBYTE, 2 * GIBIBYTE, 3 * GIBIBYTE, 6 * GIBIBYTE)),
               RequestPolicy(default=10, valid_values=(10, 50, 100))),
}


def gpu(index: int, gib: int = 10, numa: int = 0, taint: bool = False, policy: str = "driver") -> GpuDevice:
    memory_policy, cores_policy = POLICIES[policy]
    return GpuDevice(f"gpu-{index}", f"GPU-{index}", gib * GIBIBYTE, numa_node=numa,
                     attributes={"uuid": f"GPU-{index}", "numaNode": numa, "index": index},
                     taints=(DeviceTaint("t", "", "NoSchedule"),) if taint else (),
                     memory_policy=memory_policy, cores_policy=cores_policy)


def request(name: str, gib: int | None, cores: int = 0, count: int = 1, **fields) -> DeviceRequest:
    return DeviceRequest(name, ShareRequest(memory_bytes=None if gib is None else gib * GIBIBYTE, cores=cores),
                         count, **fields)


def one_claim(*requests, **constraints) -> PodRequest:
    return PodRequest((ClaimRequest("c", tuple(requests), **constraints),))


def test_a_pod_that_fits_only_if_the_largest_request_does_not_go_first_is_placed():
    ledger, pod = swapped_pod()
    result = allocate(ledger, pod)
    assert isinstance(result, Placement), result
    on = {name: shares[0].device.name for name, shares in result.claims[0].requests}
    assert on["a"] == "gpu-1" and sorted(on.values()) == ["gpu-0", "gpu-0", "gpu-1", "gpu-1"]


def test_the_greedy_pass_alone_would_refuse_that_pod(monkeypatch):
    from vgpu_dra.driver import allocator as module

    ledger, pod = swapped_pod()
    monkeypatch.setattr(module, "place_searching", lambda *args: None)
    monkeypatch.setattr(allocation_refusals, "place_searching", lambda *args: None)
    assert isinstance(allocate(ledger, pod), Refusal)


def test_a_request_for_all_free_cores_is_not_skipped_by_the_node_summary():
    """Two requests, one asking for exactly the cores an idle GPU has: the node's summary (most
    cores free on one GPU = 100) must let it through."""
    ledger = Ledger()
    ledger.set_node("node", [gpu(0), gpu(1)])
    pod = one_claim(request("train", 1, cores=100), request("serve", 1, cores=20))
    result = allocate(ledger, pod)
    assert isinstance(result, Placement), result
    assert {name: shares[0].share.cores for name, shares in result.claims[0].requests} == {"train": 100, "serve": 20}


def swapped_pod() -> tuple[Ledger, PodRequest]:
    """4 + 3 + 3 + 3 GiB into 6 and 7 GiB free: the greedy pass (largest first, fullest GPU that
    fits) puts 4 into the 6 and strands the last 3; 3 + 3 | 4 + 3 fits exactly."""
    ledger = Ledger()
    ledger.set_node("node", [gpu(0), gpu(1)])
    ledger.record("fill", [Consumption("node", "gpu-0", 4 * GIBIBYTE, 0), Consumption("node", "gpu-1", 3 * GIBIBYTE, 0)])
    return ledger, one_claim(request("a", 4), request("b", 3), request("c", 3), request("d", 3))


def test_when_the_budget_runs_out_the_refusal_says_so(monkeypatch):
    ledger, pod = swapped_pod()
    monkeypatch.setattr(node_search.SearchBudget.__init__, "__defaults__", (1, 1))  # one step in all
    result = allocate(ledger, pod)
    assert isinstance(result, Refusal)
    assert result.kind is RefusalKind.SEARCH_BUDGET
    assert "search budget ran out" in result.reason and "stopped early on node" in result.reason
    assert "one may exist" in result.reason


# --- exhaustive search on tiny instances --------------------------------------------------------

ToleratesT = (Toleration("t", "Exists"),)


def _share_fits(req: DeviceRequest, device: GpuDevice) -> tuple[int, int] | None:
    memory = req.share.consumed_memory(device.memory_bytes, device.memory_policy)
    cores = req.share.consumed_cores(device.cores, device.cores_policy)
    return None if memory is None or cores is None else (memory, cores)


def _attribute(device: GpuDevice, key: str):
    return device.attributes.get(key)


def _valid(ledger: Ledger, node: str, claims, assignment) -> bool:
    """assignment: per claim, per concrete request, a tuple of GPU indices."""
    state = ledger.node(node)
    free_memory = [state.free_memory(i) for i in range(len(state.gpus))]
    free_cores = [state.free_cores(i) for i in range(len(state.gpus))]
    for claim, (requests, picks) in zip(claims, assignment):
        for req, chosen in zip(requests, picks):
            if len(set(chosen)) != len(chosen):
                return False
            if req.all_devices:
                expected = [i for i, device in enumerate(state.gpus)
                            if (req.selector is None or req.selector(state.candidate(i)))
                            and (fit := _share_fits(req, device)) is not None
                            and fit[0] <= state.free_memory(i) and fit[1] <= state.free_cores(i)]
                if not expected or sorted(chosen) != expected:
                    return False
            elif len(chosen) != req.count:
                return False
            for i in chosen:
                device = state.gpus[i]
                if req.selector is not None and not req.selector(state.candidate(i)):
                    return False
                if device.taints and not any(t.tolerates(x) for t in req.tolerations for x in device.taints):
                    return False
                fit = _share_fits(req, device)
                if fit is None:
                    return False
                free_memory[i] -= fit[0]
                free_cores[i] -= fit[1]
                if free_memory[i] < 0 or free_cores[i] < 0:
                    return False
        for constraint in claim.match_attributes + claim.distinct_attributes:
            values = [_attribute(state.gpus[i], constraint.key)
                      for req, chosen in zip(requests, picks) if constraint.covers(req) for i in chosen]
            if any(value is None for value in values):
                return False
            if isinstance(constraint, MatchAttribute) and len(set(values)) > 1:
                return False
            if isinstance(constraint, DistinctAttribute) and len(set(values)) != len(values):
                return False
    return True


def _concrete(claims, choice):
    picks = iter(choice)
    return [[entry.alternatives[next(picks)] if isinstance(entry, FirstAvailable) else entry
             for entry in claim.requests] for claim in claims]


def _options(state, req):
    n = len(state.gpus)
    if req.all_devices:
        return [tuple(i for i, device in enumerate(state.gpus)
                      if (req.selector is None or req.selector(state.candidate(i)))
                      and (fit := _share_fits(req, device)) is not None
                      and fit[0] <= state.free_memory(i) and fit[1] <= state.free_cores(i))]
    return list(itertools.combinations(range(n), req.count))


def exhaustive(ledger: Ledger, pod: PodRequest):
    """The first firstAvailable choice (in the allocator's order) with any valid placement, or None."""
    sizes = [len(e.alternatives) for c in pod.claims for e in c.requests if isinstance(e, FirstAvailable)]
    for choice in itertools.product(*(range(s) for s in sizes)):
        concrete = _concrete(pod.claims, choice)
        for node in ledger.node_names():
            state = ledger.node(node)
            flat = [(c, r) for c, requests in enumerate(concrete) for r in range(len(requests))]
            for combo in itertools.product(*(_options(state, concrete[c][r]) for c, r in flat)):
                assignment = [(requests, []) for requests in concrete]
                for (c, _), chosen in zip(flat, combo):
                    assignment[c][1].append(chosen)
                if _valid(ledger, node, pod.claims, assignment):
                    return choice
    return None


def _placement_choice(pod: PodRequest, placement: Placement) -> tuple[int, ...]:
    choice = []
    for claim in pod.claims:
        placed = placement.claim(claim.key)
        for entry in claim.requests:
            if isinstance(entry, FirstAvailable):
                name = placed.chosen(entry.name)
                choice.append([a.name for a in entry.alternatives].index(name))
    return tuple(choice)


def _placement_valid(ledger: Ledger, pod: PodRequest, placement: Placement) -> bool:
    state = ledger.node(placement.node)
    assignment = []
    for claim in pod.claims:
        placed = placement.claim(claim.key)
        requests, picks = [], []
        for entry in claim.requests:
            name = placed.chosen(entry.name)
            req = entry if isinstance(entry, DeviceRequest) else next(a for a in entry.alternatives if a.name == name)
            requests.append(req)
            picks.append(tuple(state.index[share.device.name] for share in placed.shares(name)))
        assignment.append((requests, picks))
    return _valid(ledger, placement.node, pod.claims, assignment)


def _humanized(text: str) -> float:
    number, unit = text.split()
    return float(number) * {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}[unit]


def assert_refusal_does_not_contradict_itself(reason: str) -> None:
    cores = re.search(r"and (\d+) % cores free; where the memory fits, the most cores free is (\d+) %"
                      r"(?:.*where the request takes (\d+) %)?", reason)
    if cores:
        assert int(cores.group(2)) < int(cores.group(3) or cores.group(1)), reason
    memory = re.search(r"no GPU.*? has ([\d.]+ [KMGT]?i?B) free; largest free: ([\d.]+ [KMGT]?i?B) on \S+ \S+?"
                       r"(?:, where the request takes ([\d.]+ [KMGT]?i?B))?$", reason)
    if memory:
        assert _humanized(memory.group(2)) < _humanized(memory.group(3) or memory.group(1)), reason
    counts = re.search(r"needs (\d+) GPUs.*?, has (\d+)", reason)
    if counts:
        assert int(counts.group(2)) < int(counts.group(1)), reason
    large = re.search(r"^(?:.*: )?([\d.]+ [KMGT]?i?B) (?:and \d+ % cores )?is more than any GPU.*largest: (?:[^,]*, )?"
                      r"([\d.]+ [KMGT]?i?B)\)", reason)
    if large and "requestPolicy" not in reason:
        assert _humanized(large.group(2)) < _humanized(large.group(1)), reason


gpus = st.builds(lambda gib, numa, taint, policy: (gib, numa, taint, policy), st.sampled_from([2, 4, 6]),
                 st.integers(0, 1), st.sampled_from([False, False, False, True]),
                 st.sampled_from(["driver"] * 4 + ["steps", "values"]))
nodes = st.lists(st.lists(gpus, min_size=1, max_size=3), min_size=1, max_size=2)
used = st.lists(st.tuples(st.integers(0, 6), st.sampled_from([0, 0, 50, 100])), max_size=6)


@st.composite
def device_requests(draw, name: str, admin: bool = True) -> DeviceRequest:
    gib = draw(st.sampled_from([1, 1, 2, 3, 4, None]))
    cores = draw(st.sampled_from([0, 0, 30, 50, 100]))
    all_devices = draw(st.sampled_from([False] * 6 + [True]))
    fields = {}
    if draw(st.sampled_from([False, False, True])):
        fields["tolerations"] = ToleratesT
    if draw(st.sampled_from([False] * 4 + [True])):
        fields["selector"] = lambda c: c.attributes["numaNode"] == 0
    if admin and draw(st.sampled_from([False] * 6 + [True])):
        fields["admin_access"] = True
    return request(name, gib, cores, 1 if all_devices else draw(st.integers(1, 2)), all_devices=all_devices, **fields)


@st.composite
def claims(draw, index: int) -> ClaimRequest:
    entries = []
    for r in range(draw(st.integers(1, 3))):
        name = f"r{r}"
        if draw(st.sampled_from([False, False, True])):
            entries.append(FirstAvailable(name, (draw(device_requests(f"{name}/a", admin=False)),
                                                 draw(device_requests(f"{name}/b", admin=False)))))
        else:
            entries.append(draw(device_requests(name)))
    names = [e.name for e in entries]
    subset = tuple(draw(st.lists(st.sampled_from(names), unique=True, max_size=len(names))))
    match = (MatchAttribute("numaNode", subset),) if draw(st.sampled_from([False, False, True])) else ()
    distinct = (DistinctAttribute(draw(st.sampled_from(["uuid", "numaNode"])), subset),) \
        if draw(st.sampled_from([False, False, True])) else ()
    return ClaimRequest(f"claim-{index}", tuple(entries), match, distinct_attributes=distinct)


@st.composite
def pods(draw) -> PodRequest:
    return PodRequest(tuple(draw(claims(i)) for i in range(draw(st.integers(1, 2)))))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(layout=nodes, booked=used, pod=pods())
def test_the_allocator_places_exactly_when_an_exhaustive_search_can(layout, booked, pod):
    check_against_exhaustive_search(layout, booked, pod)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(layout=nodes, booked=used, pod=pods())
def test_the_search_alone_finds_every_placement(layout, booked, pod):
    """The same with the greedy pass switched off: the backtracking search must find what exists."""
    from vgpu_dra.driver import allocator as module

    with pytest.MonkeyPatch.context() as patch:
        for target in (module, allocation_refusals):
            patch.setattr(target, "needs_search", lambda claims: True)
        patch.setattr(module, "place_greedy", lambda *args: None)
        patch.setattr(allocation_refusals, "greedy_claim", lambda *args: None)
        check_against_exhaustive_search(layout, booked, pod)


def check_against_exhaustive_search(layout, booked, pod) -> None:
    ledger = Ledger()
    all_gpus = []
    for n, specs in enumerate(layout):
        devices = [gpu(i, gib, numa, taint, policy) for i, (gib, numa, taint, policy) in enumerate(specs)]
        ledger.set_node(f"node-{n}", devices)
        all_gpus += [(f"node-{n}", device) for device in devices]
    for k, (gib, cores) in enumerate(booked):
        node, device = all_gpus[k % len(all_gpus)]
        ledger.record(f"booked-{k}", [Consumption(node, device.name, min(gib * GIBIBYTE, device.memory_bytes), cores)])
    expected = exhaustive(ledger, pod)
    result = allocate(ledger, pod)
    if expected is None:
        assert isinstance(result, Refusal), f"placed where an exhaustive search finds nothing: {result}"
        assert result.kind is not RefusalKind.SEARCH_BUDGET, result.reason
        assert_refusal_does_not_contradict_itself(result.reason)
    else:
        assert isinstance(result, Placement), f"refused although {expected} fits: {result}"
        assert _placement_valid(ledger, pod, result), result
        assert _placement_choice(pod, result) == expected, "not the most preferred firstAvailable choice"


@pytest.mark.parametrize("gib", [9.76, 9.99])
def test_sizes_that_round_alike_are_told_apart(gib):
    ledger = Ledger()
    ledger.set_node("node", [GpuDevice("gpu-0", "GPU-0", int(gib * GIBIBYTE) // MEBIBYTE * MEBIBYTE)])
    refusal = allocate(ledger, one_claim(request("gpu", 10)))
    assert isinstance(refusal, Refusal)
    assert_refusal_does_not_contradict_itself(refusal.reason)
    ledger.record("x", [Consumption("node", "gpu-0", 6 * MEBIBYTE, 0)])
    again = allocate(ledger, one_claim(DeviceRequest("gpu", ShareRequest(memory_bytes=int(gib * GIBIBYTE) // MEBIBYTE
                                                                         * MEBIBYTE - 4 * MEBIBYTE))))
    assert isinstance(again, Refusal)
    assert_refusal_does_not_contradict_itself(again.reason)
