"""Validate an object against the real API server's OpenAPI v3 schema, with jsonschema.

    validate(obj, "io.k8s.api.resource.v1.ResourceSlice")   # raises SchemaError naming the field

The documents in tests/data/openapi are (the used part of) what a Kubernetes 1.36 server publishes. They describe
shape only and need four adjustments to catch what a real server would reject:

* Unknown fields: the server (with strict field validation) rejects them, but the documents never
  say ``additionalProperties: false``. Here an object schema with ``properties`` and no
  ``additionalProperties`` is closed; one with ``additionalProperties`` is a map; one with
  neither (RawExtension, FieldsV1) accepts anything.
* ``resource.Quantity`` is ``string | number`` in the documents; its strings must follow the
  Quantity grammar (``10Gi``, ``100``, ``1.5``, ``500m``, ``1e3``).
* ``x-kubernetes-list-type: map`` lists need unique ``x-kubernetes-list-map-keys``; ``set`` lists
  unique items.
* formats: ``int32``/``int64`` ranges, ``date-time`` (RFC 3339), ``byte`` (base64),
  ``int-or-string`` (the schema's own ``oneOf`` already covers it).
"""
from __future__ import annotations

import base64
import binascii
import copy
import functools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator, FormatChecker, ValidationError

from tests.data import OPENAPI_DIR

QUANTITY_KEY = "io.k8s.apimachinery.pkg.api.resource.Quantity"
_QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|[eE][+-]?\d+)?$")
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}


class SchemaError(ValueError):
    """An object that does not match its schema; the message lists each failing JSON path."""


_formats = FormatChecker()


@_formats.checks("quantity")
def _is_quantity(value: object) -> bool:
    return not isinstance(value, str) or bool(_QUANTITY.match(value))


@_formats.checks("date-time")
def _is_date_time(value: object) -> bool:
    return not isinstance(value, str) or bool(_DATE_TIME.match(value))


@_formats.checks("byte")
def _is_base64(value: object) -> bool:
    if not isinstance(value, str):
        return True
    try:
        base64.b64decode(value, validate=True)
        return True
    except binascii.Error:
        return False


def _in_range(kind: str):
    low, high = _RANGES[kind]

    def check(value: object) -> bool:
        return not isinstance(value, int) or isinstance(value, bool) or low <= value <= high

    return check


for _name in _RANGES:
    _formats.checks(_name)(_in_range(_name))


def _list_type(validator: Any, list_type: str, instance: Any, schema: dict[str, Any]) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "array"):
        return
    if list_type == "set":
        seen: list[Any] = []
        for item in instance:
            if item in seen:
                yield ValidationError(f"duplicate entry {item!r} in a list of type set")
            seen.append(item)
    elif list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys") or []
        seen_keys: set[str] = set()
        for item in instance:
            if not isinstance(item, dict):
                continue
            key = json.dumps([item.get(k) for k in keys])
            if key in seen_keys:
                yield ValidationError(f"duplicate entry with {dict(zip(keys, json.loads(key)))} in a list keyed by {keys}")
            seen_keys.add(key)


_KubernetesValidator = jsonschema.validators.extend(Draft202012Validator, {"x-kubernetes-list-type": _list_type})


@functools.cache
def _schema_files() -> dict[str, Path]:
    """Schema key → the document defining it (the one carrying its group-version-kind wins)."""
    owners: dict[str, Path] = {}
    for path in sorted(OPENAPI_DIR.glob("*.json")):
        for key, schema in json.loads(path.read_text())["components"]["schemas"].items():
            if key not in owners or "x-kubernetes-group-version-kind" in schema:
                owners[key] = path
    return owners


def _tighten(node: Any) -> None:
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for value in node.values():
            _tighten(value)
    elif isinstance(node, list):
        for value in node:
            _tighten(value)


@functools.cache
def _components(path: Path) -> dict[str, Any]:
    components = copy.deepcopy(json.loads(path.read_text())["components"])
    _tighten(components)
    if QUANTITY_KEY in components["schemas"]:
        components["schemas"][QUANTITY_KEY] = {
            "oneOf": [{"type": "string", "format": "quantity"}, {"type": "number"}]
        }
    return components


@functools.cache
def _validator(kind_key: str) -> Any:
    path = _schema_files().get(kind_key)
    if path is None:
        raise KeyError(f"no schema {kind_key!r} in {OPENAPI_DIR}: add its kind to KEPT in "
                       "tests/data/refresh_openapi.py and refresh (tests/data/README.md)")
    root = {"$ref": f"#/components/schemas/{kind_key}", "components": _components(path)}
    return _KubernetesValidator(root, format_checker=_formats)


def errors(obj: Any, kind_key: str) -> list[str]:
    """Every problem of ``obj`` as ``<JSON path>: <message>``, empty when it is valid."""
    found = sorted(_validator(kind_key).iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{_leaf(error).json_path}: {_leaf(error).message}" for error in found]


def validate(obj: Any, kind_key: str) -> None:
    """Raise :class:`SchemaError` unless ``obj`` matches the schema ``kind_key``
    (e.g. ``io.k8s.api.resource.v1.ResourceSlice``)."""
    problems = errors(obj, kind_key)
    if problems:
        raise SchemaError(f"{kind_key} is invalid:\n  " + "\n  ".join(problems))


def _leaf(error: ValidationError) -> ValidationError:
    """For oneOf/anyOf failures, the most specific cause: a branch of the right type that failed
    deeper (a bad quantity string) beats "is not of type 'number'" from the other branch."""
    if not error.context:
        return error
    same_type = [cause for cause in error.context if cause.validator != "type"]
    return _leaf(jsonschema.exceptions.best_match(same_type or error.context))
