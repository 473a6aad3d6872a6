"""Issue 3 on a real GPU: PyTorch under the shim with a 2 GiB wall."""

from __future__ import annotations

import json
import statistics

from tests.gpu.conftest import GiB, GpuClaim
from tests.gpu.workloads import FILL_UNTIL_OOM, HOLD, MATMUL, MEM_GET_INFO, TRY_ALLOC

LIMIT = 2 * GiB


def test_allocating_past_2_gib_raises_torch_oom_and_the_process_survives(claim: GpuClaim) -> None:
    claim.write(memory=LIMIT)
    seen = claim.python(FILL_UNTIL_OOM, "256")
    assert seen["oom"], seen
    assert 0 < seen["allocated"] <= LIMIT
    assert seen["alive"]
    assert seen["total"] == LIMIT
    usage = claim.region().gpu(claim.uuid)
    assert usage.rejected_allocations >= 1 and usage.peak_bytes <= LIMIT


def test_mem_get_info_reports_the_limit(claim: GpuClaim) -> None:
    claim.write(memory=LIMIT)
    seen = claim.python(MEM_GET_INFO)
    assert seen["total"] == LIMIT
    assert 0 < seen["free"] <= LIMIT  # the context's own footprint is already charged


def test_expandable_segments_are_limited_too(claim: GpuClaim) -> None:
    claim.write(memory=LIMIT)
    seen = claim.python(FILL_UNTIL_OOM, "256", PYTORCH_CUDA_ALLOC_CONF="expandable_segments:True")
    assert seen["oom"] and seen["alive"], seen
    assert 0 < seen["allocated"] <= LIMIT
    assert claim.region().gpu(claim.uuid).peak_bytes <= LIMIT


def test_two_processes_share_one_budget(claim: GpuClaim) -> None:
    claim.write(memory=LIMIT)
    holder = claim.start(HOLD, "800")
    try:
        assert holder.stdout is not None
        assert json.loads(holder.stdout.readline())["ok"]
        # What the holder left of the budget (its context included): a second process needs its
        # own context on top, so asking for all of it must fail while the holder lives...
        left_mib = (LIMIT - claim.region().gpu(claim.uuid).used_bytes) >> 20
        assert claim.python(TRY_ALLOC, str(left_mib)) == {"ok": False}
    finally:
        holder.communicate("\n", timeout=60)
    # ...and fit once the holder's bytes came back.
    assert claim.python(TRY_ALLOC, str(left_mib)) == {"ok": True}


def test_two_processes_started_together_both_get_their_first_allocation(claim: GpuClaim) -> None:
    """A pod's workers start together: the first one's context bound (2 GiB, the whole claim here)
    is provisional until it has measured its context, and the other waits for that, not fails."""
    claim.write(memory=LIMIT)
    procs = [claim.start(TRY_ALLOC, "128") for _ in range(2)]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    answers = [json.loads(out.strip().splitlines()[-1]) if out.strip() else None for out, _ in outputs]
    assert answers == [{"ok": True}] * 2, [err[-2000:] for _, err in outputs]
    usage = claim.region().gpu(claim.uuid)
    assert usage.rejected_allocations == 0 and usage.peak_bytes <= LIMIT


def test_matmul_runs_at_99_percent_of_its_speed_under_the_shim(claim: GpuClaim) -> None:
    claim.write(memory=1 << 50)  # a wall far away, no core cap: only the shim's own cost
    without, with_shim = [], []
    for _ in range(3):  # alternate, so drifting clocks hit both sides alike
        without.append(claim.python(MATMUL, "8", "4096", shim=False)["iters_per_s"])
        with_shim.append(claim.python(MATMUL, "8", "4096")["iters_per_s"])
    ratio = statistics.median(with_shim) / statistics.median(without)
    print(f"matmul under the shim: {ratio:.4f} of its speed without")
    assert ratio >= 0.99
