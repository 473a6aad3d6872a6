"""GPU health and the limits in force, on the real control plane (both allocator modes).

The kubelet plugin of gpu-node-a runs as installed (its node-bound ServiceAccount token, the
chart's RBAC and admission policy) with the fake NVML's control file, so the test can make its
GPU throw an XID: the taint must reach the real ResourceSlice, keep every allocator's new claims
off the GPU until the quiet period ends, and go. Prepared claims get their limits written into
status.devices through the real API server's validation and the 1.36 driver-status authorization.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.real_cluster import wait_until
from tests.e2e.install import Installation
from tests.fakes.nvml_control import NvmlControl
from tests.plugin.kubelet_client import Claim
from vgpu_dra.controller.kubeapi import EVENTS, PODS, RESOURCE_CLAIMS
from vgpu_dra.driver.claimconfig import parse
from vgpu_dra.driver.inventory_file import load_inventory

pytestmark = pytest.mark.e2e

NAMESPACE = "default"
NODE_A = "gpu-node-a"  # one RTX 3080
QUIET = 15
MIB = 1 << 20
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def control(installation: Installation, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NvmlControl]:
    """gpu-node-a's plugin restarted with a fake-NVML control file and a short quiet period."""
    found = NvmlControl(tmp_path_factory.mktemp("nvml") / "control")
    node = installation.nodes[NODE_A]
    original = node.env
    before = _generation(installation)
    installation.stop_plugin(NODE_A)
    node.env = found.env(original)
    installation.start_plugin(NODE_A, extra_args=(f"--health-quiet-seconds={QUIET}", "--health-poll-seconds=0.5"))
    # NVML delivers only events after registration: wait for the new plugin to be up.
    wait_until(lambda: _generation(installation) > before, 60, "gpu-node-a's restarted plugin publishing")
    try:
        yield found
    finally:
        installation.stop_plugin(NODE_A)
        node.env = original
        installation.start_plugin(NODE_A)
        wait_until(lambda: _taints(installation) == [], 60, "gpu-node-a's slice published again, untainted")


def _generation(installation: Installation) -> int:
    return max((int(s["spec"]["pool"]["generation"]) for s in installation.published(NODE_A)), default=0)


def _taints(installation: Installation) -> list[dict[str, Any]] | None:
    slices = installation.published(NODE_A)
    if not slices:
        return None
    return [t for s in slices for d in s["spec"]["devices"] for t in d.get("taints") or ()]


def _node_events(installation: Installation, reason: str) -> list[str]:
    events = installation.cluster.kube.list(EVENTS, NAMESPACE).get("items") or []
    return [e["message"] for e in events if e.get("reason") == reason and e["involvedObject"]["kind"] == "Node"
            and e["involvedObject"]["name"] == NODE_A]


def _only_the_3080(name: str) -> str:
    """A claim template that only gpu-node-a's RTX 3080 can satisfy, and a pod using it."""
    return f"""apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {{name: {name}}}
spec:
  spec:
    devices:
      requests:
        - name: gpu
          exactly:
            deviceClassName: vgpu.dra.dev
            selectors:
              - cel: {{expression: 'device.attributes["vgpu.dra.dev"].productName == "NVIDIA GeForce RTX 3080"'}}
            capacity: {{requests: {{memory: 1Gi, cores: "10"}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: 0
  resourceClaims: [{{name: gpu, resourceClaimTemplateName: {name}}}]
  containers:
    - name: main
      image: registry.example/none:1
      resources: {{claims: [{{name: gpu}}]}}
"""


def _claim_of(installation: Installation, pod: str) -> dict[str, Any] | None:
    claims = installation.cluster.kube.list(RESOURCE_CLAIMS, NAMESPACE).get("items") or []
    return next((c for c in claims if any(o.get("name") == pod for o in c["metadata"].get("ownerReferences") or ())),
                None)


def _refusal(installation: Installation, pod: str) -> str:
    events = installation.cluster.kube.list(EVENTS, NAMESPACE).get("items") or []
    if installation.allocator == "controller":
        claim = _claim_of(installation, pod)
        return next((e["message"] for e in events if claim and e.get("reason") == "AllocationFailed"
                     and e["involvedObject"]["name"] == claim["metadata"]["name"]), "")
    return next((e["message"] for e in events if e.get("reason") == "FailedScheduling"
                 and e["involvedObject"]["name"] == pod), "")


def test_an_xid_taints_the_real_slice_and_no_allocator_places_claims_there_until_the_quiet_period_ends(
        installation: Installation, control: NvmlControl) -> None:
    cluster = installation.cluster
    wait_until(lambda: _taints(installation) == [], 60, "gpu-node-a published, untainted")
    [gpu] = load_inventory(installation.nodes[NODE_A].spec.inventory).gpus
    # Events outlive an installation (the other allocator mode ran on the same Node name): count.
    tainted_before = len(_node_events(installation, "GpuTainted"))
    removed_before = len(_node_events(installation, "GpuTaintRemoved"))
    control.xid(gpu.uuid, 79)
    try:
        [taint] = wait_until(lambda: _taints(installation), 30,
                             "the XID's taint stored in the real ResourceSlice (DRADeviceTaints on in 1.36)")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{installation.logs()}") from None
    assert (taint["key"], taint["value"], taint["effect"]) == ("vgpu.dra.dev/xid", "79", "NoExecute")
    assert taint.get("timeAdded")
    wait_until(lambda: len(_node_events(installation, "GpuTainted")) > tainted_before, 30, "the Node event")
    message = _node_events(installation, "GpuTainted")[-1]
    assert "XID 79" in message and gpu.uuid in message

    manifest = _only_the_3080("wants-3080")
    cluster.kubectl("apply", "-f", "-", input=manifest)
    try:
        refusal = wait_until(lambda: _refusal(installation, "wants-3080"), 60,
                             "the allocator refusing the tainted GPU")
        if installation.allocator == "controller":
            assert "taint" in refusal and "vgpu.dra.dev/xid" in refusal, refusal
        claim = _claim_of(installation, "wants-3080")
        assert claim is not None and not (claim.get("status") or {}).get("allocation"), \
            "a claim was allocated on a tainted GPU"
        # Quiet period over: the taint goes and the waiting claim lands on the GPU.
        wait_until(lambda: _taints(installation) == [], QUIET + 30, "the taint removed after the quiet period")
        wait_until(lambda: len(_node_events(installation, "GpuTaintRemoved")) > removed_before, 30,
                   "the Node event for the removal")
        allocated = wait_until(
            lambda: ((_claim_of(installation, "wants-3080") or {}).get("status") or {}).get("allocation"), 120,
            "the claim allocated once the GPU is healthy again")
        assert [r["pool"] for r in allocated["devices"]["results"]] == [NODE_A]
    finally:
        cluster.kubectl("delete", "--wait=false", "-f", "-", input=manifest, check=False)
        wait_until(lambda: _claim_of(installation, "wants-3080") is None, 120, "the claim released and deleted")


_WORKER_POD = """apiVersion: v1
kind: Pod
metadata: {name: limits-shown}
spec:
  terminationGracePeriodSeconds: 0
  resourceClaims: [{name: gpu, resourceClaimTemplateName: worker-a}]
  containers:
    - name: main
      image: registry.example/none:1
      resources: {claims: [{name: gpu}]}
"""


def _kubeconfig_of(installation: Installation, node: str) -> Path:
    process = installation.nodes[node].plugin
    assert process is not None
    return Path(next(a.split("=", 1)[1] for a in process.argv if a.startswith("--kubeconfig=")))


def test_kubectl_get_resourceclaim_shows_the_wall_and_cap_of_the_example(installation: Installation,
                                                                          control: NvmlControl) -> None:
    cluster = installation.cluster
    template = REPO / "examples" / "claims" / "worker-a.yaml"
    cluster.kubectl("apply", "-f", str(template))
    cluster.kubectl("apply", "-f", "-", input=_WORKER_POD)
    try:
        def ready() -> dict[str, Any] | None:
            pod = cluster.kube.get(PODS, "limits-shown", NAMESPACE)
            claim = _claim_of(installation, "limits-shown")
            status = (claim or {}).get("status") or {}
            return claim if pod["spec"].get("nodeName") and status.get("allocation") and status.get("reservedFor") \
                else None
        claim = wait_until(ready, 90, "the example's claim allocated and reserved")
        name, uid = claim["metadata"]["name"], claim["metadata"]["uid"]
        [result] = claim["status"]["allocation"]["devices"]["results"]
        node = installation.nodes[result["pool"]]
        kubelet = node.kubelet()
        try:
            assert kubelet.prepare([Claim(NAMESPACE, uid, name)])[uid].error == ""
            [limit] = parse((node.settings.claims_dir / uid / "config").read_text()).gpus

            def shown() -> list[dict[str, Any]]:
                got = yaml.safe_load(cluster.kubectl("get", "resourceclaim", name, "-o", "yaml").stdout)
                return (got.get("status") or {}).get("devices") or []
            [entry] = wait_until(shown, 30, f"status.devices in `kubectl get resourceclaim -o yaml`\n"
                                            f"{installation.logs()}")
            assert (entry["driver"], entry["pool"], entry["device"]) == \
                ("vgpu.dra.dev", result["pool"], result["device"])
            assert entry.get("shareID") == result.get("shareID")
            usable = next(g for g in load_inventory(node.spec.inventory).gpus if g.uuid == limit.uuid).usable_memory_bytes
            wall = usable * 20 // 100
            assert entry["data"]["memoryLimitBytes"] == limit.memory_bytes == wall - wall % MIB
            assert entry["data"]["coreLimitPercent"] == 25 and entry["data"]["corePolicy"] == "soft"
            assert [(c["type"], c["status"]) for c in entry["conditions"]] == [("Ready", "True")]

            # The other node's plugin may not write this claim's device status (associated-node),
            # and this node's plugin may not touch the allocation (no resourceclaims/binding).
            other = next(n for n in installation.nodes if n != result["pool"])
            foreign = cluster.kubectl(
                "patch", "resourceclaim", name, "--subresource=status", "--type=merge", "-p",
                json.dumps({"status": {"devices": [{**entry, "data": {"memoryLimit": "80Gi"}}]}}),
                kubeconfig=_kubeconfig_of(installation, other), check=False)
            assert foreign.returncode != 0 and "forbidden" in (foreign.stderr + foreign.stdout).lower(), foreign
            own_allocation = cluster.kubectl(
                "patch", "resourceclaim", name, "--subresource=status", "--type=merge", "-p",
                json.dumps({"status": {"reservedFor": None}}),
                kubeconfig=_kubeconfig_of(installation, result["pool"]), check=False)
            assert own_allocation.returncode != 0 and "forbidden" in (own_allocation.stderr + own_allocation.stdout).lower(), \
                own_allocation
            assert shown()[0]["data"] == entry["data"]

            assert kubelet.unprepare([Claim(NAMESPACE, uid, name)]) == {uid: ""}
            wait_until(lambda: not shown(), 30, "our status.devices entries removed at Unprepare")
        finally:
            kubelet.close()
    finally:
        cluster.kubectl("delete", "--wait=false", "pod/limits-shown", check=False)
        cluster.kubectl("delete", "--wait=false", "-f", str(template), check=False)
        wait_until(lambda: _claim_of(installation, "limits-shown") is None, 120, "the claim released and deleted")
