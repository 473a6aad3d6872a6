"""Percentiles of latency samples, and how sure a ratio of two of them is.

The benches compare a vgpu-dra path with a baseline by the ratio of a percentile (p50, p99) of
each side's samples. One run's ratio moves from run to run on a small machine, so a ratio is
printed with a bootstrap interval: the samples of each side are drawn again with replacement, the
ratio recomputed, and the middle 95 % of those ratios kept. The interval covers the pod-to-pod
spread within the run; round-to-round spread is shown by the per-round ratios beside it.
"""
from __future__ import annotations

import random
from dataclasses import dataclass


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank q-quantile (0 ≤ q ≤ 1) of values, which must not be empty."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


@dataclass(frozen=True)
class RatioInterval:
    """ours/baseline at one quantile, with the bootstrap's 2.5 % and 97.5 % points."""

    ratio: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.ratio:.2f}× [{self.low:.2f}–{self.high:.2f}]"


def ratio_interval(ours: list[float], baseline: list[float], q: float, *,
                   resamples: int = 1000, seed: int = 0) -> RatioInterval:
    """The ratio of the q-quantiles of ours and baseline, and its 95 % bootstrap interval."""
    if not ours or not baseline:
        raise ValueError("ratio_interval needs samples on both sides")
    rng = random.Random(seed)
    drawn = sorted(
        percentile(rng.choices(ours, k=len(ours)), q) / percentile(rng.choices(baseline, k=len(baseline)), q)
        for _ in range(resamples)
    )
    return RatioInterval(percentile(ours, q) / percentile(baseline, q),
                         percentile(drawn, 0.025), percentile(drawn, 0.975))
