"""Kubernetes Events about this node (`kubectl describe node` shows them).

Best effort: an Event that cannot be written is logged, never raised — the plugin's work must not
depend on it.
"""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import structlog
from kubernetes import client

from vgpu_dra.kubeletplugin.node_object import read_node

COMPONENT = "vgpu-dra-kubelet-plugin"
EVENT_NAMESPACE = "default"  # where the kubelet puts Node events too

log = structlog.get_logger(__name__)


def report_node_event(api_client: client.ApiClient, node_name: str, reason: str, message: str, *,
                      event_type: str = "Warning", timeout: float = 10.0) -> bool:
    """Write a core/v1 Event regarding the Node; True when it was stored."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        node_uid = read_node(api_client, node_name, timeout)["metadata"]["uid"]
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{node_name}.{time.time_ns():x}", "namespace": EVENT_NAMESPACE},
            "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": node_uid},
            "reason": reason, "message": message, "type": event_type, "count": 1,
            "source": {"component": COMPONENT, "host": node_name},
            "firstTimestamp": now, "lastTimestamp": now,
            "reportingComponent": COMPONENT, "reportingInstance": node_name,
        }
        method, url, headers, body, post_params = api_client.param_serialize(
            method="POST", resource_path="/api/v1/namespaces/{namespace}/events",
            path_params={"namespace": EVENT_NAMESPACE}, body=event,
            header_params={"Accept": "application/json", "Content-Type": "application/json"},
            auth_settings=["BearerToken"])
        response = api_client.call_api(method, url, headers, body, post_params, _request_timeout=timeout)
        data = response.read()
        if not 200 <= response.status < 300:
            raise RuntimeError(f"HTTP {response.status}: {json.loads(data).get('message', '')}")
        return True
    except Exception as exc:  # noqa: BLE001 - best effort by design
        log.warning("cannot record a node event", reason=reason, error=str(exc))
        return False
