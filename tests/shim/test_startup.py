"""A claim's first process: its context measured off the creating call, the wall from its first call.

With room for any plausible context (2 GiB), the creating call reserves that bound and returns; the
next intercepted call measures the context through NVML and corrects the reservation (docs/shim.md,
"Accounting"); a context that cannot be measured keeps an upper bound. Also: reading a fresh
claim's files does not write their access time.
"""

import os
import time
from pathlib import Path

import pytest

from tests.fakes.nvml_processes import FakeProcess, LiveProcesses
from tests.shim.harness import GPU0, MiB, Node, neighbour_holding, read_until, stop
from vgpu_dra.driver.claimconfig import ClaimConfig, GpuLimit, render
from vgpu_dra.driver.region import create_region, read_region

GiB = 1 << 30
BOUND = 2 * GiB  # VGPU_CONTEXT_MAX_BYTES
CTX = 300 * MiB


def test_the_first_allocation_already_sees_the_context_charged(node: Node) -> None:
    node.ctx_bytes = CTX
    node.add_claim("claim-a", {GPU0: 4 * GiB})
    # The first call after the context is an allocation one byte over what the context leaves.
    over = node.run("init", "ctx", "0", "alloc", str(4 * GiB - CTX + 1), "info")
    assert over.rcs() == [0, 0, 2, 0]
    assert int(over.lines[3]["free"]) == 4 * GiB - CTX
    gpu = node.region("claim-a").gpu(GPU0)
    assert (gpu.context_bytes, gpu.limit_errors, gpu.rejected_allocations) == (CTX, 0, 1)
    # Exactly what is left fits (the bound reserved at creation is gone once measured).
    node.add_claim("claim-b", {GPU0: 4 * GiB})
    (node.claims_root / "claim-a").rename(node.root / "claim-a-away")
    fits = node.run("init", "ctx", "0", "alloc", str(4 * GiB - CTX), "alloc", "1")
    assert fits.rcs() == [0, 0, 0, 2]
    assert node.region("claim-b").gpu(GPU0).peak_bytes == 4 * GiB


def test_until_it_is_measured_the_claim_holds_the_upper_bound_for_the_context(node: Node) -> None:
    node.ctx_bytes = CTX
    node.add_claim("claim-a", {GPU0: 4 * GiB})
    # "hold" makes no CUDA call: the context created is not measured yet.
    holder = node.start("init", "ctx", "0", "hold")
    try:
        read_until(holder, "hold")
        assert node.region("claim-a").gpu(GPU0).used_bytes == BOUND
        # Another process of the claim gets only what is left beside that bound once its own
        # context is measured (it has no earlier measurement either: it reserves and measures too).
        left = 4 * GiB - BOUND - CTX
        other = node.run("init", "ctx", "0", "alloc", str(left + 1), "alloc", str(left))
        assert other.rcs() == [0, 0, 2, 0]
    finally:
        stop(holder)
    # Killed before measuring: its bound is refunded with its slot, as any charge of a dead process.
    assert node.region("claim-a").gpu(GPU0).dead_process_bytes == BOUND
    assert node.run("init").rcs() == [0]
    assert node.region("claim-a").gpu(GPU0).used_bytes == 0


@pytest.mark.parametrize("first_args, extra", [
    # Created: it measures at its next CUDA call, 300 ms later.
    (("ctx", "0", "sleep", "300", "alloc", str(512 * MiB), "hold"), {}),
    # Still inside the creating call, which takes hundreds of ms on a real GPU: the bound is
    # reserved before the call, so it is provisional from then on.
    (("ctx", "0", "alloc", str(512 * MiB), "hold"), {"FAKE_CUDA_CTX_MS": "1000"}),
], ids=["before-its-next-call", "inside-the-creating-call"])
def test_a_process_starting_beside_an_unmeasured_context_waits_for_it_instead_of_failing(
        node: Node, first_args: tuple[str, ...], extra: dict[str, str]) -> None:
    """Two processes of one pod starting together on a claim no larger than the bound: the first
    reserves the whole claim for its context until it has measured it; the second's context and
    allocation fit once it has, so they wait for that rather than fail."""
    node.ctx_bytes = CTX
    node.add_claim("claim-a", {GPU0: BOUND})
    first = node.start("init", *first_args, **extra)
    try:
        read_until(first, "init")
        deadline = time.monotonic() + 10
        while node.region("claim-a").gpu(GPU0).used_bytes < BOUND and time.monotonic() < deadline:
            time.sleep(0.005)
        assert node.region("claim-a").gpu(GPU0).used_bytes == BOUND
        second = node.run("init", "ctx", "0", "alloc", str(512 * MiB), "info")
        assert second.rcs() == [0, 0, 0, 0], second.stderr
        assert {line["rc"] for line in read_until(first, "hold")} == {"0"}
        gpu = node.region("claim-a").gpu(GPU0)
    finally:
        stop(first)
    # Both contexts measured and charged, nothing refused, nothing failed closed.
    assert (gpu.context_bytes, gpu.rejected_allocations, gpu.limit_errors) == (CTX, 0, 0)
    assert gpu.peak_bytes == BOUND


def test_a_process_that_needs_a_probe_to_tell_itself_apart_waits_for_room_for_it(node: Node) -> None:
    """Another process appeared in NVML's list while this one created its context, so it must probe
    to tell which is itself; the first process's provisional bound holds all the room for that
    probe, so it waits for the measurement instead of settling for an upper bound."""
    node.ctx_bytes = CTX
    node.add_claim("claim-a", {GPU0: BOUND})
    live = LiveProcesses(node.root / "nvml-processes")
    holder = node.start("init", "ctx", "0", "sleep", "2000", "alloc", str(MiB), "hold")
    try:
        read_until(holder, "ctx")
        assert node.region("claim-a").gpu(GPU0).used_bytes == BOUND
        # Its creating call takes a second; a stranger shows up in NVML meanwhile.
        starting = node.start("init", "ctx", "0", "hold", FAKE_CUDA_CTX_MS="1000", **live.env())
        deadline = time.monotonic() + 10
        while node.fake_device_used() < 2 * CTX and time.monotonic() < deadline:
            time.sleep(0.005)
        live.set([FakeProcess(GPU0, 4242, 64 * MiB)])
        try:
            assert {line["rc"] for line in read_until(starting, "hold")} == {"0"}
            assert {line["rc"] for line in read_until(holder, "hold")} == {"0"}
            gpu = node.region("claim-a").gpu(GPU0)
        finally:
            stop(starting)
    finally:
        stop(holder)
    # Measured by its probe, not estimated: nothing failed closed, and both contexts are charged.
    assert (gpu.limit_errors, gpu.rejected_allocations, gpu.context_bytes) == (0, 0, CTX)
    assert gpu.used_bytes == 2 * CTX + MiB


def test_a_first_context_that_cannot_be_measured_is_charged_an_upper_bound_and_counted(node: Node) -> None:
    node.ctx_bytes = CTX
    node.nvml = False
    node.add_claim("claim-a", {GPU0: 4 * GiB})
    # No NVML to measure with: the reserved bound shrinks to what the driver says the GPU uses
    # (here only this context), never to nothing.
    result = node.run("init", "ctx", "0", "info")
    assert result.rcs() == [0, 0, 0]
    assert int(result.lines[2]["free"]) == 4 * GiB - CTX
    gpu = node.region("claim-a").gpu(GPU0)
    assert (gpu.limit_errors, gpu.context_bytes) == (1, 0)  # an upper bound is not kept as a measurement
    assert gpu.limit_error_call.startswith("context footprint")
    assert "the context footprint could not be measured" in result.stderr
    assert "charged an upper bound" in result.stderr


def test_an_unmeasured_context_beside_other_tenants_is_charged_their_memory_too(node: Node) -> None:
    node.ctx_bytes = CTX
    node.nvml = False
    node.add_claim("claim-a", {GPU0: 4 * GiB})
    with neighbour_holding(node, GiB, ctx_bytes=CTX, nvml=False):
        # The GPU's used memory is an upper bound of this context: the neighbour's context and
        # gigabyte count in it, never less than this context.
        beside = node.run("init", "ctx", "0", "info")
        assert int(beside.lines[2]["free"]) == 4 * GiB - (2 * CTX + GiB)
    # At most the 2 GiB bound, however full the GPU.
    with neighbour_holding(node, 3 * GiB, ctx_bytes=CTX, nvml=False):
        crowded = node.run("init", "ctx", "0", "info")
        assert int(crowded.lines[2]["free"]) == 4 * GiB - BOUND


def test_a_later_process_reuses_the_deferred_measurement_without_nvml(node: Node) -> None:
    node.ctx_bytes = CTX
    node.add_claim("claim-a", {GPU0: 4 * GiB})
    assert node.run("init", "ctx", "0", "info").rcs() == [0, 0, 0]
    node.nvml = False
    later = node.run("init", "ctx", "0", "info")
    assert later.rcs() == [0, 0, 0]
    assert int(later.lines[2]["free"]) == 4 * GiB - CTX
    assert node.region("claim-a").gpu(GPU0).limit_errors == 0


def test_a_fork_child_neither_measures_nor_gives_back_its_parents_reservation(node: Node) -> None:
    node.ctx_bytes = CTX
    node.add_claim("claim-a", {GPU0: 4 * GiB})
    # The parent forks while its context waits to be measured, then waits for the child.
    parent = node.start("init", "ctx", "0", "fork", "info", "hold")
    try:
        lines = read_until(parent, "hold")
        slots = {s.pid: s.used_bytes.get(GPU0, 0) for s in node.region("claim-a").processes if s.alive}
    finally:
        stop(parent)
    assert lines[-2]["cmd"] == "info" and int(lines[-2]["free"]) == 4 * GiB - BOUND
    assert slots[parent.pid] == BOUND
    assert sorted(slots.values()) == [0, BOUND]


def test_threads_whose_first_calls_race_the_measurement_all_see_the_context_charged(node: Node) -> None:
    node.ctx_bytes = CTX
    node.add_claim("claim-a", {GPU0: 4 * GiB})
    block = 100 * MiB
    # 8 threads' first calls after the context are allocations, released at one barrier: one
    # measures, the others wait for it, and together they get exactly what the context leaves.
    result = node.run("init", "ctx", "0", "mtfirst", "8", str(block), "info")
    assert result.rcs() == [0, 0, 0, 0]
    assert int(result.lines[2]["count"]) == (4 * GiB - CTX) // block
    gpu = node.region("claim-a").gpu(GPU0)
    assert gpu.peak_bytes <= 4 * GiB and gpu.context_bytes == CTX
    assert int(result.lines[3]["free"]) == 4 * GiB - CTX


def _atime_is_recorded(directory: Path) -> bool:
    probe = directory / "atime-probe"
    probe.write_text("x")
    os.utime(probe, (1_000_000_000, 1_000_000_000))
    probe.read_text()
    return os.stat(probe).st_atime != 1_000_000_000


def test_reading_a_fresh_claim_does_not_write_its_access_times(node: Node) -> None:
    node.add_claim("claim-a", {GPU0: GiB})
    if not _atime_is_recorded(node.root):
        pytest.skip("this filesystem records no access times (noatime): nothing to observe")
    config = node.claims_root / "claim-a" / "config"
    old = 1_000_000_000  # atime = mtime: the next plain read would update it (relatime)
    for path in (config, node.claims_root):
        os.utime(path, (old, old))
    assert node.run("init", "ctx", "0").rcs() == [0, 0]
    assert (os.stat(config).st_atime, os.stat(node.claims_root).st_atime) == (old, old)


def test_first_processes_of_several_claims_starting_together_each_charge_their_context(node: Node) -> None:
    """Claims on one GPU whose first processes measure at the same instant (pods of one workload
    starting together): each tells its own context apart and is charged it, none goes uncharged."""
    node.ctx_bytes = CTX
    roots = []
    for index in range(6):
        root = node.root / f"claims-{index}"
        directory = root / f"claim-{index}"
        directory.mkdir(parents=True)
        config = ClaimConfig(f"claim-{index}", (GpuLimit(GPU0, 4 * GiB, 0, "soft"),))
        (directory / "config").write_text(render(config))
        create_region(directory / "region", config)
        roots.append(root)
    # Each creates its context, then sleeps: they all wake, and measure, at about the same moment.
    procs = [node.start("init", "ctx", "0", "sleep", "400", "info", VGPU_CLAIMS_ROOT=str(root)) for root in roots]
    outputs = [proc.communicate(timeout=60) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * len(procs), outputs
    for index, root in enumerate(roots):
        gpu = read_region(root / f"claim-{index}" / "region").gpu(GPU0)
        assert (gpu.context_bytes, gpu.limit_errors, gpu.used_bytes) == (CTX, 0, 0), (index, outputs[index][1])
