"""``v1alpha1.DRAResourceHealth/NodeWatchResources``: the GPUs' health for the kubelet.

Each message is the complete list of the node's devices (the kubelet reconciles against it). A
message goes out when the stream opens, whenever the taints change, and at least every
``HEARTBEAT_SECONDS``, so the kubelet's per-device timeout never turns a healthy GPU Unknown.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import grpc

from vgpu_dra.kubeletplugin.health import HEALTHY, UNHEALTHY, DeviceHealth
from vgpu_dra.kubeletplugin.proto import dra_health_v1alpha1_pb2 as pb
from vgpu_dra.kubeletplugin.proto import dra_health_v1alpha1_pb2_grpc as pb_grpc

HEALTH_VERSION = "v1alpha1.DRAResourceHealth"
"""What registration advertises so the kubelet opens the stream."""
HEARTBEAT_SECONDS = 20.0
TIMEOUT_SECONDS = 60
MAX_MESSAGE = 1024


class HealthSource(Protocol):
    """The health loop, as the service reads it."""

    def health(self) -> list[DeviceHealth]: ...
    def wait_for_change(self, seen: int, timeout: float) -> int: ...


def response_of(health: list[DeviceHealth], pool: str) -> pb.NodeWatchResourcesResponse:
    """One complete message for ``health`` (devices of pool ``pool``)."""
    status = {HEALTHY: pb.HEALTHY, UNHEALTHY: pb.UNHEALTHY}
    return pb.NodeWatchResourcesResponse(devices=[
        pb.DeviceHealth(device=pb.DeviceIdentifier(pool_name=pool, device_name=h.device),
                        health=status.get(h.status, pb.UNKNOWN), last_updated_time=int(h.updated_at),
                        health_check_timeout_seconds=TIMEOUT_SECONDS, message=h.message[:MAX_MESSAGE])
        for h in health])


class DraHealthService(pb_grpc.DRAResourceHealthServicer):
    """Streams the health source's view until the kubelet hangs up or the plugin stops."""

    def __init__(self, source: HealthSource, pool: str, heartbeat_seconds: float = HEARTBEAT_SECONDS):
        self._source = source
        self._pool = pool
        self._heartbeat = heartbeat_seconds

    def NodeWatchResources(self, request: pb.NodeWatchResourcesRequest,  # noqa: N802
                           context: grpc.ServicerContext) -> Iterator[pb.NodeWatchResourcesResponse]:
        seen = self._source.wait_for_change(-1, 0)
        while context.is_active():
            yield response_of(self._source.health(), self._pool)
            seen = self._source.wait_for_change(seen, self._heartbeat)
