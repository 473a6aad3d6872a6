"""A published capacity's ``requestPolicy`` and what a request consumes under it, as upstream rounds.

Pure. The rules are kube-scheduler's for consumable capacity (``DRAConsumableCapacity``, beta and
on by default since 1.36), so a share the controller books is the share kube-scheduler would book:

- nothing requested: the policy's ``default``, or the whole capacity when there is none;
- requested, ``validRange`` with a ``min``: below ``min`` becomes ``min``; otherwise rounded *up*
  to ``min + n × step`` (no ``step``: taken as asked);
- requested, ``validValues``: the first valid value at or above the request;
- the result violates the policy (and the device cannot take the request) when it is above
  ``validRange.max``, off the step grid, or not one of ``validValues`` — unless it equals
  ``default``.

A device whose slice carries no policy is read with this driver's own policy (what the kubelet
plugin publishes: memory ``default`` = all, ``validRange`` 64Mi..all step 1Mi; cores ``default``
0, ``validRange`` 0..100 step 1), because a server that dropped ``allowMultipleAllocations`` also
dropped the policies the plugin wrote (docs/controller.md). `RequestPolicy` values stand for
slices that publish something else.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from vgpu_dra.api.names import MEMORY_MIN_BYTES, MEMORY_STEP_BYTES


class PolicyError(ValueError):
    """A published requestPolicy that cannot be read; the message names the field."""


def quantity_value(text: Any, *, field: str) -> int:
    """A quantity as kube-scheduler's integer arithmetic reads it (``Value()``: rounded up)."""
    try:
        amount = parse_quantity(text if isinstance(text, (int, str)) and not isinstance(text, bool) else "x")
    except (ValueError, InvalidOperation):
        raise PolicyError(f"{field}: {text!r} is not a quantity") from None
    return int(math.ceil(Decimal(amount)))


@dataclass(frozen=True, slots=True)
class RequestPolicy:
    """One capacity's requestPolicy, in integer units of the capacity (bytes, percent)."""

    default: int | None = None
    valid_values: tuple[int, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    step: int | None = None
    has_range: bool = False

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None, *, field: str) -> RequestPolicy | None:
        """A slice's ``requestPolicy`` JSON; None when the slice has none."""
        if raw is None:
            return None
        if not isinstance(raw, Mapping):
            raise PolicyError(f"{field}: must be an object")
        default = quantity_value(raw["default"], field=f"{field}.default") if raw.get("default") is not None else None
        values = tuple(quantity_value(v, field=f"{field}.validValues") for v in raw.get("validValues") or ())
        valid_range = raw.get("validRange")
        if valid_range is None:
            return cls(default=default, valid_values=values)
        if not isinstance(valid_range, Mapping):
            raise PolicyError(f"{field}.validRange: must be an object")

        def bound(name: str) -> int | None:
            value = valid_range.get(name)
            return None if value is None else quantity_value(value, field=f"{field}.validRange.{name}")

        step = bound("step")
        if step is not None and step <= 0:
            raise PolicyError(f"{field}.validRange.step: must be positive")
        return cls(default=default, valid_values=values, minimum=bound("min"), maximum=bound("max"), step=step,
                   has_range=True)

    def consumed(self, requested: int | None, capacity: int) -> int | None:
        """What a request consumes of a capacity of ``capacity`` units; None if it violates the policy."""
        amount = self.rounded(requested, capacity)
        return None if self._violates(amount) else amount

    def rounded(self, requested: int | None, capacity: int) -> int:
        """The request as the policy rounds it, before asking whether the result is allowed."""
        if requested is None:
            return capacity if self.default is None else self.default
        if self.has_range and self.minimum is not None:
            return _round_up_range(requested, self.minimum, self.step)
        if self.valid_values:
            return next((value for value in self.valid_values if requested <= value), requested)
        return requested

    def at_most(self, wanted: int) -> int:
        """The largest amount on the policy's grid not above ``wanted`` (the smallest when none is):
        how a share given in percent of a GPU lands on the grid, so 100 % still fits."""
        if self.has_range and self.minimum is not None:
            if wanted <= self.minimum or self.step is None:
                return max(wanted, self.minimum)
            return self.minimum + (wanted - self.minimum) // self.step * self.step
        if self.valid_values:
            below = [value for value in self.valid_values if value <= wanted]
            return below[-1] if below else self.valid_values[0]
        return wanted

    def _violates(self, amount: int) -> bool:
        if self.default is not None and amount == self.default:
            return False
        if self.has_range:
            if self.maximum is not None and amount > self.maximum:
                return True
            if self.step is not None and (amount - (self.minimum or 0)) % self.step:
                return True
            return False
        if self.valid_values:
            return amount not in self.valid_values
        return False


def _round_up_range(requested: int, minimum: int, step: int | None) -> int:
    if requested < minimum:
        return minimum
    if step is None:
        return requested
    return minimum + -(-(requested - minimum) // step) * step


def driver_memory_policy(capacity: int) -> RequestPolicy:
    """The memory policy the kubelet plugin publishes for a GPU of ``capacity`` usable bytes."""
    return RequestPolicy(default=capacity, minimum=MEMORY_MIN_BYTES, maximum=capacity, step=MEMORY_STEP_BYTES,
                         has_range=True)


def driver_cores_policy(capacity: int) -> RequestPolicy:
    """The cores policy the kubelet plugin publishes (0 = no cap, no reservation)."""
    return RequestPolicy(default=0, minimum=0, maximum=capacity, step=1, has_range=True)
