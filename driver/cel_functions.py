"""The Kubernetes CEL extension functions DRA selectors use, which cel-python lacks.

Pure. Receiver-style calls (``a.compareTo(b)``) arrive with the receiver as first argument. A call
with the wrong argument types raises, which the selector reads as "this device does not match".
"""
from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from celpy import celtypes

from vgpu_dra.driver.cel_values import Quantity, SemVer


def _require(value: Any, kind: type, function: str) -> Any:
    if not isinstance(value, kind):
        raise TypeError(f"no such overload: {function}({type(value).__name__})")
    return value


def _cel_quantity(text: Any) -> Quantity:
    return Quantity.parse(_require(text, str, "quantity"))


def _cel_is_quantity(text: Any) -> celtypes.BoolType:
    try:
        Quantity.parse(_require(text, str, "isQuantity"))
    except ValueError:
        return celtypes.BoolType(False)
    return celtypes.BoolType(True)


def _cel_semver(text: Any, normalize: Any = False) -> SemVer:
    return SemVer.parse(_require(text, str, "semver"), normalize=bool(normalize))


def _cel_is_semver(text: Any, normalize: Any = False) -> celtypes.BoolType:
    try:
        SemVer.parse(_require(text, str, "isSemver"), normalize=bool(normalize))
    except ValueError:
        return celtypes.BoolType(False)
    return celtypes.BoolType(True)


def _compare(left: Any, right: Any, function: str) -> int:
    if isinstance(left, Quantity) and isinstance(right, Quantity):
        return left.compare(right)
    if isinstance(left, SemVer) and isinstance(right, SemVer):
        return left.compare(right)
    raise TypeError(f"no such overload: {type(left).__name__}.{function}({type(right).__name__})")


def _cel_compare_to(left: Any, right: Any) -> celtypes.IntType:
    return celtypes.IntType(_compare(left, right, "compareTo"))


def _cel_is_greater_than(left: Any, right: Any) -> celtypes.BoolType:
    return celtypes.BoolType(_compare(left, right, "isGreaterThan") > 0)


def _cel_is_less_than(left: Any, right: Any) -> celtypes.BoolType:
    return celtypes.BoolType(_compare(left, right, "isLessThan") < 0)


def _as_decimal(value: Any, function: str) -> Decimal:
    if isinstance(value, Quantity):
        return value.value
    if isinstance(value, int) and not isinstance(value, bool):
        return Decimal(int(value))
    raise TypeError(f"no such overload: quantity.{function}({type(value).__name__})")


def _cel_add(left: Any, right: Any) -> Quantity:
    return Quantity(_as_decimal(left, "add") + _as_decimal(right, "add"))


def _cel_sub(left: Any, right: Any) -> Quantity:
    return Quantity(_as_decimal(left, "sub") - _as_decimal(right, "sub"))


def _cel_is_integer(value: Any) -> celtypes.BoolType:
    amount = _require(value, Quantity, "isInteger").value
    return celtypes.BoolType(amount == amount.to_integral_value() and abs(amount) < 2**63)


def _cel_as_integer(value: Any) -> celtypes.IntType:
    amount = _require(value, Quantity, "asInteger").value
    if amount != amount.to_integral_value() or abs(amount) >= 2**63:
        raise ValueError(f"quantity {amount} cannot be represented as an int64")
    return celtypes.IntType(int(amount))


def _cel_as_float(value: Any) -> celtypes.DoubleType:
    return celtypes.DoubleType(float(_require(value, Quantity, "asApproximateFloat").value))


def _cel_sign(value: Any) -> celtypes.IntType:
    amount = _require(value, Quantity, "sign").value
    return celtypes.IntType((amount > 0) - (amount < 0))


def _version_part(index: int, name: str) -> Callable[[Any], celtypes.IntType]:
    def part(value: Any) -> celtypes.IntType:
        version = _require(value, SemVer, name)
        return celtypes.IntType((version.major, version.minor, version.patch)[index])
    return part


def _cel_lower(value: Any) -> celtypes.StringType:
    text = _require(value, str, "lowerAscii")
    return celtypes.StringType("".join(c.lower() if c.isascii() else c for c in text))


def _cel_upper(value: Any) -> celtypes.StringType:
    text = _require(value, str, "upperAscii")
    return celtypes.StringType("".join(c.upper() if c.isascii() else c for c in text))


def _cel_trim(value: Any) -> celtypes.StringType:
    return celtypes.StringType(_require(value, str, "trim").strip())


def _cel_split(value: Any, separator: Any) -> celtypes.ListType:
    parts = _require(value, str, "split").split(_require(separator, str, "split"))
    return celtypes.ListType([celtypes.StringType(p) for p in parts])


def _cel_index_of(value: Any, needle: Any) -> celtypes.IntType:
    return celtypes.IntType(_require(value, str, "indexOf").find(_require(needle, str, "indexOf")))


def _cel_last_index_of(value: Any, needle: Any) -> celtypes.IntType:
    return celtypes.IntType(_require(value, str, "lastIndexOf").rfind(_require(needle, str, "lastIndexOf")))


def _cel_replace(value: Any, old: Any, new: Any, limit: Any = -1) -> celtypes.StringType:
    text = _require(value, str, "replace")
    return celtypes.StringType(text.replace(_require(old, str, "replace"), _require(new, str, "replace"), int(limit)))


def _cel_substring(value: Any, start: Any, end: Any = None) -> celtypes.StringType:
    text = _require(value, str, "substring")
    stop = len(text) if end is None else int(end)
    if not 0 <= int(start) <= stop <= len(text):
        raise IndexError(f"substring({start}, {end}) out of range for a string of length {len(text)}")
    return celtypes.StringType(text[int(start):stop])


def _cel_char_at(value: Any, index: Any) -> celtypes.StringType:
    text = _require(value, str, "charAt")
    if not 0 <= int(index) <= len(text):
        raise IndexError(f"charAt({index}) out of range for a string of length {len(text)}")
    return celtypes.StringType(text[int(index):int(index) + 1])


def _cel_join(values: Any, separator: Any = "") -> celtypes.StringType:
    items = [_require(v, str, "join") for v in _require(values, list, "join")]
    return celtypes.StringType(_require(separator, str, "join").join(items))


KUBERNETES_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "quantity": _cel_quantity,
    "isQuantity": _cel_is_quantity,
    "semver": _cel_semver,
    "isSemver": _cel_is_semver,
    "compareTo": _cel_compare_to,
    "isGreaterThan": _cel_is_greater_than,
    "isLessThan": _cel_is_less_than,
    "add": _cel_add,
    "sub": _cel_sub,
    "isInteger": _cel_is_integer,
    "asInteger": _cel_as_integer,
    "asApproximateFloat": _cel_as_float,
    "sign": _cel_sign,
    "major": _version_part(0, "major"),
    "minor": _version_part(1, "minor"),
    "patch": _version_part(2, "patch"),
    "lowerAscii": _cel_lower,
    "upperAscii": _cel_upper,
    "trim": _cel_trim,
    "split": _cel_split,
    "indexOf": _cel_index_of,
    "lastIndexOf": _cel_last_index_of,
    "replace": _cel_replace,
    "substring": _cel_substring,
    "charAt": _cel_char_at,
    "join": _cel_join,
}
"""Kubernetes CEL extension functions cel-python lacks (receiver-style calls arrive as first arg)."""
