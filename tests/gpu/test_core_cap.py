"""Issue 4 on a real GPU: a PyTorch matmul loop gets its cap's share of the GPU's throughput."""

from __future__ import annotations

import pytest

from tests.gpu.conftest import GpuClaim
from tests.gpu.workloads import MATMUL

SECONDS = "15"
SIZE = "4096"


@pytest.fixture(scope="module")
def baseline_per_s() -> dict[str, float]:
    return {}


def uncapped(claim: GpuClaim, cache: dict[str, float]) -> float:
    """Iterations/s without the shim, measured once per module run (same GPU, same run)."""
    if "rate" not in cache:
        cache["rate"] = claim.python(MATMUL, SECONDS, SIZE, shim=False)["iters_per_s"]
    return cache["rate"]


@pytest.mark.parametrize("cap", [25, 50, 75])
def test_throughput_share_follows_the_cap(claim: GpuClaim, baseline_per_s: dict[str, float], cap: int) -> None:
    base = uncapped(claim, baseline_per_s)
    claim.write(memory=1 << 50, cores=cap, policy="hard")
    rate = claim.python(MATMUL, SECONDS, SIZE)["iters_per_s"]
    share = 100 * rate / base
    usage = claim.region().gpu(claim.uuid)
    print(f"cap {cap}: throughput share {share:.1f} % (shim measured {usage.measured_share_percent:.1f} %, "
          f"throttled {usage.throttled_seconds:.1f} s)")
    assert abs(share - cap) <= 5.0
    assert usage.throttled_seconds > 0


def test_cap_100_costs_at_most_1_percent(claim: GpuClaim, baseline_per_s: dict[str, float]) -> None:
    base = uncapped(claim, baseline_per_s)
    claim.write(memory=1 << 50, cores=100, policy="hard")
    rate = claim.python(MATMUL, SECONDS, SIZE)["iters_per_s"]
    assert rate / base >= 0.99
    assert claim.region().gpu(claim.uuid).throttled_ns == 0
