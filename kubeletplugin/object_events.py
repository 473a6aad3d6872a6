"""Kubernetes Events written by the kubelet plugin, about pods, claims and its Node: `kubectl
describe` shows them.

Best effort: an Event that cannot be written is logged, never raised — the plugin's work must not
depend on it.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import structlog
from kubernetes import client

COMPONENT = "vgpu-dra-kubelet-plugin"

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """The object an Event is about."""

    api_version: str
    kind: str
    namespace: str
    """The object's namespace; "" for a cluster-scoped object such as a Node."""
    name: str
    uid: str = ""


def post_event(api_client: client.ApiClient, node_name: str, regarding: ObjectRef, reason: str, message: str, *,
               event_type: str = "Warning", timeout: float = 10.0, event_namespace: str = "") -> bool:
    """Write a core/v1 Event in the object's namespace (`event_namespace` for a cluster-scoped
    object); True when it was stored."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    namespace = regarding.namespace or event_namespace
    involved = {"apiVersion": regarding.api_version, "kind": regarding.kind, "name": regarding.name}
    if regarding.namespace:
        involved["namespace"] = regarding.namespace
    if regarding.uid:
        involved["uid"] = regarding.uid
    event = {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": f"{regarding.name}.{time.time_ns():x}", "namespace": namespace},
        "involvedObject": involved,
        "reason": reason, "message": message[:1024], "type": event_type, "count": 1,
        "source": {"component": COMPONENT, "host": node_name},
        "firstTimestamp": now, "lastTimestamp": now,
        "reportingComponent": COMPONENT, "reportingInstance": node_name,
    }
    try:
        method, url, headers, body, post_params = api_client.param_serialize(
            method="POST", resource_path="/api/v1/namespaces/{namespace}/events",
            path_params={"namespace": namespace}, body=event,
            header_params={"Accept": "application/json", "Content-Type": "application/json"},
            auth_settings=["BearerToken"])
        response = api_client.call_api(method, url, headers, body, post_params, _request_timeout=timeout)
        data = response.read()
        if not 200 <= response.status < 300:
            raise RuntimeError(f"HTTP {response.status}: {json.loads(data).get('message', '')}")
        return True
    except Exception as exc:  # noqa: BLE001 - best effort by design
        log.warning("cannot record an event", kind=regarding.kind, name=f"{regarding.namespace}/{regarding.name}",
                    reason=reason, error=str(exc))
        return False
