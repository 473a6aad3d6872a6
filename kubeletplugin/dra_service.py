"""The DRA node services (v1 and v1beta1) in front of a ClaimPreparer.

v1beta1 differs from v1 only by the missing ``share_id``; both call the same preparer so a kubelet
speaking either version sees the same behaviour. A whole-call gRPC error is never used for one bad
claim: every claim UID of the request gets an entry, failed ones with ``error`` set.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import grpc
import structlog

from vgpu_dra.kubeletplugin.prepared import ClaimOutcome, ClaimRef
from vgpu_dra.kubeletplugin.proto import dra_v1_pb2 as v1
from vgpu_dra.kubeletplugin.proto import dra_v1_pb2_grpc as v1_grpc
from vgpu_dra.kubeletplugin.proto import dra_v1beta1_pb2 as v1beta1
from vgpu_dra.kubeletplugin.proto import dra_v1beta1_pb2_grpc as v1beta1_grpc

log = structlog.get_logger(__name__)


class ClaimPreparer(Protocol):
    """What the DRA services need from the node's prepare logic."""

    def prepare(self, claims: list[ClaimRef]) -> Mapping[str, ClaimOutcome]:
        """Prepare claims; one outcome per claim UID."""
        ...

    def unprepare(self, claims: list[ClaimRef]) -> Mapping[str, str]:
        """Unprepare claims; per claim UID an error message, empty on success."""
        ...


def _refs(claims: Iterable[Any]) -> list[ClaimRef]:
    return [ClaimRef(namespace=c.namespace, uid=c.uid, name=c.name) for c in claims]


def _complete(refs: list[ClaimRef], outcomes: Mapping[str, Any], missing: Any) -> dict[str, Any]:
    # A preparer bug must not make the kubelet see an unknown or missing claim UID.
    return {ref.uid: outcomes.get(ref.uid, missing) for ref in refs}


class DraV1Service(v1_grpc.DRAPluginServicer):
    """`k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin`."""

    def __init__(self, preparer: ClaimPreparer):
        self._preparer = preparer

    def NodePrepareResources(self, request: v1.NodePrepareResourcesRequest,  # noqa: N802
                             context: grpc.ServicerContext) -> v1.NodePrepareResourcesResponse:
        refs = _refs(request.claims)
        outcomes = _complete(refs, self._preparer.prepare(refs),
                             ClaimOutcome.failed("internal error: the plugin produced no answer for this claim"))
        response = v1.NodePrepareResourcesResponse()
        for uid, outcome in outcomes.items():
            entry = response.claims[uid]
            entry.error = outcome.error
            for device in outcome.devices:
                msg = entry.devices.add(request_names=list(device.request_names), pool_name=device.pool_name,
                                        device_name=device.device_name,
                                        cdi_device_ids=list(device.cdi_device_ids))
                if device.share_id:
                    msg.share_id = device.share_id
        return response

    def NodeUnprepareResources(self, request: v1.NodeUnprepareResourcesRequest,  # noqa: N802
                               context: grpc.ServicerContext) -> v1.NodeUnprepareResourcesResponse:
        refs = _refs(request.claims)
        errors = _complete(refs, self._preparer.unprepare(refs),
                           "internal error: the plugin produced no answer for this claim")
        response = v1.NodeUnprepareResourcesResponse()
        for uid, error in errors.items():
            response.claims[uid].error = error
        return response


class DraV1beta1Service(v1beta1_grpc.DRAPluginServicer):
    """`k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin`: the v1 service without share IDs."""

    def __init__(self, preparer: ClaimPreparer):
        self._v1 = DraV1Service(preparer)

    def NodePrepareResources(self, request: v1beta1.NodePrepareResourcesRequest,  # noqa: N802
                             context: grpc.ServicerContext) -> v1beta1.NodePrepareResourcesResponse:
        answer = self._v1.NodePrepareResources(
            v1.NodePrepareResourcesRequest.FromString(request.SerializeToString()), context)
        # Same field numbers and types except share_id (field 5), which v1beta1 does not know.
        for entry in answer.claims.values():
            for device in entry.devices:
                device.ClearField("share_id")
        return v1beta1.NodePrepareResourcesResponse.FromString(answer.SerializeToString())

    def NodeUnprepareResources(self, request: v1beta1.NodeUnprepareResourcesRequest,  # noqa: N802
                               context: grpc.ServicerContext) -> v1beta1.NodeUnprepareResourcesResponse:
        answer = self._v1.NodeUnprepareResources(
            v1.NodeUnprepareResourcesRequest.FromString(request.SerializeToString()), context)
        return v1beta1.NodeUnprepareResourcesResponse.FromString(answer.SerializeToString())
