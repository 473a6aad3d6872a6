"""Ground truth for the SM-core cap tests: the device time the fake driver says a busy loop used.

`launchloop` prints, every 100 ms, the monotonic time and the device time of its completed
kernels. A claim's share of the device over a window is the sum over its processes of the busy
time gained in that window, divided by the window (all processes share CLOCK_MONOTONIC).
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from tests.shim.harness import parse_lines, stop


@dataclass(frozen=True)
class BusyTrace:
    """One busy-loop process: (t_ns, completed busy ns) samples and its final line."""

    samples: tuple[tuple[int, int], ...]
    done: dict[str, str]
    stderr: str

    @property
    def start_ns(self) -> int:
        return self.samples[0][0]

    def busy_at(self, t_ns: int) -> float:
        """Completed busy ns at t_ns, interpolated; flat before the first and after the last sample."""
        samples = self.samples
        if t_ns <= samples[0][0]:
            return float(samples[0][1])
        for (t0, b0), (t1, b1) in zip(samples, samples[1:]):
            if t0 <= t_ns <= t1:
                return b0 + (b1 - b0) * (t_ns - t0) / max(1, t1 - t0)
        return float(samples[-1][1])


def collect(proc: subprocess.Popen[str], timeout: float) -> BusyTrace:
    """Wait for a busy loop to finish (SIGKILL after timeout, then fail) and parse its output."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop(proc)
        raise AssertionError(f"busy loop still running after {timeout} s (a launch is stuck)") from None
    lines = parse_lines(out)
    samples = tuple((int(line["t"]), int(line["busy"])) for line in lines if line["cmd"] == "tick")
    done = next((line for line in lines if line["cmd"] == "done"), {})
    assert samples and done, f"busy loop output incomplete: {out!r} {err!r}"
    return BusyTrace(samples, done, err)


def share(traces: list[BusyTrace], start_ns: int, end_ns: int) -> float:
    """Percent of the window [start_ns, end_ns] the processes' kernels occupied the device."""
    used = sum(trace.busy_at(end_ns) - trace.busy_at(start_ns) for trace in traces)
    return 100.0 * used / (end_ns - start_ns)


def window(traces: list[BusyTrace], from_s: float, to_s: float) -> float:
    """Share over [from_s, to_s] seconds after the earliest process started."""
    origin = min(trace.start_ns for trace in traces)
    return share(traces, origin + int(from_s * 1e9), origin + int(to_s * 1e9))
