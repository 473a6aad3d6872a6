"""The 1.36 request fields at the allocator: firstAvailable, All, adminAccess, taints, distinctAttribute,
and the slice's requestPolicy — placed (or refused) the way kube-scheduler's allocator places them."""
from __future__ import annotations

from vgpu_dra.api.names import GIBIBYTE, MEBIBYTE
from vgpu_dra.driver.allocator import (
    ClaimRequest, DeviceRequest, DistinctAttribute, FirstAvailable, GpuDevice, Ledger, MatchAttribute, Placement,
    PodRequest, Refusal, RefusalKind, allocate,
)
from vgpu_dra.driver.capacity_policy import RequestPolicy
from vgpu_dra.driver.device_taints import DeviceTaint, Toleration
from vgpu_dra.driver.ledger import Consumption
from vgpu_dra.driver.limits import ShareRequest


def gpu(index: int, gib: float = 10, *, numa: int = 0, taints=(), memory_policy=None, cores_policy=None,
        product: str = "NVIDIA L4") -> GpuDevice:
    return GpuDevice(f"gpu-{index}", f"GPU-{index:04d}", int(gib * GIBIBYTE), numa_node=numa, product_name=product,
                     attributes={"uuid": f"GPU-{index:04d}", "numaNode": numa, "index": index, "productName": product},
                     taints=tuple(taints), memory_policy=memory_policy, cores_policy=cores_policy)


def ledger_of(nodes: dict[str, list[GpuDevice]]) -> Ledger:
    ledger = Ledger()
    for name, gpus in nodes.items():
        ledger.set_node(name, gpus)
    return ledger


def req(name: str = "gpu", gib: float | None = 1, *, cores: int = 0, count: int = 1, **fields) -> DeviceRequest:
    share = ShareRequest(memory_bytes=None if gib is None else int(gib * GIBIBYTE), cores=cores)
    return DeviceRequest(name, share, count, **fields)


def pod(*requests, constraints=(), distinct=(), key: str = "claim") -> PodRequest:
    return PodRequest((ClaimRequest(key, tuple(requests), tuple(constraints), distinct_attributes=tuple(distinct)),))


def placed(ledger: Ledger, request: PodRequest) -> Placement:
    result = allocate(ledger, request)
    assert isinstance(result, Placement), f"refused: {result}"
    return result


def refused(ledger: Ledger, request: PodRequest) -> Refusal:
    result = allocate(ledger, request)
    assert isinstance(result, Refusal), f"unexpectedly placed: {result}"
    return result


def devices(placement: Placement, request: str = "gpu") -> list[str]:
    return [share.device.name for share in placement.claims[0].shares(request)]


def fill(ledger: Ledger, node: str, device: str, gib: float, cores: int = 0) -> None:
    ledger.record(f"fill-{node}-{device}", [Consumption(node, device, int(gib * GIBIBYTE), cores)])


# --- firstAvailable ------------------------------------------------------------------------------

def big_or_small() -> FirstAvailable:
    return FirstAvailable("gpu", (req("gpu/big", 8), req("gpu/small", 2)))


def test_first_available_takes_the_first_alternative_that_fits_and_names_it():
    ledger = ledger_of({"node": [gpu(0)]})
    first = placed(ledger, pod(big_or_small()))
    assert first.claims[0].requests[0][0] == "gpu/big"
    ledger.apply(first)
    second = placed(ledger, pod(big_or_small(), key="again"))  # 2 GiB left: only the fallback fits
    assert second.claims[0].chosen("gpu") == "gpu/small"
    assert [s.share.memory_bytes for s in second.claims[0].shares("gpu")] == [2 * GIBIBYTE]


def test_first_available_prefers_the_first_alternative_on_any_node_over_a_better_ranked_node():
    # Binpack ranks the fuller node-a first, but only node-b can give the preferred 8 GiB.
    ledger = ledger_of({"node-a": [gpu(0)], "node-b": [gpu(0)]})
    fill(ledger, "node-a", "gpu-0", 6)
    result = placed(ledger, pod(big_or_small()))
    assert (result.node, result.claims[0].chosen("gpu")) == ("node-b", "gpu/big")


def test_first_available_choices_are_tried_in_request_order():
    # Two requests with alternatives: (a1, b1) does not fit, (a1, b2) does — before (a2, b1).
    ledger = ledger_of({"node": [gpu(0, 10)]})
    a = FirstAvailable("a", (req("a/large", 6), req("a/small", 2)))
    b = FirstAvailable("b", (req("b/large", 6), req("b/small", 3)))
    result = placed(ledger, pod(a, b))
    assert [name for name, _ in result.claims[0].requests] == ["a/large", "b/small"]


def test_first_available_refusal_says_no_alternative_fits():
    ledger = ledger_of({"node": [gpu(0, 1)]})
    refusal = refused(ledger, pod(FirstAvailable("gpu", (req("gpu/big", 8), req("gpu/medium", 4)))))
    assert refusal.reason == ("no combination of the firstAvailable alternatives of gpu fits (2 tried): the first "
                              "choice, request gpu/big: 8 GiB is more than any GPU can give (largest: NVIDIA L4, 1 GiB); "
                              "the last, request gpu/medium: 4 GiB is more than any GPU can give (largest: NVIDIA L4, "
                              "1 GiB)")
    assert refusal.request == "gpu/medium"


# --- allocationMode All ------------------------------------------------------------------------

def test_all_takes_every_matching_gpu_with_room():
    ledger = ledger_of({"node": [gpu(0), gpu(1), gpu(2, product="Tesla T4")]})
    fill(ledger, "node", "gpu-1", 9.5)
    l4 = req(gib=1, all_devices=True, selector=lambda c: c.attributes["productName"] == "NVIDIA L4")
    # gpu-1 has too little free: upstream counts "all" against what is free before the decision.
    assert devices(placed(ledger, pod(l4))) == ["gpu-0"]
    fill(ledger, "node", "gpu-0", 9.5)
    refusal = refused(ledger, pod(l4))
    assert refusal.kind is RefusalKind.NO_CAPACITY


def test_all_fails_when_another_request_of_the_pod_leaves_one_of_them_short():
    ledger = ledger_of({"node": [gpu(0, 4), gpu(1, 4)]})
    everything = req("all", 3, all_devices=True)
    other = req("other", 2)
    assert isinstance(allocate(ledger, pod(everything)), Placement)
    assert isinstance(allocate(ledger, pod(everything, other)), Refusal)


# --- adminAccess --------------------------------------------------------------------------------

def test_admin_access_needs_room_but_books_nothing():
    ledger = ledger_of({"node": [gpu(0)]})
    admin = req(gib=4, admin_access=True)
    result = placed(ledger, pod(admin))
    assert result.claims[0].shares("gpu")[0].admin_access
    assert list(result.claim_consumptions()) == [("claim", ())]
    ledger.apply(result)
    assert ledger.used("node", "gpu-0") == (0, 0)
    fill(ledger, "node", "gpu-0", 8)
    assert refused(ledger, pod(admin, key="admin-2")).kind is RefusalKind.NO_CAPACITY  # 2 GiB free < 4 GiB


# --- taints and tolerations --------------------------------------------------------------------

def test_no_schedule_and_no_execute_taints_keep_requests_off_unless_tolerated():
    maintenance = DeviceTaint("maintenance", "planned", "NoSchedule")
    broken = DeviceTaint("broken", "", "NoExecute")
    note = DeviceTaint("note", "", "None")
    ledger = ledger_of({"node": [gpu(0, taints=[maintenance]), gpu(1, taints=[broken]), gpu(2, taints=[note])]})
    assert devices(placed(ledger, pod(req()))) == ["gpu-2"]  # the None effect never blocks
    tolerant = req(tolerations=(Toleration("maintenance", "Equal", "planned", "NoSchedule"),),
                   selector=lambda c: c.name != "gpu-2")
    assert devices(placed(ledger, pod(tolerant))) == ["gpu-0"]
    wrong_value = req(tolerations=(Toleration("maintenance", "Equal", "other"),), selector=lambda c: c.name == "gpu-0")
    refusal = refused(ledger, pod(wrong_value))
    assert refusal.kind is RefusalKind.TAINTED
    assert "maintenance=planned:NoSchedule on node gpu-0" in refusal.reason
    anything = req(tolerations=(Toleration(operator="Exists"),), count=3)
    assert sorted(devices(placed(ledger, pod(anything)))) == ["gpu-0", "gpu-1", "gpu-2"]


# --- distinctAttribute and matchAttribute ------------------------------------------------------

def test_distinct_uuid_keeps_two_requests_of_a_claim_off_one_gpu():
    ledger = ledger_of({"node": [gpu(0), gpu(1)]})
    together = placed(ledger, pod(req("a"), req("b")))
    assert devices(together, "a") == devices(together, "b") == ["gpu-0"]  # binpack shares one GPU
    apart = placed(ledger, pod(req("a"), req("b"), distinct=[DistinctAttribute("vgpu.dra.dev/uuid")]))
    assert sorted(devices(apart, "a") + devices(apart, "b")) == ["gpu-0", "gpu-1"]


def test_distinct_numa_node_within_one_request():
    ledger = ledger_of({"node": [gpu(0, numa=0), gpu(1, numa=0), gpu(2, numa=1)]})
    pair = placed(ledger, pod(req(count=2), distinct=[DistinctAttribute("numaNode")]))
    assert sorted(share.device.numa_node for share in pair.claims[0].shares("gpu")) == [0, 1]
    refusal = refused(ledger, pod(req(count=3), distinct=[DistinctAttribute("numaNode")]))
    assert refusal.kind is RefusalKind.CONSTRAINT
    assert refusal.reason == ("claim claim: needs 3 GPUs with different numaNode on one node, each with 1 GiB free; "
                              "the best node, node, has 2 different values")


def test_match_attribute_over_a_subrequest_name():
    ledger = ledger_of({"node": [gpu(0, numa=0), gpu(1, numa=1), gpu(2, numa=1)]})
    fill(ledger, "node", "gpu-1", 9)
    model = FirstAvailable("model", (req("model/big", 2),))
    cache = req("cache", 2)
    result = placed(ledger, pod(model, cache, constraints=[MatchAttribute("numaNode", ("model/big", "cache"))]))
    numa = {share.device.numa_node for _, shares in result.claims[0].requests for share in shares}
    assert len(numa) == 1


# --- the slice's requestPolicy ------------------------------------------------------------------

def test_valid_values_round_a_request_up_and_refuse_one_above_all():
    sizes = RequestPolicy(default=8 * GIBIBYTE, valid_values=(2 * GIBIBYTE, 4 * GIBIBYTE, 8 * GIBIBYTE))
    ledger = ledger_of({"node": [gpu(0, 8, memory_policy=sizes)]})
    share = placed(ledger, pod(req(gib=3))).claims[0].shares("gpu")[0].share
    assert share.memory_bytes == 4 * GIBIBYTE
    assert placed(ledger, pod(req(gib=None))).claims[0].shares("gpu")[0].share.memory_bytes == 8 * GIBIBYTE
    assert refused(ledger, pod(req(gib=9))).kind is RefusalKind.TOO_LARGE


def test_valid_range_rounds_up_from_its_minimum_by_its_step():
    steps = RequestPolicy(default=GIBIBYTE, minimum=GIBIBYTE, maximum=6 * GIBIBYTE, step=GIBIBYTE, has_range=True)
    cores = RequestPolicy(default=10, minimum=10, maximum=100, step=10, has_range=True)
    ledger = ledger_of({"node": [gpu(0, 8, memory_policy=steps, cores_policy=cores)]})
    share = placed(ledger, pod(req(gib=1.2, cores=25))).claims[0].shares("gpu")[0].share
    assert (share.memory_bytes, share.cores) == (2 * GIBIBYTE, 30)
    small = placed(ledger, pod(DeviceRequest("gpu", ShareRequest(memory_bytes=MEBIBYTE))))
    assert (small.claims[0].shares("gpu")[0].share.memory_bytes, small.claims[0].shares("gpu")[0].share.cores) == (
        GIBIBYTE, 10)  # below min → min; cores not asked for → the policy's default
    assert refused(ledger, pod(req(gib=7))).kind is RefusalKind.TOO_LARGE  # above max


def test_nodes_a_compiled_selector_rules_out_are_skipped_until_their_gpus_change():
    from vgpu_dra.driver.selectors import compile_selectors

    a2 = compile_selectors(['device.attributes["vgpu.dra.dev"].productName == "NVIDIA A2"'])
    ledger = ledger_of({"node-a": [gpu(0)]})
    assert refused(ledger, pod(req(selector=a2))).kind is RefusalKind.NO_MATCHING_GPU
    ledger.set_node("node-b", [gpu(0), gpu(1, product="NVIDIA A2")])
    assert (placed(ledger, pod(req(selector=a2))).node, devices(placed(ledger, pod(req(selector=a2))))) == (
        "node-b", ["gpu-1"])
    ledger.set_node("node-b", [gpu(0)])  # the A2 is gone again
    assert isinstance(allocate(ledger, pod(req(selector=a2))), Refusal)
    ledger.set_node("node-a", [gpu(0, product="NVIDIA A2")])
    assert placed(ledger, pod(req(selector=a2))).node == "node-a"


def test_ranking_the_nodes_a_selector_matches_decides_as_walking_every_node():
    """Compiled selectors narrow the walk to the nodes they match; a plain predicate saying the
    same walks every node: both must decide alike, placement after placement."""
    import random

    from vgpu_dra.driver.placement_policy import PlacementPolicy, Policy
    from vgpu_dra.driver.selectors import compile_selectors

    rng = random.Random(7)
    products = ["NVIDIA A2", "NVIDIA L4", "Tesla T4"]
    layout = {f"node-{n}": [gpu(i, rng.choice([8, 16, 24]), numa=i % 2, product=rng.choice(products))
                            for i in range(rng.randint(1, 4))] for n in range(40)}
    compiled = compile_selectors(['device.attributes["vgpu.dra.dev"].productName == "NVIDIA A2"'])
    plain = lambda c: c.attributes["productName"] == "NVIDIA A2"  # noqa: E731
    for node_policy in Policy:
        ledgers = [ledger_of(layout), ledger_of(layout)]
        for step in range(60):
            gib, cores = rng.choice([1, 2, 4, 8]), rng.choice([0, 25, 50])
            outcomes = [allocate(ledger, pod(req(gib=gib, cores=cores, selector=selector), key=f"c{step}"),
                                 PlacementPolicy(node_policy, Policy.BINPACK))
                        for ledger, selector in zip(ledgers, (compiled, plain))]
            assert type(outcomes[0]) is type(outcomes[1])
            if isinstance(outcomes[0], Placement):
                assert (outcomes[0].node, devices(outcomes[0])) == (outcomes[1].node, devices(outcomes[1]))
                for ledger, outcome in zip(ledgers, outcomes):
                    ledger.apply(outcome)


def test_a_cores_refusal_on_a_rounding_policy_says_what_the_request_takes_there():
    tens = RequestPolicy(default=0, minimum=0, maximum=100, step=10, has_range=True)
    ledger = ledger_of({"node": [gpu(0, cores_policy=tens)]})
    fill(ledger, "node", "gpu-0", 1, cores=72)  # 28 % free: 25 % would fit, its rounding to 30 % does not
    refusal = refused(ledger, pod(req(cores=25)))
    assert refusal.reason == ("no GPU has 1 GiB and 25 % cores free; where the memory fits, the most cores free is "
                              "28 % (on node gpu-0, where the request takes 30 %)")
