"""Properties over random histories: capacity is never exceeded, the ledger adds up, refusals are true."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vgpu_dra.api.names import GIBIBYTE, MEBIBYTE
from vgpu_dra.driver.allocator import (
    ClaimRequest, DeviceRequest, GpuDevice, Ledger, MatchAttribute, Placement, PlacementPolicy, PodRequest, Policy, RefusalKind,
    allocate,
)
from vgpu_dra.driver.ledger import Consumption
from vgpu_dra.driver.limits import ShareRequest

GPU_SIZES = (4 * GIBIBYTE, 10 * GIBIBYTE, 15105 * MEBIBYTE)


def build_ledger(layout: list[list[int]]) -> Ledger:
    ledger = Ledger()
    for n, sizes in enumerate(layout):
        ledger.set_node(f"node-{n}", [GpuDevice(f"gpu-{i}", f"GPU-{n}-{i}", GPU_SIZES[size], numa_node=i % 2,
                                                 attributes={"numaNode": i % 2})
                                      for i, size in enumerate(sizes)])
    return ledger


shares = st.one_of(
    st.builds(lambda mib, cores: ShareRequest(memory_bytes=mib * MEBIBYTE, cores=cores),
              st.integers(1, 12 * 1024), st.sampled_from([0, 0, 10, 25, 40, 60, 100])),
    st.builds(lambda pct, cores: ShareRequest(memory_percent=pct, cores=cores),
              st.integers(1, 100), st.sampled_from([0, 20, 50])),
    st.just(ShareRequest()),
)
requests = st.builds(lambda share, count: (share, count), shares, st.integers(1, 3))
operations = st.lists(
    st.one_of(
        st.tuples(st.just("allocate"), st.lists(requests, min_size=1, max_size=3),
                  st.sampled_from(list(Policy)), st.sampled_from(list(Policy)), st.booleans()),
        st.tuples(st.just("release"), st.integers(0, 10_000)),
    ),
    max_size=40,
)
layouts = st.lists(st.lists(st.integers(0, len(GPU_SIZES) - 1), min_size=1, max_size=4), min_size=1, max_size=4)


def assert_consistent(ledger: Ledger, layout: list[list[int]]) -> None:
    for n, sizes in enumerate(layout):
        for i, size in enumerate(sizes):
            memory, cores = ledger.used(f"node-{n}", f"gpu-{i}")
            assert memory <= GPU_SIZES[size], "memory over capacity"
            assert cores <= 100, "cores over capacity"
            booked = [item for key in ledger.claim_keys() for item in ledger.booked(key)
                      if (item.node, item.device) == (f"node-{n}", f"gpu-{i}")]
            assert memory == sum(item.memory_bytes for item in booked)
            assert cores == sum(item.cores for item in booked)
            state = ledger.node(f"node-{n}")
            assert state is not None
            assert state.used_memory[i] == memory and state.used_cores[i] == cores


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layout=layouts, history=operations)
def test_capacity_is_never_exceeded_over_any_history(layout, history):
    ledger = build_ledger(layout)
    live: list[str] = []
    for step, operation in enumerate(history):
        if operation[0] == "release":
            if live:
                assert ledger.release(live.pop(operation[1] % len(live)))
        else:
            _, asked, node_policy, gpu_policy, numa = operation
            claim = ClaimRequest(f"claim-{step}", tuple(DeviceRequest(f"r{i}", share, count)
                                                        for i, (share, count) in enumerate(asked)),
                                 (MatchAttribute("vgpu.dra.dev/numaNode"),) if numa else ())
            result = allocate(ledger, PodRequest((claim,)), PlacementPolicy(node_policy, gpu_policy))
            if isinstance(result, Placement):
                for name, gpu_shares in result.claims[0].requests:
                    wanted = next(r for r in claim.requests if r.name == name)
                    assert len({s.device.name for s in gpu_shares}) == wanted.count, "GPUs of a request must differ"
                    for gpu_share in gpu_shares:
                        assert gpu_share.share == wanted.share.resolve(gpu_share.device.memory_bytes)
                if numa:
                    assert len({s.device.numa_node for _, shares in result.claims[0].requests for s in shares}) == 1
                ledger.apply(result)
                live.append(claim.key)
            elif result.kind in (RefusalKind.NO_CAPACITY, RefusalKind.TOO_LARGE, RefusalKind.TOO_FEW_GPUS) \
                    and len(claim.requests) == 1 and not numa:
                # A single request that was refused really fits on no node right now.
                only = claim.requests[0]
                for n in range(len(layout)):
                    fitting = 0
                    for candidate in ledger.candidates(f"node-{n}"):
                        try:
                            memory = only.share.memory_for(candidate.device.memory_bytes)
                        except ValueError:
                            continue
                        fitting += (memory <= candidate.free_memory_bytes and only.share.cores <= candidate.free_cores)
                    assert fitting < only.count, f"refused ({result}) but node-{n} has room"
        assert_consistent(ledger, layout)
    for key in list(live):
        ledger.release(key)
    assert all(ledger.used(f"node-{n}", f"gpu-{i}") == (0, 0)
               for n, sizes in enumerate(layout) for i in range(len(sizes)))


def test_record_replaces_and_release_is_idempotent():
    ledger = build_ledger([[1]])
    ledger.record("c", [Consumption("node-0", "gpu-0", GIBIBYTE, 10)])
    ledger.record("c", [Consumption("node-0", "gpu-0", 2 * GIBIBYTE, 20)])
    assert ledger.used("node-0", "gpu-0") == (2 * GIBIBYTE, 20)
    assert ledger.release("c") is True
    assert ledger.release("c") is False
    assert ledger.used("node-0", "gpu-0") == (0, 0)


def test_consumption_booked_before_the_node_appears_counts_when_it_does():
    ledger = Ledger()
    ledger.record("early", [Consumption("late-node", "gpu-0", 9 * GIBIBYTE, 0)])
    ledger.set_node("late-node", [GpuDevice("gpu-0", "GPU-x", 10 * GIBIBYTE)])
    refused = allocate(ledger, PodRequest((ClaimRequest("c", (DeviceRequest("r", ShareRequest(memory_bytes=2 * GIBIBYTE)),)),)))
    assert not isinstance(refused, Placement)
    assert "largest free: 1 GiB on late-node gpu-0" in refused.reason


def test_oversubscription_by_another_writer_reads_as_full_not_negative():
    ledger = build_ledger([[0]])
    ledger.record("foreign", [Consumption("node-0", "gpu-0", 5 * GIBIBYTE, 120)])
    candidate = ledger.candidates("node-0")[0]
    assert (candidate.free_memory_bytes, candidate.free_cores) == (0, 0)
    result = allocate(ledger, PodRequest((ClaimRequest("c", (DeviceRequest("r", ShareRequest(memory_bytes=MEBIBYTE)),)),)))
    assert not isinstance(result, Placement)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layout=layouts, history=operations)
def test_skipping_nodes_by_index_never_changes_the_decision(layout, history):
    """Ranking only the nodes the bisect index lets through picks what walking every node picks."""
    from vgpu_dra.driver import allocator as module

    def decide(ledger: Ledger, pod: PodRequest, policy: PlacementPolicy, few: int):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(module, "_FEW_NODES", few)
            return allocate(ledger, pod, policy)

    ledger = build_ledger(layout)
    live: list[str] = []
    for step, operation in enumerate(history):
        if operation[0] == "release":
            if live:
                ledger.release(live.pop(operation[1] % len(live)))
            continue
        _, asked, node_policy, gpu_policy, _ = operation
        pod = PodRequest(tuple(ClaimRequest(f"claim-{step}-{i}", (DeviceRequest("r", share, count),))
                               for i, (share, count) in enumerate(asked)))
        policy = PlacementPolicy(node_policy, gpu_policy)
        indexed = decide(ledger, pod, policy, 1 << 30)  # always rank the index's candidates
        walked = decide(ledger, pod, policy, -1)        # always walk every node in policy order
        assert indexed == walked
        if isinstance(indexed, Placement):
            ledger.apply(indexed)
            live.extend(claim.key for claim in indexed.claims)


def test_a_node_that_goes_away_and_comes_back_keeps_its_bookings():
    ledger = build_ledger([[1, 1]])
    ledger.record("c", [Consumption("node-0", "gpu-1", 4 * GIBIBYTE, 30)])
    gpus = [candidate.device for candidate in ledger.candidates("node-0")]
    ledger.remove_node("node-0")
    assert ledger.node_names() == [] and ledger.candidates("node-0") == []
    assert ledger.used("node-0", "gpu-1") == (4 * GIBIBYTE, 30)  # the claim still holds it
    ledger.set_node("node-0", gpus[:1])  # republished without gpu-1
    ledger.set_node("node-0", gpus)      # and with it again
    assert [(c.name, c.used_memory_bytes, c.used_cores) for c in ledger.candidates("node-0")] == [
        ("gpu-0", 0, 0), ("gpu-1", 4 * GIBIBYTE, 30)]
    ledger.release("c")
    assert ledger.candidates("node-0")[1].free_memory_bytes == GPU_SIZES[1]
