"""Accuracy of the SM-core cap: the share of the GPU a capped busy loop achieves vs its cap.

Fake driver (default, no GPU needed): busy loops (tests/shim/progs/launchloop.c, 1 ms kernels)
run under libvgpu.so with hard caps of 10-90 %, with one and with three processes of one claim,
plus graph launches; every scenario has its own fake device and all run at once. An uncapped
loop in the same run is the baseline (the share a loop gets without a cap). The achieved share
is the fake driver's own account of the device time used over the last seconds of the run; the
"shim" column is what the claim's region reports (the metric users see).

    .venv/bin/python bench/core_accuracy.py [--seconds 6]

Real GPU (`--gpu`, needs an NVIDIA GPU, PyTorch with CUDA and `make -C shim`): a PyTorch matmul
loop runs without the shim (the baseline), then under the shim with hard caps of 25, 50, 75 and
100 %; the throughput share is iterations/s relative to the baseline of the same run (target:
within ±5 pp of the cap; the slowdown at cap 100, where the limiter is off, within 1 %).

    .venv/bin/python bench/core_accuracy.py --gpu [--seconds 20] [--size 4096]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vgpu_dra.driver.claimconfig import ClaimConfig, GpuLimit, render  # noqa: E402
from vgpu_dra.driver.region import GpuUsage, create_region, read_region  # noqa: E402
from tests.gpu.workloads import MATMUL, gpu_uuid  # noqa: E402  (the same loop tests/gpu measures)

FAKE_GPU = "GPU-00000000-0000-0000-0000-000000000000"
FAKES_OUT = REPO / "tests" / "fakes" / "out"
LAUNCHLOOP = FAKES_OUT / "progs" / "launchloop"
TEST_SHIM = REPO / "shim" / "out" / "libvgpu-test.so"
TOLERANCE_PP = 5.0


@dataclass(frozen=True)
class Scenario:
    cap: int  # 0 = no cap (the baseline)
    processes: int
    kind: str


def write_claim(root: Path, uuid: str, cores: int, memory: int) -> Path:
    """A claim dir as the kubelet plugin writes it (hard policy); returns the region path."""
    claim = root / "claim"
    claim.mkdir(parents=True)
    config = ClaimConfig("bench", (GpuLimit(uuid, memory, cores, "hard"),))
    (claim / "config").write_text(render(config))
    create_region(claim / "region", config)
    return claim / "region"


def parse_ticks(out: str) -> list[tuple[int, int]]:
    ticks = []
    for line in out.splitlines():
        if line.startswith("tick "):
            fields = dict(part.split("=", 1) for part in line.split()[1:])
            ticks.append((int(fields["t"]), int(fields["busy"])))
    return ticks


def busy_at(ticks: list[tuple[int, int]], t: int) -> float:
    for (t0, b0), (t1, b1) in zip(ticks, ticks[1:]):
        if t0 <= t <= t1:
            return b0 + (b1 - b0) * (t - t0) / max(1, t1 - t0)
    return float(ticks[-1][1] if t > ticks[-1][0] else ticks[0][1])


def run_fake(seconds: float) -> int:
    subprocess.run(["make", "-s", "-C", str(REPO / "shim")], check=True)
    subprocess.run(["make", "-s", "-C", str(REPO / "tests" / "fakes")], check=True)
    subprocess.run(["make", "-s", "-C", str(REPO / "tests" / "shim" / "progs")], check=True)
    scenarios = [Scenario(0, 1, "kernel")]
    scenarios += [Scenario(cap, procs, "kernel") for procs in (1, 3) for cap in (10, 25, 50, 75, 90)]
    scenarios += [Scenario(cap, 1, "graph") for cap in (25, 50)]
    with tempfile.TemporaryDirectory() as tmp:
        running = []
        for index, scenario in enumerate(scenarios):
            root = Path(tmp) / str(index)
            region = write_claim(root / "claims", FAKE_GPU, scenario.cap, 1 << 30)
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "LD_LIBRARY_PATH": str(FAKES_OUT),
                "LD_PRELOAD": str(TEST_SHIM),
                "VGPU_CLAIMS_ROOT": str(root / "claims"),
                "FAKE_CUDA_STATE": str(root / "fake-cuda.state"),
            }
            procs = [
                subprocess.Popen([str(LAUNCHLOOP), "--seconds", str(seconds), "--kind", scenario.kind], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
                for _ in range(scenario.processes)
            ]
            running.append((scenario, region, procs))
        # The region's view is read while the loops still run (it reports no share without them).
        time.sleep(max(0.0, seconds - 0.7))
        during = [read_region(region).gpu(FAKE_GPU) for _, region, _ in running]
        rows = []
        for (scenario, region, procs), gpu in zip(running, during):
            traces = [parse_ticks(p.communicate(timeout=seconds + 30)[0]) for p in procs]
            origin = min(t[0][0] for t in traces)
            start, end = origin + int(2e9), origin + int(seconds * 1e9)
            achieved = sum(busy_at(t, end) - busy_at(t, start) for t in traces) * 100 / (end - start)
            throttled = read_region(region).gpu(FAKE_GPU).throttled_seconds
            rows.append((scenario, achieved, gpu.measured_share_percent, throttled))
    baseline = rows[0][1]
    print(f"fake driver, 1 ms kernels, share over [2 s, {seconds:g} s]; uncapped baseline in the same run: "
          f"{baseline:.1f} %")
    print(f"{'cap %':>5} {'procs':>5} {'launch':>6} {'achieved %':>10} {'ratio':>6} {'error pp':>8} "
          f"{'shim %':>7} {'throttled s':>11}  verdict")
    ok = True
    for scenario, achieved, shown, throttled in rows[1:]:
        error = achieved - scenario.cap
        good = abs(error) <= TOLERANCE_PP
        ok = ok and good
        print(f"{scenario.cap:5d} {scenario.processes:5d} {scenario.kind:>6} {achieved:10.1f} "
              f"{achieved / scenario.cap:6.3f} {error:+8.1f} {shown:7.1f} {throttled:11.2f}  "
              f"{'ok' if good else 'OFF'}")
    return 0 if ok else 1


# ---- real GPU ------------------------------------------------------------------------------------


def run_matmul(env: dict[str, str], seconds: float, size: int) -> float:
    out = subprocess.run([sys.executable, "-c", MATMUL, str(seconds), str(size)], env=env, capture_output=True,
                         text=True, check=True, timeout=seconds * 3 + 120).stdout
    return float(json.loads(out.strip().splitlines()[-1])["iters_per_s"])


def run_matmul_watching(env: dict[str, str], seconds: float, size: int, region: Path,
                        uuid: str) -> tuple[float, GpuUsage]:
    """run_matmul, reading the claim's region near the end of the run (while it is alive)."""
    proc = subprocess.Popen([sys.executable, "-c", MATMUL, str(seconds), str(size)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(seconds * 0.8)
    gpu = read_region(region).gpu(uuid)
    out, err = proc.communicate(timeout=seconds * 3 + 120)
    if proc.returncode != 0:
        raise RuntimeError(f"matmul under the shim failed: {err[-2000:]}")
    return float(json.loads(out.strip().splitlines()[-1])["iters_per_s"]), gpu


def run_gpu(seconds: float, size: int) -> int:
    subprocess.run(["make", "-s", "-C", str(REPO / "shim")], check=True)
    uuid = gpu_uuid()
    base_env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "VGPU_CLAIMS_ROOT")}
    baseline = run_matmul(base_env, seconds, size)
    print(f"{uuid}: matmul {size}x{size} fp16, {seconds:g} s per run; baseline without the shim "
          f"{baseline:.1f} it/s")
    print(f"{'cap %':>5} {'it/s':>9} {'share %':>8} {'ratio':>6} {'error pp':>8} {'shim %':>7} {'throttled s':>11}")
    ok = True
    for cap in (25, 50, 75, 100):
        with tempfile.TemporaryDirectory() as tmp:
            region = write_claim(Path(tmp) / "claims", uuid, cap, 1 << 50)
            env = {**base_env, "LD_PRELOAD": str(TEST_SHIM), "VGPU_CLAIMS_ROOT": str(Path(tmp) / "claims")}
            rate, gpu = run_matmul_watching(env, seconds, size, region, uuid)
        share = 100 * rate / baseline
        if cap == 100:
            good = share >= 99.0  # limiter off: only the shim's own cost
        else:
            good = abs(share - cap) <= TOLERANCE_PP
        ok = ok and good
        print(f"{cap:5d} {rate:9.1f} {share:8.1f} {share / cap:6.3f} {share - cap:+8.1f} "
              f"{gpu.measured_share_percent:7.1f} {gpu.throttled_seconds:11.2f}  {'ok' if good else 'OFF'}")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="PyTorch matmul on a real NVIDIA GPU")
    parser.add_argument("--seconds", type=float, default=None, help="run time per scenario")
    parser.add_argument("--size", type=int, default=4096, help="matrix size in --gpu mode")
    args = parser.parse_args()
    if args.gpu:
        return run_gpu(args.seconds or 20.0, args.size)
    return run_fake(args.seconds or 6.0)


if __name__ == "__main__":
    raise SystemExit(main())
