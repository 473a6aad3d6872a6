"""The scorecard's figures that the other gpu tests do not assert, with its own programs
(bench/scorecard/programs.py) and targets: how much of a 2 GiB wall is usable as the host's NVML
counts it, and nvidia-smi inside a claim showing the wall. The rest of the card (caps, mem_get_info,
expandable segments, two processes, cap 100) is asserted by test_core_cap.py and
test_memory_wall.py with the same workloads (tests/gpu/workloads.py, which the card imports).
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from bench.scorecard.programs import FILL_AND_HOLD, NVML_PROBE
from tests.gpu.conftest import GiB, GpuClaim

LIMIT = 2 * GiB


def test_99_percent_of_the_wall_is_usable_and_none_beyond_it(claim: GpuClaim) -> None:
    claim.write(memory=LIMIT)
    filler = claim.start(FILL_AND_HOLD)
    try:
        assert filler.stdout is not None and filler.stdin is not None
        seen = json.loads(filler.stdout.readline())
        host = claim.python(NVML_PROBE, shim=False)  # the driver's own count for the process
        filler.stdin.write("\n")
        filler.stdin.flush()
        assert json.loads(filler.stdout.readline())["alive"]
    finally:
        filler.kill()
        filler.wait()
    assert seen["oom"], seen
    held = host["procs"].get(str(seen["pid"]))
    if held is None:
        pytest.skip("the host's NVML does not list this process (PID namespace): accuracy unknown")
    print(f"achieved / wall: {100 * held / LIMIT:.2f} % (tensors {seen['allocated'] >> 20} MiB)")
    assert 0.99 * LIMIT <= held <= LIMIT


def test_nvidia_smi_inside_a_claim_shows_the_wall(claim: GpuClaim) -> None:
    tool = shutil.which("nvidia-smi")
    if tool is None:
        pytest.skip("nvidia-smi is not installed")
    claim.write(memory=LIMIT)
    out = subprocess.run([tool, "--query-gpu=memory.total", "--format=csv,noheader,nounits"], env=claim.env(),
                         capture_output=True, text=True, timeout=60, check=True)
    assert float(out.stdout.splitlines()[0]) == LIMIT >> 20
