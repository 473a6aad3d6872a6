"""The per-claim ``config`` file the kubelet plugin writes and ``libvgpu.so`` reads.

The format is deliberately tiny so that the C parser in ``shim/src/config.c`` and this module
accept exactly the same language (see docs/shim.md):

    # comments start with '#' at the beginning of a line (after optional blanks)
    version=1
    claim=<claim uid>
    gpu uuid=GPU-... memory=<bytes> cores=<0-100> policy=<soft|hard>

Records may come in any order; exactly one ``version`` and one ``claim`` record, one ``gpu``
record per GPU of the claim (at least one, at most ``MAX_GPUS``, UUIDs unique). Any unknown
record, unknown or repeated key, or out-of-range value is an error: the shim fails closed on it,
so this module refuses to produce or accept anything the shim would refuse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, cast

FORMAT_VERSION = 1
# Must equal VGPU_MAX_GPUS in shim/include/vgpu_region.h (a test checks it).
MAX_GPUS = 16
# Must equal VGPU_UUID_LEN - 1 and VGPU_CLAIM_LEN - 1 in the header (a test checks them).
MAX_UUID_CHARS = 95
MAX_CLAIM_CHARS = 127
MAX_MEMORY_BYTES = 2**63 - 1

Policy = Literal["soft", "hard"]
_POLICIES: tuple[str, ...] = ("soft", "hard")
_GPU_KEYS = ("uuid", "memory", "cores", "policy")
_UUID_RE = re.compile(r"^(GPU|MIG)-[0-9A-Za-z-]+$")
_CLAIM_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._-]*$")
_UINT_RE = re.compile(r"^[0-9]+$")
_BLANKS_RE = re.compile(r"[ \t]+")
# Printable ASCII, tab and carriage return: exactly what the C parser accepts on a line.
_BAD_CHAR_RE = re.compile(r"[^\t\r\x20-\x7e]")


class ClaimConfigError(ValueError):
    """A claim config that the shim would reject; the message names the line and field."""


@dataclass(frozen=True)
class GpuLimit:
    """Limits of one GPU of a claim: a hard memory wall and an SM-core cap in percent."""

    uuid: str
    memory_bytes: int
    cores: int
    policy: Policy

    def __post_init__(self) -> None:
        if not isinstance(self.uuid, str) or not _UUID_RE.match(self.uuid):
            raise ClaimConfigError(f"gpu uuid {self.uuid!r} is not a GPU-/MIG- UUID")
        if len(self.uuid) > MAX_UUID_CHARS:
            raise ClaimConfigError(f"gpu uuid {self.uuid!r} is longer than {MAX_UUID_CHARS} characters")
        if isinstance(self.memory_bytes, bool) or not isinstance(self.memory_bytes, int):
            raise ClaimConfigError(f"gpu {self.uuid}: memory must be an integer number of bytes")
        if not 1 <= self.memory_bytes <= MAX_MEMORY_BYTES:
            raise ClaimConfigError(f"gpu {self.uuid}: memory {self.memory_bytes} must be 1..{MAX_MEMORY_BYTES} bytes")
        if isinstance(self.cores, bool) or not isinstance(self.cores, int) or not 0 <= self.cores <= 100:
            raise ClaimConfigError(f"gpu {self.uuid}: cores {self.cores!r} must be an integer 0..100")
        if self.policy not in _POLICIES:
            raise ClaimConfigError(f"gpu {self.uuid}: policy {self.policy!r} must be soft or hard")


@dataclass(frozen=True)
class ClaimConfig:
    """Everything the shim needs to enforce one claim: its UID and one limit per GPU."""

    claim_uid: str
    gpus: tuple[GpuLimit, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.claim_uid, str) or not _CLAIM_RE.match(self.claim_uid):
            raise ClaimConfigError(f"claim uid {self.claim_uid!r} must be letters, digits, '.', '_' or '-'")
        if len(self.claim_uid) > MAX_CLAIM_CHARS:
            raise ClaimConfigError(f"claim uid is longer than {MAX_CLAIM_CHARS} characters")
        if not 1 <= len(self.gpus) <= MAX_GPUS:
            raise ClaimConfigError(f"a claim needs 1..{MAX_GPUS} gpu records, got {len(self.gpus)}")
        seen: set[str] = set()
        for gpu in self.gpus:
            if gpu.uuid in seen:
                raise ClaimConfigError(f"gpu {gpu.uuid} appears twice")
            seen.add(gpu.uuid)


def render(config: ClaimConfig) -> str:
    """Return the text of the ``config`` file for ``config`` (parse(render(c)) == c)."""
    lines = [
        "# vgpu-dra claim config; read by libvgpu.so, see docs/shim.md",
        f"version={FORMAT_VERSION}",
        f"claim={config.claim_uid}",
    ]
    for gpu in config.gpus:
        lines.append(f"gpu uuid={gpu.uuid} memory={gpu.memory_bytes} cores={gpu.cores} policy={gpu.policy}")
    return "\n".join(lines) + "\n"


def _parse_uint(value: str, lineno: int, field: str, maximum: int) -> int:
    # Plain decimal digits only: the C side rejects signs, spaces, hex and suffixes too.
    if not _UINT_RE.match(value):
        raise ClaimConfigError(f"line {lineno}: {field}={value!r} is not a decimal integer")
    number = int(value)
    if number > maximum:
        raise ClaimConfigError(f"line {lineno}: {field}={value} is larger than {maximum}")
    return number


def _parse_gpu(tokens: list[str], lineno: int) -> GpuLimit:
    fields: dict[str, str] = {}
    for token in tokens:
        key, sep, value = token.partition("=")
        if not sep:
            raise ClaimConfigError(f"line {lineno}: gpu field {token!r} is not key=value")
        if key not in _GPU_KEYS:
            raise ClaimConfigError(f"line {lineno}: unknown gpu field {key!r}")
        if key in fields:
            raise ClaimConfigError(f"line {lineno}: gpu field {key!r} repeated")
        fields[key] = value
    for key in _GPU_KEYS:
        if key not in fields:
            raise ClaimConfigError(f"line {lineno}: gpu record lacks {key}=")
    memory = _parse_uint(fields["memory"], lineno, "memory", MAX_MEMORY_BYTES)
    cores = _parse_uint(fields["cores"], lineno, "cores", 100)
    policy = fields["policy"]
    if policy not in _POLICIES:
        raise ClaimConfigError(f"line {lineno}: policy={policy!r} must be soft or hard")
    try:
        return GpuLimit(uuid=fields["uuid"], memory_bytes=memory, cores=cores, policy=cast(Policy, policy))
    except ClaimConfigError as err:
        raise ClaimConfigError(f"line {lineno}: {err}") from None


def parse(text: str) -> ClaimConfig:
    """Parse a ``config`` file; raise ClaimConfigError naming the offending line and field."""
    version: int | None = None
    claim: str | None = None
    gpus: list[GpuLimit] = []
    # Lines end at "\n" only and tokens are separated by blanks and tabs only, as in the shim.
    for lineno, raw in enumerate(text.split("\n"), start=1):
        bad = _BAD_CHAR_RE.search(raw)
        if bad:
            raise ClaimConfigError(f"line {lineno}: invalid character {ord(bad.group()):#04x}")
        line = raw.strip(" \t\r")
        if not line or line.startswith("#"):
            continue
        tokens = _BLANKS_RE.split(line)
        head = tokens[0]
        if head == "gpu":
            gpu = _parse_gpu(tokens[1:], lineno)
            if any(g.uuid == gpu.uuid for g in gpus):
                raise ClaimConfigError(f"line {lineno}: gpu {gpu.uuid} appears twice")
            gpus.append(gpu)
            if len(gpus) > MAX_GPUS:
                raise ClaimConfigError(f"line {lineno}: more than {MAX_GPUS} gpu records")
            continue
        if len(tokens) != 1:
            raise ClaimConfigError(f"line {lineno}: unexpected text after {head!r}")
        key, sep, value = head.partition("=")
        if not sep:
            raise ClaimConfigError(f"line {lineno}: record {head!r} is not key=value or a gpu record")
        if key == "version":
            if version is not None:
                raise ClaimConfigError(f"line {lineno}: version repeated")
            version = _parse_uint(value, lineno, "version", 2**31 - 1)
            if version != FORMAT_VERSION:
                raise ClaimConfigError(f"line {lineno}: version={version} is not supported (expected {FORMAT_VERSION})")
        elif key == "claim":
            if claim is not None:
                raise ClaimConfigError(f"line {lineno}: claim repeated")
            claim = value
        else:
            raise ClaimConfigError(f"line {lineno}: unknown record {key!r}")
    if version is None:
        raise ClaimConfigError("missing version= record")
    if claim is None:
        raise ClaimConfigError("missing claim= record")
    if not gpus:
        raise ClaimConfigError("no gpu records")
    return ClaimConfig(claim_uid=claim, gpus=tuple(gpus))
