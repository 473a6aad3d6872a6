"""The ratio the benches print, and the interval that says how far one run can be trusted."""
from __future__ import annotations

import random

import pytest

from bench.latency_stats import percentile, ratio_interval
from bench.real_cluster import print_table


def samples(scale: float, n: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [scale * rng.lognormvariate(0.0, 0.4) for _ in range(n)]


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 51.0   # round(49.5) → index 50 (banker's rounding: 50)
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([3.0], 0.99) == 3.0


def test_the_same_distribution_gives_an_interval_around_one():
    got = ratio_interval(samples(1.0, 600, 1), samples(1.0, 600, 2), 0.5)
    assert got.low < 1.0 < got.high
    assert got.low <= got.ratio <= got.high


def test_a_slower_side_is_told_apart_at_the_median_and_the_tail():
    ours, baseline = samples(1.3, 600, 3), samples(1.0, 600, 4)
    for q in (0.5, 0.99):
        got = ratio_interval(ours, baseline, q)
        assert got.low > 1.0, (q, got)


def test_the_tail_is_less_certain_than_the_median():
    ours, baseline = samples(1.0, 200, 5), samples(1.0, 200, 6)
    median, tail = ratio_interval(ours, baseline, 0.5), ratio_interval(ours, baseline, 0.99)
    assert tail.high - tail.low > median.high - median.low


def test_more_samples_narrow_the_interval():
    few = ratio_interval(samples(1.0, 50, 7), samples(1.0, 50, 8), 0.5)
    many = ratio_interval(samples(1.0, 2000, 7), samples(1.0, 2000, 8), 0.5)
    assert many.high - many.low < few.high - few.low


def test_no_samples_is_a_clear_error():
    with pytest.raises(ValueError, match="both sides"):
        ratio_interval([], [1.0], 0.5)


def test_the_table_shows_pooled_ratios_intervals_and_every_rounds_range(capsys):
    fast, slow = [0.010] * 100, [0.020] * 100
    rounds = {("controller", "paced"): [{"allocated": fast, "bound": slow}, {"allocated": fast, "bound": fast}],
              ("scheduler", "paced"): [{"allocated": fast, "bound": fast}, {"allocated": fast, "bound": fast}]}
    results = {key: {m: sum((r[m] for r in per_round), []) for m in ("allocated", "bound")}
               for key, per_round in rounds.items()}
    print_table(results, rounds, ["paced"])
    lines = capsys.readouterr().out.splitlines()
    bound = next(line for line in lines if "create → bound" in line)
    # Pooled: half the controller's pods took twice as long, so its p99 is 2× and its median 1× or 2×;
    # the rounds' ratios run from 1.00× (round 2) to 2.00× (round 1).
    assert "| 1.00–2.00×; 1.00–2.00× |" in bound
    assert "20 ms | 10 / 10 ms | " in bound
    allocated = next(line for line in lines if "create → allocated" in line)
    assert "1.00× [1.00–1.00]" in allocated


def test_against_the_controllers_own_baseline_the_table_names_it(capsys):
    fast, slow = [0.010] * 100, [0.030] * 100
    rounds = {("controller", "burst"): [{"allocated": fast, "bound": fast}],
              ("baseline", "burst"): [{"allocated": fast, "bound": slow}]}
    results = {key: per_round[0] for key, per_round in rounds.items()}
    print_table(results, rounds, ["burst"], "baseline")
    header, _, _, bound = capsys.readouterr().out.splitlines()
    assert "| baseline p50 / p99 |" in header and "native" not in header
    assert "| 10 / 10 ms | 30 / 30 ms | 0.33× [0.33–0.33] |" in bound
