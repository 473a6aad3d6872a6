"""Shim tier: builds libvgpu.so, the fake driver and the test programs once per session."""

from pathlib import Path

import pytest

from tests.shim.harness import Node, build_all


@pytest.fixture(scope="session", autouse=True)
def built() -> None:
    build_all()


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(root=tmp_path)
