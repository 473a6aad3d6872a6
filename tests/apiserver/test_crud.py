"""CRUD through the real kubernetes client, typed and raw."""

from __future__ import annotations

import pytest
from kubernetes import client

from tests.apiserver.raw_requests import request
from tests.fakes.apiserver import FakeApiServer

CLAIMS = "/apis/resource.k8s.io/v1/namespaces/default/resourceclaims"


def claim(name: str = "", generate_name: str = "") -> dict:
    meta = {"name": name} if name else {"generateName": generate_name}
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim", "metadata": meta,
            "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "vgpu.dra.dev"}}]}}}


def pod(name: str, labels: dict | None = None, node: str = "") -> dict:
    spec: dict = {"containers": [{"name": "main", "image": "busybox"}]}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}}, "spec": spec}


def test_typed_pod_crud(kube_client: client.ApiClient) -> None:
    core = client.CoreV1Api(kube_client)
    created = core.create_namespaced_pod("default", pod("web", {"app": "web"}))
    assert created.metadata.uid and created.metadata.creation_timestamp
    assert created.status.phase == "Pending"
    fetched = core.read_namespaced_pod("web", "default")
    assert fetched.metadata.resource_version == created.metadata.resource_version
    with pytest.raises(client.ApiException) as exc:
        core.create_namespaced_pod("default", pod("web"))
    assert exc.value.status == 409
    core.delete_namespaced_pod("web", "default")
    with pytest.raises(client.ApiException) as exc:
        core.read_namespaced_pod("web", "default")
    assert exc.value.status == 404


def test_raw_claim_create_assigns_server_fields(kube_client: client.ApiClient) -> None:
    resp = request(kube_client, "POST", CLAIMS, claim(generate_name="gpu-"))
    assert resp.status == 201
    meta = resp.body["metadata"]
    assert meta["name"].startswith("gpu-") and len(meta["name"]) == len("gpu-") + 5
    assert meta["uid"] and meta["creationTimestamp"] and meta["generation"] == 1
    # Server-side defaults the allocator relies on.
    assert resp.body["spec"]["devices"]["requests"][0]["exactly"] == {
        "deviceClassName": "vgpu.dra.dev", "allocationMode": "ExactCount", "count": 1}


def test_resource_versions_increase_across_kinds(kube_client: client.ApiClient) -> None:
    rv1 = int(request(kube_client, "POST", CLAIMS, claim("a")).body["metadata"]["resourceVersion"])
    rv2 = int(client.CoreV1Api(kube_client).create_namespaced_pod("default", pod("p")).metadata.resource_version)
    rv3 = int(request(kube_client, "POST", CLAIMS, claim("b")).body["metadata"]["resourceVersion"])
    assert rv1 < rv2 < rv3


def test_list_selectors_and_pagination(kube_client: client.ApiClient) -> None:
    core = client.CoreV1Api(kube_client)
    for i in range(5):
        core.create_namespaced_pod("default", pod(f"p{i}", {"tier": "a" if i % 2 else "b"}, node=f"n{i % 2}"))
    core.create_namespaced_pod("other", pod("elsewhere", {"tier": "a"}))
    names = lambda items: sorted(p.metadata.name for p in items)  # noqa: E731
    assert names(core.list_namespaced_pod("default", label_selector="tier=a").items) == ["p1", "p3"]
    assert names(core.list_namespaced_pod("default", label_selector="tier in (a,b),tier!=b").items) == ["p1", "p3"]
    assert names(core.list_pod_for_all_namespaces(label_selector="tier=a").items) == ["elsewhere", "p1", "p3"]
    assert names(core.list_namespaced_pod("default", field_selector="spec.nodeName=n0").items) == ["p0", "p2", "p4"]
    assert names(core.list_namespaced_pod("default", field_selector="metadata.name=p2").items) == ["p2"]
    first = core.list_namespaced_pod("default", limit=2)
    assert names(first.items) == ["p0", "p1"] and first.metadata._continue
    second = core.list_namespaced_pod("default", limit=10, _continue=first.metadata._continue)
    assert names(second.items) == ["p2", "p3", "p4"] and not second.metadata._continue


def test_unsupported_field_selector_is_rejected(kube_client: client.ApiClient) -> None:
    resp = request(kube_client, "GET", CLAIMS + "?fieldSelector=spec.nodeName%3Dn0")
    assert resp.status == 400 and "spec.nodeName" in resp.message


def test_resourceslice_field_selectors(kube_client: client.ApiClient, fake_apiserver: FakeApiServer) -> None:
    for node, driver in (("n1", "vgpu.dra.dev"), ("n2", "vgpu.dra.dev"), ("n1", "other.dev")):
        fake_apiserver.create({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
                               "metadata": {"name": f"{node}-{driver}"},
                               "spec": {"driver": driver, "nodeName": node,
                                        "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
                                        "devices": [{"name": "gpu-0"}]}})
    resp = request(kube_client, "GET", "/apis/resource.k8s.io/v1/resourceslices"
                   "?fieldSelector=spec.nodeName%3Dn1,spec.driver%3Dvgpu.dra.dev")
    assert [o["metadata"]["name"] for o in resp.body["items"]] == ["n1-vgpu.dra.dev"]


def test_discovery_and_version(kube_client: client.ApiClient) -> None:
    assert client.VersionApi(kube_client).get_code().git_version == "v1.36.3"
    groups = request(kube_client, "GET", "/apis").body
    assert {"resource.k8s.io", "coordination.k8s.io", "events.k8s.io"} <= {g["name"] for g in groups["groups"]}
    resources = request(kube_client, "GET", "/apis/resource.k8s.io/v1").body["resources"]
    by_name = {r["name"]: r for r in resources}
    assert by_name["resourceclaims"]["namespaced"] and not by_name["resourceslices"]["namespaced"]
    assert "resourceclaims/status" in by_name
    core = request(kube_client, "GET", "/api/v1").body["resources"]
    assert {"pods", "pods/status", "pods/binding", "nodes", "events"} <= {r["name"] for r in core}


def test_leases_and_events_typed(kube_client: client.ApiClient, fake_apiserver: FakeApiServer) -> None:
    coord = client.CoordinationV1Api(kube_client)
    lease = coord.create_namespaced_lease("kube-system", {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "vgpu-dra-controller"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}})
    lease.spec.holder_identity = "b"
    updated = coord.replace_namespaced_lease("vgpu-dra-controller", "kube-system", lease)
    assert updated.spec.holder_identity == "b"
    lease.spec.holder_identity = "c"  # based on the old resourceVersion
    with pytest.raises(client.ApiException) as exc:
        coord.replace_namespaced_lease("vgpu-dra-controller", "kube-system", lease)
    assert exc.value.status == 409
    client.EventsV1Api(kube_client).create_namespaced_event("default", {
        "apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "claim.1"},
        "eventTime": "2026-01-01T00:00:00.000000Z", "reportingController": "vgpu.dra.dev/controller",
        "reportingInstance": "controller-0", "action": "Allocate", "reason": "InsufficientCapacity",
        "type": "Warning", "note": "no GPU has 40Gi free",
        "regarding": {"kind": "ResourceClaim", "namespace": "default", "name": "c1"}})
    client.CoreV1Api(kube_client).create_namespaced_event("default", {
        "apiVersion": "v1", "kind": "Event", "metadata": {"name": "pod.1"}, "reason": "Scheduled",
        "type": "Normal", "message": "bound", "involvedObject": {"kind": "Pod", "namespace": "default", "name": "p"}})
    events = fake_apiserver.events()
    assert [(e.type, e.reason, e.regarding_kind, e.regarding_name, e.message) for e in events] == [
        ("Warning", "InsufficientCapacity", "ResourceClaim", "c1", "no GPU has 40Gi free"),
        ("Normal", "Scheduled", "Pod", "p", "bound")]


def test_events_are_one_storage_seen_through_both_apis(kube_client: client.ApiClient) -> None:
    resp = request(kube_client, "POST", "/apis/events.k8s.io/v1/namespaces/default/events", {
        "apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "claim.1"},
        "eventTime": "2026-01-01T00:00:00.000000Z", "reportingController": "vgpu.dra.dev/controller",
        "reportingInstance": "controller-0", "action": "Allocate", "reason": "InsufficientCapacity",
        "type": "Warning", "note": "no GPU has 40Gi free",
        "regarding": {"kind": "ResourceClaim", "namespace": "default", "name": "c1"}})
    assert resp.status == 201 and resp.body["note"] == "no GPU has 40Gi free"
    [core] = client.CoreV1Api(kube_client).list_namespaced_event("default").items
    assert (core.message, core.involved_object.name, core.reporting_component) == (
        "no GPU has 40Gi free", "c1", "vgpu.dra.dev/controller")
    [warning] = client.CoreV1Api(kube_client).list_namespaced_event(
        "default", field_selector="involvedObject.kind=ResourceClaim,type=Warning").items
    assert warning.reason == "InsufficientCapacity"
    patched = request(kube_client, "PATCH", "/apis/events.k8s.io/v1/namespaces/default/events/claim.1",
                      {"series": {"count": 2, "lastObservedTime": "2026-01-01T00:00:05.000000Z"}},
                      "application/merge-patch+json")
    assert patched.status == 200 and patched.body["series"]["count"] == 2
    # New-style events must say who reports what.
    bad = request(kube_client, "POST", "/apis/events.k8s.io/v1/namespaces/default/events", {
        "apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e2"},
        "eventTime": "2026-01-01T00:00:00.000000Z", "reason": "X", "type": "Warning"})
    assert bad.status == 422 and "reportingController" in bad.message


def test_error_surfaces(kube_client: client.ApiClient) -> None:
    resp = kube_client.call_api("POST", kube_client.configuration.host + CLAIMS,
                                {"Content-Type": "application/json"}, "{not json")
    resp.read()
    assert resp.status == 400
    assert request(kube_client, "GET", "/apis/resource.k8s.io/v1/widgets").status == 404
    assert request(kube_client, "GET", "/apis/resource.k8s.io/v1/namespaces/default/resourceslices").status == 404
    request(kube_client, "POST", CLAIMS, claim("c1"))
    resp = request(kube_client, "PATCH", f"{CLAIMS}/c1", {"metadata": {}}, "application/apply-patch+yaml")
    assert resp.status == 415
    resp = request(kube_client, "POST", CLAIMS, claim("c2") | {"kind": "Pod"})
    assert resp.status == 400 and "ResourceClaim" in resp.message
    resp = request(kube_client, "POST", CLAIMS, claim("c2") | {"metadata": {"name": "c2", "namespace": "other"}})
    assert resp.status == 400 and "namespace" in resp.message


def test_typed_status_patch_and_watch_objects(kube_client: client.ApiClient) -> None:
    """The typed ResourceV1Api sends dict patches as strategic merge and parses the answers."""
    resource = client.ResourceV1Api(kube_client)
    request(kube_client, "POST", CLAIMS, claim("c1"))
    allocation = {"devices": {"results": [{"request": "gpu", "driver": "vgpu.dra.dev", "pool": "node-1",
                                           "device": "gpu-0", "shareID": "7d5a2b3c-1e4f-4a6b-9c8d-0e1f2a3b4c5d"}]}}
    patched = resource.patch_namespaced_resource_claim_status("c1", "default", {"status": {
        "allocation": allocation, "reservedFor": [{"resource": "pods", "name": "p", "uid": "u1"}]}})
    assert patched.status.reserved_for[0].uid == "u1"
    assert patched.status.allocation.devices.results[0].share_id == "7d5a2b3c-1e4f-4a6b-9c8d-0e1f2a3b4c5d"
    listed = resource.list_namespaced_resource_claim("default")
    assert [c.metadata.name for c in listed.items] == ["c1"]
