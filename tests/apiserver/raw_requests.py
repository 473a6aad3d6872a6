"""Raw-JSON requests through the real client's ApiClient (bypassing its typed models, as our
product code does for claims and slices)."""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client


class RawResponse:
    """Status code and decoded JSON body of one request."""

    def __init__(self, status: int, body: Any) -> None:
        self.status = status
        self.body = body

    @property
    def message(self) -> str:
        """The Status message of an error response."""
        return self.body.get("message", "") if isinstance(self.body, dict) else ""


def request(api: client.ApiClient, method: str, path: str, body: Any = None,
            content_type: str = "application/json") -> RawResponse:
    """Send `body` as JSON to `path` and return the decoded answer, whatever its status."""
    headers = dict(api.default_headers)
    headers["Content-Type"] = content_type
    headers["Accept"] = "application/json"
    resp = api.call_api(method, api.configuration.host + path, headers, body)
    resp.read()
    data = resp.data
    return RawResponse(resp.status, json.loads(data) if data else None)
