"""A `kubernetes` ApiClient from --kubeconfig, else in-cluster config, else the default kubeconfig."""
from __future__ import annotations

from typing import Any


def api_client(kubeconfig: str | None, *, connection_pool_maxsize: int | None = None) -> Any:
    """Build the client; ``connection_pool_maxsize`` sizes urllib3's pool for concurrent callers."""
    from kubernetes import client, config

    configuration = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            config.load_kube_config(client_configuration=configuration)
    if connection_pool_maxsize is not None:
        configuration.connection_pool_maxsize = connection_pool_maxsize
    return client.ApiClient(configuration)
