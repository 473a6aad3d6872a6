"""From a claim's raw allocation to per-device limits, and every refusal."""
from __future__ import annotations

import copy

import pytest

from vgpu_dra.driver.allocation_limits import (ClaimNotAllocated, ClaimOnOtherNode, ClaimUidMismatch,
                                               InvalidClaimConfig, claim_allocation, node_selector_matches)

GIB = 1 << 30
USABLE = {"gpu-0": 10 * GIB, "gpu-1": 20 * GIB}
NODE = "node-a"
SHARE = "7f0c2a4e-8a0e-4f55-9d3f-1f0a2b3c4d5e"


def _vgpu(**fields):
    return {"driver": "vgpu.dra.dev", "parameters": {"apiVersion": "vgpu.dra.dev/v1alpha1", "kind": "VgpuConfig",
                                                     **fields}}


def _claim(results, config=(), *, uid="uid-1", node=NODE, reserved=("pod-a",), capacity_requests=None):
    exactly = {"deviceClassName": "vgpu.dra.dev"}
    if capacity_requests:
        exactly["capacity"] = {"requests": dict(capacity_requests)}
    return {
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
        "metadata": {"namespace": "ns", "name": "claim", "uid": uid},
        "spec": {"devices": {"requests": [{"name": "gpu", "exactly": exactly}]}},
        "status": {
            "allocation": {
                "devices": {"results": list(results), "config": list(config)},
                "nodeSelector": {"nodeSelectorTerms": [{"matchFields": [
                    {"key": "metadata.name", "operator": "In", "values": [node]}]}]},
            },
            "reservedFor": [{"resource": "pods", "name": p, "uid": f"{p}-uid"} for p in reserved],
        },
    }


def _result(device="gpu-0", request="gpu", **extra):
    return {"request": request, "driver": "vgpu.dra.dev", "pool": NODE, "device": device, **extra}


def _resolve(claim, uid="uid-1"):
    return claim_allocation(claim, expected_uid=uid, node_name=NODE, usable_memory=USABLE)


def test_consumed_capacity_form():
    claim = _claim([_result(shareID=SHARE, consumedCapacity={"memory": "2Gi", "cores": "25"})])
    allocation = _resolve(claim)
    (device,) = allocation.devices
    assert (device.share.memory_bytes, device.share.cores, device.share.core_policy) == (2 * GIB, 25, "soft")
    assert device.share_id == SHARE and device.source == "consumedCapacity"
    assert allocation.reserved_for_pods == ("pod-a",)


def test_controller_form_with_config_layers_later_wins():
    config = [
        {"source": "FromClass", "requests": [], "opaque": _vgpu(memory="1Gi", cores=10, corePolicy="hard")},
        {"source": "FromClaim", "requests": ["gpu"], "opaque": _vgpu(memoryPercent=50)},
        {"source": "FromClaim", "requests": ["gpu"], "opaque": _vgpu(cores=30)},
    ]
    (device,) = _resolve(_claim([_result()], config)).devices
    assert device.source == "config"
    assert (device.share.memory_bytes, device.share.cores, device.share.core_policy) == (5 * GIB, 30, "hard")


def test_requested_capacity_wins_over_config_but_policy_comes_from_config():
    config = [{"source": "FromClaim", "requests": [], "opaque": _vgpu(memory="1Gi", cores=10, corePolicy="hard")}]
    claim = _claim([_result(consumedCapacity={"memory": "3Gi", "cores": "40"})], config,
                   capacity_requests={"memory": "3000Mi", "cores": "40"})
    (device,) = _resolve(claim).devices
    assert (device.share.memory_bytes, device.share.cores, device.share.core_policy) == (3 * GIB, 40, "hard")


def test_capacity_booked_by_the_slice_defaults_does_not_override_the_config():
    """kube-scheduler books a claim that requests no capacity at the slice's requestPolicy
    defaults (all memory, 0 cores): the claim still gets its VgpuConfig's wall and cap, as the
    controller would give it."""
    config = [{"source": "FromClaim", "requests": [], "opaque": _vgpu(memoryPercent=20, cores=25)}]
    (device,) = _resolve(_claim([_result(consumedCapacity={"memory": "10Gi", "cores": "0"})], config)).devices
    assert (device.share.memory_bytes, device.share.cores) == (2 * GIB - 2 * GIB % (1 << 20), 25)


def test_a_requested_capacity_and_a_configured_one_combine():
    config = [{"source": "FromClaim", "requests": [], "opaque": _vgpu(memory="1Gi", cores=10)}]
    claim = _claim([_result(consumedCapacity={"memory": "4Gi", "cores": "0"})], config,
                   capacity_requests={"memory": "4Gi"})
    (device,) = _resolve(claim).devices
    assert (device.share.memory_bytes, device.share.cores) == (4 * GIB, 10)


def test_consumed_capacity_without_any_config_is_the_limit():
    (device,) = _resolve(_claim([_result(consumedCapacity={"memory": "6Gi", "cores": "0"})])).devices
    assert (device.share.memory_bytes, device.share.cores, device.source) == (6 * GIB, 0, "consumedCapacity")


def test_no_size_anywhere_means_the_whole_gpu_uncapped():
    (device,) = _resolve(_claim([_result(device="gpu-1")])).devices
    assert (device.share.memory_bytes, device.share.cores, device.source) == (20 * GIB, 0, "wholeGpu")


def test_other_drivers_configs_and_results_are_skipped():
    config = [{"source": "FromClaim", "requests": [], "opaque": {"driver": "gpu.nvidia.com", "parameters": {"x": 1}}}]
    results = [_result(), {"request": "nic", "driver": "net.example.com", "pool": "p", "device": "eth0"}]
    allocation = _resolve(_claim(results, config))
    assert [d.device for d in allocation.devices] == ["gpu-0"]
    assert allocation.devices[0].source == "wholeGpu"


def test_multi_gpu_claim_with_per_request_configs_and_subrequests():
    config = [
        {"source": "FromClaim", "requests": ["small"], "opaque": _vgpu(memory="1Gi")},
        {"source": "FromClaim", "requests": ["big/first"], "opaque": _vgpu(memory="4Gi", cores=50)},
    ]
    results = [_result("gpu-0", "small"), _result("gpu-1", "big/first")]
    a, b = _resolve(_claim(results, config)).devices
    assert (a.device, a.share.memory_bytes, a.share.cores, a.request_name) == ("gpu-0", GIB, 0, "small")
    assert (b.device, b.share.memory_bytes, b.share.cores, b.request_name) == ("gpu-1", 4 * GIB, 50, "big")


def test_uid_mismatch():
    with pytest.raises(ClaimUidMismatch, match="re-created"):
        _resolve(_claim([_result()], uid="uid-2"))


def test_not_allocated():
    claim = _claim([_result()])
    claim["status"] = {}
    with pytest.raises(ClaimNotAllocated, match="not allocated"):
        _resolve(claim)
    with pytest.raises(ClaimNotAllocated, match="no devices of driver"):
        _resolve(_claim([{"request": "x", "driver": "other.io", "pool": NODE, "device": "d"}]))


def test_other_node():
    with pytest.raises(ClaimOnOtherNode, match="another node"):
        _resolve(_claim([_result()], node="node-b"))
    foreign_pool = _claim([{**_result(), "pool": "node-b"}])
    with pytest.raises(ClaimOnOtherNode, match="pool"):
        _resolve(foreign_pool)
    with pytest.raises(ClaimOnOtherNode, match="does not exist"):
        _resolve(_claim([_result(device="gpu-7")]))


@pytest.mark.parametrize(("params", "words"), [
    ({"memory": "2Gi", "memoryPercent": 10}, "both set"),
    ({"cores": 101}, "cores"),
    ({"memroy": "2Gi"}, "unknown field 'memroy'"),
    ({"memory": "64Gi"}, "only"),
])
def test_invalid_config_names_the_problem(params, words):
    config = [{"source": "FromClaim", "requests": [], "opaque": _vgpu(**params)}]
    with pytest.raises(InvalidClaimConfig, match=words):
        _resolve(_claim([_result()], config))


def test_invalid_consumed_capacity():
    with pytest.raises(InvalidClaimConfig, match="consumedCapacity"):
        _resolve(_claim([_result(consumedCapacity={"memory": "2Gi", "bandwidth": "1"})]))


def test_node_selector_semantics():
    labels = {"zone": "a", "gpus": "4"}
    term = lambda **kw: {"nodeSelectorTerms": [kw]}  # noqa: E731
    assert node_selector_matches(None, NODE, {})
    assert node_selector_matches(term(matchExpressions=[{"key": "zone", "operator": "In", "values": ["a"]}]),
                                 NODE, labels)
    assert not node_selector_matches(term(matchExpressions=[{"key": "zone", "operator": "NotIn", "values": ["a"]}]),
                                     NODE, labels)
    assert node_selector_matches(term(matchExpressions=[{"key": "gpus", "operator": "Gt", "values": ["2"]}]),
                                 NODE, labels)
    assert not node_selector_matches(term(matchExpressions=[{"key": "x", "operator": "Exists"}]), NODE, labels)
    assert not node_selector_matches({"nodeSelectorTerms": [{}]}, NODE, labels)
    two_terms = {"nodeSelectorTerms": [
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["other"]}]},
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [NODE]}]}]}
    assert node_selector_matches(two_terms, NODE, labels)


def test_input_is_not_modified():
    claim = _claim([_result(consumedCapacity={"memory": "2Gi"})])
    before = copy.deepcopy(claim)
    _resolve(claim)
    assert claim == before


def _spec(capacity=None):
    exactly = {"deviceClassName": "vgpu.dra.dev", "count": 2}
    if capacity:
        exactly["capacity"] = {"requests": capacity}
    return {"devices": {"requests": [{"name": "gpu", "exactly": exactly}]}}


def test_kube_scheduler_defaults_give_way_to_the_configs_where_the_request_named_no_capacity():
    # kube-scheduler booked the slice defaults (whole memory, 0 cores): it never reads VgpuConfig.
    config = [{"source": "FromClaim", "requests": ["gpu"], "opaque": _vgpu(memory="1Gi", cores=20)}]
    claim = _claim([_result(shareID=SHARE, consumedCapacity={"memory": str(10 * GIB), "cores": "0"})], config)
    claim["spec"] = _spec()
    (device,) = _resolve(claim).devices
    assert (device.share.memory_bytes, device.share.cores, device.source) == (GIB, 20, "config")
    # A capacity the request named is what kube-scheduler booked, whatever the config says.
    claim["spec"] = _spec({"memory": "3Gi"})
    claim["status"]["allocation"]["devices"]["results"][0]["consumedCapacity"]["memory"] = str(3 * GIB)
    (device,) = _resolve(claim).devices
    assert (device.share.memory_bytes, device.share.cores) == (3 * GIB, 20)


def test_the_controllers_own_consumed_capacity_is_exact_per_gpu():
    # memoryPercent 20 on GPUs of 10 and 20 GiB: the controller books 2 and 4 GiB and writes the
    # smaller one in its resolved entry (what a server without consumable capacity goes by).
    config = [{"source": "FromClaim", "requests": ["gpu"], "opaque": _vgpu(memoryPercent=20)},
              {"source": "FromClaim", "requests": ["gpu"], "opaque": _vgpu(memory=str(2 * GIB), cores=0)}]
    results = [_result(device="gpu-0", shareID=SHARE, consumedCapacity={"memory": str(2 * GIB), "cores": "0"}),
               _result(device="gpu-1", shareID=SHARE.replace("7", "8"),
                       consumedCapacity={"memory": str(4 * GIB), "cores": "0"})]
    claim = _claim(results, config)
    claim["spec"] = _spec()
    claim["metadata"]["finalizers"] = ["vgpu.dra.dev/allocation"]
    assert [d.share.memory_bytes for d in _resolve(claim).devices] == [2 * GIB, 4 * GIB]
