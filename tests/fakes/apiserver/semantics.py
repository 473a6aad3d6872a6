"""What the real API server's per-kind strategies do beyond the schema.

Functions here take the old and new object (dicts, never mutated in place: stored objects are
shared and read-only) and either return a new dict or a list of FieldErrors. They mirror
k8s.io/kubernetes pkg/registry/<group>/<kind>/strategy.go and the generic parts of
pkg/apis/<group>/validation (object metadata, pod updates, immutability) for the rules our code
can trip over; resource.k8s.io's own rules are in dra_validation.py.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from .dra_validation import claim_status_errors
from .resources import ResourceType
from .schema_validation import FieldError

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")
_DNS_LABEL_RE = re.compile(rf"^{_DNS_LABEL}$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
# Kinds whose strategy maintains metadata.generation (bumped on spec change).
_GENERATION_KINDS = frozenset({"Pod", "ResourceClaim", "ResourceClaimTemplate", "ResourceSlice", "DeviceClass"})
# Pod spec fields an update may change (pkg/apis/core/validation ValidatePodUpdate); the rest is immutable.
_POD_MUTABLE_SPEC = ("schedulingGates", "activeDeadlineSeconds", "tolerations", "containers", "initContainers")


def has_generation(rt: ResourceType) -> bool:
    """Whether the kind's strategy sets and bumps metadata.generation."""
    return rt.kind in _GENERATION_KINDS


def spec_part(rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
    """Everything a generation bump watches: the object minus metadata, status, kind, apiVersion."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "kind", "apiVersion")}


# --- names and metadata -----------------------------------------------------------------------

def _qualified_name_errors(value: str, path: str) -> list[FieldError]:
    prefix, _, name = value.rpartition("/")
    errs: list[FieldError] = []
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        errs.append(FieldError(path, f"Invalid value: {value!r}: prefix part must be a lowercase RFC 1123 subdomain"))
    if not name or len(name) > 63 or not _QUALIFIED_NAME.match(name):
        errs.append(FieldError(path, f"Invalid value: {value!r}: name part must consist of alphanumeric characters, "
                               "'-', '_' or '.', and must start and end with an alphanumeric character "
                               "(at most 63 characters)"))
    return errs


def metadata_errors(rt: ResourceType, obj: dict[str, Any]) -> list[FieldError]:
    """Name, label, annotation and finalizer format checks (ValidateObjectMeta)."""
    meta = obj.get("metadata") or {}
    errs: list[FieldError] = []
    name = meta.get("name") or ""
    if not name:
        errs.append(FieldError("metadata.name", "Required value: name or generateName is required",
                               "FieldValueRequired"))
    else:
        pattern, limit = (_DNS_LABEL_RE, 63) if rt.kind == "Namespace" else (_DNS_SUBDOMAIN, 253)
        if len(name) > limit or not pattern.match(name):
            errs.append(FieldError("metadata.name", f"Invalid value: {name!r}: a lowercase RFC 1123 "
                                   f"{'label' if limit == 63 else 'subdomain'} must consist of lower case "
                                   "alphanumeric characters, '-' or '.', and must start and end with an "
                                   "alphanumeric character"))
    for key, value in (meta.get("labels") or {}).items():
        errs.extend(_qualified_name_errors(key, f"metadata.labels"))
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            errs.append(FieldError(f"metadata.labels", f"Invalid value: {value!r}: a valid label value must be "
                                   "63 characters or less and consist of alphanumerics, '-', '_' or '.'"))
    for key in (meta.get("annotations") or {}):
        errs.extend(_qualified_name_errors(key, "metadata.annotations"))
    for i, fin in enumerate(meta.get("finalizers") or []):
        errs.extend(_qualified_name_errors(fin, f"metadata.finalizers[{i}]"))
    return errs


# --- create ------------------------------------------------------------------------------------

def _default_exact_request(req: dict[str, Any]) -> dict[str, Any]:
    req = dict(req)
    req.setdefault("allocationMode", "ExactCount")
    if req["allocationMode"] == "ExactCount":
        req.setdefault("count", 1)
    if req.get("tolerations"):
        req["tolerations"] = [{"operator": "Equal", **t} for t in req["tolerations"]]
    return req


def _default_claim_spec(spec: dict[str, Any]) -> dict[str, Any]:
    devices = spec.get("devices")
    if not isinstance(devices, dict) or not isinstance(devices.get("requests"), list):
        return spec
    requests = []
    for req in devices["requests"]:
        if isinstance(req, dict):
            req = dict(req)
            if isinstance(req.get("exactly"), dict):
                req["exactly"] = _default_exact_request(req["exactly"])
            if isinstance(req.get("firstAvailable"), list):
                req["firstAvailable"] = [_default_exact_request(s) if isinstance(s, dict) else s
                                         for s in req["firstAvailable"]]
        requests.append(req)
    return {**spec, "devices": {**devices, "requests": requests}}


def apply_defaults(rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
    """Server-side defaults our code reads back (SetDefaults_* for the fields that matter)."""
    if rt.kind == "ResourceClaim" and isinstance(obj.get("spec"), dict):
        return {**obj, "spec": _default_claim_spec(obj["spec"])}
    if rt.kind == "ResourceClaimTemplate" and isinstance((obj.get("spec") or {}).get("spec"), dict):
        return {**obj, "spec": {**obj["spec"], "spec": _default_claim_spec(obj["spec"]["spec"])}}
    if rt.kind == "Pod" and isinstance(obj.get("spec"), dict):
        spec = dict(obj["spec"])
        spec.setdefault("restartPolicy", "Always")
        spec.setdefault("dnsPolicy", "ClusterFirst")
        spec.setdefault("schedulerName", "default-scheduler")
        spec.setdefault("terminationGracePeriodSeconds", 30)
        spec.setdefault("securityContext", {})
        return {**obj, "spec": spec}
    return obj


def prepare_for_create(rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
    """Reset what a create may not set (status for claims and pods), like PrepareForCreate."""
    if not rt.status_subresource or rt.keep_status_on_create:
        return obj
    out = dict(obj)
    if rt.kind == "Pod":
        out["status"] = {"phase": "Pending"}
    else:
        # A struct-typed status is always serialised, so a new claim reads back `status: {}`.
        out["status"] = {}
    return out


# --- update ------------------------------------------------------------------------------------

_STATUS_KEPT_META = ("labels", "annotations", "finalizers", "ownerReferences", "deletionTimestamp",
                     "deletionGracePeriodSeconds", "generation")


def prepare_for_update(rt: ResourceType, old: dict[str, Any], new: dict[str, Any], subresource: str) -> dict[str, Any]:
    """What of `new` the write may change: a main-resource write keeps the old status, a status
    write keeps everything but status (ResetObjectMetaForStatus)."""
    out = dict(new)
    if subresource == "status":
        for key in list(out):
            if key not in ("status", "metadata", "kind", "apiVersion"):
                del out[key]
        for key, value in old.items():
            if key not in ("status", "metadata"):
                out[key] = value
        meta = dict(out.get("metadata") or {})
        old_meta = old.get("metadata") or {}
        for key in _STATUS_KEPT_META:
            if key in old_meta:
                meta[key] = old_meta[key]
            else:
                meta.pop(key, None)
        out["metadata"] = meta
    elif rt.status_subresource:
        if "status" in old:
            out["status"] = old["status"]
        else:
            out.pop("status", None)
    return out


def _pod_update_errors(old: dict[str, Any], new: dict[str, Any]) -> list[FieldError]:
    old_spec, new_spec = old.get("spec") or {}, new.get("spec") or {}
    errs: list[FieldError] = []
    strip = lambda s: {k: v for k, v in s.items() if k not in _POD_MUTABLE_SPEC}  # noqa: E731
    if strip(old_spec) != strip(new_spec):
        changed = sorted(k for k in set(old_spec) | set(new_spec)
                         if k not in _POD_MUTABLE_SPEC and old_spec.get(k) != new_spec.get(k))
        errs.append(FieldError("spec", "Forbidden: pod updates may not change fields other than "
                               "`spec.containers[*].image`, `spec.activeDeadlineSeconds`, "
                               f"`spec.tolerations` (only additions), `spec.schedulingGates` (changed: {changed})",
                               "FieldValueForbidden"))
    old_gates = [g.get("name") for g in old_spec.get("schedulingGates") or []]
    new_gates = [g.get("name") for g in new_spec.get("schedulingGates") or []]
    if any(g not in old_gates for g in new_gates):
        errs.append(FieldError("spec.schedulingGates", "Forbidden: only deletion is allowed, but found new "
                               "scheduling gate", "FieldValueForbidden"))
    return errs


def create_errors(rt: ResourceType, obj: dict[str, Any]) -> list[FieldError]:
    """Kind-specific checks on a new object."""
    if rt.kind == "Pod":
        spec = obj.get("spec") or {}
        if spec.get("nodeName") and spec.get("schedulingGates"):
            return [FieldError("spec.nodeName", "Forbidden: cannot be set until all schedulingGates have been "
                               "cleared", "FieldValueForbidden")]
    return []


def update_errors(rt: ResourceType, old: dict[str, Any], new: dict[str, Any], subresource: str) -> list[FieldError]:
    """Kind-specific checks on a change (immutability, claim status invariants)."""
    errs: list[FieldError] = []
    old_meta, new_meta = old.get("metadata") or {}, new.get("metadata") or {}
    if old_meta.get("deletionTimestamp"):
        added = [f for f in new_meta.get("finalizers") or [] if f not in (old_meta.get("finalizers") or [])]
        if added:
            errs.append(FieldError("metadata.finalizers", f"Forbidden: no new finalizers can be added if the object "
                                   f"is being deleted, found new finalizers {added}", "FieldValueForbidden"))
    if rt.spec_immutable and old.get("spec") != new.get("spec"):
        errs.append(FieldError("spec", "Invalid value: field is immutable"))
    if rt.kind == "Pod" and subresource == "":
        errs.extend(_pod_update_errors(old, new))
    if rt.kind == "ResourceClaim" and subresource == "status":
        errs.extend(claim_status_errors(new, old))
    if rt.kind == "ResourceSlice":
        for field in ("driver", "nodeName"):
            if (old.get("spec") or {}).get(field) != (new.get("spec") or {}).get(field):
                errs.append(FieldError(f"spec.{field}", "Invalid value: field is immutable"))
        if ((old.get("spec") or {}).get("pool") or {}).get("name") != ((new.get("spec") or {}).get("pool") or {}).get("name"):
            errs.append(FieldError("spec.pool.name", "Invalid value: field is immutable"))
    return errs


def new_uid() -> str:
    """A fresh metadata.uid."""
    return str(uuid.uuid4())
