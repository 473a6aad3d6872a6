"""The machine the card ran on: GPU model, UUID, memory, driver and CUDA versions, PyTorch."""

from __future__ import annotations

import shutil
import subprocess
import sys
from typing import Any

from bench.scorecard import machine as m
from bench.scorecard.core import Measurement, Row, Verdict
from bench.scorecard.programs import NVML_PROBE, TORCH_FACTS

GROUP = "machine"


def measure(ctx: m.Context) -> dict[str, Any]:
    """NVML's view of GPU 0 (the fake NVML on --fake), nvidia-smi's first line, PyTorch's versions."""
    raw: dict[str, Any] = {"nvml": m.python_json(sys.executable, NVML_PROBE, [], m.env(ctx, None), timeout=60)}
    tool = shutil.which("nvidia-smi")
    if tool and not ctx.fake:
        out = subprocess.run([tool, "-L"], capture_output=True, text=True, timeout=60)
        raw["nvidia_smi"] = out.stdout.strip().splitlines()[0] if out.stdout.strip() else out.stderr.strip()[-200:]
    if not ctx.fake:
        raw["torch"] = (m.python_json(ctx.torch_python, TORCH_FACTS, [], m.env(ctx, None), timeout=120)
                        if ctx.torch_python else None)
    return raw


def cuda_version(code: int) -> str:
    """NVML's CUDA driver version integer (12040) as major.minor (12.4)."""
    return f"{code // 1000}.{(code % 1000) // 10}"


def _gpu(raw: dict[str, Any]) -> Verdict:
    nvml = raw["nvml"]
    return Verdict(nvml["name"], None, f"{nvml['uuid']}, {nvml['total'] / m.GiB:.1f} GiB, "
                   f"{nvml['reserved'] / m.MiB:.0f} MiB reserved")


def _driver(raw: dict[str, Any]) -> Verdict:
    nvml = raw["nvml"]
    return Verdict(nvml.get("driver", ""), None, f"CUDA {cuda_version(nvml.get('cuda_driver', 0))} (driver)")


def _torch(raw: dict[str, Any]) -> Verdict:
    if "torch" not in raw:
        return Verdict(None, None, "not used on the fakes")
    if raw["torch"] is None:
        return Verdict(None, False, "no Python with PyTorch found (--torch-python PATH)")
    t = raw["torch"]
    return Verdict(t["torch"], bool(t["available"]), f"built for CUDA {t['torch_cuda']}, sees {t['device']}")


def measurements() -> list[Measurement]:
    return [Measurement("machine.facts", GROUP, "driver", 120, measure, (
        Row("machine.gpu", "GPU 0", "", "-", _gpu),
        Row("machine.driver", "driver version", "", "-", _driver),
        Row("machine.torch", "PyTorch", "", "-", _torch),
    ), commands=lambda ctx: ["python -c NVML_PROBE (host view)", "nvidia-smi -L", "python -c TORCH_FACTS"])]
