"""A node for plugin tests: fake API server objects, fake NVML, temp paths, the plugin, a kubelet.

`PluginNode` creates the Node and ResourceClaims (with allocations as kube-scheduler or the
controller would write them) in the fake API server, starts the real plugin in this process (or
describes how to start it as a child process), and registers a FakeKubelet with it.
"""
from __future__ import annotations

import subprocess
import sys
import uuid as uuidlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.fakes.apiserver import FakeApiServer
from tests.plugin.kubelet_client import Claim, FakeKubelet
from vgpu_dra.kubeletplugin.settings import PluginSettings

REPO = Path(__file__).resolve().parents[2]
GIB = 1 << 30


def shim_library(workdir: Path) -> Path:
    """The shim to install: the real build when the shim's Makefile exists, else a stand-in.

    The plugin only copies the file and mounts it; what it contains does not matter to this tier.
    """
    if (REPO / "shim" / "Makefile").is_file():
        built = subprocess.run(["make", "--no-print-directory", "-C", str(REPO / "shim")],
                               capture_output=True, text=True)
        library = REPO / "shim" / "out" / "libvgpu.so"
        if built.returncode == 0 and library.is_file():
            return library
    stand_in = workdir / "libvgpu-standin.so"
    stand_in.write_bytes(b"\x7fELF stand-in for libvgpu.so (plugin tests copy and mount it only)\n")
    return stand_in


def node_settings(root: Path, node_name: str, shim: Path, **overrides: Any) -> PluginSettings:
    """Settings with every path under `root` (short, for AF_UNIX)."""
    boot_id = root / "boot_id"
    if not boot_id.exists():
        boot_id.write_text(str(uuidlib.uuid4()) + "\n")
    values: dict[str, Any] = dict(
        node_name=node_name, registrar_dir=root / "reg", plugin_dir=root / "plug", cdi_dir=root / "run-cdi",
        nvidia_cdi_dirs=(root / "etc-cdi", root / "run-cdi"), state_dir=root / "state", shim_source=shim,
        boot_id_path=boot_id, metrics_address="127.0.0.1", metrics_port=0, resync_seconds=3600.0,
        watchdog_seconds=0.0)  # tests/plugin/test_watchdog.py turns the usage watchdog on
    values.update(overrides)
    return PluginSettings(**values)


@dataclass
class Allocated:
    """A claim created in the fake API server."""

    namespace: str
    name: str
    uid: str

    @property
    def ref(self) -> Claim:
        return Claim(self.namespace, self.uid, self.name)


def vgpu_config(**fields: Any) -> dict[str, Any]:
    """An opaque VgpuConfig entry body."""
    return {"driver": "vgpu.dra.dev",
            "parameters": {"apiVersion": "vgpu.dra.dev/v1alpha1", "kind": "VgpuConfig", **fields}}


class ClaimMaker:
    """Creates allocated ResourceClaims in the fake API server."""

    def __init__(self, server: FakeApiServer, node_name: str):
        self.server = server
        self.node_name = node_name
        self._count = 0

    def create(self, results: Sequence[dict[str, Any]], *, config: Sequence[dict[str, Any]] = (),
               requests: Sequence[str] | None = None, namespace: str = "default", name: str | None = None,
               node: str | None = None, pods: Sequence[str] = ("pod-a",), allocate: bool = True) -> Allocated:
        """A claim whose allocation holds `results` (request/device/…); the driver and pool default to ours."""
        self._count += 1
        name = name or f"claim-{self._count}"
        request_names = list(requests or dict.fromkeys(r["request"].split("/")[0] for r in results) or ["gpu"])
        claim = self.server.create({
            "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"devices": {"requests": [{"name": r, "exactly": {"deviceClassName": "vgpu.dra.dev"}}
                                              for r in request_names]}},
        })
        if allocate:
            node = node or self.node_name
            claim["status"] = {
                "allocation": {
                    "devices": {
                        "results": [{"driver": "vgpu.dra.dev", "pool": node, **r} for r in results],
                        "config": list(config),
                    },
                    "nodeSelector": {"nodeSelectorTerms": [{"matchFields": [
                        {"key": "metadata.name", "operator": "In", "values": [node]}]}]},
                    "allocationTimestamp": "2026-01-01T00:00:00Z",
                },
                "reservedFor": [{"resource": "pods", "name": p, "uid": str(uuidlib.uuid4())} for p in pods],
            }
            claim = self.server.update_status(claim)
        meta = claim["metadata"]
        return Allocated(meta["namespace"], meta["name"], meta["uid"])


def create_node(server: FakeApiServer, name: str) -> dict[str, Any]:
    """The Node object the plugin owns its slices by."""
    return server.create({"apiVersion": "v1", "kind": "Node",
                          "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}}})


def kubelet_for(settings: PluginSettings) -> FakeKubelet:
    """A registered FakeKubelet for a running plugin."""
    kubelet = FakeKubelet(settings.registration_socket)
    kubelet.register()
    return kubelet


def plugin_command(settings: PluginSettings, kubeconfig: Path) -> list[str]:
    """The command line that runs the plugin as a child process with `settings`."""
    command = [sys.executable, "-m", "vgpu_dra.cli.main", "kubelet-plugin", "--node-name", settings.node_name,
               "--kubeconfig", str(kubeconfig), "--registrar-dir", str(settings.registrar_dir),
               "--plugin-dir", str(settings.plugin_dir), "--cdi-dir", str(settings.cdi_dir),
               "--state-dir", str(settings.state_dir), "--shim", str(settings.shim_source),
               "--boot-id-file", str(settings.boot_id_path), "--metrics-port", "-1", "--log-format", "json"]
    for directory in settings.nvidia_cdi_dirs:
        command += ["--nvidia-cdi-dir", str(directory)]
    return command
