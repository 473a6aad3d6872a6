"""Updates, patches, finalizers, status subresource and claim rules."""

from __future__ import annotations

import pytest
from kubernetes import client

from tests.apiserver.raw_requests import request
from tests.apiserver.test_crud import CLAIMS, claim, pod

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"


def allocation(request_name: str = "gpu", share_id: str = "7d5a2b3c-1e4f-4a6b-9c8d-0e1f2a3b4c5d") -> dict:
    return {
        "devices": {
            "results": [{"request": request_name, "driver": "vgpu.dra.dev", "pool": "node-1", "device": "gpu-0",
                         "shareID": share_id, "consumedCapacity": {"vgpu.dra.dev/memory": "8Gi"}}],
            "config": [{"source": "FromClaim",
                        "opaque": {"driver": "vgpu.dra.dev", "parameters": {"apiVersion": "vgpu.dra.dev/v1alpha1",
                                                                            "kind": "VgpuConfig"}}}],
        },
        "nodeSelector": {"nodeSelectorTerms": [{"matchFields": [
            {"key": "metadata.name", "operator": "In", "values": ["node-1"]}]}]},
        "allocationTimestamp": "2026-11-24T10:00:00Z",
    }


def reservation(name: str, uid: str) -> dict:
    return {"resource": "pods", "name": name, "uid": uid}


def create_claim(api: client.ApiClient, name: str = "c1") -> dict:
    resp = request(api, "POST", CLAIMS, claim(name))
    assert resp.status == 201, resp.body
    return resp.body


def test_put_with_stale_resource_version_conflicts(kube_client: client.ApiClient) -> None:
    obj = create_claim(kube_client)
    fresh = request(kube_client, "PUT", f"{CLAIMS}/c1", obj | {"metadata": obj["metadata"] | {"labels": {"a": "1"}}})
    assert fresh.status == 200
    assert int(fresh.body["metadata"]["resourceVersion"]) > int(obj["metadata"]["resourceVersion"])
    stale = request(kube_client, "PUT", f"{CLAIMS}/c1", obj | {"metadata": obj["metadata"] | {"labels": {"a": "2"}}})
    assert stale.status == 409 and stale.body["reason"] == "Conflict"
    assert "the object has been modified" in stale.message


def test_put_without_resource_version_is_unconditional(kube_client: client.ApiClient) -> None:
    obj = create_claim(kube_client)
    request(kube_client, "PATCH", f"{CLAIMS}/c1", {"metadata": {"labels": {"a": "1"}}}, MERGE)
    meta = {k: v for k, v in obj["metadata"].items() if k != "resourceVersion"} | {"labels": {"b": "2"}}
    resp = request(kube_client, "PUT", f"{CLAIMS}/c1", obj | {"metadata": meta})
    assert resp.status == 200 and resp.body["metadata"]["labels"] == {"b": "2"}


def test_claim_spec_is_immutable(kube_client: client.ApiClient) -> None:
    obj = create_claim(kube_client)
    obj["spec"]["devices"]["requests"][0]["exactly"]["count"] = 2
    resp = request(kube_client, "PUT", f"{CLAIMS}/c1", obj)
    assert resp.status == 422 and "spec" in resp.message and "immutable" in resp.message


def test_main_resource_write_ignores_status_and_status_write_ignores_the_rest(kube_client: client.ApiClient) -> None:
    obj = create_claim(kube_client)
    sneaky = request(kube_client, "PUT", f"{CLAIMS}/c1", obj | {"status": {"allocation": allocation()}})
    assert sneaky.status == 200 and "allocation" not in sneaky.body.get("status", {})
    based = sneaky.body
    status = request(kube_client, "PUT", f"{CLAIMS}/c1/status", based | {
        "metadata": based["metadata"] | {"labels": {"ignored": "yes"}}, "status": {"allocation": allocation()}})
    assert status.status == 200, status.body
    assert status.body["status"]["allocation"]["devices"]["results"][0]["device"] == "gpu-0"
    assert "labels" not in status.body["metadata"]
    assert status.body["metadata"]["generation"] == 1  # status changes do not bump generation


def test_allocation_is_set_once_then_immutable_until_cleared(kube_client: client.ApiClient) -> None:
    obj = create_claim(kube_client)
    allocated = request(kube_client, "PUT", f"{CLAIMS}/c1/status", obj | {"status": {"allocation": allocation()}})
    assert allocated.status == 200, allocated.body
    moved = allocated.body | {"status": {"allocation": allocation(share_id="11111111-2222-4333-8444-555555555555")}}
    resp = request(kube_client, "PUT", f"{CLAIMS}/c1/status", moved)
    assert resp.status == 422 and "status.allocation" in resp.message and "immutable" in resp.message
    cleared = request(kube_client, "PUT", f"{CLAIMS}/c1/status", allocated.body | {"status": {}})
    assert cleared.status == 200 and "allocation" not in cleared.body.get("status", {})


def test_allocation_results_must_name_claim_requests(kube_client: client.ApiClient) -> None:
    obj = create_claim(kube_client)
    resp = request(kube_client, "PUT", f"{CLAIMS}/c1/status", obj | {"status": {"allocation": allocation("gpu-typo")}})
    assert resp.status == 422 and "results[0].request" in resp.message
    bad_share = allocation(share_id="not-a-uuid")
    resp = request(kube_client, "PUT", f"{CLAIMS}/c1/status", obj | {"status": {"allocation": bad_share}})
    assert resp.status == 422 and "shareID" in resp.message


def test_reserved_for_needs_allocation_and_has_a_limit(kube_client: client.ApiClient) -> None:
    obj = create_claim(kube_client)
    resp = request(kube_client, "PUT", f"{CLAIMS}/c1/status",
                   obj | {"status": {"reservedFor": [reservation("p", "u1")]}})
    assert resp.status == 422 and "status.reservedFor" in resp.message
    many = [reservation(f"p{i}", f"u{i}") for i in range(257)]
    resp = request(kube_client, "PUT", f"{CLAIMS}/c1/status",
                   obj | {"status": {"allocation": allocation(), "reservedFor": many}})
    assert resp.status == 422 and "at most 256" in resp.message
    resp = request(kube_client, "PUT", f"{CLAIMS}/c1/status",
                   obj | {"status": {"allocation": allocation(), "reservedFor": many[:256]}})
    assert resp.status == 200


def test_misspelt_field_is_rejected_naming_it(kube_client: client.ApiClient) -> None:
    bad = claim("c1")
    bad["spec"]["devices"]["requests"][0]["exactly"]["alocationMode"] = "All"
    resp = request(kube_client, "POST", CLAIMS, bad)
    assert resp.status == 422
    assert "spec.devices.requests[0].exactly.alocationMode" in resp.message
    assert resp.body["details"]["causes"][0]["field"] == "spec.devices.requests[0].exactly.alocationMode"
    obj = create_claim(kube_client)
    typo = allocation()
    typo["devices"]["results"][0]["sharedID"] = typo["devices"]["results"][0].pop("shareID")
    resp = request(kube_client, "PUT", f"{CLAIMS}/c1/status", obj | {"status": {"allocation": typo}})
    assert resp.status == 422 and "status.allocation.devices.results[0].sharedID" in resp.message


def test_wrong_types_and_quantities_are_rejected(kube_client: client.ApiClient) -> None:
    obj = create_claim(kube_client)
    bad = allocation()
    bad["devices"]["results"][0]["consumedCapacity"]["vgpu.dra.dev/memory"] = "8 GiB"
    resp = request(kube_client, "PUT", f"{CLAIMS}/c1/status", obj | {"status": {"allocation": bad}})
    assert resp.status == 422 and "consumedCapacity" in resp.message
    bad = claim("c2")
    bad["spec"]["devices"]["requests"][0]["exactly"]["count"] = "one"
    resp = request(kube_client, "POST", CLAIMS, bad)
    assert resp.status == 422 and "exactly.count" in resp.message


def test_merge_patch(kube_client: client.ApiClient) -> None:
    create_claim(kube_client)
    resp = request(kube_client, "PATCH", f"{CLAIMS}/c1", {"metadata": {"labels": {"a": "1", "b": "2"}}}, MERGE)
    assert resp.body["metadata"]["labels"] == {"a": "1", "b": "2"}
    resp = request(kube_client, "PATCH", f"{CLAIMS}/c1", {"metadata": {"labels": {"a": None}}}, MERGE)
    assert resp.body["metadata"]["labels"] == {"b": "2"}


def test_patch_with_stale_resource_version_conflicts(kube_client: client.ApiClient) -> None:
    obj = create_claim(kube_client)
    request(kube_client, "PATCH", f"{CLAIMS}/c1", {"metadata": {"labels": {"a": "1"}}}, MERGE)
    resp = request(kube_client, "PATCH", f"{CLAIMS}/c1", {"metadata": {
        "resourceVersion": obj["metadata"]["resourceVersion"], "labels": {"a": "2"}}}, MERGE)
    assert resp.status == 409


def test_strategic_merge_patch_on_reserved_for_and_finalizers(kube_client: client.ApiClient) -> None:
    create_claim(kube_client)
    resp = request(kube_client, "PATCH", f"{CLAIMS}/c1", {"metadata": {"finalizers": ["a.dev/x"]}}, STRATEGIC)
    resp = request(kube_client, "PATCH", f"{CLAIMS}/c1", {"metadata": {"finalizers": ["b.dev/y"]}}, STRATEGIC)
    assert resp.body["metadata"]["finalizers"] == ["a.dev/x", "b.dev/y"]  # merged as a set, not replaced
    resp = request(kube_client, "PATCH", f"{CLAIMS}/c1",
                   {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a.dev/x"]}}, STRATEGIC)
    assert resp.body["metadata"]["finalizers"] == ["b.dev/y"]
    resp = request(kube_client, "PATCH", f"{CLAIMS}/c1/status", {"status": {
        "allocation": allocation(), "reservedFor": [reservation("p1", "u1")]}}, STRATEGIC)
    assert resp.status == 200, resp.body
    resp = request(kube_client, "PATCH", f"{CLAIMS}/c1/status",
                   {"status": {"reservedFor": [reservation("p2", "u2")]}}, STRATEGIC)
    assert [r["uid"] for r in resp.body["status"]["reservedFor"]] == ["u1", "u2"]
    # kube-scheduler's Unreserve: remove one entry by its merge key.
    resp = request(kube_client, "PATCH", f"{CLAIMS}/c1/status",
                   {"metadata": {"uid": resp.body["metadata"]["uid"]},
                    "status": {"reservedFor": [{"$patch": "delete", "uid": "u1"}]}}, STRATEGIC)
    assert resp.status == 200, resp.body
    assert [r["uid"] for r in resp.body["status"]["reservedFor"]] == ["u2"]
    # Atomic lists (results) are replaced, not merged.
    other = allocation()
    resp = request(kube_client, "PATCH", f"{CLAIMS}/c1/status",
                   {"status": {"reservedFor": None, "allocation": None}}, STRATEGIC)
    assert "allocation" not in resp.body["status"] and "reservedFor" not in resp.body["status"]
    resp = request(kube_client, "PATCH", f"{CLAIMS}/c1/status", {"status": {"allocation": other}}, STRATEGIC)
    assert resp.body["status"]["allocation"] == other


def test_json_patch(kube_client: client.ApiClient) -> None:
    create_claim(kube_client)
    resp = request(kube_client, "PATCH", f"{CLAIMS}/c1", [
        {"op": "add", "path": "/metadata/finalizers", "value": ["vgpu.dra.dev/allocation"]},
        {"op": "add", "path": "/metadata/annotations", "value": {"vgpu.dra.dev/policy": "spread"}},
    ], JSON_PATCH)
    assert resp.body["metadata"]["finalizers"] == ["vgpu.dra.dev/allocation"]
    resp = request(kube_client, "PATCH", f"{CLAIMS}/c1", [
        {"op": "test", "path": "/metadata/finalizers/0", "value": "vgpu.dra.dev/allocation"},
        {"op": "remove", "path": "/metadata/finalizers/0"},
        {"op": "replace", "path": "/metadata/annotations/vgpu.dra.dev~1policy", "value": "binpack"},
    ], JSON_PATCH)
    assert "finalizers" not in resp.body["metadata"]  # an empty list is not stored, as on the real server
    assert resp.body["metadata"]["annotations"] == {"vgpu.dra.dev/policy": "binpack"}
    resp = request(kube_client, "PATCH", f"{CLAIMS}/c1", [
        {"op": "test", "path": "/metadata/annotations/vgpu.dra.dev~1policy", "value": "spread"}], JSON_PATCH)
    assert resp.status == 422


def test_empty_lists_and_maps_read_back_absent(kube_client: client.ApiClient) -> None:
    """Go's encoder drops empty omitempty slices and maps: `reservedFor: []` reads back absent."""
    body = claim("c1")
    body["metadata"].update({"labels": {}, "finalizers": []})
    body["spec"]["devices"]["requests"][0]["exactly"]["selectors"] = []
    stored = request(kube_client, "POST", CLAIMS, body).body
    assert "labels" not in stored["metadata"] and "finalizers" not in stored["metadata"]
    assert "selectors" not in stored["spec"]["devices"]["requests"][0]["exactly"]
    resp = request(kube_client, "PATCH", f"{CLAIMS}/c1/status", {"status": {
        "allocation": allocation(), "reservedFor": [reservation("p", "u1")]}}, MERGE)
    resp = request(kube_client, "PATCH", f"{CLAIMS}/c1/status", {"status": {"reservedFor": []}}, MERGE)
    assert "reservedFor" not in resp.body["status"] and resp.body["status"]["allocation"]
    # Opaque parameters are kept byte for byte, empty or not.
    cfg = allocation()
    cfg["devices"]["config"][0]["opaque"]["parameters"] = {}
    body = claim("c2")
    request(kube_client, "POST", CLAIMS, body)
    resp = request(kube_client, "PATCH", f"{CLAIMS}/c2/status", {"status": {"allocation": cfg}}, MERGE)
    assert resp.body["status"]["allocation"]["devices"]["config"][0]["opaque"]["parameters"] == {}


def test_finalizers_hold_deletion_until_removed(kube_client: client.ApiClient) -> None:
    obj = claim("c1")
    obj["metadata"]["finalizers"] = ["vgpu.dra.dev/allocation"]
    request(kube_client, "POST", CLAIMS, obj)
    resp = request(kube_client, "DELETE", f"{CLAIMS}/c1")
    assert resp.status == 200 and resp.body["metadata"]["deletionTimestamp"]
    still = request(kube_client, "GET", f"{CLAIMS}/c1")
    assert still.status == 200 and still.body["metadata"]["deletionTimestamp"]
    added = request(kube_client, "PATCH", f"{CLAIMS}/c1", {"metadata": {"finalizers": ["other.dev/x"]}}, STRATEGIC)
    assert added.status == 422 and "finalizers" in added.message
    gone = request(kube_client, "PATCH", f"{CLAIMS}/c1", {"metadata": {"finalizers": None}}, MERGE)
    assert gone.status == 200
    assert request(kube_client, "GET", f"{CLAIMS}/c1").status == 404


def test_no_new_reservations_while_deleting(kube_client: client.ApiClient) -> None:
    obj = claim("c1")
    obj["metadata"]["finalizers"] = ["vgpu.dra.dev/allocation"]
    request(kube_client, "POST", CLAIMS, obj)
    request(kube_client, "PATCH", f"{CLAIMS}/c1/status", {"status": {"allocation": allocation()}}, MERGE)
    request(kube_client, "DELETE", f"{CLAIMS}/c1")
    resp = request(kube_client, "PATCH", f"{CLAIMS}/c1/status",
                   {"status": {"reservedFor": [reservation("p", "u1")]}}, MERGE)
    assert resp.status == 422 and "reservedFor" in resp.message


def test_delete_preconditions(kube_client: client.ApiClient) -> None:
    obj = create_claim(kube_client)
    resp = request(kube_client, "DELETE", f"{CLAIMS}/c1", {"preconditions": {"uid": "someone-else"}})
    assert resp.status == 409
    resp = request(kube_client, "DELETE", f"{CLAIMS}/c1", {"preconditions": {"uid": obj["metadata"]["uid"]}})
    assert resp.status == 200


def test_pod_spec_rules_and_scheduling_gates(kube_client: client.ApiClient) -> None:
    core = client.CoreV1Api(kube_client)
    gated = pod("p")
    gated["spec"]["schedulingGates"] = [{"name": "vgpu.dra.dev/allocation"}]
    core.create_namespaced_pod("default", gated)
    resp = request(kube_client, "PATCH", "/api/v1/namespaces/default/pods/p",
                   {"spec": {"schedulingGates": [{"name": "vgpu.dra.dev/allocation"}, {"name": "x.dev/y"}]}}, MERGE)
    assert resp.status == 422 and "schedulingGates" in resp.message
    resp = request(kube_client, "POST", "/api/v1/namespaces/default/pods/p/binding",
                   {"target": {"kind": "Node", "name": "n1"}, "metadata": {"name": "p"}})
    assert resp.status == 409  # gated pods cannot be bound
    resp = request(kube_client, "PATCH", "/api/v1/namespaces/default/pods/p", {"spec": {"schedulingGates": None}},
                   MERGE)
    assert resp.status == 200 and "schedulingGates" not in resp.body["spec"]
    resp = request(kube_client, "PATCH", "/api/v1/namespaces/default/pods/p", {"spec": {"nodeName": "n1"}}, MERGE)
    assert resp.status == 422  # nodeName is set through the binding subresource only
    resp = request(kube_client, "PATCH", "/api/v1/namespaces/default/pods/p/status",
                   {"status": {"phase": "Running"}}, MERGE)
    assert resp.body["status"]["phase"] == "Running"


@pytest.mark.parametrize("bad_name", ["Upper", "under_score", "-dash"])
def test_invalid_names_are_rejected(kube_client: client.ApiClient, bad_name: str) -> None:
    resp = request(kube_client, "POST", CLAIMS, claim(bad_name))
    assert resp.status == 422 and "metadata.name" in resp.message


def test_generation_bumps_on_spec_change_only(kube_client: client.ApiClient) -> None:
    body = {"apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass", "metadata": {"name": "vgpu.dra.dev"},
            "spec": {"selectors": [{"cel": {"expression": "device.driver == 'vgpu.dra.dev'"}}]}}
    resp = request(kube_client, "POST", "/apis/resource.k8s.io/v1/deviceclasses", body)
    assert resp.body["metadata"]["generation"] == 1
    resp = request(kube_client, "PATCH", "/apis/resource.k8s.io/v1/deviceclasses/vgpu.dra.dev",
                   {"metadata": {"labels": {"vgpu.dra.dev/allocator": "controller"}}}, MERGE)
    assert resp.body["metadata"]["generation"] == 1
    resp = request(kube_client, "PATCH", "/apis/resource.k8s.io/v1/deviceclasses/vgpu.dra.dev",
                   {"spec": {"selectors": [{"cel": {"expression": "true"}}]}}, MERGE)
    assert resp.body["metadata"]["generation"] == 2


@pytest.mark.parametrize("field, value, expect", [
    ("key", "metadata.nam", "matchFields[0].key"),
    ("operator", "Exists", "matchFields[0].operator"),
    ("values", ["node-1", "node-2"], "matchFields[0].values"),
])
def test_allocation_node_selector_is_validated(kube_client: client.ApiClient, field: str, value: object,
                                               expect: str) -> None:
    obj = create_claim(kube_client)
    bad = allocation()
    bad["nodeSelector"]["nodeSelectorTerms"][0]["matchFields"][0][field] = value
    resp = request(kube_client, "PUT", f"{CLAIMS}/c1/status", obj | {"status": {"allocation": bad}})
    assert resp.status == 422 and expect in resp.message, resp.message
