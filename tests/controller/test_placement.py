"""Where claims land: pod node constraints, policies, multi-GPU claims."""
from __future__ import annotations

from vgpu_dra.api.names import GPU_POLICY_ANNOTATION, NODE_POLICY_ANNOTATION
from vgpu_dra.controller.allocation_term import TermSettings
from vgpu_dra.driver.placement_policy import PlacementPolicy

from .cluster import add_device_class, add_node, claim, gpu, pod, running_controller, vgpu_config
from .waiting import wait_for


def allocation_of(server, name):
    obj = server.get("ResourceClaim", name, "default")
    return (obj.get("status") or {}).get("allocation") if obj else None


def placed(server, name):
    alloc = wait_for(lambda: allocation_of(server, name), what=f"{name} allocated")
    return [(r["pool"], r["device"]) for r in alloc["devices"]["results"]]


def three_nodes(server):
    add_node(server, "gpu-a", [gpu(0)], labels={"zone": "a", "tier": "1"})
    add_node(server, "gpu-b", [gpu(0)], labels={"zone": "b", "tier": "5"})
    add_node(server, "gpu-c", [gpu(0)], labels={"zone": "c", "tier": "9"},
             taints=[{"key": "dedicated", "value": "ml", "effect": "NoSchedule"}])
    add_device_class(server)


def test_node_selector_affinity_and_tolerations(api_backend):
    server = api_backend
    three_nodes(server)
    small = vgpu_config(memory="1Gi")
    for name in ("sel", "aff-in", "aff-gt", "aff-field", "taint-ok", "untolerated"):
        server.create(claim(name, config=small))
    server.create(pod("sel", ["sel"], node_selector={"zone": "b"}))
    server.create(pod("aff-in", ["aff-in"], affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "NotIn", "values": ["a", "b"]}]}]}}},
        tolerations=[{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}]))
    server.create(pod("aff-gt", ["aff-gt"], affinity={"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "tier", "operator": "Gt", "values": ["3"]},
                                                    {"key": "tier", "operator": "Lt", "values": ["7"]}]}]}}}))
    server.create(pod("aff-field", ["aff-field"], affinity={"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["gpu-a"]}]}]}}}))
    server.create(pod("taint-ok", ["taint-ok"], node_selector={"zone": "c"},
                      tolerations=[{"key": "dedicated", "operator": "Exists"}]))
    server.create(pod("untolerated", ["untolerated"], node_selector={"zone": "c"}))
    with running_controller(server):
        assert placed(server, "sel") == [("gpu-b", "gpu-0")]
        assert placed(server, "aff-in") == [("gpu-c", "gpu-0")]
        assert placed(server, "aff-gt") == [("gpu-b", "gpu-0")]
        assert placed(server, "aff-field") == [("gpu-a", "gpu-0")]
        assert placed(server, "taint-ok") == [("gpu-c", "gpu-0")]
        wait_for(lambda: any(e.regarding_name == "untolerated" and e.reason == "AllocationFailed"
                             for e in server.events()), what="refusal event for the untolerating pod")
        assert allocation_of(server, "untolerated") is None


def test_multi_gpu_claim_with_match_attribute_prefers_one_numa_node(api_backend):
    server = api_backend
    add_node(server, "big", [gpu(0, numa=0), gpu(1, numa=1), gpu(2, numa=1), gpu(3, numa=0, product="NVIDIA A2")])
    add_device_class(server)
    server.create(claim("pair", config=vgpu_config(memory="4Gi", cores=50), count=2,
                        constraints=[{"matchAttribute": "vgpu.dra.dev/productName"}]))
    server.create(pod("pair", ["pair"]))
    server.create(claim("quad", config=vgpu_config(memory="1Gi"), count=4,
                        constraints=[{"matchAttribute": "vgpu.dra.dev/productName"}]))
    server.create(pod("quad", ["quad"]))
    with running_controller(server):
        devices = placed(server, "pair")
        assert len(devices) == 2 and len(set(devices)) == 2
        # the two RTX 3080s on NUMA node 1 (gpu-1, gpu-2): same product, same NUMA node
        assert sorted(d for _, d in devices) == ["gpu-1", "gpu-2"]
        wait_for(lambda: any(e.regarding_name == "quad" and e.reason == "AllocationFailed" for e in server.events()),
                 what="quad refused: only 3 GPUs share a product name")
    alloc = allocation_of(server, "pair")
    assert [r["request"] for r in alloc["devices"]["results"]] == ["gpu", "gpu"]
    assert len({r["shareID"] for r in alloc["devices"]["results"]}) == 2


def test_binpack_and_spread_place_differently(api_backend):
    """Same four claims, same kind of nodes: binpack stacks them on one GPU, spread (asked for by
    claim annotation over the controller's binpack default) puts each on its own GPU."""
    server = api_backend
    for node, group in (("n1", "pack"), ("n2", "pack"), ("n3", "spread"), ("n4", "spread")):
        add_node(server, node, [gpu(0), gpu(1)], labels={"group": group})
    add_device_class(server)
    size = vgpu_config(memory="2Gi", cores=10)
    for i in range(4):
        server.create(claim(f"pack-{i}", config=size))
        server.create(claim(f"spread-{i}", config=size, annotations={NODE_POLICY_ANNOTATION: "spread",
                                                                        GPU_POLICY_ANNOTATION: "spread"}))
    with running_controller(server, settings=TermSettings(policy=PlacementPolicy.parse("binpack", "binpack"),
                                                          watch_timeout_s=30)):
        for i in range(4):  # one at a time, so each decision sees the previous ones
            server.create(pod(f"pack-{i}", [f"pack-{i}"], node_selector={"group": "pack"}))
            placed(server, f"pack-{i}")
            server.create(pod(f"spread-{i}", [f"spread-{i}"], node_selector={"group": "spread"}))
            placed(server, f"spread-{i}")
        packed = [placed(server, f"pack-{i}")[0] for i in range(4)]
        spread = [placed(server, f"spread-{i}")[0] for i in range(4)]
    assert len(set(packed)) == 1, f"binpack fills one GPU first: {packed}"
    assert len(set(spread)) == 4, f"spread gives each share its own GPU: {spread}"
    assert {node for node, _ in spread} == {"n3", "n4"}


def test_count_greater_than_gpus_is_refused_with_reason(api_backend):
    server = api_backend
    add_node(server, "one", [gpu(0)])
    add_device_class(server)
    server.create(claim("three", config=vgpu_config(memory="1Gi"), count=3))
    server.create(pod("three", ["three"]))
    with running_controller(server):
        event = wait_for(lambda: next((e for e in server.events()
                                       if e.regarding_kind == "ResourceClaim" and e.regarding_name == "three"), None),
                         what="refusal event")
    assert event.type == "Warning" and event.reason == "AllocationFailed"
    assert "3" in event.message


def test_claim_selectors_pick_model_and_exclude_uuid(api_backend):
    # (A selector that does not compile never gets this far: the API server rejects the claim.)
    server = api_backend
    add_node(server, "mixed", [gpu(0), gpu(1, product="NVIDIA A2"), gpu(2, product="NVIDIA A2")])
    add_device_class(server)
    a2 = 'device.attributes["vgpu.dra.dev"].productName == "NVIDIA A2"'
    not_gpu1 = f'device.attributes["vgpu.dra.dev"].uuid != "{gpu(1).uuid}"'
    server.create(claim("a2", config=vgpu_config(memory="1Gi"), selectors=[a2, not_gpu1]))
    server.create(pod("a2", ["a2"]))
    with running_controller(server):
        assert placed(server, "a2") == [("mixed", "gpu-2")]


def test_selector_that_fails_on_every_gpu_says_why_in_the_refusal(api_backend):
    server = api_backend
    add_node(server, "node", [gpu(0)])
    add_device_class(server)
    server.create(claim("model", config=vgpu_config(memory="1Gi"),
                        selectors=['device.attributes["vgpu.dra.dev"].model == "A100"']))
    server.create(pod("model", ["model"]))
    with running_controller(server):
        event = wait_for(lambda: next((e for e in server.events() if e.regarding_name == "model"
                                       and e.regarding_kind == "ResourceClaim"), None), what="refusal event")
    assert "model" in event.message and "no such member" in event.message


def test_pod_bound_without_the_scheduler_gets_its_claim_on_its_node(api_backend):
    server = api_backend
    add_node(server, "first", [gpu(0)])
    add_node(server, "second", [gpu(0)])
    add_device_class(server)
    server.create(claim("c", config=vgpu_config(memory="1Gi")))
    bound = pod("static", ["c"], gate=False)
    bound["spec"]["nodeName"] = "second"  # binpack alone would pick "first"
    server.create(bound)
    with running_controller(server):
        assert placed(server, "c") == [("second", "gpu-0")]
