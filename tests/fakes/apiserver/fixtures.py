"""pytest fixtures around the fake API server. Import them into a test folder's conftest.py:

    from tests.fakes.apiserver.fixtures import fake_apiserver, kube_client, kubeconfig_path  # noqa: F401
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest
from kubernetes import client

from tests.fakes.apiserver import FakeApiServer
from tests.fakes.apiserver.claim_controller import ResourceClaimControllerEmulator
from tests.fakes.kubeconfig import api_client_for, write_kubeconfig


@pytest.fixture
def fake_apiserver() -> Iterator[FakeApiServer]:
    """A started fake API server, stopped after the test. A request the fake itself failed on
    (a bug in the fake, answered 500) fails the test at teardown with its traceback."""
    server = FakeApiServer(bookmark_interval_s=0.5).start()
    try:
        yield server
    finally:
        server.stop()
    if server.internal_errors:
        pytest.fail("the fake API server failed on requests:\n" + "\n".join(server.internal_errors))


@pytest.fixture
def kube_client(fake_apiserver: FakeApiServer) -> Iterator[client.ApiClient]:
    """A `kubernetes.client.ApiClient` pointed at the fake server (user "test")."""
    api = api_client_for(fake_apiserver, user="test")
    try:
        yield api
    finally:
        api.close()


@pytest.fixture
def kube_client_for(fake_apiserver: FakeApiServer) -> Iterator[Callable[[str], client.ApiClient]]:
    """A factory of ApiClients, one per identity (as seen in `fake_apiserver.audit()`), closed
    after the test."""
    made: list[client.ApiClient] = []

    def make(user: str) -> client.ApiClient:
        api = api_client_for(fake_apiserver, user=user)
        made.append(api)
        return api

    try:
        yield make
    finally:
        for api in made:
            api.close()


@pytest.fixture
def kubeconfig_path(fake_apiserver: FakeApiServer, tmp_path: Path) -> Path:
    """A kubeconfig file for the fake server, for code that loads one."""
    return write_kubeconfig(fake_apiserver, tmp_path / "kubeconfig")


@pytest.fixture
def claim_controller(fake_apiserver: FakeApiServer) -> Iterator[ResourceClaimControllerEmulator]:
    """kube-controller-manager's resourceclaim controller, emulated against the fake server."""
    emulator = ResourceClaimControllerEmulator(fake_apiserver).start()
    try:
        yield emulator
    finally:
        emulator.stop()
