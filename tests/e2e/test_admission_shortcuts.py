"""The chart's MutatingAdmissionPolicies on the real API server: what a pod and a claim look like as
admitted, and that nothing waits on the controller that is not the controller's."""
from __future__ import annotations

import json

import pytest

from tests.cluster.real_cluster import wait_until
from tests.e2e.install import Installation
from vgpu_dra.api.names import FINALIZER, SCHEDULING_GATE
from vgpu_dra.controller.kubeapi import PODS, RESOURCE_CLAIMS

pytestmark = pytest.mark.e2e

NAMESPACE = "default"


def _claim(name: str, device_class: str) -> str:
    return f"""apiVersion: resource.k8s.io/v1
kind: ResourceClaim
metadata: {{name: {name}}}
spec:
  devices:
    requests:
      - name: gpu
        exactly: {{deviceClassName: {device_class}}}
"""


def _pod(name: str, claim: str, extra_gate: str | None = None) -> str:
    gates = f"\n  schedulingGates: [{{name: {extra_gate}}}]" if extra_gate else ""
    return f"""apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:{gates}
  terminationGracePeriodSeconds: 0
  resourceClaims: [{{name: gpu, resourceClaimName: {claim}}}]
  containers:
    - name: main
      image: registry.example/none:1
      resources: {{claims: [{{name: gpu}}]}}
"""


def _created(installation: Installation, manifest: str) -> dict:
    """The object exactly as the API server admitted it (kubectl create prints the server's answer)."""
    return json.loads(installation.cluster.kubectl("create", "-o", "json", "-f", "-", input=manifest).stdout)


def _gates(obj: dict) -> list[str]:
    return [g["name"] for g in obj["spec"].get("schedulingGates") or []]


def _managers(obj: dict) -> set[tuple[str, str]]:
    return {(m["manager"], m.get("subresource", "")) for m in obj["metadata"].get("managedFields") or []}


def test_pods_wait_behind_the_gate_and_claims_carry_the_finalizer_from_creation(installation: Installation) -> None:
    """Controller mode: a user's pod is admitted with the controller's scheduling gate (next to the
    user's own), its claim with the controller's finalizer; the controller allocates, reserves the
    claim for the pod and lifts only its own gate; kube-scheduler binds once the user's gate goes.
    Scheduler mode: neither is added (kube-scheduler allocates, nothing must wait for a controller)."""
    kube = installation.cluster.kube
    claim = _created(installation, _claim("gated", "small.vgpu.dra.dev"))
    pod = _created(installation, _pod("gated", "gated", extra_gate="example.com/hold"))
    try:
        if installation.allocator != "controller":
            assert FINALIZER not in (claim["metadata"].get("finalizers") or [])
            assert _gates(pod) == ["example.com/hold"]
            return
        assert claim["metadata"].get("finalizers") == [FINALIZER]
        assert _gates(pod) == ["example.com/hold", SCHEDULING_GATE]
        wait_until(lambda: _gates(kube.get(PODS, "gated", NAMESPACE)) == ["example.com/hold"], 60,
                   "the controller's gate lifted after the allocation")
        allocated = kube.get(RESOURCE_CLAIMS, "gated", NAMESPACE)
        assert allocated["status"]["allocation"]["devices"]["results"][0]["driver"] == "vgpu.dra.dev"
        assert allocated["status"]["reservedFor"] == [{"resource": "pods", "name": "gated",
                                                       "uid": pod["metadata"]["uid"]}]
        assert not kube.get(PODS, "gated", NAMESPACE)["spec"].get("nodeName")  # the user's gate still holds it
        # Who wrote what, as `kubectl get -o yaml --show-managed-fields` tells a user: the
        # controller by name, not the client library's default "OpenAPI-Generator".
        assert ("vgpu-dra-controller", "status") in _managers(allocated)
        published = installation.published(next(iter(installation.nodes)))[0]
        assert {m for m, _ in _managers(published)} == {"vgpu-dra-kubelet-plugin"}
        installation.cluster.kubectl("patch", "pod", "gated", "--type=json",
                                     "-p", '[{"op": "remove", "path": "/spec/schedulingGates"}]')
        wait_until(lambda: kube.get(PODS, "gated", NAMESPACE)["spec"].get("nodeName"), 60, "bound by kube-scheduler")
    finally:
        installation.cluster.kubectl("delete", "--wait=false", "pod/gated", "resourceclaim/gated", check=False)
        wait_until(lambda: not installation.cluster.kube.list(RESOURCE_CLAIMS, NAMESPACE).get("items"), 60,
                   "the claim deleted (the controller dropped its finalizer)")


def test_a_pod_with_another_drivers_claim_is_handed_to_kube_scheduler(installation: Installation) -> None:
    """The gate is added to every pod with claims (admission cannot see a claim's class); the
    controller lifts it at once for a pod none of whose claims is this driver's, which then is
    kube-scheduler's to place (here: unschedulable, no such driver), and its claim gets no finalizer."""
    if installation.allocator != "controller":
        pytest.skip("scheduler mode adds no gate: nothing to hand over")
    kube = installation.cluster.kube
    installation.cluster.kubectl("apply", "-f", "-", input="""apiVersion: resource.k8s.io/v1
kind: DeviceClass
metadata: {name: gpu.example.com}
spec:
  selectors: [{cel: {expression: 'device.driver == "gpu.example.com"'}}]
""")
    claim = _created(installation, _claim("foreign", "gpu.example.com"))
    pod = _created(installation, _pod("foreign", "foreign"))
    try:
        assert not claim["metadata"].get("finalizers")
        assert _gates(pod) == [SCHEDULING_GATE]
        wait_until(lambda: not _gates(kube.get(PODS, "foreign", NAMESPACE)), 60, "the gate lifted for a foreign claim")
        wait_until(lambda: any(c.get("type") == "PodScheduled" and c.get("reason") == "Unschedulable"
                               for c in (kube.get(PODS, "foreign", NAMESPACE).get("status") or {}).get("conditions") or []),
                   60, "kube-scheduler tried the pod")
        assert not (kube.get(RESOURCE_CLAIMS, "foreign", NAMESPACE).get("status") or {}).get("allocation")
    finally:
        installation.cluster.kubectl("delete", "--wait=false", "pod/foreign", "resourceclaim/foreign",
                                     "deviceclass/gpu.example.com", check=False)
        wait_until(lambda: not installation.cluster.kube.list(RESOURCE_CLAIMS, NAMESPACE).get("items"), 60,
                   "the claim deleted")
