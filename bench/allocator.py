"""Allocator benchmark: 1,000 nodes × 8 GPUs, 10,000 claims per row, with churn.

Each decision is `allocate` + `Ledger.apply` (what the controller does per pod). Rows:

- ``mixed``: single-request claims of mixed sizes; every third decision releases an earlier
  claim, so the cluster fills, frees and refills like a real one — from an idle cluster and from
  one 90 % full;
- ``firstAvailable``: each pod asks for 40 GiB and half an A100 first (a CEL selector), any
  8 GiB share second; the A100 nodes fill up and later pods get their fallback;
- ``search``: two-request pods that only a backtracking search can place (the greedy pass puts
  the larger request on the one GPU the smaller one is pinned to); each pod is released right
  after its decision, so every decision needs the search.

Baseline, measured in the same run on the same ledger states: a naive allocator that looks at every
GPU of every node per decision (recomputes each node's free share, sorts all nodes, then tries
them in order; for two-request pods every pair of GPUs of a node). It also cross-checks the
decisions: both must pick the same node — and the same alternative — or both refuse.

    .venv/bin/python bench/allocator.py                  # defaults: every row
    .venv/bin/python bench/allocator.py --claims 2000 --baseline-every 5 --rows mixed
"""
from __future__ import annotations

import argparse
import itertools
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from vgpu_dra.api.names import GIBIBYTE
from vgpu_dra.driver.allocator import (
    ClaimRequest, DeviceRequest, FirstAvailable, GpuDevice, Ledger, Placement, PlacementPolicy, PodRequest, Policy,
    allocate,
)
from vgpu_dra.driver.ledger import Consumption, GpuCandidate
from vgpu_dra.driver.limits import ShareRequest
from vgpu_dra.driver.placement_policy import gpu_free_after
from vgpu_dra.driver.selectors import compile_selectors

# (product, usable MiB) — a T4, an L40S and an A100 80GB as NVML reports them with ECC on.
GPU_MODELS = (("Tesla T4", 15105), ("NVIDIA L40S", 45489), ("NVIDIA A100-SXM4-80GB", 81051))
MODEL_WEIGHTS = (4, 4, 2)
MIB = 1 << 20


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
            GpuDevice(f"gpu-{i}", f"GPU-{n:04d}-{i}", mib * MIB, numa_node=i // half, product_name=product,
                      attributes={"productName": product, "numaNode": i // half, "index": i})
            for i in range(scenario.gpus_per_node)])
    return ledger


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


def pin_gpu0(ledger: Ledger, free_gib: int) -> None:
    """Leave ``free_gib`` free on every node's gpu-0 (untimed): the search row's cluster."""
    for name in ledger.node_names():
        gpu0 = ledger.candidates(name)[0].device
        ledger.record(f"pin-{name}", [Consumption(name, "gpu-0", gpu0.memory_bytes - free_gib * GIBIBYTE, 0)])


# --- workloads ---------------------------------------------------------------------------------

def mixed_pod(key: str, rng: random.Random) -> PodRequest:
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


# Compiled CEL, as the controller evaluates class and claim selectors.
ON_A100 = compile_selectors(['device.attributes["vgpu.dra.dev"].productName == "NVIDIA A100-SXM4-80GB"'])
ON_GPU0 = compile_selectors(['device.attributes["vgpu.dra.dev"].index == 0'])


def first_available_pod(key: str, rng: random.Random) -> PodRequest:
    big = DeviceRequest("gpu/a100", ShareRequest(memory_bytes=40 * GIBIBYTE, cores=50), selector=ON_A100)
    small = DeviceRequest("gpu/any", ShareRequest(memory_bytes=8 * GIBIBYTE, cores=rng.choice((0, 10, 25))))
    return PodRequest((ClaimRequest(key, (FirstAvailable("gpu", (big, small)),)),))


def search_pod(key: str, rng: random.Random) -> PodRequest:
    model = DeviceRequest("model", ShareRequest(memory_bytes=4 * GIBIBYTE))
    cache = DeviceRequest("cache", ShareRequest(memory_bytes=3 * GIBIBYTE), selector=ON_GPU0)
    return PodRequest((ClaimRequest(key, (model, cache)),))


# --- the naive baseline -------------------------------------------------------------------------

def _nodes_in_policy_order(ledger: Ledger, policy: PlacementPolicy) -> list[tuple[str, list[GpuCandidate]]]:
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
    return [(name, candidates) for _, name, candidates in scored]


def _fits(request: DeviceRequest, candidate: GpuCandidate, taken: tuple[int, int] = (0, 0)) -> bool:
    if request.selector is not None and not request.selector(candidate):
        return False
    memory = request.share.consumed_memory(candidate.device.memory_bytes)
    return (memory is not None and memory + taken[0] <= candidate.free_memory_bytes
            and request.share.cores + taken[1] <= candidate.free_cores)


def _naive_node(ledger: Ledger, requests: tuple[DeviceRequest, ...], policy: PlacementPolicy) -> str | None:
    """Every GPU of every node: one request by count, several by every assignment of GPUs."""
    for name, candidates in _nodes_in_policy_order(ledger, policy):
        if len(requests) == 1:
            fitting = [gpu_free_after(c.free_memory_bytes, 0, c.device.memory_bytes, c.free_cores, 0, c.device.cores)
                       for c in candidates if _fits(requests[0], c)]
            if len(fitting) >= requests[0].count:
                return name
            continue
        for assignment in itertools.product(range(len(candidates)), repeat=len(requests)):
            taken: dict[int, tuple[int, int]] = {}
            for request, i in zip(requests, assignment):
                if not _fits(request, candidates[i], taken.get(i, (0, 0))):
                    break
                memory = request.share.consumed_memory(candidates[i].device.memory_bytes) or 0
                before = taken.get(i, (0, 0))
                taken[i] = (before[0] + memory, before[1] + request.share.cores)
            else:
                return name
    return None


def naive_allocate(ledger: Ledger, pod: PodRequest, policy: PlacementPolicy) -> tuple[str, str] | None:
    """The baseline's choice: (node, the alternative taken) or None. One claim per pod here."""
    claim = pod.claims[0]
    entry = claim.requests[0]
    if isinstance(entry, FirstAvailable):
        for alternative in entry.alternatives:
            node = _naive_node(ledger, (alternative,), policy)
            if node is not None:
                return node, alternative.name
        return None
    node = _naive_node(ledger, tuple(claim.requests), policy)  # type: ignore[arg-type]
    return None if node is None else (node, entry.name)


# --- one row -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    name: str
    make_pod: Callable[[str, random.Random], PodRequest]
    prefill: float = 0.0
    pin_gpu0_free_gib: int | None = None
    release_at_once: bool = False
    selectors: tuple[Callable[[GpuCandidate], bool], ...] = ()
    """Evaluated once per GPU before the row (untimed): the controller's CEL results are cached
    per published device for the life of the process, so steady state is a warm cache."""
    policies: tuple[tuple[Policy, Policy], ...] = ((Policy.BINPACK, Policy.BINPACK), (Policy.SPREAD, Policy.SPREAD))


ROWS = {
    "mixed": (Row("mixed", mixed_pod, 0.0), Row("mixed", mixed_pod, 0.9)),
    "firstAvailable": (Row("firstAvailable", first_available_pod, 0.0, selectors=(ON_A100,),
                           policies=((Policy.BINPACK, Policy.BINPACK),)),),
    "search": (Row("search", search_pod, pin_gpu0_free_gib=6, release_at_once=True, selectors=(ON_GPU0,),
                   policies=((Policy.BINPACK, Policy.BINPACK),)),),
}


def _choice(result: Placement | object) -> tuple[str, str] | None:
    if not isinstance(result, Placement):
        return None
    placed = result.claims[0]
    return result.node, placed.requests[0][0]


def run(scenario: Scenario, row: Row, policy: PlacementPolicy, baseline_every: int) -> dict[str, float]:
    rng = random.Random(scenario.seed)
    ledger = build_cluster(scenario, rng)
    prefill(ledger, row.prefill, rng)
    if row.pin_gpu0_free_gib is not None:
        pin_gpu0(ledger, row.pin_gpu0_free_gib)
    for selector in row.selectors:
        for name in ledger.node_names():
            for candidate in ledger.candidates(name):
                selector(candidate)
    live: list[str] = []
    timings: list[float] = []
    baseline_timings: list[float] = []
    placed = refused = disagreements = fallbacks = 0
    for step in range(scenario.claims):
        pod = row.make_pod(f"claim-{step}", rng)
        checked = bool(baseline_every) and step % baseline_every == 0
        if checked:
            started = time.perf_counter()
            naive = naive_allocate(ledger, pod, policy)
            baseline_timings.append(time.perf_counter() - started)
        started = time.perf_counter()
        result = allocate(ledger, pod, policy)
        if isinstance(result, Placement):
            ledger.apply(result)
        timings.append(time.perf_counter() - started)
        if isinstance(result, Placement):
            placed += 1
            fallbacks += result.claims[0].requests[0][0].endswith("/any")
            if row.release_at_once:
                ledger.release(pod.claims[0].key)
            else:
                live.append(pod.claims[0].key)
        else:
            refused += 1
        if checked:
            disagreements += naive != _choice(result)
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
        "fallbacks": fallbacks,
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
    parser.add_argument("--rows", action="append", choices=list(ROWS),
                        help="which rows (repeatable; default: all)")
    args = parser.parse_args(argv)
    print(f"allocator: {args.nodes} nodes × {args.gpus_per_node} GPUs, {args.claims} claims per row, "
          f"Python {sys.version.split()[0]}")
    print(f"{'row':<15} {'prefill':>7} {'node/gpu policy':<16} {'decisions/s':>11} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'max ms':>7} {'placed':>6} {'refused':>7} {'naive ms':>8} {'speedup':>8} {'disagree':>8}")
    failed = False
    for name in args.rows or list(ROWS):
        for row in ROWS[name]:
            scenario = Scenario(args.nodes, args.gpus_per_node, args.claims, args.seed, row.prefill)
            for node_policy, gpu_policy in row.policies:
                result = run(scenario, row, PlacementPolicy(node_policy, gpu_policy), args.baseline_every)
                print(f"{row.name:<15} {row.prefill:>7.0%} {node_policy.value + '/' + gpu_policy.value:<16} "
                      f"{result['decisions_per_s']:>11,.0f} {result['p50_ms']:>7.3f} {result['p99_ms']:>7.3f} "
                      f"{result['max_ms']:>7.2f} {result['placed']:>6} {result['refused']:>7} "
                      f"{result['baseline_mean_ms']:>8.2f} {result['speedup']:>7.0f}x {result['disagreements']:>8}"
                      + (f"  ({result['fallbacks']} got their fallback)" if row.name == "firstAvailable" else ""))
                failed |= result["disagreements"] > 0
    if failed:
        print("FAIL: the allocator and the naive baseline chose differently", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
