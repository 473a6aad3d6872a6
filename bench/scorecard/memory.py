"""The memory wall of a 2 GiB claim: what refuses, how much of the wall is usable, what queries say,
and two processes of one claim sharing one budget.

"Achieved" is the device memory the process really holds at the wall as the host's NVML (no shim)
reports it for that PID — the driver's own count, context included — over the wall: the
GPU-Virt-Bench "memory-limit accuracy" figure. Over 100 % would mean the wall leaks.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from bench.scorecard import machine as m
from bench.scorecard.core import Measurement, Row, Verdict
from bench.scorecard.programs import FILL_AND_HOLD, HOLD, MEM_GET_INFO, NVML_PROBE, TRY_ALLOC

GROUP = "memory"
WALL = 2 * m.GiB
OOM = 2  # CUDA_ERROR_OUT_OF_MEMORY
ACCURACY_PUBLISHED = "HAMi-core 91.46 %, best published 99.89 %"


def host_nvml(ctx: m.Context, claims: Any = None) -> dict[str, Any]:
    """NVML's answer in a child: the host's view (claims None) or a claim's (under the shim)."""
    return m.python_json(sys.executable, NVML_PROBE, [], m.env(ctx, claims), timeout=60)


def _held_by(ctx: m.Context, pid: int) -> int | None:
    """Bytes the host's NVML says the process holds (polled: the list can trail the allocation);
    None when NVML does not list it (e.g. a container that sees no host PIDs)."""
    for _ in range(10):
        seen = host_nvml(ctx)
        if str(pid) in seen["procs"]:
            return int(seen["procs"][str(pid)])
        time.sleep(0.2)
    return None


def measure_driver(ctx: m.Context) -> dict[str, Any]:
    """cudaprog against the wall: fill it in 2 MiB blocks, query it, VMM past it, two processes."""
    work = ctx.scratch("memory")
    claims = m.write_claim(work / "claims", ctx.gpu_uuid, WALL)
    raw: dict[str, Any] = {"wall": WALL}
    # Fill and hold, so the host's NVML can say what the process really holds at the wall.
    proc = m.start_cudaprog(ctx, claims, "init", "ctx", "0", "fill", str(2 * m.MiB), "info", "hold")
    try:
        lines = m.read_until(proc, "hold", timeout=60)
        fill = next(line for line in lines if line["cmd"] == "fill")
        info = next(line for line in lines if line["cmd"] == "info")
        raw.update(fill_rc=int(fill["rc"]), fill_bytes=int(fill["count"]) * 2 * m.MiB,
                   info_total=int(info["total"]), info_free=int(info["free"]),
                   held=_held_by(ctx, proc.pid), inside=host_nvml(ctx, claims))
    finally:
        m.stop(proc)
    usage = m.region(claims).gpu(ctx.gpu_uuid)
    raw.update(peak=usage.peak_bytes, rejected=usage.rejected_allocations, context=usage.context_bytes)
    # VMM (cuMemCreate, what expandable segments use): 1 GiB fits beside the context, 2 do not.
    vmm_root = m.write_claim(work / "vmm", ctx.gpu_uuid, WALL)
    raw["vmm_rcs"] = [int(line["rc"]) for line in m.cudaprog(ctx, vmm_root, "init", "ctx", "0", "vmm", "0", str(m.GiB),
                                                             "vmm", "0", str(m.GiB)) if line["cmd"] == "vmm"]
    # Two processes of one claim: while one holds 512 MiB (+ its context), a second asking 1 GiB
    # (+ its own context) passes the wall; once the first is gone it fits.
    shared = m.write_claim(work / "shared", ctx.gpu_uuid, WALL)
    holder = m.start_cudaprog(ctx, shared, "init", "ctx", "0", "alloc", str(512 * m.MiB), "hold")
    try:
        m.read_until(holder, "hold", timeout=60)
        raw["second_while_held"] = _alloc_rc(m.cudaprog(ctx, shared, "init", "ctx", "0", "alloc", str(m.GiB)))
    finally:
        m.stop(holder)
    raw["second_after"] = _alloc_rc(m.cudaprog(ctx, shared, "init", "ctx", "0", "alloc", str(m.GiB)))
    return raw


def _alloc_rc(lines: list[dict[str, str]]) -> int:
    """The first failing answer (init, ctx or alloc), else the alloc's 0."""
    return next((int(line["rc"]) for line in lines if int(line["rc"]) != 0), 0)


def _fill_torch(ctx: m.Context, name: str, **extra: str) -> dict[str, Any]:
    claims = m.write_claim(ctx.scratch(name) / "claims", ctx.gpu_uuid, WALL)
    proc = m.start_python(ctx.torch_python, FILL_AND_HOLD, [], m.env(ctx, claims, **extra))
    try:
        seen = proc.next_json(timeout=120)
        seen["held"] = _held_by(ctx, int(seen["pid"]))
        proc.send()
        seen["alive"] = bool(proc.next_json(timeout=60).get("alive"))
    finally:
        m.stop(proc)
    usage = m.region(claims).gpu(ctx.gpu_uuid)
    seen.update(wall=WALL, peak=usage.peak_bytes, rejected=usage.rejected_allocations)
    return seen


def measure_torch_wall(ctx: m.Context) -> dict[str, Any]:
    return _fill_torch(ctx, "torch-wall")


def measure_torch_expandable(ctx: m.Context) -> dict[str, Any]:
    return _fill_torch(ctx, "torch-vmm", PYTORCH_CUDA_ALLOC_CONF="expandable_segments:True")


def measure_torch_info(ctx: m.Context) -> dict[str, Any]:
    claims = m.write_claim(ctx.scratch("torch-info") / "claims", ctx.gpu_uuid, WALL)
    seen = m.python_json(ctx.torch_python, MEM_GET_INFO, [], m.env(ctx, claims), timeout=120)
    return {**seen, "wall": WALL}


def measure_torch_two(ctx: m.Context) -> dict[str, Any]:
    """tests/gpu's two-process case: what one holder leaves is refused to a second, then fits."""
    claims = m.write_claim(ctx.scratch("torch-two") / "claims", ctx.gpu_uuid, WALL)
    holder = m.start_python(ctx.torch_python, HOLD, ["800"], m.env(ctx, claims))
    try:
        if not holder.next_json(timeout=120).get("ok"):
            raise RuntimeError("the holder could not allocate 800 MiB under a 2 GiB wall")
        left_mib = (WALL - m.region(claims).gpu(ctx.gpu_uuid).used_bytes) >> 20
        during = m.python_json(ctx.torch_python, TRY_ALLOC, [str(left_mib)], m.env(ctx, claims), timeout=120)
    finally:
        m.stop(holder)
    after = m.python_json(ctx.torch_python, TRY_ALLOC, [str(left_mib)], m.env(ctx, claims), timeout=120)
    return {"left_mib": left_mib, "during": during["ok"], "after": after["ok"]}


# ---- rows ----------------------------------------------------------------------------------------

def accuracy(held: int | None, wall: int) -> float:
    """Achieved / wall in percent: device memory really held at the wall over the wall."""
    if held is None:
        raise ValueError("the host's NVML does not list the process, so what it holds is unknown")
    return 100.0 * held / wall


def _driver_refuses(raw: dict[str, Any]) -> Verdict:
    ok = raw["fill_rc"] == OOM and raw["rejected"] >= 1 and raw["peak"] <= raw["wall"]
    return Verdict(raw["fill_rc"] == OOM, ok, f"answer {raw['fill_rc']}, peak {raw['peak'] / m.MiB:.0f} MiB, "
                   f"{raw['rejected']} refused")


def _driver_accuracy(raw: dict[str, Any]) -> Verdict:
    value = accuracy(raw["held"], raw["wall"])
    return Verdict(value, 99.0 <= value <= 100.0, f"host NVML {value * raw['wall'] / 100 / m.MiB:.0f} MiB held at the wall")


def _driver_usable(raw: dict[str, Any]) -> Verdict:
    return Verdict(100.0 * raw["fill_bytes"] / raw["wall"], None,
                   f"{raw['fill_bytes'] / m.MiB:.0f} MiB in 2 MiB blocks; the context takes "
                   f"{raw['context'] / m.MiB:.0f} MiB of the wall")


def _driver_info(raw: dict[str, Any]) -> Verdict:
    ok = raw["info_total"] == raw["wall"] and 0 <= raw["info_free"] < 4 * m.MiB
    return Verdict(raw["info_total"] / m.MiB, ok, f"free at the wall {raw['info_free'] / m.MiB:.1f} MiB")


def _nvml_inside(raw: dict[str, Any]) -> Verdict:
    inside = raw["inside"]
    return Verdict(inside["total"] / m.MiB, inside["total"] == raw["wall"] and inside["used"] <= raw["wall"],
                   f"used {inside['used'] / m.MiB:.0f} MiB, {len(inside['procs'])} process(es) listed")


def _vmm(raw: dict[str, Any]) -> Verdict:
    rcs = raw["vmm_rcs"]
    return Verdict(",".join(map(str, rcs)), rcs == [0, OOM], "cuMemCreate 1 GiB, then 1 GiB more")


def _two_processes(raw: dict[str, Any]) -> Verdict:
    during, after = raw["second_while_held"], raw["second_after"]
    return Verdict(f"{during} then {after}", during == OOM and after == 0,
                   "a second process's 1 GiB while the first holds 512 MiB, then after it exits")


def _torch_oom(raw: dict[str, Any]) -> Verdict:
    ok = raw["oom"] and raw["alive"] and raw["rejected"] >= 1 and raw["total"] == raw["wall"]
    return Verdict(bool(raw["oom"]), ok, f"{raw['message'][:90]}; computes afterwards: {raw['alive']}")


def _torch_accuracy(raw: dict[str, Any]) -> Verdict:
    value = accuracy(raw["held"], raw["wall"])
    return Verdict(value, 99.0 <= value <= 100.0,
                   f"host NVML {value * raw['wall'] / 100 / m.MiB:.0f} MiB; tensors {raw['allocated'] / m.MiB:.0f} MiB")


def _torch_usable(raw: dict[str, Any]) -> Verdict:
    return Verdict(100.0 * raw["allocated"] / raw["wall"], None, "tensor bytes over the wall (context excluded)")


def _torch_info(raw: dict[str, Any]) -> Verdict:
    return Verdict(raw["total"] / m.MiB, raw["total"] == raw["wall"] and 0 < raw["free"] <= raw["wall"],
                   f"free {raw['free'] / m.MiB:.0f} MiB")


def _torch_expandable(raw: dict[str, Any]) -> Verdict:
    value = accuracy(raw["held"], raw["wall"])
    ok = raw["oom"] and raw["alive"] and raw["peak"] <= raw["wall"] and value <= 100.0
    return Verdict(value, ok, f"OutOfMemoryError: {raw['oom']}; tensors {raw['allocated'] / m.MiB:.0f} MiB")


def _torch_two(raw: dict[str, Any]) -> Verdict:
    ok = raw["during"] is False and raw["after"] is True
    return Verdict(f"{'ok' if raw['during'] else 'refused'} then {'ok' if raw['after'] else 'refused'}", ok,
                   f"{raw['left_mib']} MiB: what the holder left, asked by a second process")


def measurements() -> list[Measurement]:
    return [
        Measurement("memory.driver", GROUP, "driver", 120, measure_driver, (
            Row("memory.driver_refuses", "cuMemAlloc past a 2 GiB wall refused", "", "OOM", _driver_refuses),
            Row("memory.driver_accuracy", "achieved / wall (cuMemAlloc, 2 MiB blocks)", "%", "99-100",
                _driver_accuracy, ACCURACY_PUBLISHED),
            Row("memory.driver_usable", "allocatable by the program / wall", "%", "-", _driver_usable),
            Row("memory.driver_info", "cuMemGetInfo total inside", "MiB", "= 2048", _driver_info),
            Row("memory.nvml_inside", "NVML memory total inside (pynvml)", "MiB", "= 2048", _nvml_inside),
            Row("memory.vmm", "cuMemCreate (VMM) past the wall", "rc", "0,2", _vmm),
            Row("memory.two_processes", "two processes, one budget (cudaprog)", "rc", "2 then 0", _two_processes),
        ), commands=lambda ctx: ["cudaprog link init ctx 0 fill 2097152 info hold  (+ host NVML probe)",
                                 "cudaprog link init ctx 0 vmm 0 1GiB vmm 0 1GiB",
                                 "cudaprog link init ctx 0 alloc 512MiB hold  &  cudaprog link ctx 0 alloc 1GiB"]),
        Measurement("memory.torch_wall", GROUP, "torch", 150, measure_torch_wall, (
            Row("memory.torch_oom", "PyTorch past 2 GiB: clean OutOfMemoryError", "", "raised, alive", _torch_oom),
            Row("memory.torch_accuracy", "achieved / wall (PyTorch)", "%", "99-100", _torch_accuracy,
                ACCURACY_PUBLISHED),
            Row("memory.torch_usable", "tensors / wall (PyTorch)", "%", "-", _torch_usable),
        ), commands=lambda ctx: ["python -c FILL_AND_HOLD  (2 GiB claim; host NVML probe while it holds)"]),
        Measurement("memory.torch_info", GROUP, "torch", 90, measure_torch_info, (
            Row("memory.torch_mem_get_info", "torch.cuda.mem_get_info total", "MiB", "= 2048", _torch_info),
        ), commands=lambda ctx: ["python -c MEM_GET_INFO  (2 GiB claim)"]),
        Measurement("memory.torch_expandable", GROUP, "torch", 150, measure_torch_expandable, (
            Row("memory.torch_expandable", "expandable_segments:True (VMM) at the wall", "%", "<= 100, OOM",
                _torch_expandable),
        ), commands=lambda ctx: ["PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True python -c FILL_AND_HOLD"]),
        Measurement("memory.torch_two", GROUP, "torch", 180, measure_torch_two, (
            Row("memory.torch_two_processes", "two PyTorch processes, one budget", "", "refused then ok",
                _torch_two),
        ), commands=lambda ctx: ["python -c HOLD 800  &  python -c TRY_ALLOC <left>  (x2)"]),
    ]
