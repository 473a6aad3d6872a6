"""The limits in force, written into the claim's status.devices after Prepare (the fake API server
validates them as the real one does: entries must name allocated devices)."""
from __future__ import annotations

from typing import Any

from tests.plugin.node import vgpu_config

NODE = "mixed-node"


def _status_devices(server: Any, claim: Any) -> list[dict[str, Any]]:
    stored = server.get("ResourceClaim", claim.name, claim.namespace)
    return (stored.get("status") or {}).get("devices") or []


def test_prepare_writes_the_wall_and_cap_of_each_device_and_unprepare_removes_them(
        kubelet, claims, plugin, fake_apiserver):
    share = "5b0c1f4e-8d2a-4e7b-9c3d-1a2b3c4d5e6f"
    claim = claims.create([{"request": "gpu", "device": "gpu-0", "shareID": share,
                            "consumedCapacity": {"memory": "2Gi", "cores": "25"}}],
                          config=[{"source": "FromClaim", "requests": [],
                                   "opaque": vgpu_config(memory="2Gi", cores=25)}])
    answer = kubelet.prepare([claim.ref])[claim.uid]
    assert answer.error == ""
    assert plugin.status_writer.wait_idle(10)
    [entry] = _status_devices(fake_apiserver, claim)
    assert (entry["driver"], entry["pool"], entry["device"], entry["shareID"]) == ("vgpu.dra.dev", NODE, "gpu-0", share)
    data = entry["data"]
    assert (data["memoryLimit"], data["memoryLimitBytes"], data["coreLimitPercent"]) == ("2Gi", 2 << 30, 25)
    assert data["shimVersion"] and data["gpuUUID"].startswith("GPU-")
    assert [(c["type"], c["status"]) for c in entry["conditions"]] == [("Ready", "True")]
    # The patch carried only status.devices: the allocation and reservations are as they were.
    stored = fake_apiserver.get("ResourceClaim", claim.name, claim.namespace)
    assert stored["status"]["allocation"]["devices"]["results"][0]["device"] == "gpu-0"
    assert [r["name"] for r in stored["status"]["reservedFor"]] == ["pod-a"]

    assert kubelet.unprepare([claim.ref]) == {claim.uid: ""}
    assert plugin.status_writer.wait_idle(10)
    assert _status_devices(fake_apiserver, claim) == []


def test_a_status_write_the_api_server_refuses_does_not_fail_prepare_and_is_counted(
        kubelet, claims, plugin, fake_apiserver, settings):
    claim = claims.create([{"request": "gpu", "device": "gpu-1"}])
    fake_apiserver.faults.add(500, resource="resourceclaims", verbs=("patch",), subresource="status", count=1)
    answer = kubelet.prepare([claim.ref])[claim.uid]
    assert answer.error == "" and answer.devices  # the limit applies: the claim's files are written
    assert (settings.claims_dir / claim.uid).is_dir()
    assert plugin.status_writer.wait_idle(10)
    assert _status_devices(fake_apiserver, claim) == []
    assert plugin.metrics.registry.get_sample_value("vgpu_dra_claim_status_write_failures_total",
                                                    {"node": NODE, "operation": "prepare"}) == 1.0


def test_a_conflicting_writer_is_retried_on_a_fresh_read(kubelet, claims, plugin, fake_apiserver):
    claim = claims.create([{"request": "gpu", "device": "gpu-2"}])
    fake_apiserver.faults.add(409, resource="resourceclaims", verbs=("patch",), subresource="status", count=2)
    assert kubelet.prepare([claim.ref])[claim.uid].error == ""
    assert plugin.status_writer.wait_idle(10)
    assert [e["device"] for e in _status_devices(fake_apiserver, claim)] == ["gpu-2"]
