"""Create and read a claim's shared accounting region (the file libvgpu.so maps in every process).

The layout is defined once, in ``shim/include/vgpu_region.h``; this module hands the part of that
header between the ``VGPU_CFFI_BEGIN``/``VGPU_CFFI_END`` markers to cffi, so C and Python can never
disagree about an offset. Liveness of a process slot is an open-file-description lock the owning
process holds on one byte past the end of the file (the kernel drops it when the process dies, in
any PID namespace); a reader tests it with ``F_OFD_GETLK`` without disturbing anyone.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cffi

from vgpu_dra.driver.claimconfig import ClaimConfig

_HEADER_NAME = "vgpu_region.h"
_BEGIN = "/* VGPU_CFFI_BEGIN */"
_END = "/* VGPU_CFFI_END */"

# Linux values; the fcntl module only has them on recent Pythons, and they never change.
_F_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", 36)
_F_OFD_SETLK = getattr(fcntl, "F_OFD_SETLK", 37)
# struct flock on 64-bit Linux: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid.
_FLOCK = "hhqqi4x"
_INIT_LOCK_TIMEOUT_S = 5.0


class RegionError(RuntimeError):
    """A region file that is missing, of another layout, or could not be initialised."""


def _find_header() -> Path:
    """The header ships next to this package in a checkout (shim/include) or as package data."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "shim" / "include" / _HEADER_NAME, here / _HEADER_NAME):
        if candidate.is_file():
            return candidate
    raise RegionError(f"cannot find {_HEADER_NAME} (looked in shim/include next to {here})")


def _load_ffi() -> cffi.FFI:
    text = _find_header().read_text()
    try:
        cdef = text.split(_BEGIN, 1)[1].split(_END, 1)[0]
    except IndexError:
        raise RegionError(f"{_HEADER_NAME} lacks the {_BEGIN} / {_END} markers") from None
    ffi = cffi.FFI()
    ffi.cdef(cdef)
    return ffi


ffi = _load_ffi()
_lib = ffi.dlopen(None)  # only for the integer #defines of the header
MAGIC: int = _lib.VGPU_REGION_MAGIC
LAYOUT_VERSION: int = _lib.VGPU_REGION_LAYOUT_VERSION
MAX_GPUS: int = _lib.VGPU_MAX_GPUS
MAX_PROCS: int = _lib.VGPU_MAX_PROCS
UUID_LEN: int = _lib.VGPU_UUID_LEN
CLAIM_LEN: int = _lib.VGPU_CLAIM_LEN
LOCK_INIT: int = _lib.VGPU_LOCK_INIT
LOCK_SLOT_BASE: int = _lib.VGPU_LOCK_SLOT_BASE
PROC_LIVE: int = _lib.VGPU_PROC_LIVE
POLICY_HARD: int = _lib.VGPU_POLICY_HARD
LIM_GATE: int = _lib.VGPU_LIM_GATE
LIM_VCLOCK: int = _lib.VGPU_LIM_VCLOCK
REGION_SIZE: int = ffi.sizeof("struct vgpu_region")
# VGPU_ERRCALL_* of the header: which driver/NVML call failed on a limit path (docs/shim.md).
ERROR_CALLS: dict[int, str] = {
    _lib.VGPU_ERRCALL_CAPTURE_QUERY: "cuStreamIsCapturing",
    _lib.VGPU_ERRCALL_LAUNCH_DEVICE: "cuCtxGetDevice/cuDeviceGetUuid at a launch",
    _lib.VGPU_ERRCALL_EVENT_RECORD: "cuEventCreate/cuEventRecord",
    _lib.VGPU_ERRCALL_EVENT_READ: "cuEventQuery/cuEventElapsedTime",
    _lib.VGPU_ERRCALL_NO_EVENTS: "the driver's event API (missing)",
    _lib.VGPU_ERRCALL_NVML_UTIL: "nvmlDeviceGetUtilizationRates",
    _lib.VGPU_ERRCALL_ARRAY_REQ: "cuArrayGetMemoryRequirements",
    _lib.VGPU_ERRCALL_MIPMAP_REQ: "cuMipmappedArrayGetMemoryRequirements",
    _lib.VGPU_ERRCALL_CONTEXT: "context footprint measurement (cuMemGetInfo/NVML)",
    _lib.VGPU_ERRCALL_MONITOR: "the SM cap's monitor thread (pthread_create)",
    _lib.VGPU_ERRCALL_UNDO: "undoing an allocation past the wall (cuMemFree/cuArrayDestroy/...)",
}


@dataclass(frozen=True)
class GpuUsage:
    """One GPU of the claim as the shim accounts it (bytes unless named otherwise)."""

    uuid: str
    limit_bytes: int
    used_bytes: int
    # Part of used_bytes still held by slots of processes that died without exiting (kill -9):
    # the shim refunds it when the next process attaches or hits the wall.
    dead_process_bytes: int
    peak_bytes: int
    rejected_allocations: int
    context_bytes: int
    core_cap: int  # percent of the GPU's time, 0 = no cap
    core_policy: str  # "soft" (enforced while other claims want the GPU) or "hard"
    measured_share_ppm: int  # the claim's measured share of the GPU's time, parts per million
    throttled_ns: int  # total time the claim's launches were held back by the cap
    launches_delayed: int  # launches that had to wait at least once
    core_cap_enforced: bool  # the cap is holding launches back now (hard: always once running)
    # Driver/NVML calls that failed where their answer decides a limit; the limit held anyway
    # (docs/shim.md, "When the driver fails"). The last one's call and error code.
    limit_errors: int = 0
    limit_error_call: str = ""
    limit_error_code: int = 0

    @property
    def measured_share_percent(self) -> float:
        """The claim's measured share of the GPU's time, in percent (smoothed over ~0.2 s)."""
        return self.measured_share_ppm / 1e4

    @property
    def throttled_seconds(self) -> float:
        """Total time the claim's kernel launches waited for the SM-core cap, in seconds."""
        return self.throttled_ns / 1e9


@dataclass(frozen=True)
class ProcessSlot:
    """A process that attached to the claim; ``alive`` is false once it died (even by kill -9)."""

    index: int
    pid: int
    alive: bool
    used_bytes: dict[str, int]
    host_pid: int = 0  # the PID NVML reports for it (the host's), 0 until the shim learned it


@dataclass(frozen=True)
class RegionSnapshot:
    """A point-in-time copy of a region; counters are read without locking (each is atomic)."""

    claim_uid: str
    gpus: tuple[GpuUsage, ...]
    processes: tuple[ProcessSlot, ...]

    def gpu(self, uuid: str) -> GpuUsage:
        """The usage of the GPU with ``uuid``; KeyError if the claim has no such GPU."""
        for gpu in self.gpus:
            if gpu.uuid == uuid:
                return gpu
        raise KeyError(uuid)


def _flock(lock_type: int, start: int) -> bytes:
    return struct.pack(_FLOCK, lock_type, os.SEEK_SET, start, 1, 0)


def _slot_locked_by_other(fd: int, index: int) -> bool:
    answer = fcntl.fcntl(fd, _F_OFD_GETLK, _flock(fcntl.F_WRLCK, LOCK_SLOT_BASE + index))
    return struct.unpack(_FLOCK, answer)[0] != fcntl.F_UNLCK


def _lock_init(fd: int) -> None:
    deadline = time.monotonic() + _INIT_LOCK_TIMEOUT_S
    while True:
        try:
            fcntl.fcntl(fd, _F_OFD_SETLK, _flock(fcntl.F_WRLCK, LOCK_INIT))
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RegionError("region init lock held for more than 5 s") from None
            time.sleep(0.001)


def _unlock_init(fd: int) -> None:
    fcntl.fcntl(fd, _F_OFD_SETLK, _flock(fcntl.F_UNLCK, LOCK_INIT))


def _cstr(chars: Any) -> str:
    return ffi.string(chars).decode("utf-8", "replace")


def _set_cstr(dest: Any, value: str, size: int) -> None:
    raw = value.encode()
    if len(raw) >= size:
        raise RegionError(f"{value!r} does not fit in {size - 1} bytes")
    ffi.memmove(dest, raw + b"\0" * (size - len(raw)), size)


def _check_layout(region: Any, path: Path) -> None:
    if region.magic != MAGIC:
        raise RegionError(f"{path}: not an initialised vgpu region (magic {region.magic:#x})")
    if region.layout_version != LAYOUT_VERSION or region.size_bytes != REGION_SIZE:
        raise RegionError(
            f"{path}: region layout {region.layout_version}/{region.size_bytes} B, "
            f"this build reads {LAYOUT_VERSION}/{REGION_SIZE} B"
        )


def create_region(path: str | os.PathLike[str], config: ClaimConfig | None = None) -> None:
    """Create (or complete) the region file at ``path``, initialised and correctly sized.

    With ``config`` the claim UID, the GPU table and each GPU's limit and core cap are filled in,
    so usage metrics exist before the first CUDA call. Idempotent: an initialised region keeps its
    counters; a zero-filled or short file is initialised. The same init lock as the shim is held.
    """
    target = Path(path)
    fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        # Every process of the claim, whatever its user, writes its usage here (the umask of the
        # creating daemon must not decide that); the limits live in the read-only config.
        os.fchmod(fd, 0o666)
        _lock_init(fd)
        try:
            if os.fstat(fd).st_size < REGION_SIZE:
                os.ftruncate(fd, REGION_SIZE)
            with mmap.mmap(fd, REGION_SIZE) as mem, ffi.from_buffer("struct vgpu_region *", mem) as region:
                if region.magic == 0:
                    region.layout_version = LAYOUT_VERSION
                    region.size_bytes = REGION_SIZE
                    region.magic = MAGIC  # last: the shim treats magic != 0 as initialised
                _check_layout(region, target)
                if config is not None:
                    _fill_config(region, config, target)
        finally:
            _unlock_init(fd)
    finally:
        os.close(fd)


def _fill_config(region: Any, config: ClaimConfig, path: Path) -> None:
    existing = _cstr(region.claim_uid)
    if existing and existing != config.claim_uid:
        raise RegionError(f"{path}: region belongs to claim {existing}, not {config.claim_uid}")
    _set_cstr(region.claim_uid, config.claim_uid, CLAIM_LEN)
    for gpu in config.gpus:
        index = next((i for i in range(region.gpu_count) if _cstr(region.gpus[i].uuid) == gpu.uuid), None)
        if index is None:
            if region.gpu_count >= MAX_GPUS:
                raise RegionError(f"{path}: no room for GPU {gpu.uuid}")
            index = region.gpu_count
            _set_cstr(region.gpus[index].uuid, gpu.uuid, UUID_LEN)
            region.gpu_count = index + 1
        entry = region.gpus[index]
        entry.limit_bytes = gpu.memory_bytes
        entry.core_cap = gpu.cores
        entry.core_policy = POLICY_HARD if gpu.policy == "hard" else 0


def read_region(path: str | os.PathLike[str]) -> RegionSnapshot:
    """Read the usage counters and process slots of the region at ``path``."""
    target = Path(path)
    try:
        fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise RegionError(f"cannot open region {target}: {err.strerror}") from err
    try:
        if os.fstat(fd).st_size < REGION_SIZE:
            raise RegionError(f"{target}: {os.fstat(fd).st_size} bytes, a region has {REGION_SIZE}")
        with mmap.mmap(fd, REGION_SIZE, prot=mmap.PROT_READ) as mem:
            copy = ffi.new("struct vgpu_region *")
            ffi.memmove(copy, mem, REGION_SIZE)
        _check_layout(copy, target)
        gpu_count = min(int(copy.gpu_count), MAX_GPUS)
        uuids = [_cstr(copy.gpus[i].uuid) for i in range(gpu_count)]
        processes = []
        for index in range(min(int(copy.proc_high_water), MAX_PROCS)):
            slot = copy.procs[index]
            if slot.state != PROC_LIVE:
                continue
            processes.append(
                ProcessSlot(
                    index=index,
                    pid=int(slot.pid),
                    alive=_slot_locked_by_other(fd, index),
                    used_bytes={uuids[g]: int(slot.used[g]) for g in range(gpu_count)},
                    host_pid=max(0, int(slot.host_pid)),
                )
            )
        dead = [sum(p.used_bytes[uuids[g]] for p in processes if not p.alive) for g in range(gpu_count)]
        # The limiter updates the share only while a process of the claim runs: with none alive
        # the claim uses nothing, whatever the last update said.
        running = any(p.alive for p in processes)
        gpus = tuple(_gpu_usage(copy.gpus[i], uuids[i], dead[i], running) for i in range(gpu_count))
        return RegionSnapshot(claim_uid=_cstr(copy.claim_uid), gpus=gpus, processes=tuple(processes))
    finally:
        os.close(fd)


def _gpu_usage(entry: Any, uuid: str, dead_bytes: int, running: bool) -> GpuUsage:
    used = max(0, int(entry.used_bytes))
    return GpuUsage(
        uuid=uuid,
        limit_bytes=int(entry.limit_bytes),
        used_bytes=used,
        dead_process_bytes=min(used, max(0, dead_bytes)),
        peak_bytes=int(entry.peak_bytes),
        rejected_allocations=int(entry.rejected_allocs),
        context_bytes=int(entry.context_bytes),
        core_cap=int(entry.core_cap),
        core_policy="hard" if entry.core_policy == POLICY_HARD else "soft",
        measured_share_ppm=int(entry.measured_share_ppm) if running else 0,
        throttled_ns=int(entry.throttled_ns),
        launches_delayed=int(entry.launches_delayed),
        core_cap_enforced=running and 0 < int(entry.core_cap) < 100 and int(entry.limiter_state[LIM_GATE]) != 0,
        limit_errors=max(0, int(entry.limit_errors)),
        limit_error_call=ERROR_CALLS.get(int(entry.limit_error_call), ""),
        limit_error_code=int(entry.limit_error_code),
    )
