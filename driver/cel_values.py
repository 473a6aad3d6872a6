"""The two value types Kubernetes adds to CEL for DRA selectors: semantic versions and quantities.

Pure. `SemVer` is what a ``version`` attribute (and ``semver()``) reads as; `Quantity` is what a
capacity (and ``quantity()``) reads as. Both compare exactly as the Kubernetes CEL libraries do.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from kubernetes.utils.quantity import parse_quantity

_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)


@dataclass(frozen=True, slots=True)
class SemVer:
    """A semantic version 2.0.0 value (DRA ``version`` attributes, CEL ``semver()``)."""

    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()
    build: str = ""

    @classmethod
    def parse(cls, text: str, *, normalize: bool = False) -> SemVer:
        """Parse ``1.2.3[-pre][+build]``; with `normalize`, ``v1``/``1.2``/leading zeros are accepted."""
        candidate = text
        if normalize:
            loose = re.match(r"^([0-9]+(?:\.[0-9]+){0,2})(.*)$", candidate.removeprefix("v"))
            if loose:
                parts = [str(int(p)) for p in loose.group(1).split(".")]
                candidate = ".".join(parts + ["0"] * (3 - len(parts))) + loose.group(2)
        match = _SEMVER.match(candidate)
        if not match:
            raise ValueError(f"{text!r} is not a semantic version (expected MAJOR.MINOR.PATCH, e.g. '8.6.0')")
        pre = tuple(match.group(4).split(".")) if match.group(4) else ()
        return cls(int(match.group(1)), int(match.group(2)), int(match.group(3)), pre, match.group(5) or "")

    def _key(self) -> tuple[Any, ...]:
        # Semver precedence: a release ranks above its pre-releases; numeric identifiers compare
        # numerically and rank below alphanumeric ones; build metadata never counts.
        pre: tuple[Any, ...] = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.prerelease)
        return (self.major, self.minor, self.patch, 0 if self.prerelease else 1, pre)

    def compare(self, other: SemVer) -> int:
        """-1, 0 or 1 by semver precedence."""
        mine, theirs = self._key(), other._key()
        return (mine > theirs) - (mine < theirs)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SemVer) and self.compare(other) == 0

    def __hash__(self) -> int:
        return hash(self._key())

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + ".".join(self.prerelease)
        return text + (f"+{self.build}" if self.build else "")


# --------------------------------------------------------------------------- quantity


@dataclass(frozen=True, slots=True, eq=False)
class Quantity:
    """A Kubernetes resource quantity as CEL sees it (exact decimal value)."""

    value: Decimal

    @classmethod
    def parse(cls, text: str) -> Quantity:
        """Parse a quantity string the way the API server does."""
        try:
            return cls(parse_quantity(str(text)))
        except (ValueError, InvalidOperation):
            raise ValueError(f"{text!r} is not a Kubernetes quantity (examples: 2Gi, 1536Mi, 500m)") from None

    def compare(self, other: Quantity) -> int:
        """-1, 0 or 1."""
        return (self.value > other.value) - (self.value < other.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Quantity) and self.value == other.value

    def __hash__(self) -> int:
        return hash(self.value)

    def __str__(self) -> str:
        return str(self.value)
