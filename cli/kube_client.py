"""A `kubernetes` ApiClient from --kubeconfig, else in-cluster config, else the default kubeconfig."""
from __future__ import annotations

from typing import Any


class ClusterConfigError(ValueError):
    """No usable cluster configuration; `reason` is what the client library said."""

    def __init__(self, reason: str):
        reason = " ".join(reason.split())  # YAML errors span lines; the operator gets one
        super().__init__(f"no usable cluster configuration ({reason}): give --kubeconfig, set KUBECONFIG, "
                         "or run in a pod")
        self.reason = reason


def api_client(kubeconfig: str | None, *, component: str = "vgpu-dra",
               connection_pool_maxsize: int | None = None) -> Any:
    """Build the client; ``component`` names its writes (User-Agent ``<component>/<version>``: the
    API server records each writer in managedFields by that name, and its audit log shows it);
    ``connection_pool_maxsize`` sizes urllib3's pool for concurrent callers. A missing, unreadable
    or malformed configuration raises `ClusterConfigError`."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        if kubeconfig:
            config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        else:
            try:
                config.load_incluster_config(client_configuration=configuration)
            except config.ConfigException:
                config.load_kube_config(client_configuration=configuration)
    except Exception as exc:  # noqa: BLE001 - ConfigException, OSError, YAML errors: all the operator's to fix
        raise ClusterConfigError(str(exc) or type(exc).__name__) from None
    if connection_pool_maxsize is not None:
        configuration.connection_pool_maxsize = connection_pool_maxsize
    api = client.ApiClient(configuration)
    # Without this every write shows as "OpenAPI-Generator", the client library's default.
    api.user_agent = f"{component}/{_version()}"
    return api


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vgpu-dra")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"
