"""Controller tier: the real controller over the real `kubernetes` client against an API server.

`api_backend` runs a scenario twice: on the project's fake API server (fault injection, audit) and
on the real control plane of the real-cluster tier (skipped, with the reason, where that cannot
start), so the fake can never hide how a real server behaves. Scenarios that need what only the
fake has (injected faults, the audit log, feature switches) use `fake_apiserver` alone.
"""
from collections.abc import Iterator
from typing import Any

import pytest

from tests.controller.backends import RealBackend
from tests.fakes.apiserver.fixtures import fake_apiserver  # noqa: F401
from tests.fakes.nvml_env import fake_nvml, fake_nvml_library  # noqa: F401


@pytest.fixture(params=["fake", "real"])
def api_backend(request: pytest.FixtureRequest) -> Iterator[Any]:
    """The fake API server, or the real one behind the same test-side methods."""
    if request.param == "fake":
        yield request.getfixturevalue("fake_apiserver")
        return
    backend = RealBackend(request.getfixturevalue("real_cluster"))
    backend.clean()
    try:
        yield backend
    finally:
        backend.clean()
