"""The user's two workers side by side, each in its own claim sized as examples/claims sizes them
(worker-a: 20 % of the GPU's usable memory, 25 % of its SMs; worker-b: 30 % / 40 %; the default
soft core policy), resolved by the same code the kubelet plugin uses. While both run: what PyTorch
sees, what the claim's region counts, what the host's NVML says each process holds, what
nvidia-smi and NVML show inside each claim; then both rates over the same window.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from typing import Any

from bench.scorecard import machine as m
from bench.scorecard.core import Measurement, Row, Verdict
from bench.scorecard.memory import host_nvml
from bench.scorecard.programs import NVML_PROBE
from bench.scorecard.seed_workers import HARNESS, WORKERS

GROUP = "workers"
HAMI = {"a": "HAMi: held ~1.5 GB, host nvidia-smi 1828 MiB, limit 2 GiB",
        "b": "HAMi: held ~2 GB, host nvidia-smi 2860 MiB, limit 3 GiB"}


def _nvidia_smi(environ: dict[str, str]) -> dict[str, Any]:
    """memory.total / memory.used (MiB) as nvidia-smi prints them in this environment."""
    tool = shutil.which("nvidia-smi", path=environ.get("PATH"))
    if not tool:
        return {"error": "nvidia-smi not found"}
    out = subprocess.run([tool, "--query-gpu=memory.total,memory.used", "--format=csv,noheader,nounits"],
                         env=environ, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        return {"error": out.stderr.strip()[-200:] or f"exit {out.returncode}"}
    total, used = (float(v) for v in out.stdout.splitlines()[0].split(","))
    return {"total_mib": total, "used_mib": used}


def share_of(usable: int, percent: int, cores: int) -> tuple[int, int, str]:
    """(wall bytes, cores, core policy) of a claim asking ``percent`` of a GPU's usable memory, as
    the kubelet plugin resolves it (driver/limits.py). Where that module cannot load (it needs
    pydantic and kubernetes, which a GPU machine may lack) the same rule, which tests/bench holds
    equal to it: percent of usable, down to the 1 MiB step, at least 64 MiB, soft policy."""
    try:
        from vgpu_dra.driver.limits import ShareRequest
    except ImportError:
        from vgpu_dra.api.names import MEMORY_MIN_BYTES, MEMORY_STEP_BYTES

        wanted = usable * percent // 100
        return max(wanted - wanted % MEMORY_STEP_BYTES, MEMORY_MIN_BYTES), cores, "soft"
    share = ShareRequest(memory_percent=percent, cores=cores, cores_requested=True).resolve(usable)
    return share.memory_bytes, share.cores, share.core_policy


def measure(ctx: m.Context) -> dict[str, Any]:
    window = ctx.seconds(gpu=20.0, fake=3.0)
    work = ctx.scratch("workers")
    raw: dict[str, Any] = {}
    procs: dict[str, m.Child] = {}
    claims: dict[str, Any] = {}
    try:
        for name, (script, percent, cores) in WORKERS.items():
            wall, cap, policy = share_of(ctx.gpu_usable, percent, cores)
            claims[name] = m.write_claim(work / name, ctx.gpu_uuid, wall, cap, policy,  # type: ignore[arg-type]
                                         uid=f"worker-{name}")
            raw[name] = {"limit": wall, "cores": cap, "policy": policy, "percent": percent}
            environ = m.env(ctx, claims[name], POD_NAME=f"worker-{name}", PYTHONUNBUFFERED="1")
            procs[name] = m.start_python(ctx.torch_python, HARNESS, [script, str(window)], environ)
        for name, proc in procs.items():
            raw[name].update(proc.next_json(timeout=150))
        host = host_nvml(ctx)
        for name in procs:
            inside_env = m.env(ctx, claims[name])
            raw[name]["host_held"] = host["procs"].get(str(raw[name]["pid"]))
            raw[name]["region_used"] = m.region(claims[name], f"worker-{name}").gpu(ctx.gpu_uuid).used_bytes
            raw[name]["nvidia_smi"] = _nvidia_smi(inside_env)
            raw[name]["nvml"] = m.python_json(sys.executable, NVML_PROBE, [], inside_env, timeout=60)
        for proc in procs.values():
            proc.send()
        for name, proc in procs.items():
            raw[name].update(proc.next_json(timeout=window + 60))
    finally:
        for proc in procs.values():
            m.stop(proc)
    return raw


def _limit(w: str) -> Any:
    def compute(raw: dict[str, Any]) -> Verdict:
        r = raw[w]
        return Verdict(r["limit"] / m.MiB, None, f"{r['percent']} % of usable memory; cores {r['cores']} % "
                       f"({r['policy']})")
    return compute


def _sees(w: str) -> Any:
    def compute(raw: dict[str, Any]) -> Verdict:
        r = raw[w]
        return Verdict(r["total"] / m.MiB, r["total"] == r["limit"], f"free {r['free'] / m.MiB:.0f} MiB")
    return compute


def _holds(w: str) -> Any:
    def compute(raw: dict[str, Any]) -> Verdict:
        r = raw[w]
        return Verdict(r["region_used"] / m.MiB, r["region_used"] <= r["limit"],
                       f"PyTorch allocated {r['allocated'] / m.MiB:.0f} MiB, reserved {r['reserved'] / m.MiB:.0f} MiB")
    return compute


def _host(w: str) -> Any:
    def compute(raw: dict[str, Any]) -> Verdict:
        r = raw[w]
        if r["host_held"] is None:
            return Verdict(None, False, "the host's NVML does not list the process")
        return Verdict(r["host_held"] / m.MiB, r["host_held"] <= r["limit"], "the driver's count, context included")
    return compute


def _rate(w: str) -> Any:
    def compute(raw: dict[str, Any]) -> Verdict:
        return Verdict(raw[w]["iters_per_s"], None, "the script sleeps between iterations (0.1 / 0.05 s)")
    return compute


def _smi(w: str) -> Any:
    def compute(raw: dict[str, Any]) -> Verdict:
        seen, limit = raw[w]["nvidia_smi"], raw[w]["limit"] / m.MiB
        if "error" in seen:
            return Verdict(None, False, seen["error"])
        return Verdict(seen["total_mib"], abs(seen["total_mib"] - limit) <= 1, f"used {seen['used_mib']:.0f} MiB")
    return compute


def _nvml(w: str) -> Any:
    def compute(raw: dict[str, Any]) -> Verdict:
        seen, limit = raw[w]["nvml"], raw[w]["limit"]
        return Verdict(seen["total"] / m.MiB, seen["total"] == limit and seen["used"] <= limit,
                       f"used {seen['used'] / m.MiB:.0f} MiB, processes {sorted(seen['procs'])}")
    return compute


def measurements() -> list[Measurement]:
    rows = []
    for w in WORKERS:
        rows += [
            Row(f"workers.{w}.limit", f"worker-{w}: its wall", "MiB", "-", _limit(w)),
            Row(f"workers.{w}.sees", f"worker-{w}: torch.cuda.mem_get_info total", "MiB", "= wall", _sees(w)),
            Row(f"workers.{w}.holds", f"worker-{w}: held (the claim's count)", "MiB", "<= wall", _holds(w), HAMI[w]),
            Row(f"workers.{w}.host_nvml", f"worker-{w}: held (host NVML)", "MiB", "<= wall", _host(w), HAMI[w]),
            Row(f"workers.{w}.iters", f"worker-{w}: iterations/s side by side", "it/s", "-", _rate(w)),
            Row(f"workers.{w}.nvidia_smi", f"worker-{w}: nvidia-smi memory.total inside", "MiB", "= wall", _smi(w)),
            Row(f"workers.{w}.nvml", f"worker-{w}: NVML memory total inside", "MiB", "= wall", _nvml(w)),
        ]
    return [Measurement("workers.side_by_side", GROUP, "torch", 200, measure, tuple(rows),
                        commands=lambda ctx: ["python -c HARNESS <worker-a script> 20  (20 % / 25 % claim)",
                                              "python -c HARNESS <worker-b script> 20  (30 % / 40 % claim)",
                                              "nvidia-smi --query-gpu=memory.total,memory.used (inside each)",
                                              "python -c NVML_PROBE (inside each, and on the host)"])]
