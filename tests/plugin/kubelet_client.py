"""A test client that talks to the plugin the way the kubelet does.

The kubelet's plugin watcher finds the registration socket, calls GetInfo, checks the type and
picks the first advertised version it supports, reports NotifyRegistrationStatus, then dials the
advertised endpoint for NodePrepareResources / NodeUnprepareResources (45 s timeout each). Like the
kubelet it treats a missing or unknown claim UID in an answer as a failure of the call.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from vgpu_dra.kubeletplugin.proto import dra_v1_pb2, dra_v1_pb2_grpc, dra_v1beta1_pb2, dra_v1beta1_pb2_grpc
from vgpu_dra.kubeletplugin.proto import pluginregistration_pb2, pluginregistration_pb2_grpc

KUBELET_CALL_TIMEOUT = 45.0
KUBELET_VERSIONS = ("v1.DRAPlugin", "v1beta1.DRAPlugin")


class KubeletProtocolError(AssertionError):
    """The plugin broke a rule the kubelet relies on."""


@dataclass(frozen=True)
class Claim:
    namespace: str
    uid: str
    name: str


@dataclass(frozen=True)
class DeviceAnswer:
    request_names: tuple[str, ...]
    pool_name: str
    device_name: str
    cdi_device_ids: tuple[str, ...]
    share_id: str | None


@dataclass(frozen=True)
class PrepareAnswer:
    devices: tuple[DeviceAnswer, ...]
    error: str


class FakeKubelet:
    """Registers with a plugin and drives its DRA service over unix sockets."""

    def __init__(self, registration_socket: Path, *, supported_versions: Sequence[str] = KUBELET_VERSIONS):
        self.registration_socket = registration_socket
        self.supported_versions = tuple(supported_versions)
        self.info: pluginregistration_pb2.PluginInfo | None = None
        self.version: str | None = None
        self._channel: grpc.Channel | None = None
        self._stub: object | None = None

    def register(self, timeout: float = 10.0) -> pluginregistration_pb2.PluginInfo:
        """GetInfo + NotifyRegistrationStatus, as the plugin watcher does; then dial the endpoint."""
        with grpc.insecure_channel(f"unix://{self.registration_socket}") as channel:
            stub = pluginregistration_pb2_grpc.RegistrationStub(channel)
            info = stub.GetInfo(pluginregistration_pb2.InfoRequest(), timeout=timeout, wait_for_ready=True)
            error = ""
            if info.type != "DRAPlugin":
                error = f"plugin type {info.type!r} is not DRAPlugin"
            elif not info.endpoint.startswith("/"):
                error = f"endpoint {info.endpoint!r} is not an absolute path"
            chosen = next((v for v in info.supported_versions if v in self.supported_versions), None)
            if not error and chosen is None:
                error = f"none of {list(info.supported_versions)} is supported"
            stub.NotifyRegistrationStatus(
                pluginregistration_pb2.RegistrationStatus(plugin_registered=not error, error=error), timeout=timeout)
            if error:
                raise KubeletProtocolError(error)
        self.info, self.version = info, chosen
        self._channel = grpc.insecure_channel(f"unix://{info.endpoint}")
        self._stub = (dra_v1_pb2_grpc.DRAPluginStub(self._channel) if chosen == "v1.DRAPlugin"
                      else dra_v1beta1_pb2_grpc.DRAPluginStub(self._channel))
        return info

    @property
    def _pb(self):  # noqa: ANN202
        return dra_v1_pb2 if self.version == "v1.DRAPlugin" else dra_v1beta1_pb2

    def _claims(self, claims: Sequence[Claim]) -> list:
        return [self._pb.Claim(namespace=c.namespace, uid=c.uid, name=c.name) for c in claims]

    def prepare(self, claims: Sequence[Claim]) -> dict[str, PrepareAnswer]:
        """NodePrepareResources; returns the per-claim answers, checked for completeness."""
        if self._stub is None:
            raise KubeletProtocolError("prepare before registration")
        response = self._stub.NodePrepareResources(  # type: ignore[attr-defined]
            self._pb.NodePrepareResourcesRequest(claims=self._claims(claims)), timeout=KUBELET_CALL_TIMEOUT)
        self._check_uids(claims, response.claims.keys())
        answers: dict[str, PrepareAnswer] = {}
        for uid, entry in response.claims.items():
            devices = tuple(
                DeviceAnswer(request_names=tuple(d.request_names), pool_name=d.pool_name, device_name=d.device_name,
                             cdi_device_ids=tuple(d.cdi_device_ids),
                             share_id=(d.share_id if self.version == "v1.DRAPlugin" and d.HasField("share_id")
                                       else None))
                for d in entry.devices)
            if not entry.error:
                for d in devices:
                    if not d.pool_name or not d.device_name:
                        raise KubeletProtocolError(f"claim {uid}: device without pool or device name")
            answers[uid] = PrepareAnswer(devices=devices, error=entry.error)
        return answers

    def unprepare(self, claims: Sequence[Claim]) -> dict[str, str]:
        """NodeUnprepareResources; returns per claim UID the error ('' = success)."""
        if self._stub is None:
            raise KubeletProtocolError("unprepare before registration")
        response = self._stub.NodeUnprepareResources(  # type: ignore[attr-defined]
            self._pb.NodeUnprepareResourcesRequest(claims=self._claims(claims)), timeout=KUBELET_CALL_TIMEOUT)
        self._check_uids(claims, response.claims.keys())
        return {uid: entry.error for uid, entry in response.claims.items()}

    @staticmethod
    def _check_uids(claims: Sequence[Claim], answered) -> None:  # noqa: ANN001
        asked = {c.uid for c in claims}
        got = set(answered)
        if got - asked:
            raise KubeletProtocolError(f"answer names unknown claims {sorted(got - asked)}")
        if asked - got:
            raise KubeletProtocolError(f"answer lacks claims {sorted(asked - got)}")

    def close(self) -> None:
        """Drop the DRA connection."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None
            self._stub = None
