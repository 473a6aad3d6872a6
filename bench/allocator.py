"""Allocator benchmark: 1,000 nodes × 8 GPUs, 10,000 claims of mixed sizes, with churn.

Each decision is `allocate` + `Ledger.apply` (what the controller does per pod). Every third
decision also releases an earlier claim, so the cluster fills, frees and refills like a real one.

Baseline, measured in the same run on the same ledger states: a naive allocator that looks at every
GPU of every node per decision (recomputes each node's free share, sorts all nodes, then tries
them in order). It also cross-checks the decisions: for the single-request claims used here both
must pick the same node (or both refuse).

    .venv/bin/python bench/allocator.py                  # defaults: the issue's target scenario
    .venv/bin/python bench/allocator.py --claims 2000 --baseline-every 5
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from dataclasses import dataclass

from vgpu_dra.api.names import GIBIBYTE, MEBIBYTE
from vgpu_dra.driver.allocator import (
    ClaimRequest, DeviceRequest, GpuDevice, Ledger, Placement, PlacementPolicy, PodRequest, Policy, allocate,
)
from vgpu_dra.driver.limits import LimitError, ShareRequest
from vgpu_dra.driver.placement_policy import gpu_free_after

# (product, usable MiB) — a T4, an L40S and an A100 80GB as NVML reports them with ECC on.
GPU_MODELS = (("Tesla T4", 15105), ("NVIDIA L40S", 45489), ("NVIDIA A100-SXM4-80GB", 81051))
MODEL_WEIGHTS = (4, 4, 2)


@dataclass(frozen=True)
class Scenario:
    nodes: int
    gpus_per_node: int
    claims: int
    seed: int
    prefill: float = 0.0
    """Share of the cluster's GPU memory taken (untimed) before the measured claims arrive."""


def build_cluster(scenario: Scenario, rng: random.Random) -> Ledger:
    ledger = Ledger()
    for n in range(scenario.nodes):
        product, mib = rng.choices(GPU_MODELS, MODEL_WEIGHTS)[0]
        half = scenario.gpus_per_node // 2 or 1
        ledger.set_node(f"node-{n:04d}", [
            GpuDevice(f"gpu-{i}", f"GPU-{n:04d}-{i}", mib * MEBIBYTE, numa_node=i // half, product_name=product,
                      attributes={"productName": product, "numaNode": i // half, "index": i})
            for i in range(scenario.gpus_per_node)])
    return ledger


def random_claim(key: str, rng: random.Random) -> PodRequest:
    roll = rng.random()
    cores = rng.choice((0, 0, 10, 25, 50))
    if roll < 0.6:
        share = ShareRequest(memory_bytes=rng.choice((1, 2, 4, 8, 16, 24, 40)) * GIBIBYTE, cores=cores)
    elif roll < 0.9:
        share = ShareRequest(memory_percent=rng.choice((10, 20, 25, 50, 100)), cores=cores)
    else:
        share = ShareRequest()
    count = rng.choices((1, 2, 4), (85, 10, 5))[0]
    return PodRequest((ClaimRequest(key, (DeviceRequest("gpu", share, count),)),))


def prefill(ledger: Ledger, target: float, rng: random.Random) -> None:
    """Fill the cluster to ``target`` of its memory with large single-GPU claims (not timed)."""
    total = sum(c.device.memory_bytes for name in ledger.node_names() for c in ledger.candidates(name))
    used = 0
    step = 0
    misses = 0
    while used < target * total and misses < 50:
        share = ShareRequest(memory_percent=rng.randint(30, 95), cores=rng.choice((0, 25, 50)))
        pod = PodRequest((ClaimRequest(f"prefill-{step}", (DeviceRequest("gpu", share),)),))
        step += 1
        result = allocate(ledger, pod, PlacementPolicy(Policy.SPREAD, Policy.SPREAD))
        if isinstance(result, Placement):
            ledger.apply(result)
            used += sum(s.share.memory_bytes for s in result.claims[0].shares("gpu"))
        else:
            misses += 1


def naive_allocate(ledger: Ledger, pod: PodRequest, policy: PlacementPolicy) -> str | None:
    """The baseline: every GPU of every node, every time. Returns the chosen node or None."""
    request = pod.claims[0].requests[0]
    scored = []
    for name in ledger.node_names():
        candidates = ledger.candidates(name)
        free_memory = sum(c.free_memory_bytes for c in candidates)
        free_cores = sum(c.free_cores for c in candidates)
        total_memory = sum(c.device.memory_bytes for c in candidates)
        total_cores = sum(c.device.cores for c in candidates)
        share = (free_memory / total_memory + free_cores / total_cores) / 2
        scored.append((-share if policy.node is Policy.SPREAD else share, name, candidates))
    scored.sort(key=lambda item: (item[0], item[1]))
    for _, name, candidates in scored:
        fitting = []
        for candidate in candidates:
            try:
                memory = request.share.memory_for(candidate.device.memory_bytes)
            except LimitError:
                continue
            if memory <= candidate.free_memory_bytes and request.share.cores <= candidate.free_cores:
                fitting.append(gpu_free_after(candidate.free_memory_bytes, memory, candidate.device.memory_bytes,
                                              candidate.free_cores, request.share.cores, candidate.device.cores))
        if len(fitting) >= request.count:
            return name
    return None


def run(scenario: Scenario, policy: PlacementPolicy, baseline_every: int) -> dict[str, float]:
    rng = random.Random(scenario.seed)
    ledger = build_cluster(scenario, rng)
    prefill(ledger, scenario.prefill, rng)
    live: list[str] = []
    timings: list[float] = []
    baseline_timings: list[float] = []
    placed = refused = disagreements = 0
    for step in range(scenario.claims):
        pod = random_claim(f"claim-{step}", rng)
        if baseline_every and step % baseline_every == 0:
            started = time.perf_counter()
            naive_node = naive_allocate(ledger, pod, policy)
            baseline_timings.append(time.perf_counter() - started)
        else:
            naive_node = "unchecked"
        started = time.perf_counter()
        result = allocate(ledger, pod, policy)
        if isinstance(result, Placement):
            ledger.apply(result)
        timings.append(time.perf_counter() - started)
        if isinstance(result, Placement):
            placed += 1
            live.append(pod.claims[0].key)
        else:
            refused += 1
        if naive_node != "unchecked":
            chosen = result.node if isinstance(result, Placement) else None
            disagreements += naive_node != chosen
        if step % 3 == 2 and live:
            ledger.release(live.pop(rng.randrange(len(live))))
    timings.sort()
    mean = statistics.fmean(timings)
    baseline_mean = statistics.fmean(baseline_timings) if baseline_timings else float("nan")
    return {
        "decisions_per_s": len(timings) / sum(timings),
        "p50_ms": timings[len(timings) // 2] * 1e3,
        "p99_ms": timings[min(len(timings) - 1, int(len(timings) * 0.99))] * 1e3,
        "max_ms": timings[-1] * 1e3,
        "placed": placed,
        "refused": refused,
        "baseline_mean_ms": baseline_mean * 1e3,
        "baseline_samples": len(baseline_timings),
        "speedup": baseline_mean / mean,
        "disagreements": disagreements,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--claims", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--baseline-every", type=int, default=20,
                        help="run the naive baseline on every Nth decision (0 = never)")
    parser.add_argument("--prefill", type=float, action="append",
                        help="share of GPU memory taken before the measured claims (repeatable; "
                             "default: 0 and 0.9, an idle and a nearly full cluster)")
    args = parser.parse_args(argv)
    print(f"allocator: {args.nodes} nodes × {args.gpus_per_node} GPUs, {args.claims} claims "
          f"(mixed sizes, 1/3 released as it goes), Python {sys.version.split()[0]}")
    print(f"{'prefill':>7} {'node/gpu policy':<16} {'decisions/s':>11} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
          f"{'placed':>6} {'refused':>7} {'naive ms':>8} {'speedup':>8} {'disagree':>8}")
    failed = False
    for fill in args.prefill or (0.0, 0.9):
        scenario = Scenario(args.nodes, args.gpus_per_node, args.claims, args.seed, fill)
        for node_policy, gpu_policy in ((Policy.BINPACK, Policy.BINPACK), (Policy.SPREAD, Policy.SPREAD)):
            result = run(scenario, PlacementPolicy(node_policy, gpu_policy), args.baseline_every)
            print(f"{fill:>7.0%} {node_policy.value + '/' + gpu_policy.value:<16} {result['decisions_per_s']:>11,.0f} "
                  f"{result['p50_ms']:>7.3f} {result['p99_ms']:>7.3f} {result['max_ms']:>7.2f} "
                  f"{result['placed']:>6} {result['refused']:>7} {result['baseline_mean_ms']:>8.2f} "
                  f"{result['speedup']:>7.0f}x {result['disagreements']:>8}")
            failed |= result["disagreements"] > 0
    if failed:
        print("FAIL: the allocator and the naive baseline chose differently", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
