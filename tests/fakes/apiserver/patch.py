"""The three PATCH forms the real API server accepts from our code.

- JSON merge patch (RFC 7386, application/merge-patch+json);
- JSON patch (RFC 6902, application/json-patch+json);
- strategic merge patch (application/strategic-merge-patch+json), the subset Kubernetes clients
  use: lists whose schema says `x-kubernetes-patch-strategy: merge` are merged by their
  `x-kubernetes-patch-merge-key` (reservedFor by uid, ownerReferences by uid) or as sets of
  primitives (finalizers); `$patch: delete|replace`, `$deleteFromPrimitiveList/<field>`,
  `$retainKeys` and `$setElementOrder/<field>` directives. The patch strategies are read from the
  same OpenAPI documents the objects are validated against, so they match the Go struct tags.
"""

from __future__ import annotations

import copy
from typing import Any

from .schema_validation import OpenAPIDocument


class PatchError(ValueError):
    """The patch cannot be applied (bad document, failed `test` op, bad path)."""


class PatchConflict(PatchError):
    """A JSON-patch `test` operation failed (the real server answers 422 too, as Invalid)."""


# --- JSON merge patch ------------------------------------------------------------------------

def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# --- JSON patch ------------------------------------------------------------------------------

def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"JSON pointer {path!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _index(container: list[Any], token: str, path: str, for_add: bool) -> int:
    if token == "-" and for_add:
        return len(container)
    if not token.isdigit() or (len(token) > 1 and token.startswith("0")):
        raise PatchError(f"{path}: {token!r} is not an array index")
    i = int(token)
    limit = len(container) if for_add else len(container) - 1
    if i > limit:
        raise PatchError(f"{path}: index {i} out of bounds")
    return i


def _parent(doc: Any, tokens: list[str], path: str) -> Any:
    node = doc
    for token in tokens[:-1]:
        if isinstance(node, dict):
            if token not in node:
                raise PatchError(f"{path}: missing key {token!r}")
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, path, for_add=False)]
        else:
            raise PatchError(f"{path}: cannot descend into a {type(node).__name__}")
    return node


def _get(doc: Any, path: str) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return doc
    parent = _parent(doc, tokens, path)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"{path}: missing key {last!r}")
        return parent[last]
    if isinstance(parent, list):
        return parent[_index(parent, last, path, for_add=False)]
    raise PatchError(f"{path}: not a container")


def _remove(doc: Any, path: str) -> Any:
    tokens = _pointer(path)
    if not tokens:
        raise PatchError("cannot remove the whole document")
    parent = _parent(doc, tokens, path)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"{path}: missing key {last!r}")
        return parent.pop(last)
    if isinstance(parent, list):
        return parent.pop(_index(parent, last, path, for_add=False))
    raise PatchError(f"{path}: not a container")


def _add(doc: Any, path: str, value: Any, replace: bool) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return value
    parent = _parent(doc, tokens, path)
    last = tokens[-1]
    if isinstance(parent, dict):
        if replace and last not in parent:
            raise PatchError(f"{path}: missing key {last!r}")
        parent[last] = value
    elif isinstance(parent, list):
        if replace:
            parent[_index(parent, last, path, for_add=False)] = value
        else:
            parent.insert(_index(parent, last, path, for_add=True), value)
    else:
        raise PatchError(f"{path}: not a container")
    return doc


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 on a deep copy of `target`."""
    if not isinstance(operations, list):
        raise PatchError("a JSON patch must be an array of operations")
    doc = copy.deepcopy(target)
    for n, op in enumerate(operations):
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(f"operation {n}: needs 'op' and 'path'")
        kind, path = op["op"], op["path"]
        if kind in ("add", "replace", "test") and "value" not in op:
            raise PatchError(f"operation {n} ({kind} {path}): missing 'value'")
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op["value"]), replace=False)
        elif kind == "replace":
            doc = _add(doc, path, copy.deepcopy(op["value"]), replace=True)
        elif kind == "remove":
            _remove(doc, path)
        elif kind in ("move", "copy"):
            if "from" not in op:
                raise PatchError(f"operation {n} ({kind} {path}): missing 'from'")
            value = _remove(doc, op["from"]) if kind == "move" else copy.deepcopy(_get(doc, op["from"]))
            doc = _add(doc, path, value, replace=False)
        elif kind == "test":
            if _get(doc, path) != op["value"]:
                raise PatchConflict(f"test operation at {path} failed: the value is not {op['value']!r}")
        else:
            raise PatchError(f"operation {n}: unknown op {kind!r}")
    return doc


# --- strategic merge patch -------------------------------------------------------------------

class _SchemaView:
    """Walks an OpenAPI document's schemas alongside the object being patched."""

    def __init__(self, doc: OpenAPIDocument) -> None:
        self._doc = doc

    def resolve(self, node: dict[str, Any] | None) -> dict[str, Any]:
        """The effective schema of `node` with $ref / single allOf followed."""
        seen = 0
        while node:
            if "$ref" in node:
                node = self._doc.schema(node["$ref"].rsplit("/", 1)[-1])
            elif "allOf" in node and "properties" not in node and "type" not in node:
                merged: dict[str, Any] = {k: v for k, v in node.items() if k != "allOf"}
                inner = self.resolve(node["allOf"][0]) if node["allOf"] else {}
                node = {**inner, **merged}
            else:
                return node
            seen += 1
            if seen > 64:
                break
        return node or {}

    def field(self, schema: dict[str, Any], key: str) -> dict[str, Any]:
        """The schema node of `key` inside object schema `schema` (unresolved, keeps list tags)."""
        props = schema.get("properties")
        if props and key in props:
            return props[key]
        additional = schema.get("additionalProperties")
        if isinstance(additional, dict):
            return additional
        return {}


_DELETE = object()


def strategic_merge_patch(target: dict[str, Any], patch: Any, doc: OpenAPIDocument, schema_key: str) -> Any:
    """Apply a strategic merge patch to `target`, reading list strategies from `schema_key`."""
    if not isinstance(patch, dict):
        raise PatchError("a strategic merge patch must be a JSON object")
    view = _SchemaView(doc)
    result = _smp_map(target, patch, view, view.resolve(doc.schema(schema_key)))
    if result is _DELETE:
        return {}
    return result


def _smp_map(original: Any, patch: dict[str, Any], view: _SchemaView, schema: dict[str, Any]) -> Any:
    directive = patch.get("$patch")
    if directive == "delete":
        return _DELETE
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive is not None:
        raise PatchError(f"unknown $patch directive {directive!r} on a map")
    result = dict(original) if isinstance(original, dict) else {}
    retain = patch.get("$retainKeys")
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field_name = key.split("/", 1)[1]
            if not isinstance(value, list):
                raise PatchError(f"{key} needs a list")
            current = result.get(field_name)
            if isinstance(current, list):
                result[field_name] = [v for v in current if v not in value]
            continue
        if value is None:
            result.pop(key, None)
            continue
        field_schema = view.field(schema, key)
        if isinstance(value, dict):
            merged = _smp_map(result.get(key), value, view, view.resolve(field_schema))
            if merged is _DELETE:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            result[key] = _smp_list(result.get(key), value, view, field_schema)
        else:
            result[key] = value
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _smp_list(original: Any, patch: list[Any], view: _SchemaView, field_schema: dict[str, Any]) -> list[Any]:
    resolved = view.resolve(field_schema)
    strategy = str(field_schema.get("x-kubernetes-patch-strategy") or resolved.get("x-kubernetes-patch-strategy") or "")
    merge_key = field_schema.get("x-kubernetes-patch-merge-key") or resolved.get("x-kubernetes-patch-merge-key")
    if "merge" not in strategy.split(","):
        # Atomic list: replaced, but `$patch` markers never reach the stored object.
        return [copy.deepcopy(v) for v in patch if not (isinstance(v, dict) and "$patch" in v)]
    current = list(original) if isinstance(original, list) else []
    if any(isinstance(v, dict) and v.get("$patch") == "replace" for v in patch):
        return [copy.deepcopy(v) for v in patch if not (isinstance(v, dict) and "$patch" in v)]
    if not merge_key:
        # A set of primitives: union, keeping the original order first.
        for v in patch:
            if v not in current:
                current.append(copy.deepcopy(v))
        return current
    item_schema = view.resolve(resolved.get("items", {}))
    for item in patch:
        if not isinstance(item, dict) or merge_key not in item:
            raise PatchError(f"list items merged by {merge_key!r} must be objects carrying that key")
        key = item[merge_key]
        found = next((i for i, v in enumerate(current) if isinstance(v, dict) and v.get(merge_key) == key), None)
        if item.get("$patch") == "delete":
            if found is not None:
                current.pop(found)
            continue
        if found is None:
            current.append(_smp_map({}, item, view, item_schema))
        else:
            current[found] = _smp_map(current[found], item, view, item_schema)
    return current
