"""Fixtures every tier may use: the real cluster of the real-cluster tier.

`real_cluster` is session-scoped and started on first use only, so a run that never asks for it
pays nothing. Where it comes from, in order:

- ``VGPU_E2E_KUBECONFIG``: a user's own cluster;
- ``VGPU_K8S_BIN`` (default: ``../shared/k8s/bin`` beside the repository when it exists): release
  binaries of kube-apiserver, kube-controller-manager, kube-scheduler and kubectl, started here on
  loopback with Debian's etcd.

Where neither exists the tests that need it skip with the reason, unless ``VGPU_REQUIRE_CLUSTER=1``
(CI sets it), which turns the skip into a failure: CI must never skip the tier silently.
"""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

KUBECONFIG_ENV = "VGPU_E2E_KUBECONFIG"
REQUIRE_ENV = "VGPU_REQUIRE_CLUSTER"


def pytest_configure(config: pytest.Config) -> None:
    """A SIGTERM (a runner's timeout, `kill`) unwinds the run like Ctrl-C, so the session's teardown
    stops the control plane and the components it started: they run in sessions of their own and
    would otherwise be left running, loading the machine."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def _unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"the real-cluster tier is required here ({REQUIRE_ENV}=1) but cannot run: {reason}")
    pytest.skip(f"no real cluster: {reason}")


@pytest.fixture(scope="session")
def real_cluster() -> Iterator[object]:
    """A `RealCluster` (tests/cluster/real_cluster.py) for the whole run."""
    from tests.cluster.control_plane import BINARIES_ENV, ControlPlane, ControlPlaneUnavailable, binaries_source, find_binaries
    from tests.cluster.real_cluster import RealCluster

    folder = Path(tempfile.mkdtemp(prefix="vgpu-cluster-"))
    if os.environ.get(KUBECONFIG_ENV):
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            _unavailable(f"{KUBECONFIG_ENV} is set but kubectl is not on PATH")
        cluster = RealCluster(Path(os.environ[KUBECONFIG_ENV]), Path(kubectl), folder)
    else:
        source = binaries_source()
        if source is None:
            _unavailable(f"set {BINARIES_ENV} to a folder of Kubernetes release binaries, or {KUBECONFIG_ENV} "
                         f"to a cluster's kubeconfig")
        try:
            binaries = find_binaries(source)
        except ControlPlaneUnavailable as exc:
            _unavailable(str(exc))
        control_plane = ControlPlane(binaries).start()
        cluster = RealCluster(control_plane.admin_kubeconfig, binaries.path("kubectl"), folder, control_plane)
    try:
        yield cluster
    finally:
        cluster.close()
