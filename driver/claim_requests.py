"""A ResourceClaim (raw JSON, ``resource.k8s.io/v1`` shape) + its DeviceClasses → the allocator's terms.

Pure. Every field of a 1.36 ``DeviceClaim`` is read as kube-scheduler reads it:

- ``requests[].exactly`` and ``requests[].firstAvailable[]`` (alternatives in order; results and
  configs name them ``request/subrequest``); per request or subrequest ``deviceClassName``,
  ``selectors`` (class selectors and request selectors must all hold), ``allocationMode``
  (``ExactCount`` with ``count``, or ``All``), ``adminAccess`` (``exactly`` only), ``tolerations``
  and ``capacity.requests``;
- ``constraints[]`` with ``matchAttribute`` or ``distinctAttribute`` over ``requests`` (empty =
  all; ``request/subrequest`` names allowed);
- ``config[]``: this driver's ``VgpuConfig`` entries size the share (class config < claim config <
  capacity requests; later wins), entries of other drivers are left alone.

A field this controller does not know (a newer API, a typo in a file) is refused with its name,
never ignored; `ClaimRejected` carries the sentence for the user.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from vgpu_dra.api.config import InvalidConfigError, VgpuConfig, merge_configs, parse_config
from vgpu_dra.api.names import DRIVER_NAME, GPU_POLICY_ANNOTATION, NODE_POLICY_ANNOTATION
from vgpu_dra.driver.allocation_request import (MAX_ALLOCATION_RESULTS, AllocationInputError, ClaimEntry,
                                                ClaimRequest, DeviceRequest, DistinctAttribute, FirstAvailable,
                                                MatchAttribute)
from vgpu_dra.driver.claim_model import ClaimRejected, claim_label, is_controller_class, meta
from vgpu_dra.driver.device_taints import TaintError, Toleration
from vgpu_dra.driver.limits import LimitError, ShareRequest
from vgpu_dra.driver.placement_policy import PlacementPolicy
from vgpu_dra.driver.selectors import SelectorError, compile_selectors

JsonObject = dict[str, Any]

DEVICES_FIELDS = ("requests", "constraints", "config")
REQUEST_FIELDS = ("name", "exactly", "firstAvailable")
EXACTLY_FIELDS = ("deviceClassName", "selectors", "allocationMode", "count", "adminAccess", "tolerations", "capacity")
SUBREQUEST_FIELDS = ("name", "deviceClassName", "selectors", "allocationMode", "count", "tolerations", "capacity")
CONSTRAINT_FIELDS = ("requests", "matchAttribute", "distinctAttribute")
CONFIG_FIELDS = ("requests", "opaque")
ALLOCATION_MODES = ("ExactCount", "All")


def _our_configs(entries: Sequence[Mapping[str, Any]], where: str) -> list[tuple[tuple[str, ...], VgpuConfig]]:
    configs = []
    for index, entry in enumerate(entries):
        opaque = entry.get("opaque") or {}
        if opaque.get("driver") != DRIVER_NAME:
            continue  # addressed to another driver
        try:
            config = parse_config(opaque.get("parameters") or {})
        except InvalidConfigError as exc:
            raise ClaimRejected(f"{where} config[{index}]: {exc}") from None
        configs.append((tuple(entry.get("requests") or ()), config))
    return configs


def _applies(scope: tuple[str, ...], names: tuple[str, ...]) -> bool:
    return not scope or any(name in scope for name in names)


def _unknown(fields: Mapping[str, Any], known: Sequence[str], where: str) -> None:
    extra = [name for name in fields if name not in known]
    if extra:
        raise ClaimRejected(f"{where}: field {extra[0]!r} is not supported by the vgpu.dra.dev controller "
                            f"(known: {', '.join(known)})")


def _expressions(selectors: Sequence[Mapping[str, Any]] | None, where: str) -> list[str]:
    """CEL expressions of a selector list; any other kind of selector is refused, not skipped
    (kube-scheduler fails such a request too)."""
    found = []
    for index, selector in enumerate(selectors or ()):
        cel = selector.get("cel") if isinstance(selector, Mapping) else None
        if not isinstance(cel, Mapping) or not isinstance(cel.get("expression"), str):
            kinds = ", ".join(sorted(selector)) if isinstance(selector, Mapping) else type(selector).__name__
            raise ClaimRejected(f"{where}[{index}]: only CEL selectors are supported (got {kinds or 'nothing'})")
        found.append(cel["expression"])
    return found


def claim_policy(claim: Mapping[str, Any], default: PlacementPolicy) -> PlacementPolicy:
    """The placement policy for a claim: the controller default, overridden by annotations."""
    annotations = meta(claim).get("annotations") or {}
    node = annotations.get(NODE_POLICY_ANNOTATION)
    gpu = annotations.get(GPU_POLICY_ANNOTATION)
    if node is None and gpu is None:
        return default
    try:
        parsed = PlacementPolicy.parse(node or default.node.value, gpu or default.gpu.value)
    except ValueError as exc:
        raise ClaimRejected(f"annotation {NODE_POLICY_ANNOTATION if node else GPU_POLICY_ANNOTATION}: {exc}") from None
    return parsed


def claim_request(claim: Mapping[str, Any], classes: Mapping[str, Mapping[str, Any]]) -> ClaimRequest:
    """The allocator's view of a claim; raises `ClaimRejected` when it cannot be allocated as written."""
    label = claim_label(claim)
    spec_devices = (claim.get("spec") or {}).get("devices") or {}
    _unknown(spec_devices, DEVICES_FIELDS, "spec.devices")
    claim_configs = _our_configs(spec_devices.get("config") or [], "claim")
    requests: list[ClaimEntry] = []
    least_results = 0
    for raw in spec_devices.get("requests") or []:
        name = raw.get("name", "")
        where = f"request {name!r}"
        _unknown(raw, REQUEST_FIELDS, where)
        if raw.get("firstAvailable"):
            if raw.get("exactly"):
                raise ClaimRejected(f"{where}: sets both exactly and firstAvailable; a request has one of them")
            alternatives = []
            for index, sub in enumerate(raw["firstAvailable"]):
                sub_name = f"{name}/{sub.get('name', '')}"
                _unknown(sub, SUBREQUEST_FIELDS, f"{where} firstAvailable[{index}]")
                alternatives.append(_device_request(sub_name, sub, classes, claim_configs, admin_allowed=False))
            try:
                entry: ClaimEntry = FirstAvailable(name, tuple(alternatives))
            except AllocationInputError as exc:
                raise ClaimRejected(str(exc)) from None
            least_results += min(a.count if not a.all_devices else 1 for a in alternatives)
        else:
            exactly = raw.get("exactly")
            if not isinstance(exactly, Mapping):
                raise ClaimRejected(f"{where}: needs exactly (deviceClassName, count …) or firstAvailable")
            _unknown(exactly, EXACTLY_FIELDS, f"{where} exactly")
            entry = _device_request(name, exactly, classes, claim_configs, admin_allowed=True)
            least_results += entry.count if not entry.all_devices else 1
        requests.append(entry)
    if least_results > MAX_ALLOCATION_RESULTS:
        raise ClaimRejected(f"the claim asks for {least_results} GPUs in all; an allocation holds at most "
                            f"{MAX_ALLOCATION_RESULTS} devices")
    matches: list[MatchAttribute] = []
    distincts: list[DistinctAttribute] = []
    for index, raw in enumerate(spec_devices.get("constraints") or []):
        where = f"constraints[{index}]"
        _unknown(raw, CONSTRAINT_FIELDS, where)
        scope = tuple(raw.get("requests") or ())
        if raw.get("matchAttribute") and raw.get("distinctAttribute"):
            raise ClaimRejected(f"{where}: sets both matchAttribute and distinctAttribute; a constraint has one")
        if raw.get("matchAttribute"):
            matches.append(MatchAttribute(raw["matchAttribute"], scope))
        elif raw.get("distinctAttribute"):
            distincts.append(DistinctAttribute(raw["distinctAttribute"], scope))
        else:
            raise ClaimRejected(f"{where}: sets neither matchAttribute nor distinctAttribute")
    for index, raw in enumerate(spec_devices.get("config") or []):
        _unknown(raw, CONFIG_FIELDS, f"config[{index}]")
    try:
        return ClaimRequest(key=meta(claim)["uid"], requests=tuple(requests), match_attributes=tuple(matches),
                            label=label, distinct_attributes=tuple(distincts))
    except AllocationInputError as exc:
        raise ClaimRejected(str(exc)) from None


def _device_request(name: str, fields: Mapping[str, Any], classes: Mapping[str, Mapping[str, Any]],
                    claim_configs: list[tuple[tuple[str, ...], VgpuConfig]], *, admin_allowed: bool) -> DeviceRequest:
    """One ``exactly`` request or one ``firstAvailable`` subrequest (``name`` = its result name)."""
    where = f"request {name!r}"
    class_name = fields.get("deviceClassName", "")
    device_class = classes.get(class_name)
    if device_class is None:
        raise ClaimRejected(f"{where}: DeviceClass {class_name!r} does not exist")
    if not is_controller_class(device_class):
        raise ClaimRejected(f"{where}: DeviceClass {class_name!r} is not allocated by the vgpu.dra.dev "
                            "controller, and one claim cannot mix allocators")
    mode = fields.get("allocationMode") or "ExactCount"
    if mode not in ALLOCATION_MODES:
        raise ClaimRejected(f"{where}: allocationMode {mode!r} is not one of {', '.join(ALLOCATION_MODES)}")
    if mode == "All" and fields.get("count") is not None:
        raise ClaimRejected(f"{where}: count is set with allocationMode All; All takes every matching GPU")
    admin = fields.get("adminAccess")
    if admin is not None and not admin_allowed:
        raise ClaimRejected(f"{where}: adminAccess is not allowed in a firstAvailable subrequest")
    if admin is not None and not isinstance(admin, bool):
        raise ClaimRejected(f"{where}: adminAccess must be true or false, got {admin!r}")
    try:
        tolerations = tuple(Toleration.parse(raw, field=f"{where} tolerations[{index}]")
                            for index, raw in enumerate(fields.get("tolerations") or ()))
    except TaintError as exc:
        raise ClaimRejected(str(exc)) from None
    class_spec = device_class.get("spec") or {}
    expressions = (_expressions(class_spec.get("selectors"), f"DeviceClass {class_name} selectors")
                   + _expressions(fields.get("selectors"), f"{where} selectors"))
    try:
        selector = compile_selectors(expressions) if expressions else None
    except SelectorError as exc:
        raise ClaimRejected(f"{where}: {exc}") from None
    scope_names = (name, name.split("/", 1)[0])
    layers = [config for _, config in _our_configs(class_spec.get("config") or [], f"DeviceClass {class_name}")]
    layers += [config for scope, config in claim_configs if _applies(scope, scope_names)]
    try:
        share = ShareRequest.from_sources(merge_configs(layers), (fields.get("capacity") or {}).get("requests"))
    except (LimitError, InvalidConfigError) as exc:
        raise ClaimRejected(f"{where}: {exc}") from None
    count = fields.get("count")
    try:
        return DeviceRequest(name=name, share=share, count=1 if mode == "All" or count is None else int(count),
                             selector=selector, all_devices=mode == "All", admin_access=bool(admin),
                             tolerations=tolerations)
    except AllocationInputError as exc:
        raise ClaimRejected(str(exc)) from None
