"""A prepared claim's limits as status.devices entries, merged with everyone else's (driver/claim_status.py)."""
from __future__ import annotations

from vgpu_dra.driver.checkpoint import PreparedClaim, PreparedDevice
from vgpu_dra.driver.claim_status import device_statuses, with_ours, without_ours

SHARE = "9d3c1a4e-2b5f-4c6d-8e7f-0a1b2c3d4e5f"


def _claim(*, cores: int = 25, share_id: str | None = SHARE) -> PreparedClaim:
    device = PreparedDevice(request="gpu", pool="node-a", device="gpu-0", share_id=share_id,
                            gpu_uuid="GPU-1111", gpu_index=0, gpu_minor=0, memory_bytes=2 << 30, cores=cores,
                            core_policy="soft", nvidia_cdi_device=None, cdi_device_ids=("x/y=z",))
    return PreparedClaim(uid="u1", namespace="ns", name="c", state="prepared", devices=(device,),
                         shim_host_path="/var/lib/vgpu-dra/shim/0.1.0-abcdef/libvgpu.so")


def test_each_device_says_its_wall_cap_policy_and_shim_and_is_ready():
    [entry] = device_statuses(_claim(), "vgpu.dra.dev", "2026-01-01T00:00:00Z")
    assert (entry["driver"], entry["pool"], entry["device"], entry["shareID"]) == \
        ("vgpu.dra.dev", "node-a", "gpu-0", SHARE)
    assert entry["data"] == {"kind": "VgpuLimits", "gpuUUID": "GPU-1111", "memoryLimit": "2Gi",
                             "memoryLimitBytes": 2 << 30, "coreLimitPercent": 25, "corePolicy": "soft",
                             "shimVersion": "0.1.0-abcdef"}
    [ready] = entry["conditions"]
    assert ready["type"] == "Ready" and ready["status"] == "True" and ready["reason"] == "LimitsApplied"
    assert "2Gi" in ready["message"] and "25 %" in ready["message"]


def test_no_share_id_and_no_cap():
    [entry] = device_statuses(_claim(cores=0, share_id=None), "vgpu.dra.dev", "t")
    assert "shareID" not in entry and "no SM cap" in entry["conditions"][0]["message"]


def test_ours_are_added_next_to_other_drivers_and_a_repeat_changes_nothing():
    other = {"driver": "net.example.com", "pool": "node-a", "device": "eth0", "data": {"x": 1}}
    ours = device_statuses(_claim(), "vgpu.dra.dev", "2026-01-01T00:00:00Z")
    merged = with_ours([other], ours)
    assert merged == [other, *ours]
    later = device_statuses(_claim(), "vgpu.dra.dev", "2026-06-01T00:00:00Z")
    assert with_ours(merged, later) is None  # same limits: the first lastTransitionTime stands


def test_a_changed_limit_replaces_our_entry():
    merged = with_ours([], device_statuses(_claim(cores=25), "vgpu.dra.dev", "t0"))
    changed = with_ours(merged, device_statuses(_claim(cores=50), "vgpu.dra.dev", "t1"))
    assert changed is not None and [e["data"]["coreLimitPercent"] for e in changed] == [50]


def test_unprepare_removes_only_this_nodes_entries_of_our_driver():
    other_driver = {"driver": "net.example.com", "pool": "node-a", "device": "eth0"}
    other_node = {"driver": "vgpu.dra.dev", "pool": "node-b", "device": "gpu-0"}
    ours = device_statuses(_claim(), "vgpu.dra.dev", "t")
    assert without_ours([other_driver, *ours, other_node], "vgpu.dra.dev", "node-a") == [other_driver, other_node]
    assert without_ours([other_driver], "vgpu.dra.dev", "node-a") is None
