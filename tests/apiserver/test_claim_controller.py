"""The kube-controller-manager emulation: claims from templates, reservedFor cleanup."""

from __future__ import annotations

from kubernetes import client

from tests.apiserver.raw_requests import request
from tests.apiserver.test_crud import CLAIMS, claim, pod
from tests.apiserver.test_writes import allocation, reservation
from tests.fakes.apiserver import FakeApiServer
from tests.fakes.apiserver.claim_controller import ResourceClaimControllerEmulator


def test_pod_with_template_gets_an_owned_claim(kube_client: client.ApiClient, fake_apiserver: FakeApiServer) -> None:
    template = {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate",
                "metadata": {"name": "small-gpu"},
                "spec": {"metadata": {"labels": {"size": "small"}}, "spec": claim("x")["spec"]}}
    assert request(kube_client, "POST", "/apis/resource.k8s.io/v1/namespaces/default/resourceclaimtemplates",
                   template).status == 201
    body = pod("web-0")
    body["spec"]["resourceClaims"] = [{"name": "gpu", "resourceClaimTemplateName": "small-gpu"}]
    with ResourceClaimControllerEmulator(fake_apiserver) as kcm:
        created = client.CoreV1Api(kube_client).create_namespaced_pod("default", body)
        kcm.wait_idle()
        [generated] = fake_apiserver.objects("ResourceClaim")
        meta = generated["metadata"]
        assert meta["name"].startswith("web-0-gpu-")
        assert meta["annotations"]["resource.kubernetes.io/pod-claim-name"] == "gpu"
        assert meta["labels"] == {"size": "small"}
        assert meta["ownerReferences"][0]["uid"] == created.metadata.uid
        assert generated["spec"]["devices"]["requests"][0]["exactly"]["deviceClassName"] == "vgpu.dra.dev"
        status = fake_apiserver.get("Pod", "web-0", "default")["status"]
        assert status["resourceClaimStatuses"] == [{"name": "gpu", "resourceClaimName": meta["name"]}]
        client.CoreV1Api(kube_client).delete_namespaced_pod("web-0", "default")
        kcm.wait_idle()
        assert fake_apiserver.objects("ResourceClaim") == []  # garbage-collected with its pod
        assert kcm.errors == []


def test_reservations_of_gone_pods_are_dropped_and_scheduler_allocations_freed(
        kube_client: client.ApiClient, fake_apiserver: FakeApiServer) -> None:
    core = client.CoreV1Api(kube_client)
    p1 = core.create_namespaced_pod("default", pod("p1"))
    p2 = core.create_namespaced_pod("default", pod("p2"))
    body = claim("shared")
    body["metadata"]["finalizers"] = ["resource.kubernetes.io/delete-protection"]
    request(kube_client, "POST", CLAIMS, body)
    resp = request(kube_client, "PATCH", f"{CLAIMS}/shared/status", {"status": {
        "allocation": allocation(), "reservedFor": [reservation("p1", p1.metadata.uid),
                                                    reservation("p2", p2.metadata.uid)]}},
        "application/merge-patch+json")
    assert resp.status == 200, resp.body
    with ResourceClaimControllerEmulator(fake_apiserver) as kcm:
        core.delete_namespaced_pod("p1", "default")
        kcm.wait_idle()
        stored = fake_apiserver.get("ResourceClaim", "shared", "default")
        assert [r["name"] for r in stored["status"]["reservedFor"]] == ["p2"]
        assert stored["status"]["allocation"]
        core.patch_namespaced_pod_status("p2", "default", {"status": {"phase": "Succeeded"}})
        kcm.wait_idle()
        stored = fake_apiserver.get("ResourceClaim", "shared", "default")
        assert stored.get("status", {}) == {}
        assert "finalizers" not in stored["metadata"] or stored["metadata"]["finalizers"] == []
        assert kcm.errors == []


def test_allocations_by_other_allocators_are_left_alone(kube_client: client.ApiClient, fake_apiserver: FakeApiServer,
                                                        claim_controller: ResourceClaimControllerEmulator) -> None:
    """A claim allocated by a driver controller (its own finalizer) stays allocated when unreserved."""
    core = client.CoreV1Api(kube_client)
    p1 = core.create_namespaced_pod("default", pod("p1"))
    body = claim("c1")
    body["metadata"]["finalizers"] = ["vgpu.dra.dev/allocation"]
    request(kube_client, "POST", CLAIMS, body)
    request(kube_client, "PATCH", f"{CLAIMS}/c1/status", {"status": {
        "allocation": allocation(), "reservedFor": [reservation("p1", p1.metadata.uid)]}},
        "application/merge-patch+json")
    core.delete_namespaced_pod("p1", "default")
    claim_controller.wait_idle()
    stored = fake_apiserver.get("ResourceClaim", "c1", "default")
    assert "reservedFor" not in stored["status"] and stored["status"]["allocation"]
    assert stored["metadata"]["finalizers"] == ["vgpu.dra.dev/allocation"]
