"""gpu tier: PyTorch on a real NVIDIA GPU under the built libvgpu.so (issues 3 and 4).

Every test skips unless PyTorch with CUDA sees a GPU (probed in a child process, so this pytest
process never initialises CUDA itself). Run on a GPU machine with plain pytest:

    make -C shim && .venv/bin/python -m pytest -q tests/gpu

The tests start Python children with the test build of the shim preloaded and a claims root in a
temporary directory holding one claim for GPU 0 (the same files the kubelet plugin writes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from vgpu_dra.driver.claimconfig import ClaimConfig, GpuLimit, Policy, render
from tests.gpu.workloads import gpu_uuid
from vgpu_dra.driver.region import RegionSnapshot, create_region, read_region

REPO = Path(__file__).resolve().parents[2]
TEST_SHIM = REPO / "shim" / "out" / "libvgpu-test.so"
GiB = 1 << 30

_PROBE = """
import json, torch
ok = torch.cuda.is_available() and torch.cuda.device_count() > 0
print(json.dumps({"ok": ok, "uuid": str(torch.cuda.get_device_properties(0).uuid) if ok else ""}))
"""


def _probe() -> tuple[bool, str, str]:
    try:
        out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as err:
        return False, "", f"probing PyTorch failed: {err}"
    if out.returncode != 0:
        return False, "", "PyTorch is not installed" if "No module named" in out.stderr else out.stderr[-300:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    if not seen["ok"]:
        return False, "", "PyTorch sees no CUDA GPU"
    return True, seen["uuid"], ""


_AVAILABLE, _TORCH_UUID, _WHY = _probe()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _AVAILABLE:
        return
    skip = pytest.mark.skip(reason=f"needs an NVIDIA GPU with PyTorch: {_WHY}")
    for item in items:
        if "tests/gpu/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(skip)




@dataclass
class GpuClaim:
    """One claim on GPU 0 in a temporary claims root; runs Python children under the shim."""

    root: Path
    uuid: str

    @property
    def region_path(self) -> Path:
        return self.root / "claim-gpu" / "region"

    def write(self, memory: int, cores: int = 0, policy: Policy = "hard") -> None:
        directory = self.root / "claim-gpu"
        directory.mkdir(parents=True, exist_ok=True)
        config = ClaimConfig("claim-gpu", (GpuLimit(self.uuid, memory, cores, policy),))
        (directory / "config").write_text(render(config))
        create_region(directory / "region", config)

    def env(self, shim: bool = True, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "VGPU_CLAIMS_ROOT")}
        if shim:
            env["LD_PRELOAD"] = str(TEST_SHIM)
            env["VGPU_CLAIMS_ROOT"] = str(self.root)
        env.update(extra)
        return env

    def python(self, script: str, *args: str, shim: bool = True, timeout: float = 300, **extra: str) -> dict:
        """Run script in a child Python; return the JSON object it prints last."""
        out = subprocess.run([sys.executable, "-c", script, *args], env=self.env(shim, **extra),
                             capture_output=True, text=True, timeout=timeout)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    def start(self, script: str, *args: str, **extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-c", script, *args], env=self.env(True, **extra),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def region(self) -> RegionSnapshot:
        return read_region(self.region_path)


@pytest.fixture(scope="session")
def built_shim() -> Path:
    subprocess.run(["make", "-s", "-C", str(REPO / "shim")], check=True)
    return TEST_SHIM


@pytest.fixture
def claim(tmp_path: Path, built_shim: Path) -> GpuClaim:
    return GpuClaim(root=tmp_path / "claims", uuid=gpu_uuid())
