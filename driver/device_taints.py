"""Device taints (published in a ResourceSlice) and a request's tolerations, as DRA matches them.

Pure. A device with a taint whose effect is ``NoSchedule`` or ``NoExecute`` cannot be allocated to
a request that does not tolerate it; other effects (``None`` and any unknown one) never block. A
toleration matches a taint the way a pod toleration matches a node taint: an empty effect matches
every effect, an empty key every key, ``Exists`` any value, ``Equal`` (the default) the same value.
``tolerationSeconds`` only matters for eviction, not for allocation.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

BLOCKING_EFFECTS = ("NoSchedule", "NoExecute")


class TaintError(ValueError):
    """A taint or toleration that cannot be read; the message names the field."""


@dataclass(frozen=True, slots=True)
class DeviceTaint:
    """One ``devices[].taints[]`` entry."""

    key: str
    value: str = ""
    effect: str = ""

    @classmethod
    def parse(cls, raw: Any, *, field: str) -> DeviceTaint:
        """From slice JSON."""
        if not isinstance(raw, Mapping) or not isinstance(raw.get("key"), str):
            raise TaintError(f"{field}: a taint needs a key")
        return cls(raw["key"], str(raw.get("value") or ""), str(raw.get("effect") or ""))

    @property
    def blocks(self) -> bool:
        """Whether the taint keeps requests that do not tolerate it off the device."""
        return self.effect in BLOCKING_EFFECTS

    def __str__(self) -> str:
        return f"{self.key}={self.value}:{self.effect}" if self.value else f"{self.key}:{self.effect}"


@dataclass(frozen=True, slots=True)
class Toleration:
    """One ``tolerations[]`` entry of a request."""

    key: str = ""
    operator: str = "Equal"
    value: str = ""
    effect: str = ""

    @classmethod
    def parse(cls, raw: Any, *, field: str) -> Toleration:
        """From claim JSON; an unknown operator is an error naming the field."""
        if not isinstance(raw, Mapping):
            raise TaintError(f"{field}: must be an object")
        operator = raw.get("operator") or "Equal"
        if operator not in ("Equal", "Exists"):
            raise TaintError(f"{field}.operator: {operator!r} is not Equal or Exists")
        return cls(str(raw.get("key") or ""), operator, str(raw.get("value") or ""), str(raw.get("effect") or ""))

    def tolerates(self, taint: DeviceTaint) -> bool:
        """Whether this toleration matches ``taint``."""
        if self.effect and self.effect != taint.effect:
            return False
        if self.key and self.key != taint.key:
            return False
        return self.operator == "Exists" or self.value == taint.value


def blocking_taint(taints: Iterable[DeviceTaint], tolerations: Iterable[Toleration]) -> DeviceTaint | None:
    """The first taint that keeps the device from a request with ``tolerations``, else None."""
    held = tuple(tolerations)
    for taint in taints:
        if taint.blocks and not any(toleration.tolerates(taint) for toleration in held):
            return taint
    return None
