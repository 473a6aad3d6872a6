"""Point the real `kubernetes` client at the fake API server: an ApiClient or a kubeconfig file."""

from __future__ import annotations

from pathlib import Path

import yaml
from kubernetes import client

from tests.fakes.apiserver import USER_HEADER, FakeApiServer


def configuration_for(server: FakeApiServer) -> client.Configuration:
    """A client Configuration for the server's URL (plain HTTP, no auth)."""
    config = client.Configuration(host=server.url)
    # Controllers run many threads over one client; the default pool (5 per CPU) makes them queue.
    config.connection_pool_maxsize = 64
    return config


def api_client_for(server: FakeApiServer, user: str | None = None) -> client.ApiClient:
    """An ApiClient talking to `server`; `user` is sent as X-Fake-User and shows in its audit log."""
    api = client.ApiClient(configuration_for(server))
    if user:
        api.set_default_header(USER_HEADER, user)
    return api


def write_kubeconfig(server: FakeApiServer, path: Path, user: str | None = None) -> Path:
    """Write a kubeconfig for `server` (for code that calls config.load_kube_config(path), e.g. a
    component run as a subprocess). `user` travels as the bearer token, which the fake takes as
    the identity in its audit log when no X-Fake-User header is sent."""
    credentials: dict[str, str] = {"token": user} if user else {}
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": server.url}}],
        "users": [{"name": user or "anonymous", "user": credentials}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": user or "anonymous"}}],
        "current-context": "fake",
    }
    path.write_text(yaml.safe_dump(doc))
    return path
