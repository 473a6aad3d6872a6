"""The shim lands on the host at an immutable, versioned path; old versions go when unused."""
from __future__ import annotations

import os
import stat

import pytest

from vgpu_dra.kubeletplugin.shim_install import install_shim, remove_unused_versions

CONTAINER_PATH = "/usr/lib/vgpu-dra/libvgpu.so"


def test_install_is_versioned_read_only_and_reused(tmp_path):
    source = tmp_path / "libvgpu.so"
    source.write_bytes(b"build 1")
    first = install_shim(source, tmp_path / "shim", CONTAINER_PATH)
    assert first.shim_path.read_bytes() == b"build 1"
    assert first.preload_path.read_text() == CONTAINER_PATH + "\n"
    assert stat.S_IMODE(os.stat(first.shim_path).st_mode) == 0o444
    assert stat.S_IMODE(os.stat(first.shim_path.parent).st_mode) == 0o555
    assert install_shim(source, tmp_path / "shim", CONTAINER_PATH) == first

    source.write_bytes(b"build 2")  # an upgrade: running containers keep the old file
    second = install_shim(source, tmp_path / "shim", CONTAINER_PATH)
    assert second.shim_path != first.shim_path
    assert first.shim_path.read_bytes() == b"build 1"
    assert not [p for p in (tmp_path / "shim").iterdir() if p.name.startswith(".")]

    removed = remove_unused_versions(tmp_path / "shim", {second.shim_path.parent.resolve()})
    assert removed == [first.shim_path.parent]
    assert second.shim_path.is_file()


def test_missing_shim_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="cannot read the shim library"):
        install_shim(tmp_path / "nope.so", tmp_path / "shim", CONTAINER_PATH)
