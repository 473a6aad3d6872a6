"""Kubernetes resource quantities as exact integers.

Parsing is delegated to the `kubernetes` client's own parser, so ``2Gi``, ``2G``, ``1536Mi``,
``1.5Gi`` and ``2147483648`` mean exactly what they mean to the API server.
"""
from __future__ import annotations

from decimal import Decimal

from kubernetes.utils.quantity import parse_quantity

_BINARY_SUFFIXES = (("Ei", 1 << 60), ("Pi", 1 << 50), ("Ti", 1 << 40), ("Gi", 1 << 30),
                    ("Mi", 1 << 20), ("Ki", 1 << 10))


class QuantityError(ValueError):
    """A quantity string that Kubernetes would not accept, or not a whole number of bytes."""


def parse_bytes(value: str | int) -> int:
    """Return the exact number of bytes a quantity denotes.

    Accepts an int (bytes) or a quantity string. Rejects negative values, fractions of a byte
    (``0.5``, ``1m``) and anything Kubernetes would not parse, with a message naming the input.
    """
    if isinstance(value, bool):
        raise QuantityError(f"{value!r} is not a quantity")
    if isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, str):
        try:
            amount = parse_quantity(value.strip())
        except ValueError as exc:
            raise QuantityError(
                f"{value!r} is not a Kubernetes quantity (examples: 2Gi, 1536Mi, 2G, 2147483648)"
            ) from exc
    else:
        raise QuantityError(f"{value!r} is not a quantity: give a string like '2Gi' or an integer")
    if amount < 0:
        raise QuantityError(f"{value!r} is negative")
    if amount != amount.to_integral_value():
        raise QuantityError(f"{value!r} is not a whole number of bytes")
    return int(amount)


def format_bytes(value: int) -> str:
    """Render bytes as the shortest exact binary quantity (``2Gi``, ``1536Mi``, ``123``)."""
    if value < 0:
        raise QuantityError(f"{value} is negative")
    for suffix, unit in _BINARY_SUFFIXES:
        if value and value % unit == 0:
            return f"{value // unit}{suffix}"
    return str(value)


def humanize_bytes(value: int) -> str:
    """Render bytes for people: ``4.5 GiB``, ``512 MiB`` (rounded, not exact)."""
    for suffix, unit in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(value) >= unit:
            text = f"{value / unit:.1f}".rstrip("0").rstrip(".")
            return f"{text} {suffix}"
    return f"{value} B"
