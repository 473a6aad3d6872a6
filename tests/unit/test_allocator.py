"""The allocator: policies place visibly differently, refusals say what is missing and where."""
from __future__ import annotations

from vgpu_dra.api.names import GIBIBYTE, MEBIBYTE
from vgpu_dra.driver.allocator import (
    ClaimRequest, DeviceRequest, GpuDevice, Ledger, MatchAttribute, Placement, PlacementPolicy, PodRequest,
    Policy, Refusal, RefusalKind, allocate,
)
from vgpu_dra.driver.ledger import Consumption
from vgpu_dra.driver.limits import ShareRequest

BINPACK = PlacementPolicy(Policy.BINPACK, Policy.BINPACK)
SPREAD = PlacementPolicy(Policy.SPREAD, Policy.SPREAD)


def gpu(index: int, gib: float = 10, numa: int = -1, product: str = "NVIDIA GeForce RTX 3080") -> GpuDevice:
    return GpuDevice(f"gpu-{index}", f"GPU-{index:04d}-{gib}-{numa}", int(gib * GIBIBYTE), numa_node=numa,
                     product_name=product, attributes={"productName": product, "numaNode": numa, "index": index})


def cluster(nodes: dict[str, list[GpuDevice]]) -> Ledger:
    ledger = Ledger()
    for name, gpus in nodes.items():
        ledger.set_node(name, gpus)
    return ledger


def request(memory: float | None = None, *, cores: int = 0, percent: int | None = None, count: int = 1,
            name: str = "gpu", selector=None) -> DeviceRequest:
    share = ShareRequest(memory_bytes=None if memory is None else int(memory * GIBIBYTE),
                         memory_percent=percent, cores=cores)
    return DeviceRequest(name, share, count, selector)


def pod(key: str, *requests: DeviceRequest, constraints=(), **restrictions) -> PodRequest:
    return PodRequest((ClaimRequest(key, tuple(requests), tuple(constraints)),), **restrictions)


def place(ledger: Ledger, pod_request: PodRequest, policy: PlacementPolicy = BINPACK) -> Placement:
    result = allocate(ledger, pod_request, policy)
    assert isinstance(result, Placement), f"refused: {result}"
    ledger.apply(result)
    return result


def refuse(ledger: Ledger, pod_request: PodRequest, policy: PlacementPolicy = BINPACK) -> Refusal:
    result = allocate(ledger, pod_request, policy)
    assert isinstance(result, Refusal), f"unexpectedly placed: {result}"
    return result


def where(placement: Placement, request_name: str = "gpu") -> list[tuple[str, str]]:
    return [(placement.node, share.device.name)
            for claim in placement.claims for share in claim.shares(request_name)]


def two_by_two() -> Ledger:
    return cluster({"node-a": [gpu(0), gpu(1)], "node-b": [gpu(0), gpu(1)]})


def test_binpack_fills_one_gpu_before_touching_the_next():
    ledger = two_by_two()
    spots = [where(place(ledger, pod(f"c{i}", request(2, cores=20))))[0] for i in range(5)]
    assert spots == [("node-a", "gpu-0")] * 5
    # The sixth no longer fits gpu-0's cores (5 × 20 %): the next-fullest GPU on the same node.
    assert where(place(ledger, pod("c5", request(2, cores=20)))) == [("node-a", "gpu-1")]


def test_spread_puts_each_claim_on_the_emptiest_node_and_gpu():
    ledger = two_by_two()
    spots = [where(place(ledger, pod(f"c{i}", request(2, cores=20)), SPREAD))[0] for i in range(4)]
    assert sorted(spots) == [("node-a", "gpu-0"), ("node-a", "gpu-1"), ("node-b", "gpu-0"), ("node-b", "gpu-1")]
    assert spots[0][0] != spots[1][0], "spread must alternate nodes"


def test_node_and_gpu_policies_are_independent():
    ledger = two_by_two()
    place(ledger, pod("seed", request(1)))  # node-a gpu-0 has a little in use
    mixed = PlacementPolicy(node=Policy.BINPACK, gpu=Policy.SPREAD)
    assert where(place(ledger, pod("next", request(1)), mixed)) == [("node-a", "gpu-1")]
    other = PlacementPolicy(node=Policy.SPREAD, gpu=Policy.BINPACK)
    assert where(place(ledger, pod("third", request(1)), other)) == [("node-b", "gpu-0")]


def test_percent_resolves_against_the_gpu_it_lands_on():
    ledger = cluster({"mixed": [gpu(0, 15, product="Tesla T4"), gpu(1, 45, product="NVIDIA L40S")]})
    on_l40s = request(percent=20, selector=lambda c: c.attributes["productName"] == "NVIDIA L40S")
    share = place(ledger, pod("big", on_l40s)).claims[0].shares("gpu")[0]
    assert share.device.name == "gpu-1"
    assert share.share.memory_bytes == 45 * GIBIBYTE * 20 // 100 // MEBIBYTE * MEBIBYTE
    # Binpack prefers the fuller L40S (60 % memory left after the share vs 80 % on the T4) ...
    packed = place(ledger, pod("packed", request(percent=20))).claims[0].shares("gpu")[0]
    assert (packed.device.name, packed.share.memory_bytes) == ("gpu-1", 9 * GIBIBYTE)
    # ... spread the emptier T4, where the same 20 % is a third as many bytes.
    small = place(ledger, pod("small", request(percent=20)), SPREAD).claims[0].shares("gpu")[0]
    assert (small.device.name, small.share.memory_bytes) == ("gpu-0", 3 * GIBIBYTE)


def test_zero_cores_reserves_nothing_and_full_cores_still_fit():
    ledger = cluster({"node": [gpu(0)]})
    for i in range(4):
        place(ledger, pod(f"nocap{i}", request(1)))
    place(ledger, pod("all-cores", request(1, cores=100)))
    assert ledger.used("node", "gpu-0") == (5 * GIBIBYTE, 100)
    assert refuse(ledger, pod("one-more-core", request(1, cores=1))).kind is RefusalKind.NO_CAPACITY


def test_whole_gpu_when_no_size_is_given():
    ledger = cluster({"node": [gpu(0), gpu(1)]})
    place(ledger, pod("part", request(1)))
    whole = place(ledger, pod("whole", request(None)))
    assert where(whole) == [("node", "gpu-1")]
    assert whole.claims[0].shares("gpu")[0].share.memory_bytes == 10 * GIBIBYTE
    assert "a whole GPU's memory" in refuse(ledger, pod("again", request(None))).reason


def test_too_large_names_the_largest_gpu():
    ledger = cluster({"t4": [gpu(0, 15, product="Tesla T4")], "l40s": [gpu(0, 45, product="NVIDIA L40S")]})
    refusal = refuse(ledger, pod("huge", request(50)))
    assert refusal.kind is RefusalKind.TOO_LARGE
    assert refusal.reason == "50 GiB is more than any GPU can give (largest: NVIDIA L40S, 45 GiB)"


def test_no_capacity_names_the_largest_free_gpu():
    ledger = cluster({"node-a": [gpu(0), gpu(1)], "node-b": [gpu(0), gpu(1)]})
    for node, device, used in (("node-a", "gpu-0", 7), ("node-a", "gpu-1", 8), ("node-b", "gpu-0", 7),
                               ("node-b", "gpu-1", 5.5)):
        ledger.record(f"{node}-{device}", [_consumption(node, device, used)])
    refusal = refuse(ledger, pod("six", request(6)))
    assert refusal.kind is RefusalKind.NO_CAPACITY
    assert refusal.reason == "no GPU has 6 GiB free; largest free: 4.5 GiB on node-b gpu-1"


def test_no_capacity_on_cores_says_where_the_memory_would_fit():
    ledger = cluster({"node": [gpu(0), gpu(1)]})
    place(ledger, pod("a", request(1, cores=70)))
    place(ledger, pod("b", request(1, cores=80)))
    refusal = refuse(ledger, pod("c", request(2, cores=40)))
    assert refusal.reason == ("no GPU has 2 GiB and 40 % cores free; where the memory fits, "
                              "the most cores free is 30 % (on node gpu-0)")


def test_too_few_gpus_on_any_node():
    ledger = cluster({"node-a": [gpu(0), gpu(1)], "node-b": [gpu(0), gpu(1), gpu(2, 4)]})
    refusal = refuse(ledger, pod("trio", request(6, count=3)))
    assert refusal.kind is RefusalKind.TOO_FEW_GPUS
    assert refusal.reason == "needs 3 GPUs that can give 6 GiB on one node; the node with the most, node-a, has 2"


def test_multi_gpu_without_enough_free_names_the_best_node():
    ledger = cluster({"node-a": [gpu(0), gpu(1), gpu(2)], "node-b": [gpu(0), gpu(1), gpu(2)]})
    for node, device in (("node-a", "gpu-0"), ("node-a", "gpu-1"), ("node-b", "gpu-2")):
        ledger.record(f"{node}-{device}", [_consumption(node, device, 8)])
    refusal = refuse(ledger, pod("pair-of-three", request(6, count=3)))
    assert refusal.kind is RefusalKind.NO_CAPACITY
    assert refusal.reason == "needs 3 GPUs with 6 GiB free on one node; the best node, node-b, has 2"


def test_selector_that_matches_nothing():
    ledger = two_by_two()
    refusal = refuse(ledger, pod("h100", request(1, selector=lambda c: c.attributes["productName"] == "H100")))
    assert refusal.kind is RefusalKind.NO_MATCHING_GPU
    assert "no GPU matches the request's selectors" in refusal.reason


def test_selector_chooses_the_gpu():
    ledger = cluster({"node": [gpu(0), gpu(1), gpu(2)]})
    chosen = place(ledger, pod("pinned", request(1, selector=lambda c: c.attributes["index"] == 2)))
    assert where(chosen) == [("node", "gpu-2")]


def test_selector_error_becomes_a_refusal():
    def broken(candidate):
        raise RuntimeError("no such key: model")

    refusal = refuse(two_by_two(), pod("bad", request(1, selector=broken)))
    assert refusal.kind is RefusalKind.SELECTOR_ERROR
    assert "no such key: model" in refusal.reason


def test_multi_gpu_prefers_gpus_of_one_numa_node():
    ledger = cluster({"node": [gpu(0, numa=0), gpu(1, numa=1), gpu(2, numa=0), gpu(3, numa=1)]})
    place(ledger, pod("seed", request(2, selector=lambda c: c.name == "gpu-1")))
    # Binpack alone would take gpu-1 (fullest) and gpu-0; NUMA closeness wins: gpu-0 + gpu-2.
    pair = place(ledger, pod("pair", request(4, count=2)))
    assert where(pair) == [("node", "gpu-0"), ("node", "gpu-2")]
    assert len({share.device.numa_node for share in pair.claims[0].shares("gpu")}) == 1


def test_count_means_distinct_gpus():
    ledger = cluster({"node": [gpu(0), gpu(1)]})
    pair = place(ledger, pod("pair", request(1, count=2)))
    assert sorted(where(pair)) == [("node", "gpu-0"), ("node", "gpu-1")]
    assert refuse(ledger, pod("three", request(1, count=3))).kind is RefusalKind.TOO_FEW_GPUS


def test_match_attribute_keeps_a_claims_gpus_on_one_numa_node():
    def gpus():
        return cluster({"node": [gpu(0, numa=0), gpu(1, numa=0), gpu(2, numa=1), gpu(3, numa=1)]})

    def claim(constraints=()):
        return pod("job", request(1, name="model"), request(4, name="cache"), constraints=constraints)

    def fill(ledger):
        for device in ("gpu-0", "gpu-1"):
            ledger.record(f"fill-{device}", [_consumption("node", device, 8)])
        return ledger

    free = place(fill(gpus()), claim())
    assert {free.claims[0].shares(r)[0].device.numa_node for r in ("model", "cache")} == {0, 1}
    matched = place(fill(gpus()), claim([MatchAttribute("vgpu.dra.dev/numaNode")]))
    assert {matched.claims[0].shares(r)[0].device.numa_node for r in ("model", "cache")} == {1}


def test_match_attribute_refusal_names_the_best_group():
    ledger = cluster({"node-a": [gpu(0, numa=0), gpu(1, numa=1), gpu(2, numa=1)]})
    refusal = refuse(ledger, pod("trio", request(6, count=3), constraints=[MatchAttribute("numaNode")]))
    assert refusal.kind is RefusalKind.CONSTRAINT
    assert refusal.reason == ("claim trio: needs 3 GPUs with matching numaNode on one node, each with 6 GiB free; "
                              "the best node, node-a, has 2 (all with numaNode=1)")


def test_match_attribute_of_another_domain_is_never_met():
    refusal = refuse(two_by_two(), pod("x", request(1), constraints=[MatchAttribute("gpu.nvidia.com/model")]))
    assert refusal.kind is RefusalKind.CONSTRAINT
    assert "no GPU has that attribute" in refusal.reason


def test_avoid_nodes_and_allowed_nodes_steer_the_pod():
    ledger = two_by_two()
    assert where(place(ledger, pod("a", request(1), avoid_nodes=frozenset({"node-a"}))))[0][0] == "node-b"
    assert where(place(ledger, pod("b", request(1), allowed_nodes=frozenset({"node-a"}))))[0][0] == "node-a"
    assert where(place(ledger, pod("c", request(1), node_filter=lambda n: n != "node-b")))[0][0] == "node-a"
    refusal = refuse(ledger, pod("d", request(1), avoid_nodes=frozenset({"node-a", "node-b"})))
    assert refusal.kind is RefusalKind.NO_NODE
    assert "2 where the pod could not be scheduled before" in refusal.reason


def test_all_claims_of_a_pod_share_one_node():
    ledger = cluster({"node-a": [gpu(0)], "node-b": [gpu(0)]})
    ledger.record("fill-a", [_consumption("node-a", "gpu-0", 6)])
    ledger.record("fill-b", [_consumption("node-b", "gpu-0", 3)])
    both = PodRequest((ClaimRequest("one", (request(3),)), ClaimRequest("two", (request(3),))))
    placement = place(ledger, both)
    assert placement.node == "node-b"  # node-a has room for only one of them
    again = PodRequest((ClaimRequest("three", (request(1),)), ClaimRequest("four", (request(3.5),))))
    refusal = refuse(ledger, again)
    assert refusal.kind is RefusalKind.NO_CAPACITY
    assert "no node has room for all of them at once" in refusal.reason


def test_empty_cluster_is_a_clear_refusal():
    refusal = refuse(Ledger(), pod("x", request(1)))
    assert refusal.kind is RefusalKind.NO_NODE
    assert refusal.reason == "no node publishes GPUs of driver vgpu.dra.dev"


def test_the_ledger_is_not_changed_by_allocate():
    ledger = two_by_two()
    allocate(ledger, pod("x", request(4, cores=50)))
    assert ledger.used("node-a", "gpu-0") == (0, 0)
    assert ledger.claim_keys() == []


def _consumption(node: str, device: str, gib: float, cores: int = 0) -> Consumption:
    return Consumption(node, device, int(gib * GIBIBYTE), cores)


def test_selector_that_narrows_the_gpus_is_named_in_the_capacity_refusal():
    ledger = cluster({"node": [gpu(0, 10, product="Tesla T4"), gpu(1, 45, product="NVIDIA L40S")]})
    only_t4 = request(12, selector=lambda c: c.attributes["productName"] == "Tesla T4")
    refusal = refuse(ledger, pod("big-on-t4", only_t4))
    assert refusal.reason == "12 GiB is more than any GPU matching its selectors can give (largest: Tesla T4, 10 GiB)"
    place(ledger, pod("fill", request(8, selector=lambda c: c.name == "gpu-0")))
    refusal = refuse(ledger, pod("t4", request(4, selector=lambda c: c.attributes["productName"] == "Tesla T4")))
    assert refusal.reason == "no GPU matching its selectors has 4 GiB free; largest free: 2 GiB on node gpu-0"


def test_cel_selector_that_fails_everywhere_matches_nothing():
    from vgpu_dra.driver.selectors import compile_selectors

    ledger = two_by_two()
    typo = compile_selectors(['device.attributes["vgpu.dra.dev"].prodName == "Tesla T4"'])
    refusal = refuse(ledger, pod("typo", request(1, selector=typo)))
    assert refusal.kind is RefusalKind.NO_MATCHING_GPU
    assert any("prodName" in error for error in typo.errors)  # the caller adds these to the message


def test_cel_selector_picks_by_published_attribute():
    from vgpu_dra.driver.selectors import compile_selectors

    ledger = cluster({"node": [gpu(0, 15, product="Tesla T4"), gpu(1, 45, product="NVIDIA L40S")]})
    on_l40s = compile_selectors(['device.attributes["vgpu.dra.dev"].productName == "NVIDIA L40S"',
                                 'device.capacity["vgpu.dra.dev"].memory.compareTo(quantity("40Gi")) >= 0'])
    assert where(place(ledger, pod("l40s", request(1, selector=on_l40s)))) == [("node", "gpu-1")]


def test_match_attribute_of_another_domain_reads_the_qualified_attribute():
    def rack(index: int, name: str) -> GpuDevice:
        return GpuDevice(f"gpu-{index}", f"GPU-{index}", 10 * GIBIBYTE, attributes={"example.com/rack": name})

    ledger = cluster({"node": [rack(0, "r1"), rack(1, "r2"), rack(2, "r2")]})
    pair = place(ledger, pod("pair", request(1, count=2), constraints=[MatchAttribute("example.com/rack")]))
    assert sorted(where(pair)) == [("node", "gpu-1"), ("node", "gpu-2")]
