"""The kubelet plugin's checkpoint: which claims are prepared on this node, and how.

One JSON document, schema-versioned and checksummed, replaced atomically (temp file in the same
directory, fsync, rename, fsync of the directory) so a crash at any instant leaves either the old
or the new document. It records the boot ID: after a reboot /var/run is empty, so the plugin knows
to re-create the CDI specs of claims still prepared. Each claim entry holds everything needed to
re-create its CDI spec and claim directory without the API server.

Claims are recorded ``preparing`` before any file is written and ``prepared`` after; a
``preparing`` entry found at start means a prepare was cut short, and its files are removed.
Unknown fields are ignored on read (a newer patch release may add some); a newer schema version,
a bad checksum or unparsable JSON raise CorruptCheckpoint.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

SCHEMA_VERSION = 1
ClaimState = Literal["preparing", "prepared"]


class CorruptCheckpoint(ValueError):
    """The checkpoint file exists but cannot be trusted; the message says why."""


@dataclass(frozen=True, slots=True)
class PreparedDevice:
    """One device of a prepared claim: identity, GPU facts and the enforced share."""

    request: str
    pool: str
    device: str
    share_id: str | None
    gpu_uuid: str
    gpu_index: int
    gpu_minor: int
    memory_bytes: int
    cores: int
    core_policy: str
    nvidia_cdi_device: str | None
    cdi_device_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PreparedClaim:
    """A claim this node prepared (or started to prepare)."""

    uid: str
    namespace: str
    name: str
    state: ClaimState
    devices: tuple[PreparedDevice, ...]
    shim_host_path: str
    pods: tuple[str, ...] = ()
    # (name, uid) of the reserving pods; older checkpoints lack it (filled by the next resync).
    pod_refs: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Checkpoint:
    """The whole document."""

    boot_id: str
    claims: Mapping[str, PreparedClaim] = field(default_factory=dict)

    def with_claims(self, claims: Mapping[str, PreparedClaim]) -> Checkpoint:
        """A copy holding `claims` instead."""
        return replace(self, claims=dict(claims))


def _canonical(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def _checksum(document: Mapping[str, Any]) -> str:
    body = {k: v for k, v in document.items() if k != "checksum"}
    return "sha256:" + hashlib.sha256(_canonical(body)).hexdigest()


def encode(checkpoint: Checkpoint) -> bytes:
    """The file content for `checkpoint`."""
    document: dict[str, Any] = {
        "version": SCHEMA_VERSION,
        "bootID": checkpoint.boot_id,
        "claims": {uid: asdict(claim) for uid, claim in sorted(checkpoint.claims.items())},
    }
    document["checksum"] = _checksum(document)
    return json.dumps(document, sort_keys=True, indent=1).encode() + b"\n"


def _known(cls: type, raw: Mapping[str, Any]) -> dict[str, Any]:
    names = set(cls.__dataclass_fields__)  # type: ignore[attr-defined]
    return {k: v for k, v in raw.items() if k in names}


def _claim(raw: Mapping[str, Any]) -> PreparedClaim:
    values = _known(PreparedClaim, raw)
    values["devices"] = tuple(
        PreparedDevice(**{**_known(PreparedDevice, d), "cdi_device_ids": tuple(d["cdi_device_ids"])})
        for d in raw["devices"])
    values["pods"] = tuple(raw.get("pods") or ())
    values["pod_refs"] = tuple((str(p[0]), str(p[1])) for p in raw.get("pod_refs") or () if len(p) == 2)
    if values.get("state") not in ("preparing", "prepared"):
        raise ValueError(f"state {values.get('state')!r}")
    return PreparedClaim(**values)


def decode(data: bytes) -> Checkpoint:
    """Parse and verify a checkpoint file's content; raises CorruptCheckpoint."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptCheckpoint(f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise CorruptCheckpoint("not a JSON object")
    version = document.get("version")
    if not isinstance(version, int) or version < 1:
        raise CorruptCheckpoint(f"no valid schema version (got {version!r})")
    if version > SCHEMA_VERSION:
        raise CorruptCheckpoint(f"schema version {version} is newer than this plugin's {SCHEMA_VERSION}")
    if document.get("checksum") != _checksum(document):
        raise CorruptCheckpoint("checksum mismatch (the file was modified or partly written)")
    try:
        claims = {uid: _claim(raw) for uid, raw in (document.get("claims") or {}).items()}
        return Checkpoint(boot_id=str(document["bootID"]), claims=claims)
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptCheckpoint(f"malformed claim entry: {exc!r}") from None


def atomic_write(path: Path, data: bytes, mode: int = 0o644, *, durable: bool = True) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new content.

    `durable` also fsyncs the file and its directory, so the new content survives a power loss;
    without it the content survives a process crash (the page cache holds it), which is enough
    for files that are rewritten anyway after a reboot.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fchmod(fd, mode)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if not durable:
        return
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def is_temp_file(name: str) -> bool:
    """Whether a directory entry is a leftover of atomic_write (safe to delete at start)."""
    return name.startswith(".") and ".tmp-" in name


class CheckpointStore:
    """Loads and saves the checkpoint at one path."""

    def __init__(self, path: Path):
        self.path = path

    def load(self) -> Checkpoint | None:
        """The stored checkpoint, None if there is none; raises CorruptCheckpoint."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        return decode(data)

    def save(self, checkpoint: Checkpoint, *, durable: bool = True) -> None:
        """Store `checkpoint` atomically (and durably, unless told otherwise)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, encode(checkpoint), 0o600, durable=durable)

    def identity(self) -> tuple[int, int, int] | None:
        """(inode, size, mtime) of the file: changes whenever another writer replaced it."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def quarantine(self) -> Path | None:
        """Move a corrupt file aside (kept for inspection) so a fresh one can be written."""
        target = self.path.with_name(self.path.name + ".corrupt")
        try:
            os.replace(self.path, target)
        except FileNotFoundError:
            return None
        return target


def read_boot_id(path: Path) -> str:
    """The kernel's boot ID (changes on every boot)."""
    boot_id = path.read_text().strip()
    if not boot_id:
        raise ValueError(f"{path} is empty")
    return boot_id
