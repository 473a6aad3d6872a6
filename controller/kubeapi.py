"""Raw-JSON access to the Kubernetes API through the `kubernetes` client's HTTP layer.

Claims and slices are read and written as plain JSON (the `kubernetes` client's
generated models are from a newer API than the server and would drop or invent fields), so this
module uses only the client's configuration, authentication and connection pool.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

JsonObject = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Resource:
    """A REST resource: where its objects live."""

    group: str
    version: str
    plural: str
    namespaced: bool

    def path(self, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
        """The URL path of the collection, an object or an object's subresource."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
            if subresource:
                base += f"/{subresource}"
        return base


RESOURCE_CLAIMS = Resource("resource.k8s.io", "v1", "resourceclaims", True)
RESOURCE_SLICES = Resource("resource.k8s.io", "v1", "resourceslices", False)
DEVICE_CLASSES = Resource("resource.k8s.io", "v1", "deviceclasses", False)
PODS = Resource("", "v1", "pods", True)
NODES = Resource("", "v1", "nodes", False)
EVENTS = Resource("", "v1", "events", True)
LEASES = Resource("coordination.k8s.io", "v1", "leases", True)
RESOURCE_QUOTAS = Resource("", "v1", "resourcequotas", True)
MUTATING_WEBHOOK_CONFIGURATIONS = Resource("admissionregistration.k8s.io", "v1", "mutatingwebhookconfigurations",
                                           False)


class ApiError(Exception):
    """A non-2xx answer from the API server; `status` is the HTTP code (0 = no answer)."""

    def __init__(self, status: int, reason: str, message: str = ""):
        self.status = status
        self.reason = reason
        self.message = message
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")

    @property
    def conflict(self) -> bool:
        """409: stale resourceVersion (or already exists on create)."""
        return self.status == 409

    @property
    def gone(self) -> bool:
        """410: the resourceVersion is too old for a watch or list."""
        return self.status == 410

    @property
    def not_found(self) -> bool:
        """404."""
        return self.status == 404


def _error_from(status: int, reason: str, body: bytes) -> ApiError:
    message = ""
    try:
        decoded = json.loads(body or b"{}")
        message = decoded.get("message", "") if isinstance(decoded, dict) else ""
        reason = decoded.get("reason", reason) if isinstance(decoded, dict) else reason
    except ValueError:
        message = body[:200].decode(errors="replace") if body else ""
    return ApiError(status, reason or "", message)


class KubeApi:
    """GET/LIST/WATCH/CREATE/UPDATE/PATCH/DELETE of raw JSON objects."""

    def __init__(self, api_client: k8s.ApiClient, *, request_timeout_s: float = 30.0):
        self.api_client = api_client
        self.request_timeout_s = request_timeout_s

    def _request(self, method: str, path: str, *, query: Mapping[str, Any] | None = None,
                 body: Any = None, content_type: str = "application/json",
                 timeout: float | tuple[float, float] | None = None, stream: bool = False) -> Any:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        query_params = [(k, v) for k, v in (query or {}).items() if v is not None]
        method_, url, header_params, body_, post_params = self.api_client.param_serialize(
            method=method, resource_path=path, query_params=query_params, header_params=headers,
            body=body, auth_settings=["BearerToken"])
        try:
            response = self.api_client.call_api(method_, url, header_params=header_params, body=body_,
                                                post_params=post_params,
                                                _request_timeout=timeout or self.request_timeout_s)
        except ApiException as exc:
            raise ApiError(exc.status or 0, exc.reason or "request failed", str(exc.body or "")) from None
        except Exception as exc:  # connection refused, reset, timeout: no answer
            raise ApiError(0, type(exc).__name__, str(exc)) from None
        if stream and 200 <= response.status < 300:
            return response.response
        data = response.read()
        if not 200 <= response.status < 300:
            raise _error_from(response.status, response.reason, data)
        return json.loads(data) if data else {}

    def get(self, resource: Resource, name: str, namespace: str | None = None, *,
            timeout_s: float | None = None) -> JsonObject:
        """One object (`timeout_s` overrides the client's request timeout)."""
        return self._request("GET", resource.path(namespace, name), timeout=timeout_s)

    def list(self, resource: Resource, namespace: str | None = None, *, label_selector: str | None = None,
             field_selector: str | None = None, limit: int | None = None,
             continue_token: str | None = None) -> JsonObject:
        """One page of a list (`metadata.continue` names the next)."""
        return self._request("GET", resource.path(namespace), query={
            "labelSelector": label_selector, "fieldSelector": field_selector, "limit": limit,
            "continue": continue_token})

    def pages(self, resource: Resource, namespace: str | None = None, *, label_selector: str | None = None,
              field_selector: str | None = None, limit: int = 500) -> Iterator[JsonObject]:
        """Every page of a list, in order, following `metadata.continue` (the last page carries
        the list's resourceVersion)."""
        token: str | None = None
        while True:
            page = self.list(resource, namespace, label_selector=label_selector, field_selector=field_selector,
                             limit=limit, continue_token=token)
            yield page
            token = (page.get("metadata") or {}).get("continue") or None
            if not token:
                return

    def watch(self, resource: Resource, resource_version: str, *, namespace: str | None = None,
              timeout_seconds: int = 60, label_selector: str | None = None,
              field_selector: str | None = None,
              on_open: Callable[[Any], None] | None = None) -> Iterator[JsonObject]:
        """Watch events ({type, object}) from `resource_version`, bookmarks included, until the
        server ends the stream. An ERROR event with code 410 raises `ApiError` (gone).
        `on_open` receives the open HTTP response (closing it ends the watch from another thread)."""
        response = self._request("GET", resource.path(namespace), stream=True, query={
            "watch": "true", "resourceVersion": resource_version, "allowWatchBookmarks": "true",
            "timeoutSeconds": timeout_seconds, "labelSelector": label_selector,
            "fieldSelector": field_selector}, timeout=(self.request_timeout_s, timeout_seconds + 15))
        if on_open is not None:
            on_open(response)
        try:
            pending = b""
            for chunk in response.stream(64 * 1024, decode_content=True):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event.get("type") == "ERROR":
                        status = event.get("object") or {}
                        raise ApiError(int(status.get("code") or 500), status.get("reason", "Error"),
                                       status.get("message", ""))
                    yield event
        except ApiError:
            raise
        except Exception as exc:  # the stream broke: the caller re-watches from its last version
            raise ApiError(0, type(exc).__name__, str(exc)) from None
        finally:
            response.release_conn()

    def create(self, resource: Resource, body: JsonObject, namespace: str | None = None, *,
               timeout_s: float | None = None) -> JsonObject:
        """POST."""
        return self._request("POST", resource.path(namespace), body=body, timeout=timeout_s)

    def update(self, resource: Resource, body: JsonObject, *, subresource: str | None = None,
               timeout_s: float | None = None) -> JsonObject:
        """PUT (optimistic concurrency through `metadata.resourceVersion`)."""
        meta = body["metadata"]
        return self._request("PUT", resource.path(meta.get("namespace"), meta["name"], subresource), body=body,
                             timeout=timeout_s)

    def patch(self, resource: Resource, name: str, patch: Any, namespace: str | None = None, *,
              subresource: str | None = None, patch_type: str = "application/merge-patch+json") -> JsonObject:
        """PATCH with a merge patch (default), strategic-merge or JSON patch."""
        return self._request("PATCH", resource.path(namespace, name, subresource), body=patch,
                             content_type=patch_type)

    def delete(self, resource: Resource, name: str, namespace: str | None = None, *,
               grace_period_s: int | None = None) -> JsonObject:
        """DELETE (`grace_period_s=0`: at once, without waiting for a kubelet)."""
        return self._request("DELETE", resource.path(namespace, name), query={"gracePeriodSeconds": grace_period_s})
