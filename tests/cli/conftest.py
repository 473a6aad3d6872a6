"""CLI tier: the `vgpu-dra` commands run as a user runs them, over the fake driver, fake NVML
and the fake API server."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

from tests.fakes.apiserver import FakeApiServer
from tests.fakes.apiserver.fixtures import fake_apiserver, kube_client, kubeconfig_path  # noqa: F401
from tests.fakes.nvml_env import FakeNvml, fake_nvml, fake_nvml_library  # noqa: F401
from tests.shim.harness import CUDAPROG, FAKES_OUT, PROD_SHIM, build_all

REPO = Path(__file__).resolve().parents[2]
HOMELAB_GPU = "GPU-6b1f2c3d-8e4a-4f5b-9c7d-0a1b2c3d4e5f"


@pytest.fixture(scope="session")
def built() -> None:
    """libvgpu.so, the fake libcuda.so.1 / libnvidia-ml.so.1 and the C test programs."""
    build_all()


@pytest.fixture
def machine_env(built: None, fake_nvml: FakeNvml, tmp_path: Path) -> dict[str, str]:
    """Environment of a bare-metal machine with one RTX 3080 (fake NVML and fake CUDA agree)."""
    env = fake_nvml.env("rtx3080-homelab")
    env["FAKE_CUDA_DEVICES"] = f"{HOMELAB_GPU}={10240 << 20}"
    env["FAKE_CUDA_STATE"] = str(tmp_path / "fake-cuda.state")
    env["LD_LIBRARY_PATH"] = f"{FAKES_OUT}:{env['LD_LIBRARY_PATH']}"
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def vgpu_dra(*args: str, env: Mapping[str, str] | None = None, timeout: float = 60,
             **popen: object) -> subprocess.CompletedProcess[str]:
    """Run the installed command line (`python -m vgpu_dra.cli.main`) as a user would."""
    return subprocess.run([sys.executable, "-m", "vgpu_dra.cli.main", *args], env=dict(env or os.environ),
                          capture_output=True, text=True, timeout=timeout, check=False, **popen)  # type: ignore[arg-type]


def hami_pod(server: FakeApiServer, name: str, resources: Mapping[str, str], *, scheduler: str | None = None,
             phase: str = "Pending") -> None:
    """A pod in team-a written as for HAMi (or not: `resources` are its one container's limits)."""
    spec: dict[str, object] = {"containers": [{"name": "main", "image": "registry.example/app:1",
                                               "resources": {"limits": dict(resources)}}]}
    if scheduler:
        spec["schedulerName"] = scheduler
    created = server.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "team-a"},
                             "spec": spec})
    created["status"] = {"phase": phase}
    server.update_status(created)


__all__ = ["CUDAPROG", "PROD_SHIM", "HOMELAB_GPU", "hami_pod", "vgpu_dra"]
