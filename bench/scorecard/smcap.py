"""The SM cap: the share of the GPU a capped busy loop gets, alone and beside a noisy neighbour,
with CUDA graphs, and what the shim costs at cap 100 and with no cap.

A scenario is a set of lanes running at once on one GPU, each a busy loop in its own claim (or
without the shim). On a GPU a lane is tests/gpu's PyTorch matmul loop (iterations/s); scenarios
run one after another so each has the GPU to itself. On the fakes a lane is
tests/shim/progs/launchloop (1 ms kernels) and its rate is the fake driver's own count of the
device time it used; scenarios run side by side, each on its own fake device. Either way a share
is a rate over the no-shim baseline of the same measurement. Caps use the hard policy, so they
hold alone too (a soft cap lets a claim alone on the GPU run free).
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.core_accuracy import busy_at, parse_ticks
from bench.scorecard import machine as m
from bench.scorecard.core import Measurement, Row, Verdict
from bench.scorecard.programs import GRAPH_MATMUL, MATMUL

GROUP = "smcap"
TOLERANCE_PP = 5.0
SIZE = "4096"
NEIGHBOUR_EXTRA_S = 8.0  # a neighbour outlasts the lane it disturbs, start-up jitter included


@dataclass(frozen=True)
class Lane:
    name: str
    cap: int | None  # None: no shim; 0: under the shim without a cap
    kind: str = "kernel"  # kernel | graph
    neighbour: bool = False


@dataclass(frozen=True)
class Scenario:
    name: str
    lanes: tuple[Lane, ...]


def _start_lane(ctx: m.Context, lane: Lane, work: Path, state: Path, seconds: float) -> subprocess.Popen[str]:
    claims = None
    if lane.cap is not None:
        claims = m.write_claim(work / lane.name, ctx.gpu_uuid, 1 << 50, lane.cap, "hard", uid=lane.name)
    environ = m.env(ctx, claims, state)
    run_for = seconds + (NEIGHBOUR_EXTRA_S if lane.neighbour else 0.0)
    if ctx.mode == "fake":
        argv = [str(m.LAUNCHLOOP), "--seconds", f"{run_for:g}", "--kind", lane.kind]
    else:
        argv = [m.require(ctx.torch_python), "-c", GRAPH_MATMUL if lane.kind == "graph" else MATMUL, f"{run_for:g}", SIZE]
    return subprocess.Popen(argv, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _fake_rate(out: str, seconds: float, settle: float) -> float:
    """Percent of the device's time the lane's kernels used over [settle, seconds] of its run."""
    ticks = parse_ticks(out)
    if len(ticks) < 2:
        raise RuntimeError("launchloop printed no ticks")
    origin = ticks[0][0]
    start, end = origin + int(settle * 1e9), origin + int(seconds * 1e9)
    return (busy_at(ticks, end) - busy_at(ticks, start)) * 100 / (end - start)


def _collect(ctx: m.Context, procs: dict[str, subprocess.Popen[str]], seconds: float) -> dict[str, float]:
    rates = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=seconds * 3 + 120)
        if proc.returncode != 0:
            raise RuntimeError(f"lane {name} exited {proc.returncode}: {err.strip()[-400:]}")
        if ctx.mode == "fake":
            rates[name] = _fake_rate(out, seconds, settle=min(2.0, seconds / 2))
        else:
            rates[name] = float(json.loads(out.strip().splitlines()[-1])["iters_per_s"])
    return rates


def run_scenarios(ctx: m.Context, label: str, scenarios: list[Scenario]) -> dict[str, Any]:
    """Every lane's rate, as {scenario: {lane: rate}}; side by side on the fakes, in turn on a GPU."""
    seconds = ctx.seconds(gpu=8.0, fake=5.0)
    work = ctx.scratch(label)
    rates: dict[str, dict[str, float]] = {}
    started: list[tuple[Scenario, dict[str, subprocess.Popen[str]]]] = []
    try:
        for scenario in scenarios:
            where = work / scenario.name
            where.mkdir()
            procs = {lane.name: _start_lane(ctx, lane, where, where / "fake-cuda.state", seconds)
                     for lane in scenario.lanes}
            started.append((scenario, procs))
            if ctx.mode != "fake":  # PyTorch (on a GPU): one scenario at a time
                rates[scenario.name] = _collect(ctx, procs, seconds)
        if ctx.mode == "fake":
            time.sleep(0.1)
            for scenario, procs in started:
                rates[scenario.name] = _collect(ctx, procs, seconds)
    finally:
        for _, procs in started:
            for proc in procs.values():
                m.stop(proc)
    return {"seconds": seconds, "rates": rates}


ALONE = [Scenario("noshim", (Lane("run", None),))] + [
    Scenario(f"cap{cap}", (Lane("run", cap),)) for cap in (25, 50, 75, 100)] + [
    Scenario("nocap", (Lane("run", 0),))]

NEIGHBOUR = [Scenario("noshim", (Lane("run", None),)), Scenario("alone25", (Lane("run", 25),))] + [
    Scenario(f"with{cap}", (Lane("run", cap), Lane("noisy", 0, neighbour=True))) for cap in (25, 50, 75)] + [
    Scenario("pair30_70", (Lane("c30", 30), Lane("c70", 70)))]

GRAPH = [Scenario("noshim", (Lane("run", None, "graph"),)), Scenario("cap50", (Lane("run", 50, "graph"),))]


def measure_alone(ctx: m.Context) -> dict[str, Any]:
    return run_scenarios(ctx, "smcap-alone", ALONE)


def measure_neighbour(ctx: m.Context) -> dict[str, Any]:
    return run_scenarios(ctx, "smcap-neighbour", NEIGHBOUR)


def measure_graph(ctx: m.Context) -> dict[str, Any]:
    return run_scenarios(ctx, "smcap-graph", GRAPH)


# ---- rows ----------------------------------------------------------------------------------------

def share(raw: dict[str, Any], scenario: str, lane: str = "run") -> float:
    """A lane's rate as a percentage of the same measurement's no-shim baseline."""
    return 100.0 * raw["rates"][scenario][lane] / raw["rates"]["noshim"]["run"]


def _cap_row(scenario: str, cap: int, lane: str = "run") -> Any:
    def compute(raw: dict[str, Any]) -> Verdict:
        value = share(raw, scenario, lane)
        return Verdict(value, abs(value - cap) <= TOLERANCE_PP, f"{value - cap:+.1f} pp from the cap")
    return compute


def _at_least(scenario: str, floor: float) -> Any:
    def compute(raw: dict[str, Any]) -> Verdict:
        value = share(raw, scenario)
        return Verdict(value, value >= floor, f"baseline {raw['rates']['noshim']['run']:.1f}/s")
    return compute


def noisy_impact(raw: dict[str, Any]) -> Verdict:
    """How much a 25 % claim loses to an uncapped neighbour: 1 - rate beside it / rate alone."""
    alone, beside = raw["rates"]["alone25"]["run"], raw["rates"]["with25"]["run"]
    value = 100.0 * (alone - beside) / alone
    return Verdict(value, value <= TOLERANCE_PP, f"alone {alone:.1f}/s, beside the neighbour {beside:.1f}/s")


def measurements() -> list[Measurement]:
    cmd = "launchloop --seconds S --kind K (fake) | python -c MATMUL S 4096 (GPU)"
    hami = "HAMi-core, caps 30/70 on a 188-SM GPU: 21.4 / 25.2 it/s vs 23.1 uncapped"
    return [
        Measurement("smcap.alone", GROUP, "driver", 200, measure_alone, (
            *(Row(f"smcap.cap{c}", f"cap {c} %, alone: share of no-shim", "%", f"{c} +/- 5", _cap_row(f"cap{c}", c))
              for c in (25, 50, 75)),
            Row("smcap.cap100", "cap 100 %: share of no-shim", "%", ">= 99", _at_least("cap100", 99.0)),
            Row("smcap.nocap", "shim without a cap: share of no-shim", "%", ">= 99", _at_least("nocap", 99.0)),
        ), commands=lambda ctx: [f"{cmd}: no shim, caps 25 50 75 100, no cap"]),
        Measurement("smcap.neighbour", GROUP, "driver", 240, measure_neighbour, (
            *(Row(f"smcap.neighbour{c}", f"cap {c} % beside an uncapped neighbour", "%", f"{c} +/- 5",
                  _cap_row(f"with{c}", c)) for c in (25, 50, 75)),
            Row("smcap.pair30", "caps 30/70 side by side: the 30 % claim", "%", "30 +/- 5",
                _cap_row("pair30_70", 30, "c30"), hami),
            Row("smcap.pair70", "caps 30/70 side by side: the 70 % claim", "%", "70 +/- 5",
                _cap_row("pair30_70", 70, "c70"), hami),
            Row("smcap.noisy_impact", "noisy-neighbour impact on a 25 % claim", "%", "<= 5", noisy_impact,
                "HAMi-core 14.38 %, best published 4.74 %"),
        ), commands=lambda ctx: [f"{cmd}: no shim, 25 alone, 25/50/75 + uncapped neighbour, 30 + 70"]),
        Measurement("smcap.graph", GROUP, "driver", 120, measure_graph, (
            Row("smcap.graph50", "CUDA graphs, cap 50 %: share of no-shim graphs", "%", "50 +/- 5",
                _cap_row("cap50", 50)),
        ), commands=lambda ctx: ["launchloop --kind graph (fake) | python -c GRAPH_MATMUL (GPU): no shim, cap 50"]),
    ]
