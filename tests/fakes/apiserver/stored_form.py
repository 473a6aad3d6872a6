"""The form in which the real API server stores and returns an object.

Go's JSON encoder, which writes every object the server returns, drops empty slices and maps of
`omitempty` fields (all optional ones in the Kubernetes API) and the server canonicalises
quantities. So a client that writes `finalizers: []` or `reservedFor: []` reads the field back
absent, and `"1024Mi"` reads back `"1Gi"`. Code that works against the fake must work against a
cluster, so the fake returns the same form.

A schema is compiled once into closures per (document, key); the walk builds new containers
only along paths that change.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable

from .quantity import QuantityError, canonical

if TYPE_CHECKING:
    from .schema_validation import OpenAPIDocument

Transform = Callable[[Any], Any]

QUANTITY_KEY = "io.k8s.apimachinery.pkg.api.resource.Quantity"


def _canonical_quantity(value: Any) -> Any:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        try:
            result = canonical(value)
        except QuantityError:
            return value  # validation reports it
        return value if result == value else result  # identity when unchanged
    return value


def _is_empty_collection(value: Any) -> bool:
    return (isinstance(value, list) or isinstance(value, dict)) and not value


class StoredFormCompiler:
    """Compiles `transform(key)` for one OpenAPI document."""

    def __init__(self, doc: "OpenAPIDocument") -> None:
        self._doc = doc
        self._compiled: dict[str, Transform | None] = {}
        self._lock = threading.RLock()

    def transform(self, key: str) -> Transform | None:
        """obj → its stored form, or None when objects of `key` never change."""
        if key in self._compiled:
            return self._compiled[key]
        with self._lock:
            if key in self._compiled:
                return self._compiled[key]
            # Published only when complete; references inside bind late, so a schema that refers
            # to itself needs no placeholder.
            compiled = self._compile(self._doc.schema(key))
            self._compiled[key] = compiled
            return compiled

    def _resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        """The node a property's schema stands for (through $ref and single-entry allOf)."""
        for _ in range(16):
            if "$ref" in node:
                node = self._doc.schema(node["$ref"].rsplit("/", 1)[-1])
            elif len(node.get("allOf", ())) == 1 and "type" not in node and "properties" not in node:
                node = node["allOf"][0]
            else:
                break
        return node

    def _collection(self, node: dict[str, Any]) -> bool:
        node = self._resolve(node)
        if node.get("type") == "array":
            return True
        return node.get("type") == "object" and isinstance(node.get("additionalProperties"), dict)

    def _compile(self, node: dict[str, Any]) -> Transform | None:
        if "$ref" in node:
            key = node["$ref"].rsplit("/", 1)[-1]
            if key == QUANTITY_KEY:
                return _canonical_quantity
            return lambda v, k=key: (self.transform(k) or (lambda x: x))(v)
        if len(node.get("allOf", ())) == 1:
            return self._compile(node["allOf"][0])
        if node.get("type") == "array" and "items" in node:
            item = self._compile(node["items"])
            if item is None:
                return None

            def stored_list(v: Any) -> Any:
                if not isinstance(v, list):
                    return v
                out = [item(x) for x in v]
                # Same object back when nothing changed, so callers compare by identity.
                return v if all(a is b for a, b in zip(out, v)) else out

            return stored_list
        if node.get("type") != "object":
            return None
        additional = node.get("additionalProperties")
        if isinstance(additional, dict):
            value = self._compile(additional)
            if value is None:
                return None

            def stored_map(v: Any) -> Any:
                if not isinstance(v, dict):
                    return v
                out = {k: value(x) for k, x in v.items()}
                return v if all(out[k] is x for k, x in v.items()) else out

            return stored_map
        required = set(node.get("required", ()))
        props: dict[str, tuple[bool, Transform | None]] = {}
        for name, sub in node.get("properties", {}).items():
            droppable = name not in required and self._collection(sub)
            child = self._compile(sub)
            if droppable or child is not None:
                props[name] = (droppable, child)
        if not props:
            return None

        def stored_object(v: Any) -> Any:
            if not isinstance(v, dict):
                return v
            out: dict[str, Any] | None = None
            for key, item in v.items():
                entry = props.get(key)
                if entry is None:
                    continue
                droppable, child = entry
                if droppable and _is_empty_collection(item):
                    if out is None:
                        out = dict(v)
                    del out[key]
                    continue
                if child is not None and item is not None:
                    new = child(item)
                    if new is not item:
                        if out is None:
                            out = dict(v)
                        out[key] = new
            return v if out is None else out

        return stored_object
