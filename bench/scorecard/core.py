"""The scorecard's core: rows, measurements, results, and running measurements in children.

A *measurement* does the I/O (starts programs under the shim, reads regions) in a child process
with its own timeout and returns raw figures as a JSON-able dict. Its *rows* are pure functions
of that dict, each giving one typed :class:`Result`. So a hang kills one measurement (its rows say
"timeout"), never the card, and every row's arithmetic is testable without a GPU.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

# fake-torch: --fake plus the PyTorch rows on tests/fakes/torch (the GPU path's plumbing, for tests).
Mode = Literal["fake", "gpu", "fake-torch"]
# driver: C programs on libcuda.so.1 (the fake in --fake, the real driver on a GPU);
# torch: PyTorch on a real GPU only; gpu: anything else that only exists on a GPU machine (nvidia-smi).
Needs = Literal["driver", "torch", "gpu"]
Status = Literal["pass", "fail", "info", "needs-gpu", "error", "timeout", "deadline"]
Value = float | int | str | bool | None


@dataclass(frozen=True)
class Result:
    """One row of the card as printed and as written to the JSON file."""

    id: str
    group: str
    title: str
    value: Value
    unit: str
    target: str
    status: Status
    detail: str = ""
    published: str = ""
    mode: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    """What a row function returns: its value and whether it meets the target (None: no target)."""

    value: Value
    ok: bool | None
    detail: str = ""


@dataclass(frozen=True)
class Row:
    """A row: a pure function of its measurement's raw figures."""

    id: str
    title: str
    unit: str
    target: str
    compute: Callable[[dict[str, Any]], Verdict]
    published: str = ""


@dataclass(frozen=True)
class Measurement:
    """A unit of work run in one child process; ``run(ctx)`` returns the raw figures its rows read.

    ``fake``: whether it runs with --fake (driver-level work on the fake libcuda/NVML).
    ``commands``: what it would start, for --dry-run (human-readable lines).
    """

    id: str
    group: str
    needs: Needs
    timeout_s: float
    run: Callable[[Any], dict[str, Any]]
    rows: tuple[Row, ...]
    commands: Callable[[Any], list[str]] = field(default=lambda ctx: [])

    def runs_in(self, mode: Mode) -> bool:
        return mode == "gpu" or self.needs == "driver" or (mode == "fake-torch" and self.needs == "torch")


def judge(row: Row, group: str, raw: dict[str, Any], mode: Mode) -> Result:
    """Apply one row to its measurement's figures; an exception in the row is that row's error."""
    try:
        verdict = row.compute(raw)
    except Exception as exc:  # noqa: BLE001 - a broken row reports itself, the card goes on
        return Result(row.id, group, row.title, None, row.unit, row.target, "error",
                      f"{type(exc).__name__}: {exc}", row.published, mode)
    status: Status = "info" if verdict.ok is None else ("pass" if verdict.ok else "fail")
    value = verdict.value
    if isinstance(value, float):
        value = round(value, 4)
    return Result(row.id, group, row.title, value, row.unit, row.target, status, verdict.detail,
                  row.published, mode)


def unmeasured(m: Measurement, status: Status, detail: str, mode: Mode) -> list[Result]:
    """Every row of a measurement that did not produce figures, with why."""
    return [Result(r.id, m.group, r.title, None, r.unit, r.target, status, detail, r.published, mode)
            for r in m.rows]


def results_of(m: Measurement, raw: dict[str, Any], mode: Mode) -> list[Result]:
    if "error" in raw:
        return unmeasured(m, "error", str(raw["error"]), mode)
    return [judge(row, m.group, raw, mode) for row in m.rows]


# ---- children ----------------------------------------------------------------------------------

RESULT_PREFIX = "SCORECARD-RESULT "


def child_main(measurement: Measurement, ctx: Any) -> int:
    """In the child: run the measurement, print its figures (or its error) as the last line."""
    try:
        raw = measurement.run(ctx)
    except Exception as exc:  # noqa: BLE001 - reported as the measurement's error
        raw = {"error": f"{type(exc).__name__}: {exc}"}
    print(RESULT_PREFIX + json.dumps(raw), flush=True)
    return 0


def run_in_child(argv: Sequence[str], timeout_s: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a child measurement in its own process group; kill the whole group at the timeout."""
    proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        return {"timeout": True, "stderr": err[-1500:]}
    finally:
        _kill_group(proc)  # grandchildren the measurement left behind
    for line in reversed(out.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    return {"error": f"the measurement exited {proc.returncode} without figures: {err.strip()[-1500:]}"}


def _kill_group(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class Deadline:
    """The whole card's time budget; measurements get at most what is left."""

    seconds: float
    started: float = field(default_factory=time.monotonic)

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.started)


def run_card(measurements: Sequence[Measurement], mode: Mode, deadline: Deadline,
             launch: Callable[[Measurement, float], dict[str, Any]],
             progress: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
             ) -> list[Result]:
    """Run every measurement the mode allows, in order, each within its timeout and the deadline."""
    results: list[Result] = []
    for m in measurements:
        if not m.runs_in(mode):
            why = "needs PyTorch on a GPU" if m.needs == "torch" else "needs a GPU machine"
            results += unmeasured(m, "needs-gpu", why, mode)
            continue
        left = deadline.left()
        if left < 5:
            results += unmeasured(m, "deadline", f"the card's {deadline.seconds:.0f} s deadline passed", mode)
            continue
        timeout = min(m.timeout_s, left)
        progress(f"scorecard: {m.id} (timeout {timeout:.0f} s, {left:.0f} s left)")
        started = time.monotonic()
        raw = launch(m, timeout)
        took = time.monotonic() - started
        if raw.get("timeout"):
            status: Status = "timeout" if timeout >= m.timeout_s else "deadline"
            results += unmeasured(m, status, f"no figures after {timeout:.0f} s; "
                                  f"{raw.get('stderr', '').strip()[-300:]}".strip("; "), mode)
        else:
            results += results_of(m, raw, mode)
        progress(f"scorecard: {m.id} done in {took:.1f} s")
    return results
