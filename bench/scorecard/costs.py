"""Costs: context creation with and without the shim, an alloc/free pair, a launch, and the time
from an over-limit allocation to its error.

Driver rows run bench/shim_overhead_loop.c (linked by soname against ``libcuda.so.1``: the fake on
--fake, the real driver on a GPU), alternating runs without and with the shim in the same
measurement. On a real driver a launch needs a real kernel, so the launch row there is PyTorch's.
"""

from __future__ import annotations

import statistics
from typing import Any

from bench.scorecard import machine as m
from bench.scorecard.core import Measurement, Row, Verdict
from bench.scorecard.programs import LAUNCH

GROUP = "costs"
WALL = 2 * m.GiB
REFUSED_BYTES = 4 * m.GiB  # twice the wall: refused by the shim before the driver is asked
OOM = 2  # CUDA_ERROR_OUT_OF_MEMORY


def _loop(ctx: m.Context, environ: dict[str, str], *args: str) -> list[list[str]]:
    out = m.run([ctx.loop, *args], environ, timeout=120)
    return [line.split()[1:] for line in out.stdout.splitlines() if line.split()]


def measure_driver(ctx: m.Context) -> dict[str, Any]:
    """Start-up, pair, (fake) launch and refusal timings, shim and no shim alternating."""
    startups = 6 if ctx.quick else 10
    rounds = 3
    iters = "20000" if not ctx.fake else ("50000" if ctx.quick else "200000")
    work = ctx.scratch("costs")
    claims = m.write_claim(work / "claims", ctx.gpu_uuid, 1 << 40)
    wall = m.write_claim(work / "wall", ctx.gpu_uuid, WALL)
    state = work / "fake-cuda.state"
    base, shim = m.env(ctx, None, state), m.env(ctx, claims, state)
    raw: dict[str, Any] = {"startup_base_us": [], "startup_shim_us": [], "pair_base_ns": [], "pair_shim_ns": [],
                           "launch_base_ns": [], "launch_shim_ns": [], "refuse_ns": [], "refuse_rc": None}
    _loop(ctx, shim, "1", "1", "startup")  # the claim's first process measures the context once
    for _ in range(startups):
        for key, environ in (("startup_base_us", base), ("startup_shim_us", shim)):
            state.unlink(missing_ok=True)
            raw[key].append(float(_loop(ctx, environ, "1", "1", "startup")[0][0]) / 1000)
    # On the fake a launch of NULL is a kernel; on a real driver it is an error, so pairs only.
    kind = [] if ctx.fake else ["alloc-only"]
    for _ in range(rounds):
        for suffix, environ in (("base", base), ("shim", shim)):
            reps = [[float(v) for v in r] for r in _loop(ctx, environ, iters, "4", *kind)][1:]
            raw[f"pair_{suffix}_ns"].append(min(r[0] for r in reps))
            if ctx.fake:
                raw[f"launch_{suffix}_ns"].append(min(r[1] for r in reps))
    refused = _loop(ctx, m.env(ctx, wall, state), "2000" if not ctx.fake else "20000", "3",
                    f"refuse:{REFUSED_BYTES}")
    raw["refuse_ns"] = [float(r[0]) for r in refused]
    raw["refuse_rc"] = int(refused[-1][1])
    return raw


def measure_launch_torch(ctx: m.Context) -> dict[str, Any]:
    """PyTorch's per-launch cost of a tiny kernel, without and with the shim, alternating."""
    claims = m.write_claim(ctx.scratch("launch") / "claims", ctx.gpu_uuid, 1 << 40)
    raw: dict[str, Any] = {"base_us": [], "shim_us": []}
    for _ in range(3):
        for key, claim_root in (("base_us", None), ("shim_us", claims)):
            seen = m.python_json(ctx.torch_python, LAUNCH, ["20000"], m.env(ctx, claim_root), timeout=120)
            raw[key].append(seen["launch_us"])
    return raw


def added_median(raw: dict[str, Any], base: str, shim: str) -> float:
    """Median of the shim's runs minus median of the baseline's (same measurement)."""
    return statistics.median(raw[shim]) - statistics.median(raw[base])


def _context_base(raw: dict[str, Any]) -> Verdict:
    return Verdict(statistics.median(raw["startup_base_us"]) / 1000, None,
                   f"cuInit + cuDevicePrimaryCtxRetain, {len(raw['startup_base_us'])} fresh processes")


def _context_added(raw: dict[str, Any]) -> Verdict:
    added = added_median(raw, "startup_base_us", "startup_shim_us") / 1000
    spread = sorted(raw["startup_shim_us"])
    return Verdict(added, added <= 10.0, f"with shim {spread[0] / 1000:.3f}-{spread[-1] / 1000:.3f} ms")


def _pair(raw: dict[str, Any]) -> Verdict:
    added = added_median(raw, "pair_base_ns", "pair_shim_ns")
    base = statistics.median(raw["pair_base_ns"])
    return Verdict(added, added <= 150.0, f"no shim {base:.1f} ns, ratio {(base + added) / base:.2f}")


def _launch_fake(raw: dict[str, Any]) -> Verdict:
    if not raw["launch_base_ns"]:
        return Verdict(None, None, "a real driver needs a real kernel: see costs.launch_torch")
    added = added_median(raw, "launch_base_ns", "launch_shim_ns")
    return Verdict(added, added <= 20.0, f"no shim {statistics.median(raw['launch_base_ns']):.1f} ns")


def _refuse(raw: dict[str, Any]) -> Verdict:
    ns = min(raw["refuse_ns"])
    refused = raw["refuse_rc"] == OOM
    return Verdict(ns / 1000, refused and ns <= 10_000,
                   f"answer {raw['refuse_rc']} ({'CUDA_ERROR_OUT_OF_MEMORY' if refused else 'NOT refused'})")


def _launch_torch(raw: dict[str, Any]) -> Verdict:
    added = added_median(raw, "base_us", "shim_us")
    base = statistics.median(raw["base_us"])
    return Verdict(added, added <= 0.5, f"no shim {base:.2f} us per launch, ratio {(base + added) / base:.3f}")


def measurements() -> list[Measurement]:
    return [
        Measurement("costs.driver", GROUP, "driver", 180, measure_driver, (
            Row("costs.context_base", "context creation, no shim", "ms", "-", _context_base),
            Row("costs.context_added", "context creation, added by the shim", "ms", "<= 10", _context_added,
                "HAMi-core 84 ms"),
            Row("costs.pair_added", "cuMemAlloc+cuMemFree pair, added", "ns", "<= 150", _pair),
            Row("costs.launch_added", "cuLaunchKernel (fake driver), added", "ns", "<= 20", _launch_fake),
            Row("costs.enforcement", "over-limit cuMemAlloc to its error", "us", "<= 10, OOM", _refuse),
        ), commands=lambda ctx: [f"{ctx.loop or 'shim_overhead_loop'} 1 1 startup  (x2 per round, shim / no shim)",
                                 f"{ctx.loop or 'shim_overhead_loop'} N 4 [alloc-only]  (x3 rounds, shim / no shim)",
                                 f"{ctx.loop or 'shim_overhead_loop'} N 3 refuse:{REFUSED_BYTES}  (2 GiB claim)"]),
        Measurement("costs.launch_torch", GROUP, "torch", 150, measure_launch_torch, (
            Row("costs.launch_torch", "PyTorch tiny-kernel launch, added", "us", "<= 0.5", _launch_torch),
        ), commands=lambda ctx: ["python -c LAUNCH 20000  (x3, shim / no shim)"]),
    ]
