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

CEL library: cel-python (``celpy``), a pure-Python implementation of the CEL spec; the Kubernetes
value types and functions are in `cel_values` and `cel_functions`.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from typing import Any, Protocol

import celpy
import structlog
from celpy import celtypes

from vgpu_dra.api.names import ATTR_TYPE, DEVICE_TYPE_VGPU, DRIVER_NAME
from vgpu_dra.driver.cel_functions import KUBERNETES_FUNCTIONS
from vgpu_dra.driver.cel_values import Quantity, SemVer
from vgpu_dra.driver.ledger import Version

__all__ = ["CompiledSelectors", "KUBERNETES_FUNCTIONS", "Quantity", "SelectableDevice", "SelectorError", "SemVer",
           "candidate_activation", "compile_selectors"]

log = structlog.get_logger(__name__)

AttributeValue = str | int | bool
"""A published device attribute value; versions arrive as `SemVer` (a separate type in CEL)."""


class SelectorError(ValueError):
    """A selector expression that does not compile; ``str()`` names the expression."""

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

    device_only = True
    """CEL reads the published device alone (never what is used of it): callers may pass the
    `GpuDevice` itself instead of a `GpuCandidate` view."""

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
