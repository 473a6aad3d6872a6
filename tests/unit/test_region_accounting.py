"""The watchdog's cheap region reader agrees with driver.region.read_region on the same bytes."""
from __future__ import annotations

import fcntl
import mmap
import os
import struct
from pathlib import Path

import pytest

from vgpu_dra.driver.claimconfig import ClaimConfig, GpuLimit
from vgpu_dra.driver.region import LOCK_SLOT_BASE, REGION_SIZE, RegionError, create_region, ffi, read_region
from vgpu_dra.driver.region_accounting import RegionReaders

GPU_A = "GPU-aaaaaaaa-1111-2222-3333-444444444444"
GPU_B = "GPU-bbbbbbbb-5555-6666-7777-888888888888"


def _region(path: Path, slots: int, gpus: tuple[str, ...] = (GPU_A, GPU_B)) -> int:
    """A region with `slots` live slots, the even ones locked (alive); returns the locking fd."""
    create_region(path, ClaimConfig("claim-1", tuple(GpuLimit(g, (i + 1) << 30, 0, "soft") for i, g in enumerate(gpus))))
    fd = os.open(path, os.O_RDWR)
    with mmap.mmap(fd, REGION_SIZE) as mem:
        view = ffi.from_buffer("struct vgpu_region *", mem)
        for i in range(slots):
            view.procs[i].state = 1
            view.procs[i].pid = 10 + i
            view.procs[i].host_pid = 1000 + i if i % 3 else 0
            for g in range(len(gpus)):
                view.procs[i].used[g] = (i + 1) * (g + 1) << 20
        view.procs[slots].state = 0  # a free slot below the high-water mark is no process
        view.proc_high_water = slots + 1
        for g in range(len(gpus)):
            view.gpus[g].used_bytes = 7 << 20
        del view
    for i in range(0, slots, 2):
        fcntl.fcntl(fd, 37, struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, LOCK_SLOT_BASE + i, 1, 0))
    return fd


@pytest.mark.parametrize("slots", [0, 3, 8, 20])  # 20: past the first read's 8 slots
def test_the_reader_sees_what_read_region_sees(tmp_path, slots):
    path = tmp_path / "region"
    fd = _region(path, slots)
    try:
        view = RegionReaders().read("claim-1", str(path))
        snapshot = read_region(path)
        assert view.claim_uid == snapshot.claim_uid == "claim-1"
        assert view.used == {g.uuid: g.used_bytes for g in snapshot.gpus}
        assert view.limit == {g.uuid: g.limit_bytes for g in snapshot.gpus} == {GPU_A: 1 << 30, GPU_B: 2 << 30}
        assert [(s.pid, s.host_pid, s.alive, dict(s.used)) for s in view.slots] == [
            (p.pid, p.host_pid, p.alive, p.used_bytes) for p in snapshot.processes]
        assert len(view.slots) == slots and [s.alive for s in view.slots] == [i % 2 == 0 for i in range(slots)]
    finally:
        os.close(fd)


def test_a_replaced_region_is_read_anew_and_a_missing_or_short_one_is_an_error(tmp_path):
    path = tmp_path / "region"
    readers = RegionReaders()
    os.close(_region(path, 2))
    assert len(readers.read("claim-1", str(path)).slots) == 2
    path.unlink()
    os.close(_region(path, 5))
    assert len(readers.read("claim-1", str(path)).slots) == 5
    path.unlink()
    with pytest.raises(RegionError, match="cannot open region"):
        readers.read("claim-1", str(path))
    path.write_bytes(b"\0" * 64)
    with pytest.raises(RegionError, match="shorter than a region"):
        readers.read("claim-1", str(path))
    readers.close()
