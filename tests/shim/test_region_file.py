"""driver/region.py: the Python side of the region layout shared with libvgpu.so."""

import fcntl
import mmap
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from vgpu_dra.driver import claimconfig, region
from vgpu_dra.driver.claimconfig import ClaimConfig, GpuLimit

UUID = "GPU-11111111-2222-3333-4444-555555555555"
CONFIG = ClaimConfig("claim-1", (GpuLimit(UUID, 2 << 30, 25, "hard"),))


def test_header_constants_match_the_config_format() -> None:
    assert region.MAX_GPUS == claimconfig.MAX_GPUS
    assert region.UUID_LEN - 1 == claimconfig.MAX_UUID_CHARS
    assert region.CLAIM_LEN - 1 == claimconfig.MAX_CLAIM_CHARS


def test_created_region_reports_limits_before_any_process_attached(tmp_path: Path) -> None:
    path = tmp_path / "region"
    region.create_region(path, CONFIG)
    snap = region.read_region(path)
    assert snap.claim_uid == "claim-1"
    gpu = snap.gpu(UUID)
    assert (gpu.limit_bytes, gpu.used_bytes, gpu.core_cap, gpu.core_policy) == (2 << 30, 0, 25, "hard")
    assert snap.processes == ()
    assert path.stat().st_size == region.REGION_SIZE
    assert path.stat().st_mode & 0o777 == 0o666


def test_zero_filled_file_is_initialised_and_existing_counters_survive(tmp_path: Path) -> None:
    path = tmp_path / "region"
    path.write_bytes(b"\0" * 100)
    region.create_region(path)
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), region.REGION_SIZE) as mem:
        view = region.ffi.from_buffer("struct vgpu_region *", mem)
        view.gpu_count = 1
        view.gpus[0].uuid = UUID.encode()
        view.gpus[0].used_bytes = 4096
        del view
    region.create_region(path, CONFIG)  # a repeated Prepare must not reset usage
    assert region.read_region(path).gpu(UUID).used_bytes == 4096


def test_foreign_or_uninitialised_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "region"
    path.write_bytes(b"\0" * region.REGION_SIZE)
    with pytest.raises(region.RegionError, match="not an initialised"):
        region.read_region(path)
    path.write_bytes(struct.pack("<QI", region.MAGIC, 99) + b"\0" * region.REGION_SIZE)
    with pytest.raises(region.RegionError, match="layout 99"):
        region.read_region(path)
    with pytest.raises(region.RegionError, match="cannot open"):
        region.read_region(tmp_path / "missing")


def test_region_of_another_claim_is_not_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "region"
    region.create_region(path, CONFIG)
    with pytest.raises(region.RegionError, match="belongs to claim claim-1"):
        region.create_region(path, ClaimConfig("claim-2", CONFIG.gpus))


def test_slot_liveness_follows_the_owners_lock(tmp_path: Path) -> None:
    path = tmp_path / "region"
    region.create_region(path, CONFIG)
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), region.REGION_SIZE) as mem:
        view = region.ffi.from_buffer("struct vgpu_region *", mem)
        view.proc_high_water = 1
        view.procs[0].state = region.PROC_LIVE
        view.procs[0].pid = 1234
        view.procs[0].used[0] = 77
        del view
    # A child holds slot 0's lock the way the shim does, then is killed.
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl,os,struct,sys,time\n"
            f"fd=os.open({str(path)!r}, os.O_RDWR)\n"
            f"fcntl.fcntl(fd, {region._F_OFD_SETLK}, struct.pack('hhqqi4x', fcntl.F_WRLCK, 0, {region.LOCK_SLOT_BASE}, 1, 0))\n"
            "print('locked', flush=True); time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        (slot,) = region.read_region(path).processes
        assert (slot.pid, slot.alive, slot.used_bytes) == (1234, True, {UUID: 77})
    finally:
        holder.kill()
        holder.wait()
    (slot,) = region.read_region(path).processes
    assert slot.alive is False
