"""The planner: the seed's two workers on the RTX 3080, refusals, replicas, shared claims, selectors."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from vgpu_dra.api.names import MEBIBYTE
from vgpu_dra.driver.devices import publishable_memory_bytes
from vgpu_dra.driver.inventory_file import load_inventories, load_inventory
from vgpu_dra.driver.manifests import load_manifests
from vgpu_dra.driver.placement_policy import PlacementPolicy, Policy
from vgpu_dra.driver.planner import Plan, PlanInputError, plan

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
RTX3080 = EXAMPLES / "inventory" / "rtx3080.yaml"
# The seed's two workers; the other example folders are scenarios of their own (multi-GPU, sized
# classes, the sharing demo) that do not all fit the one built-in GPU together.
SEED_WORKERS = (EXAMPLES / "claims", EXAMPLES / "workloads")
MIXED = REPO / "tests" / "fakes" / "inventories" / "mixed-node.yaml"


def classes() -> list[dict]:
    return [record.raw for record in load_manifests([EXAMPLES / "deviceclasses"]).device_classes]


def plan_paths(*paths: Path, inventory: Path = RTX3080, policy: PlacementPolicy = PlacementPolicy()) -> Plan:
    return plan(load_manifests(list(paths)), load_inventories(inventory), policy, default_classes=classes())


def percent_of(usable: int, percent: int) -> int:
    return usable * percent // 100 // MEBIBYTE * MEBIBYTE


def template(tmp_path: Path, name: str, parameters: str, cls: str = "vgpu.dra.dev", selectors: str = "") -> None:
    (tmp_path / f"claim-{name}.yaml").write_text(textwrap.dedent(f"""
        apiVersion: resource.k8s.io/v1
        kind: ResourceClaimTemplate
        metadata: {{name: {name}}}
        spec:
          spec:
            devices:
              requests:
                - name: gpu
                  exactly: {{deviceClassName: {cls}{selectors}}}
              config:
                - opaque:
                    driver: vgpu.dra.dev
                    parameters: {{apiVersion: vgpu.dra.dev/v1alpha1, kind: VgpuConfig, {parameters}}}
        """))


def deployment(tmp_path: Path, name: str, claim: str, replicas: int = 1) -> None:
    (tmp_path / f"deploy-{name}.yaml").write_text(textwrap.dedent(f"""
        apiVersion: apps/v1
        kind: Deployment
        metadata: {{name: {name}}}
        spec:
          replicas: {replicas}
          template:
            spec:
              resourceClaims: [{{name: gpu, resourceClaimTemplateName: {claim}}}]
              containers: [{{name: main, resources: {{claims: [{{name: gpu}}]}}}}]
        """))


def test_the_two_seed_workers_share_the_rtx_3080():
    usable = publishable_memory_bytes(load_inventory(RTX3080).gpus[0])
    result = plan_paths(*SEED_WORKERS)
    assert [(pod.name, pod.node) for pod in result.pods] == [("worker-a-0", "homelab"), ("worker-b-0", "homelab")]
    (gpu,) = result.gpus
    assert gpu.memory_bytes == usable == 9997 * MEBIBYTE
    assert [(s.claim, s.memory_bytes, s.cores) for s in gpu.shares] == [
        ("default/worker-a-0-gpu", percent_of(usable, 20), 25), ("default/worker-b-0-gpu", percent_of(usable, 30), 40)]
    assert gpu.memory_used_bytes == (1999 + 2999) * MEBIBYTE  # ≈ 5 GiB
    assert (gpu.cores_used, gpu.cores_free) == (65, 35)
    assert not result.refused


def test_a_third_worker_that_does_not_fit_is_refused_with_its_reason(tmp_path):
    template(tmp_path, "worker-c", "memoryPercent: 60, cores: 10")
    deployment(tmp_path, "worker-c", "worker-c")
    result = plan_paths(*SEED_WORKERS, tmp_path)
    (refused,) = result.refused
    assert refused.name == "worker-c-0"
    assert refused.refusal is not None
    assert refused.refusal.reason == "no GPU has 60 % of GPU memory and 10 % cores free; largest free: 4.9 GiB (50 %) on homelab gpu-0"
    assert result.gpus[0].memory_used_bytes == (1999 + 2999) * MEBIBYTE  # the refused pod took nothing


def test_replicas_expand_to_pods_with_their_own_claims_until_the_cores_run_out(tmp_path):
    template(tmp_path, "quarter", "memory: 1Gi, cores: 25")
    deployment(tmp_path, "many", "quarter", replicas=5)
    result = plan_paths(tmp_path)
    assert [pod.name for pod in result.pods] == [f"many-{i}" for i in range(5)]
    assert [pod.claims for pod in result.pods][:2] == [("default/many-0-gpu",), ("default/many-1-gpu",)]
    assert [pod.placed for pod in result.pods] == [True, True, True, True, False]
    assert "25 % cores" in result.pods[4].refusal.reason
    assert result.gpus[0].cores_used == 100


def test_a_claim_shared_by_two_pods_is_allocated_once(tmp_path):
    (tmp_path / "shared.yaml").write_text(textwrap.dedent("""
        apiVersion: resource.k8s.io/v1
        kind: ResourceClaim
        metadata: {name: shared}
        spec:
          devices:
            requests: [{name: gpu, exactly: {deviceClassName: vgpu.dra.dev, capacity: {requests: {memory: 3Gi, cores: "30"}}}}]
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: reader}
        spec: {resourceClaims: [{name: gpu, resourceClaimName: shared}], containers: [{name: c}]}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: writer}
        spec: {resourceClaims: [{name: gpu, resourceClaimName: shared}], containers: [{name: c}]}
        """))
    result = plan_paths(tmp_path)
    assert [(pod.name, pod.node) for pod in result.pods] == [("reader", "homelab"), ("writer", "homelab")]
    (share,) = result.gpus[0].shares
    assert (share.claim, share.memory_bytes, share.cores) == ("default/shared", 3 << 30, 30)
    assert share.pods == ("default/reader", "default/writer")
    assert result.gpus[0].memory_used_bytes == 3 << 30


def test_sized_class_defaults_and_claim_selectors(tmp_path):
    template(tmp_path, "on-l40s", "cores: 5", cls="medium.vgpu.dra.dev",
             selectors=', selectors: [{cel: {expression: \'device.attributes["vgpu.dra.dev"].productName == "NVIDIA L40S"\'}}]')
    deployment(tmp_path, "big", "on-l40s")
    result = plan_paths(tmp_path, inventory=MIXED)
    used = [(gpu.device, gpu.product, gpu.memory_used_bytes, gpu.cores_used) for gpu in result.gpus if gpu.shares]
    assert used == [("gpu-2", "NVIDIA L40S", 4 << 30, 5)]  # 4Gi from medium's config, cores from the claim


def test_policies_change_the_plan(tmp_path):
    template(tmp_path, "half-t4", "memory: 4Gi")
    deployment(tmp_path, "w", "half-t4", replicas=2)
    packed = plan_paths(tmp_path, inventory=MIXED)
    spread = plan_paths(tmp_path, inventory=MIXED, policy=PlacementPolicy(Policy.SPREAD, Policy.SPREAD))
    # Binpack fills the first T4; spread prefers the GPU with the most left free, the L40S.
    assert [(gpu.device, len(gpu.shares)) for gpu in packed.gpus if gpu.shares] == [("gpu-0", 2)]
    assert [(gpu.device, len(gpu.shares)) for gpu in spread.gpus if gpu.shares] == [("gpu-2", 2)]


def test_a_reference_to_a_missing_template_names_the_workload(tmp_path):
    deployment(tmp_path, "orphan", "nowhere")
    with pytest.raises(PlanInputError, match=r"deploy-orphan\.yaml \(document 1\): Deployment default/orphan: "
                                             r"resourceClaims 'gpu' names ResourceClaimTemplate default/nowhere"):
        plan_paths(tmp_path)


def test_a_claim_the_controller_would_reject_is_an_input_error(tmp_path):
    template(tmp_path, "bad", "memoryPercent: 20, memory: 2Gi")
    with pytest.raises(PlanInputError, match=r"claim-bad\.yaml \(document 1\): ResourceClaimTemplate default/bad: "
                                             r".*'memory' and 'memoryPercent' are both set"):
        plan_paths(tmp_path)


def test_node_name_and_hostname_selector_pin_pods(tmp_path):
    template(tmp_path, "small", "memory: 1Gi")
    (tmp_path / "pods.yaml").write_text(textwrap.dedent("""
        apiVersion: v1
        kind: Pod
        metadata: {name: pinned}
        spec:
          nodeName: mixed-node
          resourceClaims: [{name: gpu, resourceClaimTemplateName: small}]
          containers: [{name: c}]
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: elsewhere}
        spec:
          nodeSelector: {kubernetes.io/hostname: nowhere}
          resourceClaims: [{name: gpu, resourceClaimTemplateName: small}]
          containers: [{name: c}]
        """))
    nodes = load_inventories(RTX3080) + load_inventories(MIXED)
    result = plan(load_manifests([tmp_path]), nodes, default_classes=classes())
    assert [(pod.name, pod.node) for pod in result.pods] == [("pinned", "mixed-node"), ("elsewhere", None)]
    assert result.pods[1].refusal.reason.startswith("no node with GPUs is eligible for this pod")


def test_a_failing_cel_selector_says_why_in_the_refusal(tmp_path):
    template(tmp_path, "typo", "memory: 1Gi",
             selectors=', selectors: [{cel: {expression: \'device.attributes["vgpu.dra.dev"].prodName == "x"\'}}]')
    deployment(tmp_path, "typo", "typo")
    (pod,) = plan_paths(tmp_path).pods
    assert pod.refusal is not None
    assert pod.refusal.reason.startswith("no GPU matches the request's selectors on the 1 eligible node(s) (")
    assert "prodName" in pod.refusal.reason


def test_claim_annotations_override_the_policy_as_in_the_controller(tmp_path):
    template(tmp_path, "half-t4", "memory: 4Gi")
    deployment(tmp_path, "w", "half-t4", replicas=2)
    text = (tmp_path / "claim-half-t4.yaml").read_text()
    (tmp_path / "claim-half-t4.yaml").write_text(text.replace(
        "spec:\n  spec:", "spec:\n  metadata:\n    annotations: {vgpu.dra.dev/gpu-policy: spread}\n  spec:", 1))
    result = plan_paths(tmp_path, inventory=MIXED)  # default binpack, the claims ask for spread
    assert [(gpu.device, len(gpu.shares)) for gpu in result.gpus if gpu.shares] == [("gpu-2", 2)]
