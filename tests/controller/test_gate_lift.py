"""Lifting the controller's scheduling gate: conditional on the gates alone, so a pod whose status
kube-controller-manager wrote meanwhile is ungated in one patch, and a pod whose gates changed is
re-read rather than having them overwritten."""
from __future__ import annotations

import copy

from tests.fakes.kubeconfig import api_client_for
from vgpu_dra.api.names import SCHEDULING_GATE
from vgpu_dra.controller.claim_writes import ClaimWriter
from vgpu_dra.controller.informer import Informer
from vgpu_dra.controller.kubeapi import PODS, RESOURCE_CLAIMS, KubeApi
from vgpu_dra.controller.metrics import ControllerMetrics

from .cluster import pod


def _writer(server) -> tuple[ClaimWriter, ControllerMetrics, list[str]]:
    api = KubeApi(api_client_for(server, user="controller"))
    calls: list[str] = []
    original = api.patch

    def counting_patch(*args, **kwargs):
        calls.append(args[0].plural)
        return original(*args, **kwargs)

    api.patch = counting_patch  # type: ignore[method-assign]
    metrics = ControllerMetrics()
    claims = Informer(api, RESOURCE_CLAIMS, lambda *a: None)
    pods = Informer(api, PODS, lambda *a: None)
    return ClaimWriter(api, claims, pods, metrics, write_retries=5), metrics, calls


def _admin(server) -> KubeApi:
    return KubeApi(api_client_for(server, user="admin"))


def _gates(server, name: str) -> list[str]:
    return [g["name"] for g in server.get("Pod", name, "default")["spec"].get("schedulingGates") or []]


def test_a_pod_whose_status_moved_on_is_ungated_in_one_patch(fake_apiserver):
    server = fake_apiserver
    cached = server.create(pod("app", []))
    _admin(server).patch(PODS, "app", {"status": {"resourceClaimStatuses": [{"name": "gpu", "resourceClaimName": "c"}]}},
                         "default", subresource="status")
    writer, metrics, calls = _writer(server)
    writer.lift_gate("default/app", copy.deepcopy(cached))
    assert _gates(server, "app") == []
    assert calls == ["pods"]  # no conflict, no second attempt
    assert metrics.conflicts._value.get() == 0


def test_gates_changed_since_read_are_re_read_and_only_ours_removed(fake_apiserver):
    server = fake_apiserver
    spec = pod("app", [])
    spec["spec"]["schedulingGates"] += [{"name": "example.com/hold"}, {"name": "example.com/late"}]
    cached = server.create(spec)
    # Someone lifted their own gate after the controller cached the pod.
    _admin(server).patch(PODS, "app", {"spec": {"schedulingGates": [{"name": SCHEDULING_GATE},
                                                                    {"name": "example.com/late"}]}}, "default")
    writer, metrics, calls = _writer(server)
    writer.lift_gate("default/app", copy.deepcopy(cached))
    assert _gates(server, "app") == ["example.com/late"]  # the stale list is not written back
    assert calls == ["pods", "pods"]
    assert metrics.conflicts._value.get() == 1
