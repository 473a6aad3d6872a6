"""Fixtures of the plugin tier: built artefacts, short temp dirs for sockets, the fake API server."""
from __future__ import annotations

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


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temp dir with a short path: AF_UNIX socket paths are limited to 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="vgpu-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
