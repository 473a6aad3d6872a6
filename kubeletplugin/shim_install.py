"""Installs libvgpu.so on the host at an immutable, versioned path.

Containers bind-mount the shim from the host, and a running container keeps the file it got. So
an upgrade must never rewrite a file in place: each build lands in its own directory named after
the package version and the file's content hash, next to the ``ld.so.preload`` file that names
the shim's path inside containers. An existing directory is reused as is.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import structlog

from vgpu_dra.driver.cdi import preload_file_content

SHIM_FILE = "libvgpu.so"
PRELOAD_FILE = "ld.so.preload"

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class InstalledShim:
    """Host paths of one installed shim version."""

    version: str
    shim_path: Path
    preload_path: Path


def _package_version() -> str:
    try:
        return metadata.version("vgpu-dra")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def preload_path_for(shim_path: Path) -> Path:
    """The ld.so.preload file installed next to a shim."""
    return shim_path.with_name(PRELOAD_FILE)


def install_shim(source: Path, shim_dir: Path, container_path: str) -> InstalledShim:
    """Copy `source` to ``shim_dir/<version>-<sha>/`` unless that version is already there."""
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise RuntimeError(f"cannot read the shim library {source}: {exc.strerror}") from exc
    digest = hashlib.sha256(data + container_path.encode()).hexdigest()[:16]
    version = f"{_package_version()}-{digest}"
    target = shim_dir / version
    shim_path, preload_path = target / SHIM_FILE, target / PRELOAD_FILE
    if shim_path.is_file() and preload_path.is_file():
        return InstalledShim(version, shim_path, preload_path)
    shim_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}.tmp-", dir=shim_dir))
    try:
        (staging / SHIM_FILE).write_bytes(data)
        (staging / PRELOAD_FILE).write_text(preload_file_content(container_path))
        for name in (SHIM_FILE, PRELOAD_FILE):
            os.chmod(staging / name, 0o444)
            with open(staging / name, "rb") as handle:
                os.fsync(handle.fileno())
        os.chmod(staging, 0o555)
        try:
            os.rename(staging, target)
        except OSError:
            if not shim_path.is_file():  # lost a race with another instance: theirs is identical
                raise
    finally:
        if staging.exists():
            os.chmod(staging, 0o755)
            shutil.rmtree(staging, ignore_errors=True)
    log.info("installed shim", path=str(shim_path), version=version)
    return InstalledShim(version, shim_path, preload_path)


def remove_unused_versions(shim_dir: Path, keep: set[Path]) -> list[Path]:
    """Delete installed versions whose directory is not in `keep` (no prepared claim uses them)."""
    removed = []
    if not shim_dir.is_dir():
        return removed
    for entry in shim_dir.iterdir():
        if entry.resolve() in keep or not entry.is_dir():
            continue
        os.chmod(entry, 0o755)
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed
