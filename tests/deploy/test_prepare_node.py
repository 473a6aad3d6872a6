"""The DaemonSet's init container, run exactly as the chart renders it (python -c <script> <args>)
against a temporary host: it installs libvgpu.so where the kubelet plugin will look for it, never
rewrites an installed version, and makes the host driver's NVML loadable for the plugin."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.chart import render
from tests.fakes.nvml_env import fake_nvml, fake_nvml_library  # noqa: F401
from vgpu_dra.kubeletplugin.settings import SHIM_CONTAINER_PATH
from vgpu_dra.kubeletplugin.shim_install import PRELOAD_FILE, SHIM_FILE, install_shim


def _init_container() -> dict:
    daemonset = render().one("DaemonSet")
    return next(c for c in daemonset["spec"]["template"]["spec"]["initContainers"] if c["name"] == "prepare-node")


def run_prepare_node(host: Path, shim: Path, *, driver_root: Path | None = None) -> subprocess.CompletedProcess:
    """The rendered init container's command, with its host paths moved under `host`."""
    container = _init_container()
    command = [sys.executable if part == "python" else part for part in container["command"]]
    args = [f"--shim={shim}", f"--state-dir={host / 'var/lib/vgpu-dra'}"]
    rendered_flags = {a.split("=", 1)[0] for a in container["args"]}
    assert {a.split("=", 1)[0] for a in args} <= rendered_flags
    if driver_root is not None:
        assert {"--driver-root", "--nvml-link-dir"} <= rendered_flags
        args += [f"--driver-root={driver_root}", f"--nvml-link-dir={host / 'run/vgpu-dra/nvml'}"]
    return subprocess.run(command + args, capture_output=True, text=True, timeout=60)


@pytest.fixture
def image_shim(tmp_path: Path) -> Path:
    """The libvgpu.so the image carries (its bytes are only copied here, never loaded)."""
    shim = tmp_path / "image" / "libvgpu.so"
    shim.parent.mkdir()
    shim.write_bytes(b"\x7fELF shim build 1")
    return shim


def _versions(host: Path) -> list[Path]:
    return sorted(p for p in (host / "var/lib/vgpu-dra/shim").iterdir() if not p.name.startswith("."))


def test_installs_the_shim_where_the_plugin_looks_for_it(tmp_path: Path, image_shim: Path):
    host = tmp_path / "host"
    result = run_prepare_node(host, image_shim)
    assert result.returncode == 0, result.stderr
    (version,) = _versions(host)
    assert (version / SHIM_FILE).read_bytes() == image_shim.read_bytes()
    assert (version / PRELOAD_FILE).read_text() == SHIM_CONTAINER_PATH + "\n"
    assert (version / SHIM_FILE).stat().st_mode & 0o222 == 0  # read-only: nothing rewrites it in place
    assert str(version / SHIM_FILE) in result.stdout
    # The plugin, starting next, resolves the same version and installs nothing new.
    installed = install_shim(image_shim, host / "var/lib/vgpu-dra/shim", SHIM_CONTAINER_PATH)
    assert installed.shim_path == version / SHIM_FILE
    assert _versions(host) == [version]


def test_a_restart_leaves_an_installed_version_untouched(tmp_path: Path, image_shim: Path):
    host = tmp_path / "host"
    assert run_prepare_node(host, image_shim).returncode == 0
    (version,) = _versions(host)
    before = (version / SHIM_FILE).stat()
    assert run_prepare_node(host, image_shim).returncode == 0
    after = (version / SHIM_FILE).stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert _versions(host) == [version]


def test_an_upgrade_adds_a_version_beside_the_one_running_pods_have_mapped(tmp_path: Path, image_shim: Path):
    host = tmp_path / "host"
    assert run_prepare_node(host, image_shim).returncode == 0
    (old,) = _versions(host)
    image_shim.write_bytes(b"\x7fELF shim build 2")
    assert run_prepare_node(host, image_shim).returncode == 0
    versions = _versions(host)
    assert len(versions) == 2 and old in versions
    assert (old / SHIM_FILE).read_bytes() == b"\x7fELF shim build 1"
    (new,) = [v for v in versions if v != old]
    assert (new / SHIM_FILE).read_bytes() == b"\x7fELF shim build 2"


def test_a_missing_shim_stops_the_pod_with_one_clear_line(tmp_path: Path):
    result = run_prepare_node(tmp_path / "host", tmp_path / "image" / "libvgpu.so")
    assert result.returncode != 0
    (line,) = result.stderr.strip().splitlines()
    assert "cannot install libvgpu.so" in line and str(tmp_path / "image" / "libvgpu.so") in line


def _driver_root_with_nvml(root: Path, library: Path) -> Path:
    """A host layout as the NVIDIA installer leaves it: the soname an absolute symlink to the
    versioned file."""
    libdir = root / "usr/lib/x86_64-linux-gnu"
    libdir.mkdir(parents=True)
    (libdir / "libnvidia-ml.so.535.183.01").write_bytes(library.read_bytes())
    (libdir / "libnvidia-ml.so.1").symlink_to("/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.535.183.01")
    return libdir / "libnvidia-ml.so.535.183.01"


def test_nvml_of_the_host_driver_loads_through_the_link(tmp_path: Path, image_shim: Path, fake_nvml):
    host, driver_root = tmp_path / "host", tmp_path / "driver-root"
    real = _driver_root_with_nvml(driver_root, fake_nvml.library)
    result = run_prepare_node(host, image_shim, driver_root=driver_root)
    assert result.returncode == 0, result.stderr
    link_dir = host / "run/vgpu-dra/nvml"
    assert sorted(p.name for p in link_dir.iterdir()) == ["libnvidia-ml.so.1"]  # nothing else exposed
    assert (link_dir / "libnvidia-ml.so.1").resolve() == real
    # The plugin container's environment: LD_LIBRARY_PATH is the link directory alone.
    env = fake_nvml.env("mixed-node")
    env["LD_LIBRARY_PATH"] = str(link_dir)
    probe = subprocess.run([sys.executable, "-c", "import pynvml; pynvml.nvmlInit(); print(pynvml.nvmlDeviceGetCount())"],
                           env=env, capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "3"


def test_a_wrong_driver_root_stops_the_pod_naming_the_setting(tmp_path: Path, image_shim: Path):
    empty_root = tmp_path / "driver-root"
    empty_root.mkdir()
    result = run_prepare_node(tmp_path / "host", image_shim, driver_root=empty_root)
    assert result.returncode != 0
    (line,) = result.stderr.strip().splitlines()
    assert "libnvidia-ml.so.1 not found" in line and "nvidia.driverRoot" in line and str(empty_root) in line
