"""Fixtures of the plugin tier: built artefacts, short temp dirs for sockets, the fake API server."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _build_protos() -> None:
    # Runs at import so test modules can import the generated stubs during collection.
    subprocess.run(["make", "--no-print-directory", "-f", "kubeletplugin/protos.mk", f"PY={sys.executable}"],
                   cwd=REPO, check=True, stdout=subprocess.DEVNULL)


_build_protos()

# After the build: these import the generated stubs.
from tests.fakes.apiserver.fixtures import fake_apiserver, kube_client, kubeconfig_path  # noqa: E402,F401
from tests.fakes.nvml_env import fake_nvml, fake_nvml_library  # noqa: E402,F401
from tests.plugin.cdi_schema import validate_cdi_spec  # noqa: E402
from tests.plugin.node import ClaimMaker, create_node, kubelet_for, node_settings, shim_library  # noqa: E402


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temp dir with a short path: AF_UNIX socket paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="vgpu-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


NODE = "mixed-node"


@pytest.fixture(scope="session")
def shim_source(tmp_path_factory) -> Path:  # noqa: ANN001
    """libvgpu.so as the image ships it."""
    return shim_library(tmp_path_factory.mktemp("shim"))


@pytest.fixture
def node_root(short_tmp: Path) -> Path:
    return short_tmp


@pytest.fixture
def settings(node_root: Path, shim_source: Path):  # noqa: ANN201
    return node_settings(node_root, NODE, shim_source)


@pytest.fixture
def claims(fake_apiserver):  # noqa: ANN001, ANN201
    create_node(fake_apiserver, NODE)
    return ClaimMaker(fake_apiserver, NODE)


@pytest.fixture
def plugin(settings, kube_client, fake_nvml, claims):  # noqa: ANN001, ANN201
    """The plugin running in this process on the mixed node (2x T4 + L40S), slices published."""
    from vgpu_dra.kubeletplugin.plugin import KubeletPlugin

    fake_nvml.use("mixed-node")
    running = KubeletPlugin(settings, kube_client)
    running.start()
    yield running
    running.stop()
    # Whatever the test did, every spec the plugin left must be one a runtime's CDI library loads.
    for spec in settings.cdi_dir.glob("k8s.vgpu.dra.dev-claim_*.json") if settings.cdi_dir.exists() else ():
        validate_cdi_spec(json.loads(spec.read_text()))


@pytest.fixture
def kubelet(plugin, settings):  # noqa: ANN001, ANN201
    fake = kubelet_for(settings)
    yield fake
    fake.close()
