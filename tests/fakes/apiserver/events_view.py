"""events.k8s.io/v1 Events as a view of core/v1 Events, as on the real server: one storage, two
API shapes. An Event written through either API is read and watched through both."""

from __future__ import annotations

from typing import Any

from .schema_validation import FieldError

# events.k8s.io/v1 field → core/v1 field (pkg/apis/events/v1 conversion).
_RENAMES = (
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
)
_TO_CORE = dict(_RENAMES)
_TO_VIEW = {core: view for view, core in _RENAMES}
MAX_NOTE = 1024
MAX_ACTION_OR_REASON = 128


def to_core(view: dict[str, Any]) -> dict[str, Any]:
    """An events.k8s.io/v1 Event as the core/v1 Event it is stored as."""
    out = {_TO_CORE.get(k, k): v for k, v in view.items()}
    out["apiVersion"], out["kind"] = "v1", "Event"
    out.setdefault("involvedObject", {})
    return out


def to_view(core: dict[str, Any]) -> dict[str, Any]:
    """A stored core/v1 Event in events.k8s.io/v1 shape."""
    out = {_TO_VIEW.get(k, k): v for k, v in core.items()}
    out["apiVersion"], out["kind"] = "events.k8s.io/v1", "Event"
    if out.get("regarding") == {}:
        del out["regarding"]
    return out


def view_errors(view: dict[str, Any]) -> list[FieldError]:
    """ValidateEventCreate for events.k8s.io/v1 (new-style events must say who reports what)."""
    errs: list[FieldError] = []
    for field in ("eventTime", "reportingController", "reportingInstance", "action", "reason"):
        if not view.get(field):
            errs.append(FieldError(field, "Required value", "FieldValueRequired"))
    for field in ("action", "reason"):
        if len(view.get(field) or "") > MAX_ACTION_OR_REASON:
            errs.append(FieldError(field, f"Too long: may not be more than {MAX_ACTION_OR_REASON} bytes",
                                   "FieldValueTooLong"))
    if len(view.get("note") or "") > MAX_NOTE:
        errs.append(FieldError("note", f"Too long: may not be more than {MAX_NOTE} bytes", "FieldValueTooLong"))
    if view.get("type") not in ("Normal", "Warning"):
        errs.append(FieldError("type", f"Unsupported value: {view.get('type')!r}: supported values: \"Normal\", "
                               "\"Warning\"", "FieldValueNotSupported"))
    return errs
