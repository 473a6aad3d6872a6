"""Strict validation of stored objects against the real API server's OpenAPI v3 documents.

The documents in tests/data/openapi describe shape only. They rarely say
`additionalProperties: false`, yet the point of validating in tests is that a misspelt field fails
the request, as it does on a real server with strict field validation. So an object schema with
`properties` rejects every other key here; a schema with `additionalProperties` is a map; an object
schema with neither (RawExtension, FieldsV1) accepts anything.

Each schema is compiled once into a tree of small closures and cached per (document, key), so the
per-request cost is one walk over the object with no `$ref` resolution.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tests.data import OPENAPI_DIR

from .stored_form import StoredFormCompiler

Checker = Callable[[Any, str, list["FieldError"]], None]
Normalizer = Callable[[Any], Any]


_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
# resource.Quantity's grammar (k8s.io/apimachinery/pkg/api/resource): signed decimal number,
# then a binary-SI, decimal-SI or exponent suffix.
_QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?\d+)?$")
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class FieldError:
    """One problem with one field, shaped like the real server's StatusCause."""

    field: str
    message: str
    reason: str = "FieldValueInvalid"

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _type_ok(expected: str, value: Any) -> bool:
    actual = _type_name(value)
    if expected == actual:
        return True
    # A JSON integer is a valid number; 1.0 is not an integer (Go's decoder rejects it for int64).
    if expected == "number" and actual == "integer":
        return True
    return False


class OpenAPIDocument:
    """One group-version's OpenAPI v3 document with a cache of compiled schema checkers."""

    def __init__(self, path: Path) -> None:
        with path.open() as f:
            self._schemas: dict[str, Any] = json.load(f)["components"]["schemas"]
        self._compiled: dict[str, Checker] = {}
        self._stored_form = StoredFormCompiler(self)
        self._lock = threading.Lock()

    def has(self, key: str) -> bool:
        """Whether components.schemas holds `key`."""
        return key in self._schemas

    def schema(self, key: str) -> dict[str, Any]:
        """The raw schema for `key` (used by strategic-merge patch to read patch strategies)."""
        return self._schemas[key]

    def checker(self, key: str) -> Checker:
        """The compiled checker for components.schemas[key]."""
        found = self._compiled.get(key)
        if found is not None:
            return found
        with self._lock:
            if key in self._compiled:
                return self._compiled[key]
            if key not in self._schemas:
                raise KeyError(f"schema {key!r} is not in this OpenAPI document")
            # Published only when complete, so a concurrent first request waits on the lock
            # instead of calling a half-built checker; references inside bind late (`_ref`).
            compiled = self._compile(self._schemas[key])
            self._compiled[key] = compiled
            return compiled

    def stored_form(self, key: str) -> Normalizer | None:
        """obj → the form the real server stores it in (see stored_form.py), or None when
        objects of `key` are always stored as sent."""
        return self._stored_form.transform(key)

    def _ref(self, ref: str) -> Checker:
        key = ref.rsplit("/", 1)[-1]
        if key in self._compiled:
            return self._compiled[key]
        # Late binding: resolving eagerly would recurse through the whole document at once.
        cell: list[Checker] = []

        def call(value: Any, path: str, errors: list[FieldError]) -> None:
            if not cell:
                cell.append(self.checker(key))
            cell[0](value, path, errors)

        return call

    def _compile(self, node: dict[str, Any]) -> Checker:
        if "$ref" in node:
            return self._ref(node["$ref"])
        parts: list[Checker] = []
        for sub in node.get("allOf", ()):
            parts.append(self._compile(sub))
        if "oneOf" in node:
            parts.append(self._compile_one_of(node))
        typ = node.get("type")
        if typ is not None:
            parts.append(self._compile_typed(node, typ))
        if "enum" in node:
            allowed = list(node["enum"])

            def check_enum(value: Any, path: str, errors: list[FieldError]) -> None:
                if value not in allowed:
                    errors.append(FieldError(path, f"Unsupported value: {json.dumps(value)}: supported values: "
                                             + ", ".join(json.dumps(a) for a in allowed), "FieldValueNotSupported"))

            parts.append(check_enum)
        if not parts:
            return lambda v, p, e: None
        if len(parts) == 1:
            return parts[0]

        def check_all(value: Any, path: str, errors: list[FieldError]) -> None:
            for part in parts:
                part(value, path, errors)

        return check_all

    def _compile_one_of(self, node: dict[str, Any]) -> Checker:
        # Only used for scalar unions (Quantity: string|number, IntOrString: integer|string).
        types = [alt.get("type") for alt in node["oneOf"]]
        is_quantity = node.get("format") != "int-or-string" and set(types) == {"string", "number"}

        def check(value: Any, path: str, errors: list[FieldError]) -> None:
            if not any(_type_ok(t, value) for t in types if t):
                errors.append(FieldError(path, f"Invalid value: {_type_name(value)}: must be one of "
                                         + "|".join(str(t) for t in types), "FieldValueTypeInvalid"))
            elif is_quantity and isinstance(value, str) and not _QUANTITY.match(value):
                errors.append(FieldError(path, f"Invalid value: {json.dumps(value)}: quantities must match the "
                                         "regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"))

        return check

    def _compile_typed(self, node: dict[str, Any], typ: str) -> Checker:
        if typ == "object":
            return self._compile_object(node)
        if typ == "array":
            items = self._compile(node["items"]) if "items" in node else None
            max_items = node.get("maxItems")
            list_type = node.get("x-kubernetes-list-type")
            map_keys = tuple(node.get("x-kubernetes-list-map-keys", ()))

            def check_array(value: Any, path: str, errors: list[FieldError]) -> None:
                if not isinstance(value, list):
                    errors.append(FieldError(path, f"Invalid value: {_type_name(value)}: expected array",
                                             "FieldValueTypeInvalid"))
                    return
                if max_items is not None and len(value) > max_items:
                    errors.append(FieldError(path, f"Too many: {len(value)}: must have at most {max_items} items",
                                             "FieldValueTooMany"))
                seen: set[Any] = set()
                for i, item in enumerate(value):
                    item_path = f"{path}[{i}]"
                    if items is not None:
                        items(item, item_path, errors)
                    if list_type == "set" and not isinstance(item, (dict, list)):
                        if item in seen:
                            errors.append(FieldError(item_path, f"Duplicate value: {json.dumps(item)}",
                                                     "FieldValueDuplicate"))
                        seen.add(item)
                    elif list_type == "map" and map_keys and isinstance(item, dict):
                        key = tuple(json.dumps(item.get(k)) for k in map_keys)
                        if key in seen:
                            errors.append(FieldError(item_path, "Duplicate value: "
                                                     + json.dumps({k: item.get(k) for k in map_keys}),
                                                     "FieldValueDuplicate"))
                        seen.add(key)

            return check_array
        fmt = node.get("format")
        if typ == "integer":
            lo, hi = _INT32 if fmt == "int32" else _INT64

            def check_int(value: Any, path: str, errors: list[FieldError]) -> None:
                if not _type_ok("integer", value):
                    errors.append(FieldError(path, f"Invalid value: {json.dumps(value)}: expected integer",
                                             "FieldValueTypeInvalid"))
                elif not lo <= value <= hi:
                    errors.append(FieldError(path, f"Invalid value: {value}: out of range for {fmt or 'int64'}"))

            return check_int
        if typ == "string":
            date_time = fmt == "date-time"

            def check_str(value: Any, path: str, errors: list[FieldError]) -> None:
                if not isinstance(value, str):
                    errors.append(FieldError(path, f"Invalid value: {json.dumps(value)}: expected string",
                                             "FieldValueTypeInvalid"))
                elif date_time and not _DATE_TIME.match(value):
                    errors.append(FieldError(path, f"Invalid value: {json.dumps(value)}: not an RFC 3339 date-time"))

            return check_str

        def check_scalar(value: Any, path: str, errors: list[FieldError]) -> None:
            if not _type_ok(typ, value):
                errors.append(FieldError(path, f"Invalid value: {json.dumps(value)}: expected {typ}",
                                         "FieldValueTypeInvalid"))

        return check_scalar

    def _compile_object(self, node: dict[str, Any]) -> Checker:
        props = {name: self._compile(sub) for name, sub in node.get("properties", {}).items()}
        required = tuple(node.get("required", ()))
        additional = node.get("additionalProperties")
        values = self._compile(additional) if isinstance(additional, dict) else None
        strict = bool(props) and additional is None

        def check_object(value: Any, path: str, errors: list[FieldError]) -> None:
            if not isinstance(value, dict):
                errors.append(FieldError(path, f"Invalid value: {_type_name(value)}: expected object",
                                         "FieldValueTypeInvalid"))
                return
            for name in required:
                if value.get(name) is None:
                    errors.append(FieldError(_join(path, name), "Required value", "FieldValueRequired"))
            for key, item in value.items():
                if item is None:
                    continue  # null is "unset" to Go's decoder
                sub = props.get(key)
                if sub is not None:
                    sub(item, _join(path, key), errors)
                elif values is not None:
                    values(item, _join(path, key), errors)
                elif strict:
                    errors.append(FieldError(_join(path, key), f'unknown field "{_join(path, key)}"',
                                             "FieldValueUnknown"))

        return check_object


class SchemaRegistry:
    """All OpenAPI documents of a directory, loaded on first use, looked up by group-version."""

    def __init__(self, openapi_dir: Path) -> None:
        self._dir = openapi_dir
        self._docs: dict[str, OpenAPIDocument] = {}
        self._lock = threading.Lock()

    @property
    def directory(self) -> Path:
        """Where the OpenAPI documents are read from."""
        return self._dir

    def document(self, group_version: str) -> OpenAPIDocument:
        """The document for "v1" or "<group>/<version>"."""
        doc = self._docs.get(group_version)
        if doc is not None:
            return doc
        with self._lock:
            if group_version not in self._docs:
                name = "api_v1.json" if group_version == "v1" else "apis_" + group_version.replace("/", "_") + ".json"
                path = self._dir / name
                if not path.exists():
                    raise FileNotFoundError(f"no OpenAPI document for {group_version} at {path}")
                self._docs[group_version] = OpenAPIDocument(path)
            return self._docs[group_version]

    def stored_form(self, obj: Any, group_version: str, schema_key: str) -> Any:
        """`obj` as the real server would store and return it (call once `validate` passed)."""
        fn = self.document(group_version).stored_form(schema_key)
        return fn(obj) if fn is not None else obj

    def validate(self, obj: Any, group_version: str, schema_key: str) -> list[FieldError]:
        """Every schema problem of `obj` (empty when it is valid)."""
        errors: list[FieldError] = []
        self.document(group_version).checker(schema_key)(obj, "", errors)
        return errors


def default_openapi_dir() -> Path:
    """The OpenAPI documents the repository carries (tests/data/openapi)."""
    return OPENAPI_DIR
