"""resource.k8s.io semantic validation: the limits a driver or allocator can trip over."""

from __future__ import annotations

import pytest
from kubernetes import client

from tests.apiserver.raw_requests import request
from tests.fakes.apiserver import FakeApiServer
from tests.apiserver.test_crud import CLAIMS, claim
from tests.fakes.apiserver.quantity import canonical as canonical_quantity

SLICES = "/apis/resource.k8s.io/v1/resourceslices"


def gpu(i: int, **extra: object) -> dict:
    return {"name": f"gpu-{i}",
            "attributes": {"vgpu.dra.dev/index": {"int": i}, "vgpu.dra.dev/driverVersion": {"version": "570.1.2"}},
            "capacity": {"vgpu.dra.dev/memory": {"value": "80Gi", "requestPolicy": {
                "default": "80Gi", "validRange": {"min": "1Mi", "step": "1Mi"}}}},
            "allowMultipleAllocations": True, **extra}


def slice_body(devices: list[dict], name: str = "node-1-vgpu", **spec: object) -> dict:
    body_spec = {"driver": "vgpu.dra.dev", "nodeName": "node-1",
                 "pool": {"name": "node-1", "generation": 1, "resourceSliceCount": 1}, "devices": devices}
    body_spec.update(spec)
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice", "metadata": {"name": name},
            "spec": {k: v for k, v in body_spec.items() if v is not None}}


def test_slice_with_128_devices_is_accepted_129_is_not(kube_client: client.ApiClient) -> None:
    assert request(kube_client, "POST", SLICES, slice_body([gpu(i) for i in range(128)])).status == 201
    resp = request(kube_client, "POST", SLICES, slice_body([gpu(i) for i in range(129)], name="too-big"))
    assert resp.status == 422 and "spec.devices" in resp.message and "at most 128" in resp.message


def test_slice_needs_exactly_one_node_scope(kube_client: client.ApiClient) -> None:
    resp = request(kube_client, "POST", SLICES, slice_body([gpu(0)], allNodes=True))
    assert resp.status == 422 and "exactly one of" in resp.message
    resp = request(kube_client, "POST", SLICES, slice_body([gpu(0)], nodeName=None))
    assert resp.status == 422


@pytest.mark.parametrize("device, field", [
    (gpu(0, attributes={"vgpu.dra.dev/index": {"int": 0, "string": "0"}}), "attributes[vgpu.dra.dev/index]"),
    (gpu(0, attributes={"vgpu.dra.dev/driverVersion": {"version": "570.1"}}), "driverVersion].version"),
    (gpu(0, attributes={"vgpu.dra.dev/has-dash": {"bool": True}}), "attributes[vgpu.dra.dev/has-dash]"),
    (gpu(0, name="GPU_0"), "spec.devices[0].name"),
    (gpu(0, allowMultipleAllocations=None), "requestPolicy"),
])
def test_bad_devices_are_rejected(kube_client: client.ApiClient, device: dict, field: str) -> None:
    device = {k: v for k, v in device.items() if v is not None}
    resp = request(kube_client, "POST", SLICES, slice_body([device]))
    assert resp.status == 422 and field in resp.message, resp.message


@pytest.mark.parametrize("policy, field", [
    ({"default": "81Gi", "validRange": {"min": "1Mi"}}, "requestPolicy.default"),
    ({"default": "80Gi", "validRange": {"min": "81Gi"}}, "validRange.min"),
    ({"default": "80Gi", "validRange": {"min": "1Gi", "max": "96Gi"}}, "validRange.max"),
    ({"default": "512Mi", "validRange": {"min": "1Gi"}}, "requestPolicy.default"),
    ({"default": "8Gi", "validValues": ["16Gi", "8Gi"]}, "validValues[1]"),
    ({"default": "4Gi", "validValues": ["8Gi", "16Gi"]}, "requestPolicy.default"),
    ({"default": "8Gi", "validValues": ["8Gi"], "validRange": {"min": "1Gi"}}, "exactly one policy"),
])
def test_request_policies_are_checked_against_the_capacity(kube_client: client.ApiClient, policy: dict,
                                                           field: str) -> None:
    device = gpu(0)
    device["capacity"]["vgpu.dra.dev/memory"]["requestPolicy"] = policy
    resp = request(kube_client, "POST", SLICES, slice_body([device]))
    assert resp.status == 422 and field in resp.message, resp.message


def test_duplicate_device_names_are_rejected(kube_client: client.ApiClient) -> None:
    resp = request(kube_client, "POST", SLICES, slice_body([gpu(0), gpu(0)]))
    assert resp.status == 422 and "Duplicate" in resp.message


def test_slice_driver_and_node_are_immutable(kube_client: client.ApiClient) -> None:
    obj = request(kube_client, "POST", SLICES, slice_body([gpu(0)])).body
    obj["spec"]["nodeName"] = "node-2"
    resp = request(kube_client, "PUT", f"{SLICES}/node-1-vgpu", obj)
    assert resp.status == 422 and "spec.nodeName" in resp.message


def test_claim_cross_references_are_checked(kube_client: client.ApiClient) -> None:
    bad = claim("c1")
    bad["spec"]["devices"]["constraints"] = [{"requests": ["gpus"], "matchAttribute": "vgpu.dra.dev/numa"}]
    resp = request(kube_client, "POST", CLAIMS, bad)
    assert resp.status == 422 and "constraints[0].requests[0]" in resp.message
    bad = claim("c1")
    bad["spec"]["devices"]["constraints"] = [{"matchAttribute": "numa"}]
    resp = request(kube_client, "POST", CLAIMS, bad)
    assert resp.status == 422 and "matchAttribute" in resp.message
    bad = claim("c1")
    bad["spec"]["devices"]["requests"].append(bad["spec"]["devices"]["requests"][0])
    resp = request(kube_client, "POST", CLAIMS, bad)
    assert resp.status == 422 and "Duplicate" in resp.message
    bad = claim("c1")
    bad["spec"]["devices"]["config"] = [{"requests": ["gpu"], "opaque": {"driver": "Not_A_Domain",
                                                                         "parameters": {}}}]
    resp = request(kube_client, "POST", CLAIMS, bad)
    assert resp.status == 422 and "config[0].opaque.driver" in resp.message


def test_claim_with_first_available_and_capacity_requests_is_accepted(kube_client: client.ApiClient) -> None:
    body = claim("c1")
    body["spec"]["devices"]["requests"] = [{"name": "gpu", "firstAvailable": [
        {"name": "big", "deviceClassName": "vgpu.dra.dev",
         "capacity": {"requests": {"vgpu.dra.dev/memory": "40Gi"}}},
        {"name": "small", "deviceClassName": "vgpu.dra.dev",
         "capacity": {"requests": {"vgpu.dra.dev/memory": "10Gi"}}}]}]
    body["spec"]["devices"]["config"] = [{"requests": ["gpu/small"], "opaque": {
        "driver": "vgpu.dra.dev", "parameters": {"apiVersion": "vgpu.dra.dev/v1alpha1", "kind": "VgpuConfig"}}}]
    resp = request(kube_client, "POST", CLAIMS, body)
    assert resp.status == 201, resp.message
    assert resp.body["spec"]["devices"]["requests"][0]["firstAvailable"][1]["count"] == 1


def test_consumable_capacity_gate_off_drops_sharing_fields(kube_client: client.ApiClient,
                                                           fake_apiserver: FakeApiServer) -> None:
    fake_apiserver.disable_feature("DRAConsumableCapacity")
    stored = request(kube_client, "POST", SLICES, slice_body([gpu(0)])).body
    device = stored["spec"]["devices"][0]
    assert "allowMultipleAllocations" not in device
    assert device["capacity"] == {"vgpu.dra.dev/memory": {"value": "80Gi"}}
    body = claim("c1")
    body["spec"]["devices"]["requests"][0]["exactly"]["capacity"] = {"requests": {"vgpu.dra.dev/memory": "8Gi"}}
    stored = request(kube_client, "POST", CLAIMS, body).body
    assert "capacity" not in stored["spec"]["devices"]["requests"][0]["exactly"]
    fake_apiserver.enable_feature("DRAConsumableCapacity")
    stored = request(kube_client, "POST", SLICES, slice_body([gpu(0)], name="again")).body
    assert stored["spec"]["devices"][0]["allowMultipleAllocations"] is True


def test_quantities_are_stored_in_canonical_form(kube_client: client.ApiClient) -> None:
    device = gpu(0)
    device["capacity"] = {"vgpu.dra.dev/memory": {"value": "1024Mi", "requestPolicy": {
        "default": "0.5Gi", "validRange": {"min": "1048576", "step": "1Mi"}}}, "vgpu.dra.dev/cores": {"value": 100}}
    stored = request(kube_client, "POST", SLICES, slice_body([device])).body["spec"]["devices"][0]["capacity"]
    assert stored == {"vgpu.dra.dev/memory": {"value": "1Gi", "requestPolicy": {
        "default": "512Mi", "validRange": {"min": "1048576", "step": "1Mi"}}}, "vgpu.dra.dev/cores": {"value": "100"}}
    body = claim("c1")
    body["spec"]["devices"]["requests"][0]["exactly"]["capacity"] = {"requests": {"vgpu.dra.dev/cores": "1000m"}}
    stored = request(kube_client, "POST", CLAIMS, body).body
    assert stored["spec"]["devices"]["requests"][0]["exactly"]["capacity"]["requests"] == {"vgpu.dra.dev/cores": "1"}


@pytest.mark.parametrize("raw, canonical", [
    ("1024Mi", "1Gi"), ("0.5Gi", "512Mi"), ("1.5Ki", "1536"), ("1536Mi", "1536Mi"), ("1000", "1k"),
    ("1500", "1500"), ("0.5", "500m"), ("1000m", "1"), ("8589934592", "8589934592"), ("1.5e3", "1500"),
    ("1e3", "1e3"), (100, "100"), (1.5, "1500m"), ("0", "0"), ("-1Gi", "-1Gi"),
])
def test_quantity_canonical_form(raw: object, canonical: str) -> None:
    assert canonical_quantity(raw) == canonical


def test_selectors_must_be_valid_cel(kube_client: client.ApiClient) -> None:
    body = {"apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass", "metadata": {"name": "broken"},
            "spec": {"selectors": [{"cel": {"expression": 'device.driver == "vgpu.dra.dev" &&'}}]}}
    resp = request(kube_client, "POST", "/apis/resource.k8s.io/v1/deviceclasses", body)
    assert resp.status == 422 and "spec.selectors[0].cel.expression" in resp.message
    bad = claim("c1")
    bad["spec"]["devices"]["requests"][0]["exactly"]["selectors"] = [{"cel": {"expression": "device.capacity["}}]
    resp = request(kube_client, "POST", CLAIMS, bad)
    assert resp.status == 422 and "selectors[0].cel.expression" in resp.message
    good = claim("c2")
    good["spec"]["devices"]["requests"][0]["exactly"]["selectors"] = [{"cel": {"expression":
        'device.capacity["vgpu.dra.dev"].memory.compareTo(quantity("8Gi")) >= 0'}}]
    assert request(kube_client, "POST", CLAIMS, good).status == 201


def test_stored_expressions_are_not_recompiled(kube_client: client.ApiClient, fake_apiserver: FakeApiServer) -> None:
    """An object holding an expression this server would not compile stays writable (finalizers,
    status) as long as the expression is unchanged, like the real server's stored expressions."""
    bad = claim("legacy") | {"metadata": {"name": "legacy", "namespace": "default"}}
    bad["spec"]["devices"]["requests"][0]["exactly"]["selectors"] = [{"cel": {"expression": "device.driver =="}}]
    fake_apiserver.create(bad, check_cel=False)
    resp = request(kube_client, "PATCH", f"{CLAIMS}/legacy", {"metadata": {"finalizers": ["vgpu.dra.dev/allocation"]}},
                   "application/merge-patch+json")
    assert resp.status == 200, resp.message
