"""Reads ResourceClaims from the API server as raw JSON.

Raw JSON (``_preload_content=False``) keeps fields the Python client's models do not know (the
client may be older or newer than the API server), which matters for ``shareID`` and
``consumedCapacity``.
"""
from __future__ import annotations

import json
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException


class ClaimNotFound(LookupError):
    """The API server has no claim of that name."""


class ClaimReadError(RuntimeError):
    """The claim could not be read (API server unreachable, forbidden, …)."""


class ClaimReader:
    """GETs claims through the `kubernetes` client."""

    def __init__(self, api_client: client.ApiClient, timeout_seconds: float = 10.0):
        self._api = client.ResourceV1Api(api_client)
        self._timeout = timeout_seconds

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        """The claim `namespace/name` as a JSON object."""
        try:
            response = self._api.read_namespaced_resource_claim(
                name, namespace, _preload_content=False, _request_timeout=self._timeout)
        except ApiException as exc:
            if exc.status == 404:
                raise ClaimNotFound(f"claim {namespace}/{name} does not exist") from None
            raise ClaimReadError(f"cannot read claim {namespace}/{name}: HTTP {exc.status} {exc.reason}") from None
        except Exception as exc:  # urllib3 connection errors, timeouts
            raise ClaimReadError(f"cannot read claim {namespace}/{name}: {exc}") from None
        try:
            return json.loads(response.data)
        finally:
            response.release_conn()

    def list_all(self) -> list[dict[str, Any]]:
        """Every claim in the cluster (used only to rebuild a lost checkpoint)."""
        try:
            response = self._api.list_resource_claim_for_all_namespaces(
                _preload_content=False, _request_timeout=self._timeout)
        except ApiException as exc:
            raise ClaimReadError(f"cannot list claims: HTTP {exc.status} {exc.reason}") from None
        except Exception as exc:
            raise ClaimReadError(f"cannot list claims: {exc}") from None
        try:
            return list(json.loads(response.data).get("items") or ())
        finally:
            response.release_conn()
