"""Reads this node's Node object as raw JSON.

Through `ApiClient` directly rather than `CoreV1Api`: the generated CoreV1Api module costs about
20 MB of resident memory to load, a fifth of the plugin's budget, for one GET.
"""
from __future__ import annotations

import json
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException


def read_node(api_client: client.ApiClient, name: str, timeout: float) -> dict[str, Any]:
    """GET /api/v1/nodes/<name>; raises ApiException on an HTTP error."""
    method, url, headers, body, post_params = api_client.param_serialize(
        method="GET", resource_path="/api/v1/nodes/{name}", path_params={"name": name},
        header_params={"Accept": "application/json"}, auth_settings=["BearerToken"])
    response = api_client.call_api(method, url, headers, body, post_params, _request_timeout=timeout)
    data = response.read()
    if not 200 <= response.status < 300:
        raise ApiException(http_resp=response)
    return json.loads(data)
