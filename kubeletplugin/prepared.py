"""What the kubelet sends and gets back per claim, independent of the gRPC API version."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ClaimRef:
    """A claim as the kubelet names it in NodePrepare/NodeUnprepareResources."""

    namespace: str
    uid: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name} ({self.uid})"


@dataclass(frozen=True, slots=True)
class PreparedDevice:
    """One allocated device of a prepared claim, as reported to the kubelet."""

    request_names: tuple[str, ...]
    pool_name: str
    device_name: str
    cdi_device_ids: tuple[str, ...]
    share_id: str | None = None


@dataclass(frozen=True, slots=True)
class ClaimOutcome:
    """The answer for one claim: devices, or an error that says what is wrong."""

    devices: tuple[PreparedDevice, ...] = field(default_factory=tuple)
    error: str = ""

    @classmethod
    def failed(cls, message: str) -> ClaimOutcome:
        """An outcome that tells the kubelet this claim failed, with a user-readable reason."""
        return cls(devices=(), error=message)
