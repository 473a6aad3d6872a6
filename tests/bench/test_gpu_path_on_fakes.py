"""The scorecard's GPU path without a GPU: its PyTorch rows (the user's worker scripts unchanged,
the wall, mem_get_info, expandable segments, two processes, launches, graphs) run on
tests/fakes/torch — a PyTorch stand-in whose tensors are cuMemAlloc calls on the fake driver
under the real shim. This checks the orchestration a GPU run depends on (claims sized by the
plugin's code, children, their JSON, the host-NVML probes, the rows); not PyTorch itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.scorecard.machine import FAKE_RESERVED, FAKE_TOTAL
from vgpu_dra.driver.limits import ShareRequest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_scorecard.py"
MiB = 1 << 20


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    out = tmp_path_factory.mktemp("card") / "card.json"
    only = ["--only", "workers", "--only", "memory.torch", "--only", "costs.launch_torch", "--only", "smcap.graph"]
    proc = subprocess.run([sys.executable, str(SCRIPT), "--torch-on-fakes", "--quick", "--json", str(out), *only],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    return {r["id"]: r for r in json.loads(out.read_text())["rows"]}


def test_the_workers_run_side_by_side_in_claims_sized_like_the_examples(rows: dict[str, dict[str, Any]]) -> None:
    usable = FAKE_TOTAL - FAKE_RESERVED
    for worker, percent in (("a", 20), ("b", 30)):
        wall = ShareRequest(memory_percent=percent).resolve(usable).memory_bytes / MiB
        assert rows[f"workers.{worker}.limit"]["value"] == wall
        for row in ("sees", "nvml"):
            assert rows[f"workers.{worker}.{row}"]["status"] == "pass" and rows[f"workers.{worker}.{row}"]["value"] == wall
        # The blob (1500 / 2000 MB) plus the fake context (500 MiB), counted by the claim and the host alike.
        held = rows[f"workers.{worker}.holds"]["value"]
        assert held == rows[f"workers.{worker}.host_nvml"]["value"] and held > (1500 if worker == "a" else 2000)
        assert rows[f"workers.{worker}.iters"]["value"] > 0
        assert rows[f"workers.{worker}.nvidia_smi"]["detail"] == "nvidia-smi not found"


def test_the_pytorch_wall_rows_run(rows: dict[str, dict[str, Any]]) -> None:
    for row_id in ("memory.torch_oom", "memory.torch_accuracy", "memory.torch_mem_get_info",
                   "memory.torch_expandable", "memory.torch_two_processes"):
        assert rows[row_id]["status"] == "pass", rows[row_id]
    assert rows["memory.torch_mem_get_info"]["value"] == 2048
    assert rows["memory.torch_two_processes"]["value"] == "refused then ok"


def test_launch_and_graph_rows_have_figures(rows: dict[str, dict[str, Any]]) -> None:
    assert isinstance(rows["costs.launch_torch"]["value"], float)
    assert abs(rows["smcap.graph50"]["value"] - 50) <= 15
