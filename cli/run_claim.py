"""The private claim directory of one `vgpu-dra run`: created like the kubelet plugin prepares a
claim (config + region), owned through a lock that `run` and every process of its command hold,
and removed only once no process uses it any more.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vgpu_dra.driver.claimconfig import ClaimConfig, GpuLimit, Policy, render
from vgpu_dra.driver.inventory import GpuInfo
from vgpu_dra.driver.region import RegionError, create_region, read_region


@dataclass
class PrivateClaim:
    """A claim directory that exists only for one run; ``lock_fd`` holds its owner lock."""

    base: Path
    claims_root: Path
    config: ClaimConfig
    lock_fd: int = -1

    @property
    def region(self) -> Path:
        return self.claims_root / self.config.claim_uid / "region"


_BASE_PREFIX = "vgpu-dra-run-"
_OWNER_FILE = "owner.pid"
_LOCK_FILE = "owner.lock"


def private_claims_parent() -> Path:
    """Where runs keep their claim directories: /run for root (a tmpfs, gone at reboot), else the
    temporary directory."""
    return Path("/run") if os.geteuid() == 0 and os.access("/run", os.W_OK) else Path(tempfile.gettempdir())


def _region_in_use(base: Path) -> bool:
    """A live process (any PID namespace) holds a slot in one of the base's claim regions."""
    for region in base.glob("claims/*/region"):
        try:
            if any(process.alive for process in read_region(region).processes):
                return True
        except RegionError:
            continue
    return False


def remove_if_unused(base: Path) -> bool:
    """Remove a run's claim directory unless a process still uses it: one holding its owner lock
    (`run` and every process of its command inherit it) or a slot in one of its regions. The
    lock is taken while removing, so no run can start using the directory meanwhile."""
    try:
        fd = os.open(base / _LOCK_FILE, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = -1  # an older run's directory: only its regions and owner PID tell
    except OSError:
        return False
    try:
        if fd >= 0:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return False  # held: run or a process of its command is alive
        elif _owner_alive(base):
            return False
        if _region_in_use(base):
            return False
        shutil.rmtree(base, ignore_errors=True)
        return True
    finally:
        if fd >= 0:
            os.close(fd)


def _owner_alive(base: Path) -> bool:
    try:
        os.kill(int((base / _OWNER_FILE).read_text()), 0)
        return True
    except ProcessLookupError:
        return False
    except (OSError, ValueError):
        return True  # unreadable, or another user's live process: keep it


def remove_stale_claims(parent: Path) -> list[Path]:
    """Remove what runs killed with SIGKILL left behind: our directories no process uses any more
    (never one in use, whatever its owner PID says)."""
    removed = []
    for base in parent.glob(f"{_BASE_PREFIX}*"):
        try:
            if base.stat().st_uid != os.geteuid():
                continue
        except OSError:
            continue
        if remove_if_unused(base):
            removed.append(base)
    return removed


def create_private_claim(gpus: Sequence[GpuInfo], memory_bytes: int, cores: int, policy: Policy) -> PrivateClaim:
    """Write config (read-only) and region, as the kubelet plugin does at Prepare, and take the
    directory's owner lock."""
    parent = private_claims_parent()
    remove_stale_claims(parent)
    base = Path(tempfile.mkdtemp(prefix=_BASE_PREFIX, dir=parent))
    os.chmod(base, 0o755)
    (base / _OWNER_FILE).write_text(f"{os.getpid()}\n")
    # Held for the directory's whole life by run and, inherited, by every process of the command.
    lock_fd = os.open(base / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock_fd, fcntl.LOCK_EX)
    config = ClaimConfig(
        claim_uid=f"run-{socket.gethostname().split('.')[0][:40] or 'host'}-{uuid.uuid4().hex[:12]}",
        gpus=tuple(GpuLimit(gpu.uuid, memory_bytes, cores, policy) for gpu in gpus))
    claims_root = base / "claims"
    directory = claims_root / config.claim_uid
    directory.mkdir(parents=True)
    (directory / "config").write_text(render(config))
    os.chmod(directory / "config", 0o444)
    create_region(directory / "region", config)
    return PrivateClaim(base=base, claims_root=claims_root, config=config, lock_fd=lock_fd)
