"""Placement policies: which node and which GPU the allocator prefers among those that fit.

``binpack`` prefers the candidate with the fewest free resources that still fits (fills GPUs and
nodes up, keeping whole ones free for big claims); ``spread`` prefers the one with the most free
(spreads load, fewer neighbours per GPU). "Free resources" weigh memory and cores equally, each as
a fraction of the GPU's (or node's) capacity. Ties go to the lower device index / node name, so
placements are deterministic.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Policy(StrEnum):
    """How to choose among candidates that all fit."""

    BINPACK = "binpack"
    SPREAD = "spread"

    @classmethod
    def parse(cls, value: str, *, what: str) -> Policy:
        """A policy from user text; the error names ``what`` and the accepted values."""
        try:
            return cls(value.strip().lower())
        except ValueError:
            accepted = "|".join(policy.value for policy in cls)
            raise ValueError(f"{what} policy {value!r} is not one of {accepted}") from None


@dataclass(frozen=True, slots=True)
class PlacementPolicy:
    """The node policy and the GPU policy used together for one decision."""

    node: Policy = Policy.BINPACK
    gpu: Policy = Policy.BINPACK

    @classmethod
    def parse(cls, node: str | None = None, gpu: str | None = None) -> PlacementPolicy:
        """From user text (CLI flags, claim annotations); None keeps the default."""
        return cls(node=Policy.parse(node, what="node") if node else Policy.BINPACK,
                   gpu=Policy.parse(gpu, what="GPU") if gpu else Policy.BINPACK)


def gpu_free_after(free_memory: int, need_memory: int, usable_memory: int,
                   free_cores: int, need_cores: int, cores: int) -> float:
    """The share of a GPU left free after placing a share on it, 0.0 (full) to 1.0."""
    return ((free_memory - need_memory) / usable_memory + (free_cores - need_cores) / cores) / 2


def gpu_sort_key(policy: Policy, free_after: float, index: int) -> tuple[float, int]:
    """Sort key putting the preferred GPU first under ``policy`` (ties: lower index)."""
    return (free_after, index) if policy is Policy.BINPACK else (-free_after, index)
