"""The counters and live process slots of claims' regions, read cheaply enough to poll 100 claims
every few seconds (the usage watchdog).

``driver.region.read_region`` copies the whole region (about 190 KB: 1024 process slots) for every
read. This reader keeps each region open, and per read takes only the header and GPU table plus
the slots below the region's high-water mark, with ``pread``. Layout and offsets come from the
same cffi definition of ``vgpu_region.h`` as ``driver.region``; liveness is the same slot lock test.
"""
from __future__ import annotations

import fcntl
import os
import struct
from vgpu_dra.driver.region import (CLAIM_LEN, LAYOUT_VERSION, LOCK_SLOT_BASE, MAGIC, MAX_GPUS, MAX_PROCS, PROC_LIVE,
                                    REGION_SIZE, UUID_LEN)
from vgpu_dra.driver.region import RegionError, ffi  # noqa: E402 - the layout
from vgpu_dra.driver.usage_audit import RegionView, SlotView

_HEAD_BYTES = ffi.offsetof("struct vgpu_region", "procs")
_SLOT_BYTES = ffi.sizeof("struct vgpu_proc")
_F_OFD_GETLK = getattr(fcntl, "F_OFD_GETLK", 36)
_FLOCK = "hhqqi4x"


def _at(struct_name: str, member: str) -> int:
    return int(ffi.offsetof(struct_name, member))


# Offsets from the cffi definition of the header, read with struct (cheaper than cffi objects).
_HEADER = struct.Struct("<QIIII")  # magic, layout_version, size_bytes, gpu_count, proc_high_water
assert [_at("struct vgpu_region", m) for m in ("layout_version", "size_bytes", "gpu_count", "proc_high_water")] \
    == [8, 12, 16, 20]
_CLAIM_AT, _CLAIM_LEN = _at("struct vgpu_region", "claim_uid"), CLAIM_LEN
_GPUS_AT, _GPU_BYTES = _at("struct vgpu_region", "gpus"), ffi.sizeof("struct vgpu_gpu")
_UUID_AT, _UUID_LEN = _at("struct vgpu_gpu", "uuid"), UUID_LEN
_LIMIT_AT, _USED_AT = _at("struct vgpu_gpu", "limit_bytes"), _at("struct vgpu_gpu", "used_bytes")
_STATE_AT, _PID_AT = _at("struct vgpu_proc", "state"), _at("struct vgpu_proc", "pid")
_SLOT_USED_AT, _HOST_PID_AT = _at("struct vgpu_proc", "used"), _at("struct vgpu_proc", "host_pid")
_I64 = struct.Struct("<q")
assert (_STATE_AT, _PID_AT, _SLOT_USED_AT, _LIMIT_AT - _UUID_AT, _USED_AT - _LIMIT_AT) == (0, 4, 16, UUID_LEN, 8)
# state, pid, used[0], host_pid of a slot; uuid, limit_bytes, used_bytes of a GPU entry: one unpack each.
_SLOT = struct.Struct(f"<ii8xq{_HOST_PID_AT - _SLOT_USED_AT - 8}xi")
_GPU = struct.Struct(f"<{UUID_LEN}sqq")


_PROBES: list[bytes] = []  # F_OFD_GETLK arguments for slot i, made once
_FIRST_READ = _HEAD_BYTES + 8 * _SLOT_BYTES  # one pread covers a claim with up to 8 processes


def _alive(fd: int, index: int) -> bool:
    while len(_PROBES) <= index:
        _PROBES.append(struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, LOCK_SLOT_BASE + len(_PROBES), 1, 0))
    return fcntl.fcntl(fd, _F_OFD_GETLK, _PROBES[index])[0] != fcntl.F_UNLCK  # l_type, little-endian short


_TEXTS: dict[bytes, str] = {}  # UUIDs and claim UIDs repeat at every poll: decode each once


def _text(raw: bytes, at: int, size: int) -> str:
    value = raw[at:at + size].split(b"\0", 1)[0]
    text = _TEXTS.get(value)
    if text is None:
        if len(_TEXTS) > 4096:
            _TEXTS.clear()
        text = _TEXTS[value] = value.decode("utf-8", "replace")
    return text


def read_view(fd: int, path: str, size: int) -> RegionView:
    """The region open at ``fd`` (``size`` bytes long) as the audit reads it; raises RegionError."""
    head = os.pread(fd, _FIRST_READ, 0)
    if len(head) < _HEAD_BYTES or size < REGION_SIZE:
        raise RegionError(f"{path}: shorter than a region ({REGION_SIZE} bytes)")
    magic, layout, size_bytes, gpu_count, high_water = _HEADER.unpack_from(head, 0)
    if magic != MAGIC or layout != LAYOUT_VERSION or size_bytes != REGION_SIZE:
        raise RegionError(f"{path}: not an initialised region of layout {LAYOUT_VERSION}")
    count = min(gpu_count, MAX_GPUS)
    uuids, used, limit = [], {}, {}
    for g in range(count):
        raw_uuid, limit_bytes, used_bytes = _GPU.unpack_from(head, _GPUS_AT + g * _GPU_BYTES + _UUID_AT)
        uuid = _text(raw_uuid, 0, UUID_LEN)
        uuids.append(uuid)
        used[uuid] = max(0, used_bytes)
        limit[uuid] = limit_bytes
    high = min(high_water, MAX_PROCS)
    slots = []
    if high:
        raw = head if high <= 8 else os.pread(fd, _HEAD_BYTES + high * _SLOT_BYTES, 0)
        for i in range(min(high, (len(raw) - _HEAD_BYTES) // _SLOT_BYTES)):
            base = _HEAD_BYTES + i * _SLOT_BYTES
            state, pid, used0, host_pid = _SLOT.unpack_from(raw, base)
            if state != PROC_LIVE:
                continue
            slot_used = ({uuids[0]: used0} if count == 1 else
                         {uuids[g]: _I64.unpack_from(raw, base + _SLOT_USED_AT + 8 * g)[0] for g in range(count)})
            slots.append(SlotView(pid, max(0, host_pid), _alive(fd, i), slot_used))
    return RegionView(claim_uid=_text(head, _CLAIM_AT, _CLAIM_LEN), used=used, limit=limit, slots=tuple(slots))


class RegionReaders:
    """Open regions by claim UID, reopened when the file was replaced, closed when the claim went."""

    def __init__(self) -> None:
        self._open: dict[str, tuple[int, int, str]] = {}  # uid -> (fd, inode, path)

    def read(self, uid: str, path: str) -> RegionView:
        """The region of claim ``uid`` at ``path``; raises RegionError."""
        held = self._open.get(uid)
        if held is not None:
            found = os.fstat(held[0])
            if found.st_nlink == 0 or held[2] != path:  # removed or renamed over: open the new one
                self.forget(uid)
                held = None
        if held is None:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc:
                raise RegionError(f"cannot open region {path}: {exc.strerror}") from exc
            found = os.fstat(fd)
            held = (fd, found.st_ino, path)
            self._open[uid] = held
        return read_view(held[0], path, found.st_size)

    def keep_only(self, uids: set[str]) -> None:
        """Close the regions of claims no longer prepared."""
        for uid in set(self._open) - uids:
            self.forget(uid)

    def forget(self, uid: str) -> None:
        """Close one region."""
        held = self._open.pop(uid, None)
        if held is not None:
            os.close(held[0])

    def close(self) -> None:
        """Close them all."""
        self.keep_only(set())
