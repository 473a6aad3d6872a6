"""Init container of the vgpu-dra kubelet plugin: readies the node before the plugin starts.

1. Installs libvgpu.so from the image into the host's state directory, at the immutable,
   versioned path the plugin itself uses (same code: vgpu_dra.kubeletplugin.shim_install), so an
   upgrade never rewrites a library that running pods have mapped; a version already present is
   left untouched.
2. With --driver-root, links the host driver's libnvidia-ml.so.1 into --nvml-link-dir, a
   directory holding nothing else that the plugin container puts on LD_LIBRARY_PATH, so NVML is
   found without exposing any other host library to the plugin's Python.

Any failure exits non-zero with one line naming what to fix: the pod stays in Init and
`kubectl describe` shows why, instead of a plugin that runs without a shim or without GPUs.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from vgpu_dra.kubeletplugin.settings import PluginSettings
from vgpu_dra.kubeletplugin.shim_install import install_shim

NVML_LIBRARY = "libnvidia-ml.so.1"
# Where distributions and NVIDIA's installers put the driver's libraries, relative to the root.
NVML_SEARCH_DIRS = (
    "usr/lib64", "usr/lib/x86_64-linux-gnu", "usr/lib/aarch64-linux-gnu", "usr/lib",
    "lib64", "lib/x86_64-linux-gnu", "lib/aarch64-linux-gnu", "usr/local/nvidia/lib64",
)


def resolve_under_root(path: Path, root: Path) -> Path | None:
    """Follow symlinks as the host would, with absolute targets taken relative to `root` (the
    host's / is mounted there); None when the chain ends nowhere."""
    for _ in range(40):  # the kernel's own limit on symlink hops
        if not path.is_symlink():
            return path if path.is_file() else None
        target = Path(os.readlink(path))
        path = root / target.relative_to("/") if target.is_absolute() else path.parent / target
    return None


def find_nvml(driver_root: Path) -> Path:
    """The driver's NVML library file under `driver_root`, or SystemExit naming the places searched."""
    for relative in NVML_SEARCH_DIRS:
        found = resolve_under_root(driver_root / relative / NVML_LIBRARY, driver_root)
        if found is not None:
            return found
    searched = ", ".join(str(driver_root / d) for d in NVML_SEARCH_DIRS)
    raise SystemExit(f"prepare-node: {NVML_LIBRARY} not found under the NVIDIA driver root {driver_root} "
                     f"(searched {searched}); set nvidia.driverRoot to where the driver is installed "
                     f"(/ on the host, /run/nvidia/driver with the GPU Operator)")


def link_nvml(driver_root: Path, link_dir: Path) -> Path:
    """Point ``link_dir/libnvidia-ml.so.1`` at the driver's library (replacing an older link)."""
    target = find_nvml(driver_root)
    link_dir.mkdir(parents=True, exist_ok=True)
    link = link_dir / NVML_LIBRARY
    staging = link_dir / f".{NVML_LIBRARY}.tmp"
    staging.unlink(missing_ok=True)
    staging.symlink_to(target)
    os.replace(staging, link)
    return link


def main(argv: list[str] | None = None) -> int:
    """Install the shim and, if asked, link NVML; print what was done."""
    parser = argparse.ArgumentParser(prog="prepare-node", description=__doc__.splitlines()[0])
    parser.add_argument("--shim", type=Path, required=True, help="libvgpu.so shipped in the image")
    parser.add_argument("--state-dir", type=Path, required=True, help="the plugin's --state-dir")
    parser.add_argument("--driver-root", type=Path, help="where the host's NVIDIA driver is mounted")
    parser.add_argument("--nvml-link-dir", type=Path, help="directory receiving the NVML link")
    args = parser.parse_args(argv)
    if args.driver_root is not None and args.nvml_link_dir is None:
        parser.error("--driver-root needs --nvml-link-dir")

    # The plugin's own settings say where versions live and which path containers see, so the
    # version computed here is the one the plugin looks for.
    settings = PluginSettings(node_name="prepare-node", state_dir=args.state_dir, shim_source=args.shim)
    try:
        installed = install_shim(settings.shim_source, settings.shim_dir, settings.shim_container_path)
    except (OSError, RuntimeError) as exc:
        raise SystemExit(f"prepare-node: cannot install libvgpu.so into {settings.shim_dir}: {exc}") from None
    print(f"prepare-node: libvgpu.so {installed.version} at {installed.shim_path}", flush=True)
    if args.driver_root is not None:
        link = link_nvml(args.driver_root, args.nvml_link_dir)
        print(f"prepare-node: {link} -> {os.readlink(link)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
