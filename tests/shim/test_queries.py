"""Memory queries report the claim's view; two claims on two GPUs are each enforced by UUID."""

from tests.shim.harness import GPU0, GPU_A, GPU_B, MiB, Node, neighbour_holding


def two_gpu_node(node: Node) -> Node:
    node.devices = {GPU_A: 8 << 30, GPU_B: 4 << 30}
    return node


def test_queries_show_limit_and_what_is_left(node: Node) -> None:
    two_gpu_node(node).add_claim("claim-a", {GPU_A: 100 * MiB})
    result = node.run("init", "ctx", "0", "alloc", str(30 * MiB), "info", "info1", "total", "0", "infonull")
    assert result.rcs() == [0] * 7
    assert (int(result.lines[3]["free"]), int(result.lines[3]["total"])) == (70 * MiB, 100 * MiB)
    assert (int(result.lines[4]["free"]), int(result.lines[4]["total"])) == (70 * MiB, 100 * MiB)
    assert int(result.lines[5]["total"]) == 100 * MiB  # cuDeviceTotalMem


def test_a_limit_above_the_card_reports_the_card(node: Node) -> None:
    two_gpu_node(node).add_claim("claim-a", {GPU_B: 64 << 30})
    result = node.run("init", "ctx", "1", "info", "total", "1")
    assert int(result.lines[2]["total"]) == 4 << 30
    assert int(result.lines[3]["total"]) == 4 << 30


def test_two_claims_on_two_gpus_are_each_enforced_by_uuid(node: Node) -> None:
    two_gpu_node(node)
    node.add_claim("claim-a", {GPU_A: 10 * MiB})
    node.add_claim("claim-b", {GPU_B: 20 * MiB})
    result = node.run(
        "init",
        "ctx", "0", "alloc", str(8 * MiB), "alloc", str(8 * MiB), "info",
        "ctx", "1", "alloc", str(16 * MiB), "alloc", str(8 * MiB), "info",
        "vmm", "0", str(2 * MiB), "vmm", "1", str(4 * MiB),
    )
    assert result.rcs() == [0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0]
    assert (int(result.lines[4]["free"]), int(result.lines[4]["total"])) == (2 * MiB, 10 * MiB)
    assert (int(result.lines[8]["free"]), int(result.lines[8]["total"])) == (4 * MiB, 20 * MiB)
    assert node.region("claim-a").gpu(GPU_A).used_bytes == 0  # all returned at exit
    assert node.region("claim-a").gpu(GPU_A).peak_bytes == 10 * MiB
    assert node.region("claim-b").gpu(GPU_B).peak_bytes == 20 * MiB


def test_a_device_in_no_claim_refuses_allocations(node: Node) -> None:
    two_gpu_node(node).add_claim("claim-a", {GPU_A: 10 * MiB})
    result = node.run("init", "ctx", "1", "alloc", str(MiB), "vmm", "1", str(2 * MiB))
    assert result.rcs() == [0, 0, 2, 2]
    assert "is in no claim" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_device_identity_is_the_uuid_not_the_ordinal(node: Node) -> None:
    # The same claim, but the driver lists the GPUs in the other order (CUDA_VISIBLE_DEVICES).
    node.devices = {GPU_B: 4 << 30, GPU_A: 8 << 30}
    node.add_claim("claim-a", {GPU_A: 10 * MiB})
    result = node.run("init", "ctx", "1", "alloc", str(8 * MiB), "info", "ctx", "0", "alloc", str(MiB))
    assert result.rcs() == [0, 0, 0, 0, 0, 2]
    assert int(result.lines[3]["total"]) == 10 * MiB


def test_context_footprint_is_measured_and_charged(node: Node) -> None:
    node.ctx_bytes = 3 * MiB
    node.devices = {GPU_A: 8 << 30}
    node.add_claim("claim-a", {GPU_A: 16 * MiB})
    # The primary context is current when the second context is created: the driver's own
    # free-memory drop across the creation is charged.
    result = node.run("init", "ctx", "0", "ctxcreate", "0", "info", "alloc", str(14 * MiB))
    assert result.rcs() == [0, 0, 0, 0, 2]
    assert int(result.lines[3]["free"]) == 13 * MiB
    gpu = node.region("claim-a").gpu(GPU_A)
    assert gpu.context_bytes == 3 * MiB
    assert gpu.peak_bytes == 3 * MiB


def test_the_claims_first_process_measures_its_context_and_later_ones_reuse_it(node: Node) -> None:
    node.ctx_bytes = 3 * MiB
    node.add_claim("claim-a", {GPU0: 16 * MiB})
    # The first process has no context yet when it retains the primary one: NVML's device-wide
    # used memory (following the fake driver) before and after is the footprint.
    first = node.run("init", "ctx", "0", "info")
    assert first.rcs() == [0, 0, 0] and int(first.lines[2]["free"]) == 13 * MiB
    gpu = node.region("claim-a").gpu(GPU0)
    assert (gpu.context_bytes, gpu.limit_errors) == (3 * MiB, 0)
    # A later process is charged the claim's measurement without asking NVML (here it has none).
    node.nvml = False
    later = node.run("init", "ctx", "0", "info", "alloc", str(13 * MiB), "alloc", "1")
    assert later.rcs() == [0, 0, 0, 0, 2]
    assert int(later.lines[2]["free"]) == 13 * MiB
    assert node.region("claim-a").gpu(GPU0).limit_errors == 0


def test_a_context_nobody_could_measure_is_charged_an_upper_bound_and_counted(node: Node) -> None:
    node.ctx_bytes = 3 * MiB
    node.nvml = False
    node.add_claim("claim-a", {GPU0: 16 * MiB})
    # No NVML and no context current before the primary one: nothing to measure against, so the
    # context is charged what the driver says the GPU uses (here, only this context).
    result = node.run("init", "ctx", "0", "info")
    assert result.rcs() == [0, 0, 0]
    assert int(result.lines[2]["free"]) == 13 * MiB
    gpu = node.region("claim-a").gpu(GPU0)
    assert gpu.limit_errors == 1 and gpu.limit_error_call.startswith("context footprint")
    assert gpu.context_bytes == 0  # an upper bound is not a measurement for the claim's next process
    assert "the context footprint could not be measured" in result.stderr


def test_an_unmeasured_context_whose_upper_bound_does_not_fit_is_refused(node: Node) -> None:
    node.ctx_bytes = 3 * MiB
    node.nvml = False
    node.add_claim("claim-a", {GPU0: 16 * MiB})
    with neighbour_holding(node, 20 * MiB):
        # The GPU uses 26 MiB with this context: more than the claim's 16 MiB. The context may be
        # that large, so it is undone and refused, as a context measured too large would be.
        result = node.run("init", "ctx", "0")
        assert result.rcs() == [0, 2]
        gpu = node.region("claim-a").gpu(GPU0)
        assert gpu.used_bytes == 0 and gpu.limit_errors == 1


def test_a_pool_allocation_is_charged_to_the_pools_device_not_the_current_one(node: Node) -> None:
    two_gpu_node(node)
    node.add_claim("claim-a", {GPU_A: 10 * MiB})
    node.add_claim("claim-b", {GPU_B: 20 * MiB})
    # Current context on GPU_A (ordinal 0); pools of GPU_B (ordinal 1), default and created.
    result = node.run(
        "init", "ctx", "0",
        "pool", str(12 * MiB), "1",
        "pool", str(6 * MiB), "1", "new",
        "pool", str(4 * MiB), "1",
        "info",
    )
    assert result.rcs() == [0, 0, 0, 0, 2, 0]
    assert int(result.lines[5]["free"]) == 10 * MiB  # nothing charged to GPU_A
    assert node.region("claim-b").gpu(GPU_B).peak_bytes == 18 * MiB


def test_free_never_promises_more_than_the_card_has_left(node: Node) -> None:
    node.devices = {GPU_A: 128 * MiB}
    node.add_claim("claim-a", {GPU_A: 100 * MiB})
    with neighbour_holding(node, 100 * MiB):
        result = node.run("init", "ctx", "0", "info")
        assert (int(result.lines[2]["free"]), int(result.lines[2]["total"])) == (28 * MiB, 100 * MiB)
