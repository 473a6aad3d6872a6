"""Real-cluster tier (the user's path): vgpu-dra installed on the real control plane.

`installation` installs the chart once per allocator mode for the whole package (pytest groups
the tests by mode), so every test here runs in both modes unless it says why a mode does not
apply.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.install import Installation, installed


@pytest.fixture(scope="package", params=["controller", "scheduler"])
def installation(request: pytest.FixtureRequest, real_cluster: Any) -> Iterator[Installation]:
    """vgpu-dra installed with `allocator: <mode>`: chart applied, plugins on two GPU nodes and
    (controller mode) the allocation controller running."""
    with installed(real_cluster, request.param) as found:
        yield found
