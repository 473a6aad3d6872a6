"""resource.k8s.io/v1 validation rules beyond the schema (k/k pkg/apis/resource/validation).

The limits a driver or allocator can trip over: slice and device counts, name formats, exactly
one node scope, one value per attribute, request/config cross-references, size caps. CEL
selectors must parse (cel-python, the project's CEL library); the real server also type-checks
them against its DRA environment, which is not imitated.
"""

from __future__ import annotations

import json
import re
from fractions import Fraction
from functools import lru_cache
from typing import Any

import celpy

from .quantity import QuantityError
from .quantity import parse as parse_quantity
from .schema_validation import FieldError

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")
_DNS_LABEL_RE = re.compile(rf"^{_DNS_LABEL}$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_C_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$")

MAX_RESERVED_FOR = 256
MAX_DEVICES_PER_SLICE = 128
MAX_DEVICES_PER_SLICE_WITH_TAINTS_OR_COUNTERS = 64
MAX_ATTRIBUTES_AND_CAPACITIES = 32
MAX_ATTRIBUTE_VALUE_LENGTH = 64
MAX_TAINTS = 16
MAX_REQUESTS = 32
MAX_SUBREQUESTS = 8
MAX_SELECTORS = 32
MAX_CONSTRAINTS = 32
MAX_CONFIGS = 32
MAX_CEL_LENGTH = 10 * 1024
MAX_OPAQUE_PARAMETERS = 10 * 1024
MAX_VALID_VALUES = 10
_ATTRIBUTE_VALUE_FIELDS = ("int", "bool", "string", "version", "ints", "bools", "strings", "versions")


def _err(path: str, message: str, reason: str = "FieldValueInvalid") -> FieldError:
    return FieldError(path, message, reason)


def _too_many(path: str, n: int, limit: int) -> FieldError:
    return _err(path, f"Too many: {n}: must have at most {limit} items", "FieldValueTooMany")


def _driver_errors(driver: Any, path: str) -> list[FieldError]:
    if not isinstance(driver, str) or not driver:
        return [_err(path, "Required value", "FieldValueRequired")]
    if len(driver) > 63 or not _DNS_SUBDOMAIN.match(driver):
        return [_err(path, f"Invalid value: {driver!r}: must be a lowercase DNS subdomain of at most 63 characters")]
    return []


def _qualified_name_errors(name: str, path: str, require_domain: bool = False) -> list[FieldError]:
    domain, sep, ident = name.rpartition("/")
    errs = []
    if require_domain and not sep:
        errs.append(_err(path, f"Invalid value: {name!r}: a fully qualified name must include a domain"))
    if sep and (not domain or len(domain) > 63 or not _DNS_SUBDOMAIN.match(domain)):
        errs.append(_err(path, f"Invalid value: {name!r}: the domain must be a DNS subdomain of at most 63 characters"))
    if len(ident) > 32 or not _C_IDENTIFIER.match(ident):
        errs.append(_err(path, f"Invalid value: {name!r}: the name must be a C identifier of at most 32 characters"))
    return errs


def _quantity(value: Any) -> Fraction | None:
    try:
        return parse_quantity(str(value))[0]
    except QuantityError:
        return None  # the schema check reports it


def _request_policy_errors(cap: dict[str, Any], path: str) -> list[FieldError]:
    """validateRequestPolicy: one policy form; values, range and default within the capacity;
    validValues ascending and holding the default."""
    policy = cap["requestPolicy"]
    capacity = _quantity(cap.get("value"))
    errs: list[FieldError] = []
    valid = policy.get("validValues") or []
    rng = policy.get("validRange")
    default = _quantity(policy["default"]) if policy.get("default") is not None else None
    if capacity is None:
        return errs
    if default is not None and default > capacity:
        errs.append(_err(f"{path}.default", f"Invalid value: {policy['default']!r}: default value cannot exceed the "
                         "capacity value"))
    if valid and rng:
        errs.append(_err(path, "Forbidden: exactly one policy can be specified, cannot specify `validValues` and "
                         "`validRange` at the same time", "FieldValueForbidden"))
    elif valid:
        if len(valid) > MAX_VALID_VALUES:
            errs.append(_too_many(f"{path}.validValues", len(valid), MAX_VALID_VALUES))
        values = [_quantity(v) for v in valid]
        for i, v in enumerate(values):
            if v is not None and v > capacity:
                errs.append(_err(f"{path}.validValues[{i}]", f"Invalid value: {valid[i]!r}: option is larger than "
                                 "the capacity value"))
            if i and v is not None and values[i - 1] is not None and v <= values[i - 1]:
                errs.append(_err(f"{path}.validValues[{i}]", f"Invalid value: {valid[i]!r}: values must be unique "
                                 "and sorted in ascending order"))
        if default is not None and default not in values:
            errs.append(_err(f"{path}.default", f"Invalid value: {policy['default']!r}: default value must be one "
                             "of the valid values"))
    elif rng:
        low = _quantity(rng.get("min")) if rng.get("min") is not None else None
        high = _quantity(rng.get("max")) if rng.get("max") is not None else None
        if low is None:
            errs.append(_err(f"{path}.validRange.min", "Required value", "FieldValueRequired"))
        elif low > capacity:
            errs.append(_err(f"{path}.validRange.min", f"Invalid value: {rng['min']!r}: min cannot exceed the "
                             "capacity value"))
        if high is not None and high > capacity:
            errs.append(_err(f"{path}.validRange.max", f"Invalid value: {rng['max']!r}: max cannot exceed the "
                             "capacity value"))
        if high is not None and low is not None and low > high:
            errs.append(_err(f"{path}.validRange.max", f"Invalid value: {rng['max']!r}: max cannot be less than min"))
        if default is not None and low is not None and (default < low or (high is not None and default > high)):
            errs.append(_err(f"{path}.default", f"Invalid value: {policy['default']!r}: default value must be "
                             "within the valid range"))
        step = _quantity(rng.get("step")) if rng.get("step") is not None else None
        if step is not None and step <= 0:
            errs.append(_err(f"{path}.validRange.step", f"Invalid value: {rng['step']!r}: step must be positive"))
    return errs


def _device_errors(device: dict[str, Any], path: str, allow_requests_policy: bool) -> list[FieldError]:
    errs: list[FieldError] = []
    name = device.get("name", "")
    if not _DNS_LABEL_RE.match(name or "-") or len(name) > 63:
        errs.append(_err(f"{path}.name", f"Invalid value: {name!r}: must be a DNS label"))
    attributes = device.get("attributes") or {}
    capacity = device.get("capacity") or {}
    if len(attributes) + len(capacity) > MAX_ATTRIBUTES_AND_CAPACITIES:
        errs.append(_err(f"{path}", f"Too many: {len(attributes) + len(capacity)}: attributes and capacities "
                         f"must not exceed {MAX_ATTRIBUTES_AND_CAPACITIES}", "FieldValueTooMany"))
    for key, value in attributes.items():
        apath = f"{path}.attributes[{key}]"
        errs.extend(_qualified_name_errors(key, apath))
        set_fields = [f for f in _ATTRIBUTE_VALUE_FIELDS if isinstance(value, dict) and value.get(f) is not None]
        if len(set_fields) != 1:
            errs.append(_err(apath, f"Invalid value: exactly one value must be specified (found {set_fields or 'none'})"))
            continue
        field = set_fields[0]
        values = value[field] if field.endswith("s") else [value[field]]
        for v in values:
            if field.startswith(("string", "version")) and len(v) > MAX_ATTRIBUTE_VALUE_LENGTH:
                errs.append(_err(f"{apath}.{field}", f"Too long: may not be more than {MAX_ATTRIBUTE_VALUE_LENGTH} "
                                 "bytes", "FieldValueTooLong"))
            if field.startswith("version") and not _SEMVER.match(v):
                errs.append(_err(f"{apath}.{field}", f"Invalid value: {v!r}: must be a semantic version"))
    for key, cap in capacity.items():
        cpath = f"{path}.capacity[{key}]"
        errs.extend(_qualified_name_errors(key, cpath))
        policy = (cap or {}).get("requestPolicy")
        if policy is not None:
            if not allow_requests_policy:
                errs.append(_err(f"{cpath}.requestPolicy", "Forbidden: allowMultipleAllocations must be true",
                                 "FieldValueForbidden"))
            errs.extend(_request_policy_errors(cap, f"{cpath}.requestPolicy"))
    taints = device.get("taints") or []
    if len(taints) > MAX_TAINTS:
        errs.append(_too_many(f"{path}.taints", len(taints), MAX_TAINTS))
    return errs


def node_selector_errors(selector: dict[str, Any], path: str, exactly_one_term: bool = False) -> list[FieldError]:
    """ValidateNodeSelector (core validation): term shapes, label keys, operator/value rules;
    `matchFields` may only select `metadata.name` with In/NotIn and one value."""
    terms = selector.get("nodeSelectorTerms") or []
    errs: list[FieldError] = []
    if not terms:
        errs.append(_err(f"{path}.nodeSelectorTerms", "Required value: must have at least one node selector term",
                         "FieldValueRequired"))
    if exactly_one_term and len(terms) > 1:
        errs.append(_err(f"{path}.nodeSelectorTerms", f"Invalid value: {len(terms)}: must have exactly one node "
                         "selector term"))
    for i, term in enumerate(terms):
        tpath = f"{path}.nodeSelectorTerms[{i}]"
        for j, req in enumerate(term.get("matchExpressions") or []):
            rpath = f"{tpath}.matchExpressions[{j}]"
            key, op, values = req.get("key", ""), req.get("operator"), req.get("values") or []
            prefix, _, name = key.rpartition("/")
            if not name or len(name) > 63 or not re.match(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$", name) or \
                    (prefix and not _DNS_SUBDOMAIN.match(prefix)):
                errs.append(_err(f"{rpath}.key", f"Invalid value: {key!r}: must be a valid label key"))
            if op in ("In", "NotIn") and not values:
                errs.append(_err(f"{rpath}.values", "Required value: must be specified when `operator` is 'In' or "
                                 "'NotIn'", "FieldValueRequired"))
            elif op in ("Exists", "DoesNotExist") and values:
                errs.append(_err(f"{rpath}.values", "Forbidden: may not be specified when `operator` is 'Exists' "
                                 "or 'DoesNotExist'", "FieldValueForbidden"))
            elif op in ("Gt", "Lt") and (len(values) != 1 or not re.match(r"^-?\d+$", values[0])):
                errs.append(_err(f"{rpath}.values", "Required value: must be specified single value when "
                                 "`operator` is 'Lt' or 'Gt'"))
        for j, req in enumerate(term.get("matchFields") or []):
            rpath = f"{tpath}.matchFields[{j}]"
            if req.get("key") != "metadata.name":
                errs.append(_err(f"{rpath}.key", f"Invalid value: {req.get('key')!r}: not a valid field selector "
                                 "key (only metadata.name)"))
            if req.get("operator") not in ("In", "NotIn"):
                errs.append(_err(f"{rpath}.operator", f"Invalid value: {req.get('operator')!r}: not a valid "
                                 "selector operator (In or NotIn)"))
            if len(req.get("values") or []) != 1:
                errs.append(_err(f"{rpath}.values", "Required value: must be only one value when `operator` is "
                                 "'In' or 'NotIn' for node field selector"))
    return errs


def resource_slice_errors(slice_obj: dict[str, Any]) -> list[FieldError]:
    """ValidateResourceSlice, for the fields drivers fill in."""
    spec = slice_obj.get("spec") or {}
    errs = _driver_errors(spec.get("driver"), "spec.driver")
    pool = spec.get("pool") or {}
    pool_name = pool.get("name") or ""
    if not pool_name or len(pool_name) > 253 or not all(_DNS_SUBDOMAIN.match(p or "-") for p in pool_name.split("/")):
        errs.append(_err("spec.pool.name", f"Invalid value: {pool_name!r}: must be one or more DNS subdomains "
                         "separated by slashes, at most 253 characters"))
    if int(pool.get("resourceSliceCount") or 0) <= 0:
        errs.append(_err("spec.pool.resourceSliceCount", "Invalid value: must be greater than zero"))
    if int(pool.get("generation") or 0) < 0:
        errs.append(_err("spec.pool.generation", "Invalid value: must be greater than or equal to 0"))
    scopes = [s for s in ("nodeName", "nodeSelector", "allNodes", "perDeviceNodeSelection") if spec.get(s)]
    if len(scopes) != 1:
        errs.append(_err("spec", "Invalid value: exactly one of `nodeName`, `nodeSelector`, `allNodes`, "
                         f"`perDeviceNodeSelection` is required (found {scopes or 'none'})"))
    if spec.get("nodeSelector"):
        errs.extend(node_selector_errors(spec["nodeSelector"], "spec.nodeSelector", exactly_one_term=True))
    if spec.get("nodeName") and not _DNS_SUBDOMAIN.match(spec["nodeName"]):
        errs.append(_err("spec.nodeName", f"Invalid value: {spec['nodeName']!r}: must be a DNS subdomain"))
    devices = spec.get("devices") or []
    if devices and spec.get("sharedCounters"):
        errs.append(_err("spec", "Invalid value: only one of `devices` and `sharedCounters` may be set"))
    heavy = any(d.get("taints") or d.get("consumesCounters")
                or any(isinstance(a, dict) and any(a.get(f) is not None for f in ("ints", "bools", "strings", "versions"))
                       for a in (d.get("attributes") or {}).values())
                for d in devices)
    limit = MAX_DEVICES_PER_SLICE_WITH_TAINTS_OR_COUNTERS if heavy else MAX_DEVICES_PER_SLICE
    if len(devices) > limit:
        errs.append(_too_many("spec.devices", len(devices), limit))
    seen: set[str] = set()
    for i, device in enumerate(devices):
        path = f"spec.devices[{i}]"
        errs.extend(_device_errors(device, path, bool(device.get("allowMultipleAllocations"))))
        name = device.get("name", "")
        if name in seen:
            errs.append(_err(f"{path}.name", f"Duplicate value: {name!r}", "FieldValueDuplicate"))
        seen.add(name)
        if spec.get("perDeviceNodeSelection"):
            per = [s for s in ("nodeName", "nodeSelector", "allNodes") if device.get(s)]
            if len(per) != 1:
                errs.append(_err(path, "Invalid value: with perDeviceNodeSelection each device needs exactly one "
                                 "of `nodeName`, `nodeSelector`, `allNodes`"))
    return errs


@lru_cache(maxsize=1024)
def _cel_parse_error(expression: str) -> str | None:
    """The parser's complaint about `expression`, or None when it parses."""
    try:
        celpy.Environment().compile(expression)
    except celpy.CELParseError as exc:
        return " ".join(str(exc).split())
    return None


def _selector_errors(selectors: list[Any], path: str, stored: frozenset[str] = frozenset()) -> list[FieldError]:
    errs = []
    if len(selectors) > MAX_SELECTORS:
        errs.append(_too_many(path, len(selectors), MAX_SELECTORS))
    for i, sel in enumerate(selectors):
        expr = ((sel or {}).get("cel") or {}).get("expression")
        if not expr:
            errs.append(_err(f"{path}[{i}].cel.expression", "Required value", "FieldValueRequired"))
        elif len(expr) > MAX_CEL_LENGTH:
            errs.append(_err(f"{path}[{i}].cel.expression", f"Too long: may not be more than {MAX_CEL_LENGTH} bytes",
                             "FieldValueTooLong"))
        elif expr not in stored and (problem := _cel_parse_error(expr)) is not None:
            # An expression already stored is not recompiled on update ("stored expressions").
            errs.append(_err(f"{path}[{i}].cel.expression", f"Invalid value: {expr!r}: compilation failed: {problem}"))
    return errs


def _opaque_errors(opaque: dict[str, Any] | None, path: str) -> list[FieldError]:
    if not opaque:
        return [_err(path, "Required value: exactly one configuration type must be set", "FieldValueRequired")]
    errs = _driver_errors(opaque.get("driver"), f"{path}.driver")
    if len(json.dumps(opaque.get("parameters"), separators=(",", ":"))) > MAX_OPAQUE_PARAMETERS:
        errs.append(_err(f"{path}.parameters", f"Too long: may not be more than {MAX_OPAQUE_PARAMETERS} bytes",
                         "FieldValueTooLong"))
    return errs


def _exact_errors(req: dict[str, Any], path: str, stored: frozenset[str]) -> list[FieldError]:
    errs = _selector_errors(req.get("selectors") or [], f"{path}.selectors", stored)
    mode = req.get("allocationMode", "ExactCount")
    if mode == "ExactCount" and int(req.get("count") or 0) <= 0:
        errs.append(_err(f"{path}.count", f"Invalid value: {req.get('count')}: must be greater than zero"))
    elif mode == "All" and req.get("count"):
        errs.append(_err(f"{path}.count", "Invalid value: must not be specified when allocationMode is 'All'"))
    for key in ((req.get("capacity") or {}).get("requests") or {}):
        errs.extend(_qualified_name_errors(key, f"{path}.capacity.requests[{key}]"))
    return errs


def claim_spec_errors(spec: dict[str, Any], path: str = "spec", stored: frozenset[str] = frozenset()) -> list[FieldError]:
    """ValidateResourceClaimSpec: requests, subrequests, constraints, config."""
    devices = spec.get("devices") or {}
    requests = devices.get("requests") or []
    errs: list[FieldError] = []
    base = f"{path}.devices"
    if len(requests) > MAX_REQUESTS:
        errs.append(_too_many(f"{base}.requests", len(requests), MAX_REQUESTS))
    names: dict[str, set[str]] = {}
    for i, req in enumerate(requests):
        rpath = f"{base}.requests[{i}]"
        name = req.get("name", "")
        if not _DNS_LABEL_RE.match(name or "-"):
            errs.append(_err(f"{rpath}.name", f"Invalid value: {name!r}: must be a DNS label"))
        if name in names:
            errs.append(_err(f"{rpath}.name", f"Duplicate value: {name!r}", "FieldValueDuplicate"))
        has_exact, subs = req.get("exactly") is not None, req.get("firstAvailable")
        if has_exact == bool(subs):
            errs.append(_err(rpath, "Invalid value: exactly one of `exactly` or `firstAvailable` is required"))
        sub_names: set[str] = set()
        if has_exact:
            errs.extend(_exact_errors(req["exactly"], f"{rpath}.exactly", stored))
        for j, sub in enumerate(subs or []):
            spath = f"{rpath}.firstAvailable[{j}]"
            sub_name = sub.get("name", "")
            if not _DNS_LABEL_RE.match(sub_name or "-"):
                errs.append(_err(f"{spath}.name", f"Invalid value: {sub_name!r}: must be a DNS label"))
            if sub_name in sub_names:
                errs.append(_err(f"{spath}.name", f"Duplicate value: {sub_name!r}", "FieldValueDuplicate"))
            sub_names.add(sub_name)
            errs.extend(_exact_errors(sub, spath, stored))
        if subs and len(subs) > MAX_SUBREQUESTS:
            errs.append(_too_many(f"{rpath}.firstAvailable", len(subs), MAX_SUBREQUESTS))
        names[name] = sub_names

    def ref_errors(refs: list[str], rpath: str) -> list[FieldError]:
        out = []
        for k, ref in enumerate(refs):
            main, _, sub = ref.partition("/")
            if main not in names or (sub and sub not in names[main]):
                out.append(_err(f"{rpath}[{k}]", f"Invalid value: {ref!r}: must be the name of a request in the "
                                "claim or the name of a request and a subrequest separated by '/'"))
        return out

    constraints = devices.get("constraints") or []
    if len(constraints) > MAX_CONSTRAINTS:
        errs.append(_too_many(f"{base}.constraints", len(constraints), MAX_CONSTRAINTS))
    for i, con in enumerate(constraints):
        cpath = f"{base}.constraints[{i}]"
        errs.extend(ref_errors(con.get("requests") or [], f"{cpath}.requests"))
        kinds = [k for k in ("matchAttribute", "distinctAttribute") if con.get(k)]
        if len(kinds) != 1:
            errs.append(_err(cpath, "Required value: exactly one constraint must be set", "FieldValueRequired"))
        for k in kinds:
            errs.extend(_qualified_name_errors(con[k], f"{cpath}.{k}", require_domain=True))
    configs = devices.get("config") or []
    if len(configs) > MAX_CONFIGS:
        errs.append(_too_many(f"{base}.config", len(configs), MAX_CONFIGS))
    for i, cfg in enumerate(configs):
        errs.extend(ref_errors(cfg.get("requests") or [], f"{base}.config[{i}].requests"))
        errs.extend(_opaque_errors(cfg.get("opaque"), f"{base}.config[{i}].opaque"))
    return errs


def device_class_errors(obj: dict[str, Any], stored: frozenset[str] = frozenset()) -> list[FieldError]:
    """ValidateDeviceClass: selector and config caps."""
    spec = obj.get("spec") or {}
    errs = _selector_errors(spec.get("selectors") or [], "spec.selectors", stored)
    configs = spec.get("config") or []
    if len(configs) > MAX_CONFIGS:
        errs.append(_too_many("spec.config", len(configs), MAX_CONFIGS))
    for i, cfg in enumerate(configs):
        errs.extend(_opaque_errors(cfg.get("opaque"), f"spec.config[{i}].opaque"))
    return errs


def claim_status_errors(claim: dict[str, Any], old: dict[str, Any] | None) -> list[FieldError]:
    """ValidateResourceClaimStatusUpdate: allocation set once, reservedFor rules, device status."""
    status = claim.get("status") or {}
    old_status = (old or {}).get("status") or {}
    errs: list[FieldError] = []
    allocation = status.get("allocation")
    old_allocation = old_status.get("allocation")
    if allocation is not None and old_allocation is not None and allocation != old_allocation:
        errs.append(FieldError("status.allocation", "Invalid value: field is immutable"))
    reserved = status.get("reservedFor") or []
    if reserved and allocation is None:
        errs.append(FieldError("status.reservedFor", "Forbidden: may not be specified when `allocated` is not set",
                               "FieldValueForbidden"))
    if len(reserved) > MAX_RESERVED_FOR:
        errs.append(FieldError("status.reservedFor", f"Too many: {len(reserved)}: must have at most "
                               f"{MAX_RESERVED_FOR} items", "FieldValueTooMany"))
    if (claim.get("metadata") or {}).get("deletionTimestamp"):
        old_uids = {r.get("uid") for r in old_status.get("reservedFor") or []}
        for i, ref in enumerate(reserved):
            if ref.get("uid") not in old_uids:
                errs.append(FieldError(f"status.reservedFor[{i}]", "Forbidden: new entries may not be added "
                                       "while `deallocationRequested` or `deletionTimestamp` are set",
                                       "FieldValueForbidden"))
    for i, ref in enumerate(reserved):
        if ref.get("resource") in (None, ""):
            errs.append(FieldError(f"status.reservedFor[{i}].resource", "Required value", "FieldValueRequired"))
    if allocation is not None and allocation != old_allocation:
        errs.extend(_allocation_errors(claim, allocation))
    allocated = {(r.get("driver"), r.get("pool"), r.get("device"), r.get("shareID"))
                 for r in ((allocation or {}).get("devices") or {}).get("results") or []}
    for i, dev in enumerate(status.get("devices") or []):
        if (dev.get("driver"), dev.get("pool"), dev.get("device"), dev.get("shareID")) not in allocated:
            errs.append(FieldError(f"status.devices[{i}]", "Invalid value: must be an allocated device in the claim"))
    return errs


def _allocation_errors(claim: dict[str, Any], allocation: dict[str, Any]) -> list[FieldError]:
    requests = ((claim.get("spec") or {}).get("devices") or {}).get("requests") or []
    names: dict[str, set[str]] = {}
    for req in requests:
        names[req.get("name", "")] = {s.get("name", "") for s in req.get("firstAvailable") or []}
    errs: list[FieldError] = []
    if allocation.get("nodeSelector"):
        errs.extend(node_selector_errors(allocation["nodeSelector"], "status.allocation.nodeSelector"))
    for i, result in enumerate(((allocation.get("devices") or {}).get("results")) or []):
        path = f"status.allocation.devices.results[{i}]"
        request = result.get("request", "")
        main, _, sub = request.partition("/")
        if main not in names or (sub and sub not in names[main]) or (not sub and names.get(main)):
            errs.append(FieldError(f"{path}.request", f"Invalid value: {request!r}: must be the name of a request "
                                   "in the claim or, when the request uses firstAvailable, <request>/<subrequest>"))
        driver = result.get("driver", "")
        if len(driver) > 63 or not _DNS_SUBDOMAIN.match(driver or "-"):
            errs.append(FieldError(f"{path}.driver", f"Invalid value: {driver!r}: must be a DNS subdomain"))
        for part in (result.get("pool") or "").split("/"):
            if not _DNS_SUBDOMAIN.match(part or "-"):
                errs.append(FieldError(f"{path}.pool", f"Invalid value: {result.get('pool')!r}: each part must "
                                       "be a DNS subdomain"))
                break
        if not _DNS_LABEL_RE.match(result.get("device") or "-"):
            errs.append(FieldError(f"{path}.device", f"Invalid value: {result.get('device')!r}: must be a DNS label"))
        share = result.get("shareID")
        if share is not None and not _UUID.match(share):
            errs.append(FieldError(f"{path}.shareID", f"Invalid value: {share!r}: must be a lowercase UUID "
                                   "in 8-4-4-4-12 form"))
    return errs


def _expressions(node: Any) -> frozenset[str]:
    """Every CEL selector expression anywhere in an object."""
    found: set[str] = set()
    stack = [node]
    while stack:
        cur = stack.pop()
        if isinstance(cur, dict):
            cel = cur.get("cel")
            if isinstance(cel, dict) and isinstance(cel.get("expression"), str):
                found.add(cel["expression"])
            stack.extend(cur.values())
        elif isinstance(cur, list):
            stack.extend(cur)
    return frozenset(found)


def object_errors(kind: str, obj: dict[str, Any], old: dict[str, Any] | None = None,
                  check_cel: bool = True) -> list[FieldError]:
    """The resource.k8s.io rules for any stored object of `kind` (empty for other kinds).
    Expressions of `old` count as stored (not recompiled); `check_cel=False` stores new ones
    unparsed too, as an API server of another version might have."""
    if kind == "ResourceSlice":
        return resource_slice_errors(obj)
    if kind not in ("ResourceClaim", "ResourceClaimTemplate", "DeviceClass"):
        return []
    # Claim and template specs are immutable, so on update the expressions are the stored ones:
    # the spec part is then skipped by comparing, not by walking both objects.
    if old is not None and kind != "DeviceClass" and old.get("spec") == obj.get("spec"):
        return []
    stored = _expressions(obj) if not check_cel else (_expressions(old) if old else frozenset())
    if kind == "ResourceSlice":
        return resource_slice_errors(obj)
    if kind == "ResourceClaim":
        return claim_spec_errors(obj.get("spec") or {}, stored=stored)
    if kind == "ResourceClaimTemplate":
        return claim_spec_errors(((obj.get("spec") or {}).get("spec")) or {}, "spec.spec", stored)
    if kind == "DeviceClass":
        return device_class_errors(obj, stored)
    return []
