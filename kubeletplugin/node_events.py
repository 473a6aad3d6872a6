"""Kubernetes Events about this node (`kubectl describe node` shows them), best effort."""
from __future__ import annotations

import structlog
from kubernetes import client

from vgpu_dra.kubeletplugin.node_object import read_node
from vgpu_dra.kubeletplugin.object_events import COMPONENT, ObjectRef, post_event

__all__ = ["COMPONENT", "EVENT_NAMESPACE", "report_node_event"]

EVENT_NAMESPACE = "default"  # where the kubelet puts Node events too

log = structlog.get_logger(__name__)


def report_node_event(api_client: client.ApiClient, node_name: str, reason: str, message: str, *,
                      event_type: str = "Warning", timeout: float = 10.0) -> bool:
    """Write a core/v1 Event regarding the Node; True when it was stored."""
    try:
        node_uid = read_node(api_client, node_name, timeout)["metadata"]["uid"]
    except Exception as exc:  # noqa: BLE001 - best effort by design
        log.warning("cannot record a node event", reason=reason, error=str(exc))
        return False
    return post_event(api_client, node_name, ObjectRef("v1", "Node", "", node_name, node_uid), reason, message,
                      event_type=event_type, timeout=timeout, event_namespace=EVENT_NAMESPACE)
