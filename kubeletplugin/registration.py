"""The kubelet plugin-registration service: tells the kubelet who we are and where to dial."""
from __future__ import annotations

import threading
from collections.abc import Callable

import grpc
import structlog

from vgpu_dra.kubeletplugin.proto import pluginregistration_pb2 as pb
from vgpu_dra.kubeletplugin.proto import pluginregistration_pb2_grpc as pb_grpc

PLUGIN_TYPE = "DRAPlugin"
SUPPORTED_VERSIONS = ("v1.DRAPlugin", "v1beta1.DRAPlugin")
"""Most preferred first: the kubelet takes the first entry it supports."""

log = structlog.get_logger(__name__)


class RegistrationService(pb_grpc.RegistrationServicer):
    """Answers the kubelet's plugin watcher and remembers whether registration succeeded."""

    def __init__(self, driver_name: str, endpoint: str, on_registered: Callable[[], None] | None = None,
                 extra_versions: tuple[str, ...] = ()):
        """``extra_versions`` (the health service) go after the DRA versions: the kubelet picks the
        DRA version it speaks from the front and looks for the health service anywhere."""
        self._info = pb.PluginInfo(type=PLUGIN_TYPE, name=driver_name, endpoint=endpoint,
                                   supported_versions=[*SUPPORTED_VERSIONS, *extra_versions])
        self.registered = threading.Event()
        self.last_error = ""
        self._on_registered = on_registered

    def GetInfo(self, request: pb.InfoRequest, context: grpc.ServicerContext) -> pb.PluginInfo:  # noqa: N802
        log.info("kubelet asked for plugin info", endpoint=self._info.endpoint)
        return self._info

    def NotifyRegistrationStatus(self, request: pb.RegistrationStatus,  # noqa: N802
                                 context: grpc.ServicerContext) -> pb.RegistrationStatusResponse:
        if request.plugin_registered:
            self.last_error = ""
            self.registered.set()
            log.info("registered with the kubelet")
            if self._on_registered is not None:
                # A (re)starting kubelet wipes this node's slices: publish again, off the RPC thread.
                threading.Thread(target=self._on_registered, name="on-registered", daemon=True).start()
        else:
            self.last_error = request.error
            self.registered.clear()
            # The kubelet only says this when our info is unacceptable; nothing to retry here.
            log.error("kubelet rejected the registration", error=request.error)
        return pb.RegistrationStatusResponse()
