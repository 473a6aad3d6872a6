"""resource.Quantity canonical form, as the real API server stores and returns quantities.

A client may send "1024Mi", "0.5Gi", 100 or "1000m"; the server answers "1Gi", "512Mi", "100"
and "1". Code that compares quantity strings instead of parsing them works against a naive fake
and breaks on a cluster, so the fake canonicalises too (apimachinery pkg/api/resource
quantity.go CanonicalizeBytes: keep the suffix family, drop fractions, largest exponent).
"""

from __future__ import annotations

import re
from functools import lru_cache
from fractions import Fraction
from math import ceil, floor

_PARSE = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?$")
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_DECIMAL_SUFFIX = {v: k for k, v in _DECIMAL.items()}
_BINARY_SUFFIX = {v: k for k, v in _BINARY.items()}


class QuantityError(ValueError):
    """Not a Kubernetes quantity."""


def parse(text: str) -> tuple[Fraction, str]:
    """(exact value, format) with format one of "BinarySI", "DecimalSI", "DecimalExponent"."""
    m = _PARSE.match(text.strip())
    if not m:
        raise QuantityError(f"quantities must match the regular expression "
                            f"'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {text!r}")
    number, suffix = Fraction(m.group(1)), m.group(2) or ""
    if suffix in _BINARY:
        return number * (1024 ** _BINARY[suffix]), "BinarySI"
    if suffix in _DECIMAL:
        return number * Fraction(10) ** _DECIMAL[suffix], "DecimalSI"
    return number * Fraction(10) ** int(suffix[1:]), "DecimalExponent"


def _round_up_to_nano(value: Fraction) -> Fraction:
    scaled = value * 10**9
    if scaled.denominator == 1:
        return value
    # Precision below 1n is rounded up, away from zero (0.1n → 1n).
    return Fraction(ceil(scaled) if value > 0 else floor(scaled), 10**9)


def _decimal_form(value: Fraction, exponent_style: bool) -> str:
    sign = "-" if value < 0 else ""
    value = abs(value)
    if value == 0:
        return "0"
    exp = -9
    mantissa = value * 10**9
    while mantissa.denominator != 1:
        mantissa *= 10  # unreachable after rounding to nano; kept for safety
    mantissa_int = int(mantissa)
    while mantissa_int % 1000 == 0 and exp < 18:
        mantissa_int //= 1000
        exp += 3
    if exponent_style:
        return f"{sign}{mantissa_int}" + (f"e{exp}" if exp else "")
    return f"{sign}{mantissa_int}{_DECIMAL_SUFFIX[exp]}"


@lru_cache(maxsize=8192)
def canonical(raw: str | int | float) -> str:
    """The canonical string of a quantity given as a string or a JSON number (memoised: a
    cluster's objects repeat a handful of quantities)."""
    if isinstance(raw, bool):
        raise QuantityError(f"not a quantity: {raw!r}")
    value, fmt = parse(repr(raw) if isinstance(raw, float) else str(raw))
    value = _round_up_to_nano(value)
    if fmt == "BinarySI":
        if -1024 < value < 1024 or value.denominator != 1:
            fmt = "DecimalSI"
        else:
            sign = "-" if value < 0 else ""
            n = abs(int(value))
            exp = 0
            while n % 1024 == 0 and exp < 6:
                n //= 1024
                exp += 1
            return f"{sign}{n}{_BINARY_SUFFIX.get(exp, '')}"
    return _decimal_form(value, exponent_style=fmt == "DecimalExponent")
