"""Node metrics over HTTP: claim series from Prepare on, region counters, NVML per-GPU series."""
from __future__ import annotations

import fcntl
import mmap
import os
import struct
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vgpu_dra.driver import region as region_layout

T4_0 = "GPU-2f8e4d1a-7c3b-4e9f-a152-6d0c8b9e3f71"


def _scrape(plugin) -> dict[str, list]:
    with urllib.request.urlopen(f"http://127.0.0.1:{plugin.metrics_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def _one(samples, name, **labels):
    matching = [s for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(matching) == 1, (name, labels, samples.get(name))
    return matching[0].value


def test_claim_series_exist_from_prepare_on(kubelet, claims, plugin, settings):
    claim = claims.create([{"request": "gpu", "device": "gpu-0", "shareID": "0f0e0d0c-0000-4000-8000-000000000001",
                            "consumedCapacity": {"memory": "2Gi", "cores": "25"}}], pods=("web-1", "web-2"))
    before = _scrape(plugin)
    assert not [s for s in before.get("vgpu_dra_claim_memory_limit_bytes", []) if s.labels["claim_uid"] == claim.uid]
    kubelet.prepare([claim.ref])
    samples = _scrape(plugin)
    labels = dict(namespace="default", claim=claim.name, claim_uid=claim.uid, uuid=T4_0, node="mixed-node",
                  pod="web-1,web-2", gpu="gpu-0")
    assert _one(samples, "vgpu_dra_claim_memory_limit_bytes", **labels) == 2 << 30
    assert _one(samples, "vgpu_dra_claim_core_limit_percent", **labels) == 25
    assert _one(samples, "vgpu_dra_claim_memory_used_bytes", **labels) == 0
    assert _one(samples, "vgpu_dra_claim_memory_peak_bytes", **labels) == 0
    assert _one(samples, "vgpu_dra_claim_rejected_allocations_total", **labels) == 0
    assert _one(samples, "vgpu_dra_gpu_claims", uuid=T4_0) == 1
    assert _one(samples, "vgpu_dra_gpu_memory_allocated_bytes", uuid=T4_0) == 2 << 30
    assert _one(samples, "vgpu_dra_prepared_claims") == 1
    assert _one(samples, "vgpu_dra_prepare_duration_seconds_count") >= 1

    kubelet.unprepare([claim.ref])
    after = _scrape(plugin)
    assert not [s for s in after.get("vgpu_dra_claim_memory_limit_bytes", []) if s.labels["claim_uid"] == claim.uid]
    assert _one(after, "vgpu_dra_unprepare_duration_seconds_count") >= 1


def test_usage_comes_from_the_claim_region(kubelet, claims, plugin, settings):
    claim = claims.create([{"request": "gpu", "device": "gpu-0"}])
    kubelet.prepare([claim.ref])
    path = settings.claims_dir / claim.uid / "region"
    with open(path, "r+b") as handle, mmap.mmap(handle.fileno(), region_layout.REGION_SIZE) as mem:
        region = region_layout.ffi.from_buffer("struct vgpu_region *", mem)
        region.gpus[0].used_bytes = 300 << 20  # what the shim's processes would have counted
        region.gpus[0].peak_bytes = 500 << 20
        region.gpus[0].rejected_allocs = 3
        del region
    samples = _scrape(plugin)
    assert _one(samples, "vgpu_dra_claim_memory_used_bytes", claim_uid=claim.uid) == 300 << 20
    assert _one(samples, "vgpu_dra_claim_memory_peak_bytes", claim_uid=claim.uid) == 500 << 20
    assert _one(samples, "vgpu_dra_claim_rejected_allocations_total", claim_uid=claim.uid) == 3


def test_memory_of_killed_processes_is_not_reported_as_used(kubelet, claims, plugin, settings):
    """A kill -9'd process's booking stays in the region until the next attach; it is not in use."""
    claim = claims.create([{"request": "gpu", "device": "gpu-0"}])
    kubelet.prepare([claim.ref])
    path = settings.claims_dir / claim.uid / "region"
    with open(path, "r+b") as handle, mmap.mmap(handle.fileno(), region_layout.REGION_SIZE) as mem:
        region = region_layout.ffi.from_buffer("struct vgpu_region *", mem)
        region.gpus[0].used_bytes = 800 << 20
        # Slot 0 says live but no process holds its lock: the shim's kill -9 signature.
        region.procs[0].state = 1
        region.procs[0].pid = 4242
        region.procs[0].used[0] = 500 << 20
        region.proc_high_water = 1
        del region
    samples = _scrape(plugin)
    assert _one(samples, "vgpu_dra_claim_memory_used_bytes", claim_uid=claim.uid) == 300 << 20


def test_sm_cap_series_show_share_throttling_and_whether_the_cap_holds(kubelet, claims, plugin, settings):
    claim = claims.create([{"request": "gpu", "device": "gpu-0"}])
    kubelet.prepare([claim.ref])
    path = settings.claims_dir / claim.uid / "region"
    with open(path, "r+b") as handle, mmap.mmap(handle.fileno(), region_layout.REGION_SIZE) as mem:
        region = region_layout.ffi.from_buffer("struct vgpu_region *", mem)
        gpu = region.gpus[0]
        gpu.core_cap = 30
        gpu.measured_share_ppm = 312_000
        gpu.throttled_ns = 2_500_000_000
        gpu.launches_delayed = 41
        gpu.limiter_state[region_layout.LIM_GATE] = 1
        # A live process of the claim: its slot is marked live and its lock is held (by us).
        region.procs[0].state = 1
        region.proc_high_water = 1
        del gpu, region
        held = os.open(path, os.O_RDWR)
        try:
            fcntl.fcntl(held, getattr(fcntl, "F_OFD_SETLK", 37),
                        struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, region_layout.LOCK_SLOT_BASE, 1, 0))
            samples = _scrape(plugin)
        finally:
            os.close(held)
    assert _one(samples, "vgpu_dra_claim_sm_share_percent", claim_uid=claim.uid) == pytest.approx(31.2)
    assert _one(samples, "vgpu_dra_claim_sm_throttled_seconds_total", claim_uid=claim.uid) == pytest.approx(2.5)
    assert _one(samples, "vgpu_dra_claim_launches_delayed_total", claim_uid=claim.uid) == 41
    assert _one(samples, "vgpu_dra_claim_core_cap_enforced", claim_uid=claim.uid) == 1
    # Once no process of the claim runs, nothing is being held back and there is no share.
    after = _scrape(plugin)
    assert _one(after, "vgpu_dra_claim_core_cap_enforced", claim_uid=claim.uid) == 0
    assert _one(after, "vgpu_dra_claim_sm_share_percent", claim_uid=claim.uid) == 0


def test_per_gpu_nvml_series(plugin):
    samples = _scrape(plugin)
    totals = {s.labels["gpu"]: s.value for s in samples["vgpu_dra_gpu_memory_total_bytes"]}
    assert set(totals) == {"gpu-0", "gpu-1", "gpu-2"}
    assert totals["gpu-0"] == 15360 << 20
    assert {s.labels["gpu"] for s in samples["vgpu_dra_gpu_utilization_percent"]} == {"gpu-0", "gpu-1", "gpu-2"}
    assert {s.labels["gpu"] for s in samples["vgpu_dra_gpu_memory_used_bytes"]} == {"gpu-0", "gpu-1", "gpu-2"}


def test_resync_refreshes_the_pods_of_prepared_claims(kubelet, claims, plugin, fake_apiserver):
    claim = claims.create([{"request": "gpu", "device": "gpu-1"}], pods=("first",))
    kubelet.prepare([claim.ref])
    assert plugin.status_writer.wait_idle(10)  # its status write, from a worker thread, went first
    stored = fake_apiserver.get("ResourceClaim", claim.name, claim.namespace)
    stored["status"]["reservedFor"].append({"resource": "pods", "name": "second", "uid": "0000-second"})
    fake_apiserver.update_status(stored)  # a second pod started sharing the claim
    plugin.resync()
    assert _one(_scrape(plugin), "vgpu_dra_claim_memory_limit_bytes", claim_uid=claim.uid) > 0
    (sample,) = [s for s in _scrape(plugin)["vgpu_dra_claim_memory_limit_bytes"]
                 if s.labels["claim_uid"] == claim.uid]
    assert sample.labels["pod"] == "first,second"


def test_fail_safe_errors_of_the_shim_are_a_counter_and_one_log_line(kubelet, claims, plugin, settings):
    """A driver call that failed on a limit path (the shim held the limit anyway) is visible."""
    from structlog.testing import capture_logs

    claim = claims.create([{"request": "gpu", "device": "gpu-0"}])
    kubelet.prepare([claim.ref])
    assert _one(_scrape(plugin), "vgpu_dra_claim_limit_errors_total", claim_uid=claim.uid) == 0
    path = settings.claims_dir / claim.uid / "region"
    with open(path, "r+b") as handle, mmap.mmap(handle.fileno(), region_layout.REGION_SIZE) as mem:
        region = region_layout.ffi.from_buffer("struct vgpu_region *", mem)
        region.gpus[0].limit_errors = 7  # what the shim counts, e.g. cuStreamIsCapturing answering 801
        region.gpus[0].limit_error_call = 1
        region.gpus[0].limit_error_code = 801
        del region
    with capture_logs() as logs:
        first, second = _scrape(plugin), _scrape(plugin)
    assert _one(first, "vgpu_dra_claim_limit_errors_total", claim_uid=claim.uid) == 7
    assert _one(second, "vgpu_dra_claim_limit_errors_total", claim_uid=claim.uid) == 7
    warned = [entry for entry in logs if entry.get("claim") == claim.name and entry["log_level"] == "warning"]
    assert len(warned) == 1  # one line per claim and GPU, not one per scrape
    assert (warned[0]["call"], warned[0]["code"], warned[0]["errors"]) == ("cuStreamIsCapturing", 801, 7)
