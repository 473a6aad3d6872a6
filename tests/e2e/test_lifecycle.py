"""Refusals, restarts and failover on the real control plane, typed the way a user types them."""
from __future__ import annotations

import signal
from collections import defaultdict
from typing import Any

import pytest

from tests.cluster.real_cluster import wait_until
from tests.e2e.install import Installation
from tests.plugin.kubelet_client import Claim
from vgpu_dra.api.quantity import parse_bytes
from vgpu_dra.controller.kubeapi import EVENTS, PODS, RESOURCE_CLAIMS

pytestmark = pytest.mark.e2e

NAMESPACE = "default"


def _template_and_pods(name: str, count: int, memory: str, cores: int = 10) -> str:
    """A ResourceClaimTemplate sized with capacity requests (what both allocators book) and
    `count` pods using it, as YAML for kubectl."""
    docs = [f"""apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {{name: {name}}}
spec:
  spec:
    devices:
      requests:
        - name: gpu
          exactly:
            deviceClassName: vgpu.dra.dev
            capacity: {{requests: {{memory: {memory}, cores: "{cores}"}}}}
"""]
    for i in range(count):
        docs.append(f"""apiVersion: v1
kind: Pod
metadata: {{name: {name}-{i}, labels: {{test: {name}}}}}
spec:
  terminationGracePeriodSeconds: 0
  resourceClaims: [{{name: gpu, resourceClaimTemplateName: {name}}}]
  containers:
    - name: main
      image: registry.example/none:1
      resources: {{claims: [{{name: gpu}}]}}
""")
    return "---\n".join(docs)


def _claims(installation: Installation) -> list[dict[str, Any]]:
    return installation.cluster.kube.list(RESOURCE_CLAIMS, NAMESPACE).get("items") or []


def _all_allocated_and_bound(installation: Installation, count: int, label: str) -> bool:
    pods = installation.cluster.kube.list(PODS, NAMESPACE, label_selector=f"test={label}").get("items") or []
    claims = _claims(installation)
    return (len(pods) == count and all(p["spec"].get("nodeName") for p in pods)
            and len(claims) == count and all((c.get("status") or {}).get("allocation") for c in claims))


def _booked_never_exceeds_a_gpu(installation: Installation) -> None:
    """The API server does not check capacity: the sum booked on each device must fit it."""
    booked: dict[tuple[str, str], int] = defaultdict(int)
    for claim in _claims(installation):
        for result in ((claim.get("status") or {}).get("allocation") or {}).get("devices", {}).get("results") or []:
            booked[(result["pool"], result["device"])] += parse_bytes(result["consumedCapacity"]["memory"])
    capacity = {(s["spec"]["pool"]["name"], d["name"]): parse_bytes(d["capacity"]["memory"]["value"])
                for node in installation.nodes for s in installation.published(node) for d in s["spec"]["devices"]}
    over = {k: v for k, v in booked.items() if v > capacity[k]}
    assert not over, f"devices booked past their memory: {over}"


def _delete(installation: Installation, manifest: str) -> None:
    installation.cluster.kubectl("delete", "--wait=false", "-f", "-", input=manifest, check=False)
    wait_until(lambda: not _claims(installation), 120, "every claim released and deleted")


def test_a_claim_that_fits_nowhere_stays_pending_says_why_and_holds_nothing(installation: Installation) -> None:
    cluster = installation.cluster
    manifest = _template_and_pods("too-big", 1, "64Gi")
    cluster.kubectl("apply", "-f", "-", input=manifest)
    try:
        if installation.allocator == "controller":
            def refusal() -> str:
                # Events outlive their claims (an hour on the real server): only this pod's claim's.
                names = {c["metadata"]["name"] for c in _claims(installation)
                         if any(o.get("name") == "too-big-0" for o in c["metadata"].get("ownerReferences") or ())}
                events = cluster.kube.list(EVENTS, NAMESPACE).get("items") or []
                return next((e["message"] for e in events if e.get("reason") == "AllocationFailed"
                             and e["involvedObject"]["kind"] == "ResourceClaim"
                             and e["involvedObject"]["name"] in names), "")
        else:
            def refusal() -> str:
                events = cluster.kube.list(EVENTS, NAMESPACE).get("items") or []
                return next((e["message"] for e in events if e.get("reason") == "FailedScheduling"
                             and e["involvedObject"]["name"] == "too-big-0"), "")
        message = wait_until(refusal, 60, "a Warning event saying why the claim cannot be allocated")
        if installation.allocator == "controller":
            assert "64 GiB" in message and "more than any GPU can give" in message, message
        else:
            assert "cannot allocate all claims" in message, message
        table = cluster.kubectl("get", "resourceclaims").stdout
        assert [line.split()[1] for line in table.splitlines()[1:]] == ["pending"], table
        pod = cluster.kube.get(PODS, "too-big-0", NAMESPACE)
        assert not pod["spec"].get("nodeName")
    finally:
        _delete(installation, manifest)
    # Nothing was held: a claim the size of the largest GPU still fits.
    largest = max(parse_bytes(d["capacity"]["memory"]["value"]) for n in installation.nodes
                  for s in installation.published(n) for d in s["spec"]["devices"])
    manifest = _template_and_pods("whole", 1, f"{largest // (1 << 20)}Mi", cores=0)
    cluster.kubectl("apply", "-f", "-", input=manifest)
    try:
        wait_until(lambda: _all_allocated_and_bound(installation, 1, "whole"), 60, "a whole-GPU claim allocated")
    finally:
        _delete(installation, manifest)


def test_controller_killed_mid_stream_and_a_standby_loses_nothing(installation: Installation) -> None:
    if installation.allocator != "controller":
        pytest.skip("scheduler mode runs no vgpu-dra controller: kube-scheduler allocates")
    cluster = installation.cluster
    standby = installation.start_controller()
    leader = next(c for c in installation.live_controllers() if c is not standby)
    manifest = _template_and_pods("burst", 12, "2Gi")
    cluster.kubectl("apply", "-f", "-", input=manifest)
    try:
        wait_until(lambda: any((c.get("status") or {}).get("allocation") for c in _claims(installation)), 60,
                   "the first allocation")
        leader.stop(signal.SIGKILL)
        wait_until(lambda: _all_allocated_and_bound(installation, 12, "burst"), 120,
                   "every claim allocated and pod bound after the leader was killed")
        assert installation.lease_holder() and installation.lease_holder() in " ".join(standby.argv)
        _booked_never_exceeds_a_gpu(installation)
    finally:
        _delete(installation, manifest)
    # A restarted controller (the Deployment would start one) rebuilds its books from the API and
    # keeps allocating.
    installation.start_controller()
    standby.stop(signal.SIGKILL)
    manifest = _template_and_pods("after", 2, "4Gi")
    cluster.kubectl("apply", "-f", "-", input=manifest)
    try:
        wait_until(lambda: _all_allocated_and_bound(installation, 2, "after"), 90, "allocated by the restarted controller")
    finally:
        _delete(installation, manifest)


def test_plugin_restart_keeps_prepared_claims_and_their_specs(installation: Installation) -> None:
    cluster = installation.cluster
    manifest = _template_and_pods("kept", 2, "1Gi")
    cluster.kubectl("apply", "-f", "-", input=manifest)
    try:
        wait_until(lambda: _all_allocated_and_bound(installation, 2, "kept"), 90, "allocated and bound")
        refs: dict[str, list[Claim]] = defaultdict(list)
        for claim in _claims(installation):
            [result] = claim["status"]["allocation"]["devices"]["results"]
            refs[result["pool"]].append(Claim(NAMESPACE, claim["metadata"]["uid"], claim["metadata"]["name"]))
        first: dict[str, Any] = {}
        for node, claims in refs.items():
            kubelet = installation.nodes[node].kubelet()
            try:
                first.update({uid: a.devices for uid, a in kubelet.prepare(claims).items()})
            finally:
                kubelet.close()
        for node, claims in refs.items():
            installation.stop_plugin(node, signal.SIGKILL)
            gpu_node = installation.nodes[node]
            for ref in claims:  # the container runtime needs these while the plugin is down
                assert (gpu_node.settings.cdi_dir / f"k8s.vgpu.dra.dev-claim_{ref.uid}.json").is_file()
            installation.start_plugin(node)
            kubelet = gpu_node.kubelet()
            try:
                again = kubelet.prepare(claims)
                assert {uid: a.devices for uid, a in again.items()} == {r.uid: first[r.uid] for r in claims}
                assert all(a.error == "" for a in again.values())
                assert kubelet.unprepare(claims) == {r.uid: "" for r in claims}
            finally:
                kubelet.close()
            assert len(installation.published(node)) == 1, "a restarted plugin republishes, never duplicates"
    finally:
        _delete(installation, manifest)
