"""The files of prepared claims on the host: claim directories and transient CDI specs.

A claim directory ``<state>/claims/<uid>/`` holds ``config`` (the limits, read-only for
containers) and ``region`` (the shim's shared accounting, writable by the claim's processes).
The CDI spec lives in the CDI directory as ``k8s.vgpu.dra.dev-claim_<uid>.json``. Every write is
atomic (temp file + rename), so a crash never leaves a half-written file under a final name; temp
files are recognisable and removed at start.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import structlog
import yaml

from vgpu_dra.api.names import CDI_VENDOR
from vgpu_dra.driver import cdi
from vgpu_dra.driver.checkpoint import atomic_write, is_temp_file
from vgpu_dra.driver.claimconfig import ClaimConfig, render
from vgpu_dra.driver.region import create_region

log = structlog.get_logger(__name__)

# Kubernetes UIDs are UUIDs; anything with a path separator or leading dot must never reach a path.
_UID_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_-]{0,127}$")


class InvalidClaimUid(ValueError):
    """A claim UID that cannot name a file (the kubelet sent something that is not a UID)."""


def check_uid(uid: str) -> str:
    """Return `uid` if it is safe to use in a file name, else raise InvalidClaimUid."""
    if not isinstance(uid, str) or not _UID_RE.match(uid):
        raise InvalidClaimUid(f"{uid!r} is not a valid claim UID")
    return uid
_SPEC_SUFFIX = ".json"


class ClaimFiles:
    """Creates, checks and removes the on-disk state of claims."""

    def __init__(self, claims_dir: Path, cdi_dir: Path, kind: str = cdi.CDI_KIND, *, durable: bool = False):
        self.claims_dir = claims_dir
        self.cdi_dir = cdi_dir
        self.kind = kind
        """The CDI kind of the specs; the plugin's own by default (``vgpu-dra cdi`` uses another)."""
        self.durable = durable
        """fsync every file: for files nothing rewrites after a power loss (``vgpu-dra cdi``'s)."""
        self._spec_prefix = cdi.spec_file_name("", kind)[:-len(_SPEC_SUFFIX)]

    def claim_dir(self, uid: str) -> Path:
        """Host directory of a claim."""
        return self.claims_dir / check_uid(uid)

    def spec_path(self, uid: str) -> Path:
        """Host path of a claim's CDI spec."""
        return self.cdi_dir / cdi.spec_file_name(check_uid(uid), self.kind)

    def write_claim_dir(self, config: ClaimConfig, *, fresh_region: bool = False) -> Path:
        """Create the claim directory with its config and an initialised region.

        `fresh_region` replaces an existing region (after a reboot no process can still use it);
        otherwise an existing region keeps its counters (a repeated prepare must not reset them).
        """
        directory = self.claim_dir(config.claim_uid)
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o755)
        # Not fsynced for the plugin: after a power loss the boot ID changes and every prepared
        # claim's files are rewritten at start; a process crash keeps the page cache.
        atomic_write(directory / cdi.CONFIG_FILE, render(config).encode(), 0o444, durable=self.durable)
        region = directory / cdi.REGION_FILE
        if fresh_region:
            region.unlink(missing_ok=True)
        create_region(region, config)
        # Processes of the claim may run as any user: the region must be writable by them all.
        os.chmod(region, 0o666)
        return directory

    def write_spec(self, uid: str, spec: dict[str, Any]) -> Path:
        """Write a claim's CDI spec atomically."""
        self.cdi_dir.mkdir(parents=True, exist_ok=True)
        path = self.spec_path(uid)
        atomic_write(path, json.dumps(spec, indent=2).encode() + b"\n", 0o644, durable=self.durable)
        return path

    def is_complete(self, uid: str) -> bool:
        """Whether the spec, config and region of a claim all exist."""
        directory = self.claim_dir(uid)
        return (self.spec_path(uid).is_file() and (directory / cdi.CONFIG_FILE).is_file()
                and (directory / cdi.REGION_FILE).is_file())

    def remove(self, uid: str) -> None:
        """Remove a claim's spec and directory; missing files are fine."""
        self.spec_path(uid).unlink(missing_ok=True)
        shutil.rmtree(self.claim_dir(uid), ignore_errors=True)

    def prepared_uids_on_disk(self) -> set[str]:
        """UIDs that have a spec file or a claim directory."""
        uids: set[str] = set()
        if self.cdi_dir.is_dir():
            for entry in self.cdi_dir.iterdir():
                uid = entry.name[len(self._spec_prefix):-len(_SPEC_SUFFIX)]
                if entry.name.startswith(self._spec_prefix) and entry.name.endswith(_SPEC_SUFFIX) and _UID_RE.match(uid):
                    uids.add(uid)
        if self.claims_dir.is_dir():
            uids.update(entry.name for entry in self.claims_dir.iterdir()
                        if entry.is_dir() and _UID_RE.match(entry.name))
        return uids

    def remove_strays(self, keep: Iterable[str]) -> list[str]:
        """Remove files of claims not in `keep` and leftovers of interrupted atomic writes."""
        keep = set(keep)
        removed = sorted(self.prepared_uids_on_disk() - keep)
        for uid in removed:
            self.remove(uid)
        for directory in [self.cdi_dir, self.claims_dir, *(self.claim_dir(uid) for uid in keep)]:
            if directory.is_dir():
                for entry in directory.iterdir():
                    if is_temp_file(entry.name) and entry.is_file():
                        entry.unlink(missing_ok=True)
        if removed:
            log.info("removed files of claims that are not prepared", claims=removed)
        return removed


def nvidia_gpu_device_names(directories: Iterable[Path]) -> frozenset[str]:
    """GPU device names in NVIDIA's generated CDI specs (kind nvidia.com/gpu) in `directories`."""
    specs = []
    for directory in directories:
        if not directory.is_dir():
            continue
        for entry in sorted(directory.iterdir()):
            if entry.name.startswith(f"{CDI_VENDOR}-") or entry.suffix not in (".json", ".yaml", ".yml"):
                continue
            try:
                text = entry.read_text()
                document = json.loads(text) if entry.suffix == ".json" else yaml.safe_load(text)
            except (OSError, ValueError, yaml.YAMLError) as exc:
                log.warning("ignoring unreadable CDI spec", path=str(entry), error=str(exc))
                continue
            if isinstance(document, dict):
                specs.append(document)
    return cdi.nvidia_gpu_device_names(specs)
