"""examples/ stays true: every manifest is one a Kubernetes 1.36 API server accepts (schema and
DRA validation rules), every
VgpuConfig parses, and each scenario lands where its comments say when planned with the
controller's rules on a realistic node."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.deploy.chart import schema_key
from tests.fakes.apiserver import FakeApiServer
from tests.fakes.openapi_schema import validate
from vgpu_dra.api.config import parse_config
from vgpu_dra.api.names import MEBIBYTE
from vgpu_dra.cli.main import main
from vgpu_dra.driver.inventory_file import load_inventories
from vgpu_dra.driver.manifests import load_manifests
from vgpu_dra.driver.placement_policy import PlacementPolicy
from vgpu_dra.driver.planner import Plan, plan

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
MIXED = REPO / "tests" / "fakes" / "inventories" / "mixed-node.yaml"
RTX3080 = EXAMPLES / "inventory" / "rtx3080.yaml"
# Kinds no core API server serves: ours (the planner's inventory) and the Prometheus Operator's.
NOT_CORE_KINDS = {("vgpu.dra.dev/v1alpha1", "NodeInventory"), ("monitoring.coreos.com/v1", "ServiceMonitor")}
SCENARIOS = ["sized-classes", "multi-gpu", "shared-claim-containers", "standalone-claim", "job", "sharing-demo"]
GIB = 1024 * MEBIBYTE


def example_documents() -> Iterator[tuple[str, dict]]:
    for path in sorted(EXAMPLES.rglob("*.y*ml")):
        for number, document in enumerate(yaml.safe_load_all(path.read_text()), start=1):
            if document is not None:
                yield f"{path.relative_to(REPO)} (document {number})", document


def opaque_configs(document: dict) -> Iterator[dict]:
    """Every opaque parameters object of a DeviceClass, claim or claim template."""
    spec = document.get("spec") or {}
    if document["kind"] == "ResourceClaimTemplate":
        spec = spec["spec"]
    entries = spec.get("config", []) if document["kind"] == "DeviceClass" else spec["devices"].get("config", [])
    for entry in entries:
        if entry.get("opaque", {}).get("driver") == "vgpu.dra.dev":
            yield entry["opaque"]["parameters"]


def classes() -> list[dict]:
    return [record.raw for record in load_manifests([EXAMPLES / "deviceclasses"]).device_classes]


def plan_on(paths: list[Path], inventory: list) -> Plan:
    return plan(load_manifests(paths), inventory, PlacementPolicy(), default_classes=classes())


def placements(result: Plan) -> dict[str, list[tuple[str, str, int, int]]]:
    """pod → [(node, gpu, memory bytes, cores)] of every share it uses."""
    found: dict[str, list] = {}
    for gpu in result.gpus:
        for share in gpu.shares:
            for pod in share.pods:
                found.setdefault(pod.split("/", 1)[1], []).append((gpu.node, gpu.device, share.memory_bytes,
                                                                    share.cores))
    return {pod: sorted(shares) for pod, shares in found.items()}


@pytest.mark.parametrize("where,document", list(example_documents()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_example_is_an_object_the_api_server_accepts(where, document):
    key = schema_key(document)
    if key is None:
        assert (document["apiVersion"], document["kind"]) in NOT_CORE_KINDS, (
            f"{where}: no schema for {document['kind']} in tests/data/openapi: "
            "add the kind to KEPT in tests/data/refresh_openapi.py and refresh")
        return
    validate(document, key)
    if document["apiVersion"].startswith("resource.k8s.io/") or document["kind"] == "Pod":
        # Created as `kubectl apply` would: defaulting, then the rules the schema cannot express
        # (CEL that compiles, qualified attribute names, config naming known requests …).
        FakeApiServer().create(document)


def test_every_vgpu_config_in_the_examples_parses():
    kinds = set()
    for where, document in example_documents():
        if document["kind"] in ("DeviceClass", "ResourceClaim", "ResourceClaimTemplate"):
            for parameters in opaque_configs(document):
                parse_config(parameters)  # raises, naming the field
                kinds.add(document["kind"])
    assert kinds == {"DeviceClass", "ResourceClaim", "ResourceClaimTemplate"}


def test_every_scenario_folder_is_self_contained_and_plans_without_refusals():
    """`kubectl apply -f examples/<scenario>/` needs nothing but the DeviceClasses."""
    for scenario in SCENARIOS:
        manifests = load_manifests([EXAMPLES / scenario])
        assert manifests.workloads, scenario
        result = plan_on([EXAMPLES / scenario], load_inventories(MIXED))
        assert not result.refused, (scenario, [(p.name, p.refusal.reason) for p in result.refused if p.refusal])


def test_sized_classes_give_their_default_sizes_and_binpack_onto_one_t4():
    result = plan_on([EXAMPLES / "sized-classes"], load_inventories(MIXED))
    assert placements(result) == {
        "embeddings-0": [("mixed-node", "gpu-0", 2 * GIB, 15)],
        "reranker-0": [("mixed-node", "gpu-0", 4 * GIB, 30)],
        "generator-0": [("mixed-node", "gpu-0", 8 * GIB, 50)],
    }


def test_multi_gpu_claim_takes_the_two_gpus_that_share_a_numa_node():
    result = plan_on([EXAMPLES / "multi-gpu"], load_inventories(MIXED))
    # T4 #0 is on socket 0, T4 #1 and the L40S on socket 1: only gpu-1 + gpu-2 satisfy matchAttribute.
    assert placements(result) == {"ddp-train-0": [("mixed-node", "gpu-1", 12 * GIB, 50),
                                                  ("mixed-node", "gpu-2", 12 * GIB, 50)]}


def test_multi_gpu_claim_is_refused_where_no_numa_node_has_two_gpus(tmp_path):
    text = MIXED.read_text().replace("numaNode: 1\n    memory: 15360Mi", "numaNode: 0\n    memory: 15360Mi")
    (tmp_path / "node.yaml").write_text(text)  # both T4 on socket 0; the L40S alone on socket 1
    result = plan_on([EXAMPLES / "multi-gpu"], load_inventories(tmp_path / "node.yaml"))
    assert placements(result) == {"ddp-train-0": [("mixed-node", "gpu-0", 12 * GIB, 50),
                                                  ("mixed-node", "gpu-1", 12 * GIB, 50)]}
    (tmp_path / "node.yaml").write_text(MIXED.read_text().replace("numaNode: 1\n    memory: 15360Mi",
                                                                  "numaNode: 2\n    memory: 15360Mi"))
    (refused,) = plan_on([EXAMPLES / "multi-gpu"], load_inventories(tmp_path / "node.yaml")).refused
    assert refused.refusal is not None and "numaNode" in refused.refusal.reason


def test_two_containers_of_one_pod_share_one_claim_and_one_wall():
    manifests = load_manifests([EXAMPLES / "shared-claim-containers"])
    (workload,) = manifests.workloads
    assert [ref.name for ref in workload.pod.claims] == ["gpu"]
    document = next(d for w, d in example_documents() if d["kind"] == "Deployment"
                    and d["metadata"]["name"] == "video-pipeline")
    containers = document["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 2 and all(c["resources"]["claims"] == [{"name": "gpu"}] for c in containers)
    result = plan_on([EXAMPLES / "shared-claim-containers"], load_inventories(MIXED))
    assert placements(result) == {"video-pipeline-0": [("mixed-node", "gpu-0", 3 * GIB, 40)]}


def test_a_standalone_claim_is_allocated_once_for_both_pods():
    result = plan_on([EXAMPLES / "standalone-claim"], load_inventories(MIXED))
    assert [(pod.name, pod.claims, pod.node) for pod in result.pods] == [
        ("team-a-notebook", ("default/team-a-gpu",), "mixed-node"),
        ("team-a-batch", ("default/team-a-gpu",), "mixed-node")]
    shares = [share for gpu in result.gpus for share in gpu.shares]
    assert [(s.claim, s.memory_bytes, s.cores, s.pods) for s in shares] == [
        ("default/team-a-gpu", 4 * GIB, 50, ("default/team-a-notebook", "default/team-a-batch"))]


def test_the_job_runs_parallelism_pods_each_with_its_own_claim_sized_by_percent():
    result = plan_on([EXAMPLES / "job"], load_inventories(MIXED))
    assert [pod.name for pod in result.pods] == ["embed-corpus-0", "embed-corpus-1", "embed-corpus-2"]
    assert len({pod.claims for pod in result.pods}) == 3
    l40s_usable = (46068 - 579) * MEBIBYTE
    for shares in placements(result).values():
        ((node, gpu, memory, cores),) = shares
        assert (gpu, cores) == ("gpu-2", 20)
        assert memory == l40s_usable // 10 // MEBIBYTE * MEBIBYTE


def test_the_sharing_demo_puts_both_pods_on_one_gpu_beside_the_seed_workers():
    """On the home lab's single RTX 3080 the demo fits next to worker-a and worker-b."""
    result = plan_on([EXAMPLES / "claims", EXAMPLES / "workloads", EXAMPLES / "sharing-demo"],
                     load_inventories(RTX3080))
    assert not result.refused
    demo = {pod: shares for pod, shares in placements(result).items() if pod.startswith("sharing-demo")}
    assert demo == {"sharing-demo-greedy": [("homelab", "gpu-0", 1 * GIB, 10)],
                    "sharing-demo-steady": [("homelab", "gpu-0", 2 * GIB, 20)]}
    (gpu,) = result.gpus
    assert gpu.cores_used == 95 and gpu.memory_used_bytes == (1999 + 2999 + 3 * 1024) * MEBIBYTE
    # On the multi-GPU node the index selector keeps both on the first GPU.
    result = plan_on([EXAMPLES / "sharing-demo"], load_inventories(MIXED))
    assert {gpu for shares in placements(result).values() for _, gpu, _, _ in shares} == {"gpu-0"}


def test_all_examples_together_fit_a_small_fleet(tmp_path):
    """Everything in examples/ at once on the home lab plus two dual-socket inference servers."""
    second = MIXED.read_text().replace("nodeName: mixed-node", "nodeName: mixed-node-2").replace("GPU-", "GPU-f")
    (tmp_path / "mixed-node-2.yaml").write_text(second)
    fleet = [*load_inventories(RTX3080), *load_inventories(MIXED), *load_inventories(tmp_path / "mixed-node-2.yaml")]
    result = plan_on([EXAMPLES], fleet)
    assert not result.refused, [(p.name, p.refusal.reason) for p in result.refused if p.refusal]
    assert len(result.pods) == 14


def test_vgpu_dra_plan_without_arguments_is_the_seed_demo(capsys):
    """`make demo`: the two workers on the RTX 3080, not every scenario fighting for one GPU."""
    assert main(["plan"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1].startswith("2 of 2 pods placed") and "Refused" not in out
    assert "65 %" in out and "4.9 GiB (49 %)" in out
