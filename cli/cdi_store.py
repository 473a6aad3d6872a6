"""Where `vgpu-dra cdi` keeps its shares on a host: one record per share, the claim directories
and the installed shim, under one state directory, all changes under one lock.

    <state>/shares/<name>.json     the share's record (HostShare)
    <state>/claims/<name>/         config + region, exactly as the kubelet plugin writes them
    <state>/shim/<version>/        libvgpu.so + ld.so.preload, immutable (kubeletplugin.shim_install)

The default state directory sits beside the kubelet plugin's, never inside the folders the plugin
sweeps (its ``claims`` and ``shim``), so a node may run both.
"""
from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from vgpu_dra.api.names import HOST_CDI_KIND
from vgpu_dra.driver.checkpoint import atomic_write
from vgpu_dra.driver.host_share import HostShare, ShareError, check_share_name
from vgpu_dra.kubeletplugin.claim_files import ClaimFiles
from vgpu_dra.kubeletplugin.settings import DEFAULT_STATE_DIR
from vgpu_dra.kubeletplugin.shim_install import remove_unused_versions

DEFAULT_HOST_STATE_DIR = DEFAULT_STATE_DIR / "host"


@dataclass(frozen=True)
class BrokenRecord:
    """A record file that cannot be read back (listed, so the user can delete it)."""

    name: str
    error: str


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


class ShareStore:
    """The shares of one state directory."""

    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.records_dir = state_dir / "shares"
        self.claims_dir = state_dir / "claims"
        self.shim_dir = state_dir / "shim"

    def files(self, cdi_dir: Path) -> ClaimFiles:
        """The plugin's claim-file writer, for this store's claims and the given CDI directory."""
        return ClaimFiles(self.claims_dir, cdi_dir, HOST_CDI_KIND, durable=True)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's lock: two `vgpu-dra cdi` at once never interleave their changes."""
        try:
            self.records_dir.mkdir(parents=True, exist_ok=True)
            handle = open(self.state_dir / ".lock", "a+")
        except OSError as exc:
            raise ShareError(f"cannot write the state directory {self.state_dir} ({_why(exc)}): run as root, "
                             "or pass --state-dir DIR that you can write") from None
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield

    def record_path(self, name: str) -> Path:
        """Host path of a share's record."""
        return self.records_dir / f"{check_share_name(name)}.json"

    def load(self, name: str) -> HostShare | None:
        """The share named `name`, or None when there is none."""
        path = self.record_path(name)
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ShareError(f"cannot read share {name} ({path}: {_why(exc)})") from None
        try:
            return HostShare.from_record(json.loads(text))
        except (ValueError, ShareError) as exc:
            raise ShareError(f"share record {path} is damaged ({exc}): delete it with "
                             f"'vgpu-dra cdi delete {name} --force'") from None

    def all(self) -> tuple[list[HostShare], list[BrokenRecord]]:
        """Every share, by name, and the records that cannot be read."""
        shares: list[HostShare] = []
        broken: list[BrokenRecord] = []
        if not self.records_dir.is_dir():
            return shares, broken
        for path in sorted(self.records_dir.glob("*.json")):
            try:
                share = self.load(path.stem)
            except ShareError as exc:
                broken.append(BrokenRecord(path.stem, str(exc)))
                continue
            if share is not None:
                shares.append(share)
        return shares, broken

    def save(self, share: HostShare) -> None:
        """Write a share's record atomically."""
        atomic_write(self.record_path(share.name), (json.dumps(share.to_record(), indent=2) + "\n").encode(), 0o644)

    def remove(self, name: str, cdi_dir: Path) -> None:
        """Remove a share's spec (in `cdi_dir`), claim directory and record, then the shim versions
        no share uses any more."""
        self.files(cdi_dir).remove(name)
        self.record_path(name).unlink(missing_ok=True)
        remaining, _ = self.all()
        keep = {Path(s.shim_host_path).parent.resolve() for s in remaining}
        remove_unused_versions(self.shim_dir, keep)


def writable_dir(path: Path, option: str) -> Path:
    """Create `path` if needed and check it can be written; ShareError naming `option` otherwise."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ShareError(f"{option} {path}: cannot create it ({_why(exc)}): run as root or pass a "
                         "directory you can write") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ShareError(f"{option} {path} is not writable: run as root or pass a directory you can write")
    return path
