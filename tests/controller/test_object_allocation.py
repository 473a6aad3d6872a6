"""The controller's decision as pure data (`allocate_objects`): API JSON in, the status the API server
accepts out — the entry point a differential test against kube-scheduler feeds."""
from __future__ import annotations

from vgpu_dra.driver.devices import build_slices
from vgpu_dra.driver.inventory import NodeInventory
from vgpu_dra.driver.object_allocation import allocate_objects

from tests.fakes.apiserver import FakeApiServer

from .cluster import GIB, VGPU_SELECTOR, claim, gpu

CLASS = {"apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass",
         "metadata": {"name": "vgpu.dra.dev", "labels": {"vgpu.dra.dev/allocator": "controller"}},
         "spec": {"selectors": [{"cel": {"expression": VGPU_SELECTOR}}]}}


def slices(node: str, gpus) -> list[dict]:
    return [{"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice", "metadata": {"name": f"{node}-{i}"},
             "spec": spec}
            for i, spec in enumerate(build_slices(NodeInventory(node, tuple(gpus)), generation=1,
                                                  allow_multiple_allocations=True))]


def accepted_by_the_api_server(server: FakeApiServer, obj: dict, allocation: dict) -> dict:
    created = server.create(obj)
    created["status"] = {"allocation": allocation}
    return server.update_status(created)  # raises on anything a real server would refuse


def with_uid(obj: dict, uid: str) -> dict:
    obj["metadata"]["uid"] = uid
    return obj


def test_first_available_falls_back_and_the_result_is_a_valid_claim_status(fake_apiserver):
    requests = [{"name": "gpu", "firstAvailable": [
        {"name": "big", "deviceClassName": "vgpu.dra.dev", "capacity": {"requests": {"memory": "40Gi"}}},
        {"name": "small", "deviceClassName": "vgpu.dra.dev", "capacity": {"requests": {"memory": "2Gi", "cores": "30"}},
         "tolerations": [{"key": "maintenance", "operator": "Exists"}]}]}]
    wanted = claim("fallback", requests=requests)
    outcome = allocate_objects(slices("node-a", [gpu(0)]), [CLASS], [wanted], share_ids=lambda: "0" * 8 + "-0000-4000-8000-" + "0" * 12,
                               timestamp="2026-01-01T00:00:00Z")
    assert outcome.allocated and outcome.node == "node-a"
    allocation = outcome.allocations["default/fallback"]
    (result,) = allocation["devices"]["results"]
    assert result == {"request": "gpu/small", "driver": "vgpu.dra.dev", "pool": "node-a", "device": "gpu-0",
                      "shareID": "00000000-0000-4000-8000-000000000000",
                      "consumedCapacity": {"memory": "2Gi", "cores": "30"},
                      "tolerations": [{"key": "maintenance", "operator": "Exists"}]}
    assert allocation["devices"]["config"][-1]["requests"] == ["gpu/small"]
    stored = accepted_by_the_api_server(fake_apiserver, wanted, allocation)
    assert stored["status"]["allocation"]["devices"]["results"][0]["request"] == "gpu/small"


def test_claims_already_allocated_book_their_share(fake_apiserver):
    node = slices("node-a", [gpu(0)])
    first = with_uid(claim("first", capacity={"memory": "6Gi"}), "uid-first")
    placed = allocate_objects(node, [CLASS], [first])
    first["status"] = {"allocation": placed.allocations["default/first"]}
    second = with_uid(claim("second", capacity={"memory": "6Gi"}), "uid-second")
    refused = allocate_objects(node, [CLASS], [second], allocated_claims=[first])
    assert not refused.allocated
    assert refused.refusal_kind == "no-capacity"
    assert refused.refusal.startswith("no GPU has 6 GiB free; largest free: 3.8 GiB on node-a gpu-0")
    admin = with_uid(claim("admin", requests=[{"name": "gpu", "exactly": {
        "deviceClassName": "vgpu.dra.dev", "adminAccess": True, "capacity": {"requests": {"memory": "1Gi"}}}}]),
        "uid-admin")
    looked = allocate_objects(node, [CLASS], [admin], allocated_claims=[first])
    assert looked.allocated
    admin["status"] = {"allocation": looked.allocations["default/admin"]}
    assert looked.allocations["default/admin"]["devices"]["results"][0]["adminAccess"] is True
    # The admin share books nothing: a 3 GiB share still fits beside the 6 GiB one.
    third = with_uid(claim("third", capacity={"memory": "3Gi"}), "uid-third")
    assert allocate_objects(node, [CLASS], [third], allocated_claims=[first, admin]).allocated
    accepted_by_the_api_server(fake_apiserver, admin, looked.allocations["default/admin"])


def test_a_claim_the_controller_cannot_take_is_a_refusal_not_an_exception():
    outcome = allocate_objects(slices("node-a", [gpu(0)]), [CLASS], [claim("typo", requests=[
        {"name": "gpu", "exactly": {"deviceClassName": "vgpu.dra.dev", "cuont": 2}}])])
    assert (outcome.allocated, outcome.refusal_kind) == (False, "invalid-claim")
    assert outcome.refusal == ("claim default/typo: request 'gpu' exactly: field 'cuont' is not supported by the "
                               "vgpu.dra.dev controller (known: deviceClassName, selectors, allocationMode, count, "
                               "adminAccess, tolerations, capacity)")


def test_a_pods_claims_land_on_one_node_and_allowed_nodes_restrict_it():
    cluster = slices("node-a", [gpu(0)]) + slices("node-b", [gpu(0), gpu(1)])
    pair = [claim("one", capacity={"memory": "6Gi"}), claim("two", capacity={"memory": "6Gi"})]
    outcome = allocate_objects(cluster, [CLASS], pair)
    assert outcome.node == "node-b"
    assert {r["device"] for a in outcome.allocations.values() for r in a["devices"]["results"]} == {"gpu-0", "gpu-1"}
    assert not allocate_objects(cluster, [CLASS], pair, allowed_nodes=["node-a"]).allocated
    assert sum(int(r["consumedCapacity"]["memory"].removesuffix("Gi")) * GIB
               for a in outcome.allocations.values() for r in a["devices"]["results"]) == 12 * GIB
