"""e2e tier: a real cluster named by VGPU_E2E_KUBECONFIG; every test here skips without it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KUBECONFIG_ENV = "VGPU_E2E_KUBECONFIG"

requires_cluster = pytest.mark.skipif(not os.environ.get(KUBECONFIG_ENV),
                                      reason=f"{KUBECONFIG_ENV} is not set (no real cluster to test against)")


@pytest.fixture
def e2e_api_client() -> Iterator[object]:
    """A `kubernetes` ApiClient for the cluster in VGPU_E2E_KUBECONFIG."""
    from kubernetes import config

    client = config.new_client_from_config(config_file=os.environ[KUBECONFIG_ENV])
    client.configuration.connection_pool_maxsize = 32
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temp dir with a short path: AF_UNIX socket paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="vgpu-e2e-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def plugin_stubs() -> None:
    """The kubelet plugin's generated gRPC stubs (the fake kubelet speaks them)."""
    subprocess.run(["make", "--no-print-directory", "-f", "kubeletplugin/protos.mk", f"PY={sys.executable}"],
                   cwd=REPO, check=True, stdout=subprocess.DEVNULL)


if os.environ.get(KUBECONFIG_ENV):
    from tests.fakes.nvml_env import fake_nvml, fake_nvml_library  # noqa: F401
