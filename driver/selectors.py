"""CEL device selectors, evaluated the way Kubernetes evaluates DeviceClass and claim selectors.

Controller-mode DeviceClasses select ``device.attributes["vgpu.dra.dev"].type == "vgpu"``, which no
published device has, so kube-scheduler never allocates them. The allocation controller (and
``vgpu-dra plan``) evaluate the same expressions against each physical GPU *presented as a vGPU
candidate*: ``type`` reads ``"vgpu"``, everything else reads as published.

The environment mirrors the Kubernetes DRA CEL environment where selectors use it:

- ``device.driver``, ``device.allowMultipleAllocations``;
- ``device.attributes[domain].<name>``: strings, ints, bools, and versions as ``semver`` values;
- ``device.capacity[domain].<name>``: quantities;
- an unknown domain reads as an empty map, an unknown attribute is an evaluation error;
- the Kubernetes quantity library (``quantity()``, ``isQuantity()``, ``compareTo``,
  ``isGreaterThan``/``isLessThan``, ``add``/``sub``, ``asInteger``, ``asApproximateFloat``,
  ``sign``, ``isInteger``) and semver library (``semver()``, ``isSemver()``, ``major``/``minor``/
  ``patch``, ``compareTo``, ``isGreaterThan``/``isLessThan``), plus the string helpers
  ``lowerAscii``, ``upperAscii``, ``trim``, ``split``, ``indexOf``, ``lastIndexOf``, ``replace``,
  ``substring``, ``charAt``, ``join``; and ``cel.bind``.

An expression that fails to evaluate on one device means "this device does not match"; the error
is logged once per (expression, message) and kept on the compiled selector so a refusal can say
why. A compile error raises `SelectorError` naming the expression.

CEL library: cel-python (``celpy``), a pure-Python implementation of the CEL spec.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any, Protocol

import celpy
import structlog
from celpy import celtypes
from kubernetes.utils.quantity import parse_quantity

from vgpu_dra.api.names import ATTR_TYPE, DEVICE_TYPE_VGPU, DRIVER_NAME
from vgpu_dra.driver.ledger import Version

log = structlog.get_logger(__name__)

AttributeValue = str | int | bool
"""A published device attribute value; versions arrive as `SemVer` (a separate type in CEL)."""


class SelectorError(ValueError):
    """A selector expression that does not compile; ``str()`` names the expression."""


# --------------------------------------------------------------------------- semver


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


# --------------------------------------------------------------------------- CEL functions


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


# --------------------------------------------------------------------------- the device view


class SelectableDevice(Protocol):
    """What selectors read from a GPU (e.g. an allocator `GpuCandidate`): published attributes and
    capacities, and optionally ``driver`` (default: this driver).

    Attribute and capacity keys are unqualified names of the driver's domain or ``domain/name``.
    Devices are treated as immutable: a changed GPU is a new object.
    """

    @property
    def attributes(self) -> Mapping[str, AttributeValue | Version | SemVer]: ...

    @property
    def capacity(self) -> Mapping[str, int]: ...


class _DomainMap(celtypes.MapType):
    """`device.attributes` / `device.capacity`: an unknown domain reads as an empty map."""

    def __missing__(self, key: Any) -> celtypes.MapType:
        return celtypes.MapType()


def _cel_value(value: AttributeValue | SemVer) -> Any:
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if isinstance(value, int):
        return celtypes.IntType(value)
    if isinstance(value, str):
        return celtypes.StringType(value)
    if isinstance(value, Version):
        try:
            return SemVer.parse(value.text)
        except ValueError:
            return celtypes.StringType(value.text)  # a driver published a non-semver "version"
    return value  # SemVer: a CEL value of its own type


def _by_domain(values: Mapping[str, Any], driver: str, convert: Callable[[Any], Any]) -> _DomainMap:
    domains: dict[str, dict[Any, Any]] = {}
    for key, value in values.items():
        domain, _, name = key.rpartition("/")
        domains.setdefault(domain or driver, {})[celtypes.StringType(name)] = convert(value)
    return _DomainMap({celtypes.StringType(d): celtypes.MapType(v) for d, v in domains.items()})


def _driver_of(device: SelectableDevice) -> str:
    return getattr(device, "driver", DRIVER_NAME)


def candidate_activation(device: SelectableDevice) -> dict[str, Any]:
    """The CEL variables for `device` presented as a vGPU candidate (``type`` reads ``vgpu``)."""
    driver = _driver_of(device)
    attributes = dict(device.attributes)
    if driver == DRIVER_NAME:
        attributes[ATTR_TYPE] = DEVICE_TYPE_VGPU
    return {"device": celtypes.MapType({
        celtypes.StringType("driver"): celtypes.StringType(driver),
        celtypes.StringType("allowMultipleAllocations"): celtypes.BoolType(True),
        celtypes.StringType("attributes"): _by_domain(attributes, driver, _cel_value),
        celtypes.StringType("capacity"): _by_domain(device.capacity, driver,
                                                    lambda v: Quantity(Decimal(int(v)))),
    })}


# --------------------------------------------------------------------------- compilation


_ENVIRONMENT = celpy.Environment()

_BIND = "cel.bind("


def _split_arguments(text: str, start: int) -> tuple[list[str], int]:
    """The top-level comma-separated arguments of the call whose '(' is at ``start - 1``, and the
    index just past its ')'. Strings (with escapes) and nested brackets are skipped."""
    arguments: list[str] = []
    depth = 0
    quote = ""
    current = start
    i = start
    while i < len(text):
        char = text[i]
        if quote:
            if char == "\\":
                i += 2
                continue
            if text.startswith(quote, i):
                i += len(quote)
                quote = ""
                continue
        elif char in "\"'":
            quote = text[i:i + 3] if text[i:i + 3] in ('"""', "'''") else char
            i += len(quote)
            continue
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            if depth == 0:
                arguments.append(text[current:i])
                return arguments, i + 1
            depth -= 1
        elif char == "," and depth == 0:
            arguments.append(text[current:i])
            current = i + 1
        i += 1
    raise SelectorError(f"CEL selector {text!r} does not compile: unbalanced parentheses in cel.bind")


def _expand_bind(expression: str) -> str:
    """Rewrite ``cel.bind(v, init, body)`` (which cel-python lacks) into the equivalent
    ``[init].map(v, body)[0]``: the map macro binds ``v`` to the single element."""
    while True:
        found = expression.find(_BIND)
        if found < 0:
            return expression
        if found > 0 and (expression[found - 1].isalnum() or expression[found - 1] in "_."):
            return expression  # part of a longer name; leave it to the parser
        arguments, end = _split_arguments(expression, found + len(_BIND))
        if len(arguments) != 3:
            raise SelectorError(f"CEL selector {expression!r} does not compile: cel.bind takes 3 arguments, "
                                f"got {len(arguments)}")
        variable, initial, body = (argument.strip() for argument in arguments)
        expression = (f"{expression[:found]}[{_expand_bind(initial)}].map({variable}, {_expand_bind(body)})[0]"
                      f"{expression[end:]}")


@lru_cache(maxsize=4096)
def _compile_one(expression: str) -> celpy.Runner:
    if not expression.strip():
        raise SelectorError("selector expression is empty")
    try:
        ast = _ENVIRONMENT.compile(_expand_bind(expression))
    except celpy.CELParseError as exc:
        # celpy's message is the source line with a caret under the problem: keep the column.
        lines = str(exc).splitlines()
        column = lines[1].index("^") + 1 if len(lines) > 1 and "^" in lines[1] else None
        where = f" at column {column}" if column else ""
        raise SelectorError(f"CEL selector {expression!r} does not compile: syntax error{where}") from None
    return _ENVIRONMENT.program(ast, functions=KUBERNETES_FUNCTIONS)


@dataclass(eq=False)
class CompiledSelectors:
    """A conjunction of CEL selectors; call it with a device to ask "does it match?".

    Results are memoised per published device object (a `GpuCandidate`'s `GpuDevice`), so
    thousands of claims using the same class cost one evaluation per GPU. `errors` holds each
    distinct evaluation error once.
    """

    expressions: tuple[str, ...]
    _programs: tuple[celpy.Runner, ...]
    errors: list[str] = field(default_factory=list)
    # id(device) -> (device, result); holding the device keeps its id from being reused.
    _memo: dict[int, tuple[object, bool]] = field(default_factory=dict)

    def __call__(self, device: SelectableDevice) -> bool:
        if not self._programs:
            return True
        source = getattr(device, "device", device)
        cached = self._memo.get(id(source))
        if cached is not None and cached[0] is source:
            return cached[1]
        result = self._evaluate(device)
        if len(self._memo) > 65536:
            self._memo.clear()
        self._memo[id(source)] = (source, result)
        return result

    def _evaluate(self, device: SelectableDevice) -> bool:
        activation = candidate_activation(device)
        for expression, program in zip(self.expressions, self._programs):
            try:
                value = program.evaluate(activation)
            except Exception as exc:  # noqa: BLE001 - any failure on one device = no match
                value = exc
            if isinstance(value, Exception):
                self._report(expression, _describe_error(value))
                return False
            if not isinstance(value, celtypes.BoolType):
                self._report(expression, f"evaluates to {type(value).__name__}, expected bool")
                return False
            if not value:
                return False
        return True

    def _report(self, expression: str, problem: str) -> None:
        message = f"CEL selector {expression!r} failed: {problem}"
        if message not in self.errors:
            self.errors.append(message)
            log.warning("selector evaluation failed", expression=expression, problem=problem)


def _describe_error(error: Exception) -> str:
    args = getattr(error, "args", ())
    if args and isinstance(args[0], str):
        return args[0]
    return str(error) or type(error).__name__


_SELECTOR_CACHE: dict[tuple[str, ...], CompiledSelectors] = {}


def compile_selectors(expressions: Sequence[str]) -> CompiledSelectors:
    """Compile CEL selector expressions (all must hold) into a device predicate.

    Raises `SelectorError` naming the first expression that does not compile. The same
    expressions return the same (memoising) predicate.
    """
    key = tuple(expressions)
    compiled = _SELECTOR_CACHE.get(key)
    if compiled is None:
        compiled = CompiledSelectors(key, tuple(_compile_one(e) for e in key))
        if len(_SELECTOR_CACHE) > 4096:
            _SELECTOR_CACHE.clear()
        _SELECTOR_CACHE[key] = compiled
    return compiled
