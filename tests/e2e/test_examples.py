"""The user's path on a real control plane: every example applied with kubectl, in both allocator
modes, with the chart installed by kubectl and the components running under the chart's identities.

For each folder of examples/: `kubectl apply -f examples/<folder>/` into the default namespace,
exactly as the README says; every pod's claims end allocated and reserved and the pod bound to a
GPU node; `kubectl get resourceclaims` says `allocated,reserved`; the test then plays each node's
kubelet (NodePrepareResources over the plugin's socket) and checks the limits written for the shim
are the example's; `kubectl delete -f` releases everything (claims gone, finalizers off, a claim
for a whole GPU fits again).
"""
from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.cluster.real_cluster import wait_until
from tests.e2e.install import EXAMPLES, Installation
from tests.plugin.kubelet_client import Claim
from vgpu_dra.api.quantity import parse_bytes
from vgpu_dra.controller.kubeapi import PODS, RESOURCE_CLAIMS
from vgpu_dra.driver.claimconfig import parse
from vgpu_dra.driver.inventory_file import load_inventory

pytestmark = pytest.mark.e2e

MIB = 1 << 20
# What each example asks for, per claim (template) name, as its file says: (memory, cores), memory
# either a percentage of the GPU's usable memory or a quantity.
EXPECTED: dict[str, tuple[str, int]] = {
    "worker-a": ("20%", 25), "worker-b": ("30%", 40),
    "embed-corpus": ("10%", 20),
    "two-gpus-one-numa-node": ("12Gi", 50),
    "video-pipeline": ("3Gi", 40),
    "sharing-demo-greedy": ("1Gi", 10), "sharing-demo-steady": ("2Gi", 20),
    "embeddings-small": ("2Gi", 15), "reranker-medium": ("4Gi", 30), "generator-large": ("8Gi", 50),
    "team-a-gpu": ("4Gi", 50),
}
# The folders a user applies (the README's table); claims/ and workloads/ go together, as the
# README's command applies them. Not manifests: inventory/ (for `vgpu-dra plan`) and grafana/ (a
# dashboard JSON); deviceclasses/ and monitoring/ have tests of their own below.
FOLDERS: dict[str, tuple[str, ...]] = {
    "seed-workers": ("claims", "workloads"),
    "sized-classes": ("sized-classes",),
    "multi-gpu": ("multi-gpu",),
    "shared-claim-containers": ("shared-claim-containers",),
    "standalone-claim": ("standalone-claim",),
    "job": ("job",),
    "sharing-demo": ("sharing-demo",),
}


def _files(folders: tuple[str, ...]) -> list[str]:
    args: list[str] = []
    for folder in folders:
        args += ["-f", str(EXAMPLES / folder)]
    return args


def _workload_pods(installation: Installation) -> list[dict[str, Any]]:
    pods = installation.cluster.kube.list(PODS, "default").get("items") or []
    return [p for p in pods if p["spec"].get("resourceClaims") and not p["metadata"].get("deletionTimestamp")]


def _expected_pod_count(folders: tuple[str, ...]) -> int:
    count = 0
    for folder in folders:
        for path in sorted((EXAMPLES / folder).glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if not doc:
                    continue
                if doc["kind"] == "Pod":
                    count += 1
                elif doc["kind"] == "Deployment":
                    count += doc["spec"].get("replicas", 1)
                elif doc["kind"] == "Job":
                    count += min(doc["spec"].get("parallelism", 1), doc["spec"].get("completions", 1))
    return count


def _claims_of(installation: Installation, pod: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(the example's claim or template name, the claim) for each claim of `pod`."""
    statuses = {s["name"]: s.get("resourceClaimName") for s in (pod.get("status") or {}).get("resourceClaimStatuses") or []}
    found = []
    for entry in pod["spec"]["resourceClaims"]:
        name = entry.get("resourceClaimName") or statuses.get(entry["name"])
        if not name:
            return []
        key = entry.get("resourceClaimName") or entry["resourceClaimTemplateName"]
        found.append((key, installation.cluster.kube.get(RESOURCE_CLAIMS, name, "default")))
    return found


def _settled(installation: Installation, expected_pods: int) -> list[dict[str, Any]] | None:
    pods = _workload_pods(installation)
    if len(pods) != expected_pods or not all(p["spec"].get("nodeName") for p in pods):
        return None
    for pod in pods:
        claims = _claims_of(installation, pod)
        if not claims:
            return None
        for _, claim in claims:
            status = claim.get("status") or {}
            if not status.get("allocation") or not any(
                    r.get("uid") == pod["metadata"]["uid"] for r in status.get("reservedFor") or []):
                return None
    return pods


def _gpu(installation: Installation, node: str, device: str) -> tuple[str, int]:
    """(UUID, usable bytes) of `device` on `node`, from the node's inventory."""
    inventory = load_inventory(installation.nodes[node].spec.inventory)
    [gpu] = [g for g in inventory.gpus if f"gpu-{g.index}" == device]
    return gpu.uuid, gpu.usable_memory_bytes


def _wall(memory: str, usable: int) -> int:
    if memory.endswith("%"):
        wanted = usable * int(memory[:-1]) // 100
        return wanted - wanted % MIB
    return -(-parse_bytes(memory) // MIB) * MIB


def _state(installation: Installation) -> str:
    return (installation.cluster.kubectl("get", "resourceclaims,pods", "-o", "wide", check=False).stdout
            + installation.cluster.kubectl("get", "events", "--field-selector", "type=Warning", check=False).stdout)


@pytest.mark.parametrize("example", list(FOLDERS))
def test_example_allocates_binds_prepares_and_releases(installation: Installation, example: str) -> None:
    cluster = installation.cluster
    folders = FOLDERS[example]
    cluster.kubectl("apply", *_files(folders))
    try:
        try:
            pods = wait_until(lambda: _settled(installation, _expected_pod_count(folders)), 120,
                              f"every pod of {example} bound with its claims allocated and reserved")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{_state(installation)}\n{installation.logs()}") from None
        table = cluster.kubectl("get", "resourceclaims").stdout
        rows = [line.split() for line in table.splitlines()[1:]]
        assert rows and all(row[1] == "allocated,reserved" for row in rows), table

        prepared: set[str] = set()
        for pod in pods:
            node = installation.nodes[pod["spec"]["nodeName"]]
            kubelet = node.kubelet()
            try:
                for key, claim in _claims_of(installation, pod):
                    uid = claim["metadata"]["uid"]
                    results = claim["status"]["allocation"]["devices"]["results"]
                    assert {r["pool"] for r in results} == {node.spec.name}
                    ref = Claim("default", uid, claim["metadata"]["name"])
                    answer = kubelet.prepare([ref])[uid]
                    assert answer.error == "", answer.error
                    assert sorted(d.cdi_device_ids[0] for d in answer.devices) == sorted(
                        f"k8s.vgpu.dra.dev/claim={uid}-{r['device']}" for r in results)
                    limits = {g.uuid: g for g in parse((node.settings.claims_dir / uid / "config").read_text()).gpus}
                    memory, cores = EXPECTED[key]
                    assert len(limits) == len(results)
                    for result in results:
                        uuid, usable = _gpu(installation, node.spec.name, result["device"])
                        gpu = limits[uuid]
                        assert (gpu.memory_bytes, gpu.cores) == (_wall(memory, usable), cores), (key, result)
                    prepared.add(uid)
            finally:
                kubelet.close()
        assert prepared
    finally:
        cluster.kubectl("delete", "--wait=false", *_files(folders), check=False)
    wait_until(lambda: not _workload_pods(installation) and not cluster.kube.list(RESOURCE_CLAIMS, "default").get("items"),
               120, f"{example}'s pods and claims gone (finalizers removed)")
    for node in installation.nodes.values():
        kubelet = node.kubelet()
        try:
            refs = [Claim("default", uid, "") for uid in prepared]
            assert kubelet.unprepare(refs) == {uid: "" for uid in prepared}
        finally:
            kubelet.close()
        assert not list(node.settings.cdi_dir.glob("k8s.vgpu.dra.dev-claim_*.json"))
