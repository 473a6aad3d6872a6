"""Shape checks for manifests read from files: the common helpers, and every field of the
``resource.k8s.io`` objects `vgpu-dra plan` uses (DeviceClass spec, ResourceClaim spec).

Pure. A claim written by hand has no API server to reject a typo, so a field that is not part of
the object (``cuont: 2``) is an error naming the file, the object, the path to the field and the
closest known name — never silently ignored (it would plan something other than what was meant).
Beta (``v1beta1``) requests are rewritten to the v1 ``exactly`` form first.
"""
from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vgpu_dra.driver.claim_requests import (CONFIG_FIELDS, CONSTRAINT_FIELDS, DEVICES_FIELDS, EXACTLY_FIELDS,
                                            REQUEST_FIELDS, SUBREQUEST_FIELDS)

JsonObject = dict[str, Any]

BETA_VERSIONS = ("v1beta1",)  # v1beta2 already has the v1 shape
OBJECT_FIELDS = ("apiVersion", "kind", "metadata", "spec", "status")
OBJECT_META_FIELDS = ("name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
                      "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations",
                      "ownerReferences", "finalizers", "managedFields")
CLAIM_SPEC_FIELDS = ("devices",)
TEMPLATE_SPEC_FIELDS = ("metadata", "spec")
DEVICE_CLASS_SPEC_FIELDS = ("selectors", "config", "extendedResourceName")
SELECTOR_FIELDS = ("cel",)
CEL_FIELDS = ("expression",)
OPAQUE_FIELDS = ("driver", "parameters")
CAPACITY_FIELDS = ("requests",)
TOLERATION_FIELDS = ("key", "operator", "value", "effect", "tolerationSeconds")


class ManifestError(ValueError):
    """A file or object that cannot be used; ``str()`` names the file, document and object."""


@dataclass(frozen=True, slots=True)
class Source:
    """Where an object came from, for messages: ``examples/claims/a.yaml (document 2)``."""

    path: str
    document: int

    def __str__(self) -> str:
        return f"{self.path} (document {self.document})"


def mapping(parent: Mapping[str, Any], key: str, source: Source, what: str, *, required: bool = False) -> JsonObject:
    """``parent[key]`` as an object ({} when absent and not required)."""
    value = parent.get(key)
    if value is None:
        if required:
            raise ManifestError(f"{source}: {what}: {key} is missing")
        return {}
    if not isinstance(value, dict):
        raise ManifestError(f"{source}: {what}: {key} must be an object, got {type(value).__name__}")
    return value


def listing(parent: Mapping[str, Any], key: str, source: Source, what: str) -> list[Any]:
    """``parent[key]`` as a list ([] when absent)."""
    value = parent.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ManifestError(f"{source}: {what}: {key} must be a list, got {type(value).__name__}")
    return value


def string_map(parent: Mapping[str, Any], key: str, source: Source, what: str) -> dict[str, str]:
    """``parent[key]`` as labels/annotations."""
    value = mapping(parent, key, source, what)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ManifestError(f"{source}: {what}: {key} must map strings to strings")
    return dict(value)


def known_fields(obj: Mapping[str, Any], known: Sequence[str], source: Source, what: str, path: str) -> None:
    """Refuse a field ``obj`` does not have, with the closest known name as the likely fix."""
    for name in obj:
        if name in known:
            continue
        close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known)}"
        raise ManifestError(f"{source}: {what}: {path}: unknown field {name!r} ({hint})")


def cel_selector(selector: Any, source: Source, what: str, path: str) -> None:
    """One ``{cel: {expression}}`` selector."""
    if not isinstance(selector, dict) or not isinstance(selector.get("cel"), dict) \
            or not isinstance(selector["cel"].get("expression"), str):
        raise ManifestError(f"{source}: {what}: {path}: a selector must be {{cel: {{expression: <string>}}}}")
    known_fields(selector, SELECTOR_FIELDS, source, what, path)
    known_fields(selector["cel"], CEL_FIELDS, source, what, f"{path}.cel")


def opaque_config(entry: Any, source: Source, what: str, path: str, *, scoped: bool) -> None:
    """One ``config[]`` entry: ``{requests?, opaque: {driver, parameters}}``."""
    if not isinstance(entry, dict):
        raise ManifestError(f"{source}: {what}: {path}: must be an object")
    known_fields(entry, CONFIG_FIELDS if scoped else ("opaque",), source, what, path)
    opaque = entry.get("opaque")
    if opaque is None:
        return
    if not isinstance(opaque, dict) or not isinstance(opaque.get("driver"), str):
        raise ManifestError(f"{source}: {what}: {path}: opaque needs a driver name and parameters")
    known_fields(opaque, OPAQUE_FIELDS, source, what, f"{path}.opaque")
    if not isinstance(opaque.get("parameters", {}), dict):
        raise ManifestError(f"{source}: {what}: {path}: opaque.parameters must be an object")


def device_class_spec(spec: JsonObject, source: Source, what: str) -> None:
    """A DeviceClass ``spec``."""
    known_fields(spec, DEVICE_CLASS_SPEC_FIELDS, source, what, "spec")
    for index, selector in enumerate(listing(spec, "selectors", source, what)):
        cel_selector(selector, source, what, f"spec.selectors[{index}]")
    for index, entry in enumerate(listing(spec, "config", source, what)):
        opaque_config(entry, source, what, f"spec.config[{index}]", scoped=False)


def claim_spec(spec: JsonObject, version: str, source: Source, what: str, path: str = "spec") -> JsonObject:
    """A ResourceClaimSpec, checked field by field and rewritten to the v1 form."""
    spec = copy.deepcopy(spec)
    known_fields(spec, CLAIM_SPEC_FIELDS, source, what, path)
    devices = mapping(spec, "devices", source, what)
    known_fields(devices, DEVICES_FIELDS, source, what, f"{path}.devices")
    requests = listing(devices, "requests", source, what)
    if not requests:
        raise ManifestError(f"{source}: {what}: spec.devices.requests is empty")
    names: list[str] = []
    subrequests: list[str] = []
    for index, request in enumerate(requests):
        where = f"{what} request[{index}]"
        at = f"{path}.devices.requests[{index}]"
        if not isinstance(request, dict) or not isinstance(request.get("name"), str) or not request["name"]:
            raise ManifestError(f"{source}: {where}: every request needs a name")
        names.append(request["name"])
        if version in BETA_VERSIONS and "exactly" not in request and "firstAvailable" not in request:
            request["exactly"] = {key: request.pop(key) for key in EXACTLY_FIELDS if key in request}
        known_fields(request, REQUEST_FIELDS, source, what, at)
        exactly = request.get("exactly")
        alternatives = listing(request, "firstAvailable", source, where)
        if (exactly is None) == (not alternatives):
            raise ManifestError(f"{source}: {where} {request['name']!r}: needs either `exactly` "
                                "(deviceClassName, count, capacity …) or `firstAvailable`, not both")
        if exactly is not None:
            _device_fields(exactly, EXACTLY_FIELDS, source, f"{where} {request['name']!r}", what, f"{at}.exactly",
                           prefix="exactly.")
        for s_index, sub in enumerate(alternatives):
            sub_at = f"{at}.firstAvailable[{s_index}]"
            if not isinstance(sub, dict) or not isinstance(sub.get("name"), str) or not sub["name"]:
                raise ManifestError(f"{source}: {what}: {sub_at}: every subrequest needs a name")
            subrequests.append(f"{request['name']}/{sub['name']}")
            _device_fields(sub, SUBREQUEST_FIELDS, source, f"{where} {request['name']!r}/{sub['name']!r}", what, sub_at)
    if len(set(names)) != len(names):
        raise ManifestError(f"{source}: {what}: request names are not unique: {names}")
    referable = set(names) | set(subrequests)
    for index, entry in enumerate(listing(devices, "config", source, what)):
        opaque_config(entry, source, what, f"spec.devices.config[{index}]", scoped=True)
        _references(entry, referable, source, f"{what} spec.devices.config[{index}]")
    for index, entry in enumerate(listing(devices, "constraints", source, what)):
        if not isinstance(entry, dict):
            raise ManifestError(f"{source}: {what} spec.devices.constraints[{index}]: must be an object")
        known_fields(entry, CONSTRAINT_FIELDS, source, what, f"{path}.devices.constraints[{index}]")
        _references(entry, referable, source, f"{what} spec.devices.constraints[{index}]")
    return spec


def _device_fields(fields: Any, known: Sequence[str], source: Source, where: str, what: str, at: str, *,
                   prefix: str = "") -> None:
    """The fields of ``exactly`` or of one ``firstAvailable`` subrequest."""
    if not isinstance(fields, dict) or not isinstance(fields.get("deviceClassName"), str):
        raise ManifestError(f"{source}: {where}: {prefix}deviceClassName is missing")
    known_fields(fields, known, source, what, at)
    count = fields.get("count", 1)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ManifestError(f"{source}: {where}: {prefix}count must be a positive integer, got {count!r}")
    for s_index, selector in enumerate(listing(fields, "selectors", source, where)):
        cel_selector(selector, source, what, f"{at}.selectors[{s_index}]")
    capacity = mapping(fields, "capacity", source, where)
    known_fields(capacity, CAPACITY_FIELDS, source, what, f"{at}.capacity")
    mapping(capacity, "requests", source, f"{where} capacity")
    for t_index, toleration in enumerate(listing(fields, "tolerations", source, where)):
        if not isinstance(toleration, dict):
            raise ManifestError(f"{source}: {what}: {at}.tolerations[{t_index}]: must be an object")
        known_fields(toleration, TOLERATION_FIELDS, source, what, f"{at}.tolerations[{t_index}]")


def _references(entry: Mapping[str, Any], referable: set[str], source: Source, where: str) -> None:
    unknown = [name for name in entry.get("requests") or [] if name not in referable]
    if unknown:
        raise ManifestError(f"{source}: {where}: names unknown request(s) {unknown}")
