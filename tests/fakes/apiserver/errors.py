"""API errors as the real server reports them: an HTTP code plus a metav1.Status body."""

from __future__ import annotations

from typing import Any, Iterable

from .schema_validation import FieldError


class ApiError(Exception):
    """A failed request; `status()` is the metav1.Status the client receives."""

    def __init__(self, code: int, reason: str, message: str, *, name: str = "", group: str = "",
                 kind: str = "", causes: Iterable[FieldError] = (), retry_after: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.name = name
        self.group = group
        self.kind = kind
        self.causes = list(causes)
        self.retry_after = retry_after

    def status(self) -> dict[str, Any]:
        """The metav1.Status body."""
        details: dict[str, Any] = {}
        if self.name:
            details["name"] = self.name
        if self.group:
            details["group"] = self.group
        if self.kind:
            details["kind"] = self.kind
        if self.causes:
            details["causes"] = [{"reason": c.reason, "message": c.message, "field": c.field} for c in self.causes]
        if self.retry_after is not None:
            details["retryAfterSeconds"] = self.retry_after
        body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                "message": self.message, "reason": self.reason, "code": self.code}
        if details:
            body["details"] = details
        return body


def not_found(resource: str, group: str, name: str) -> ApiError:
    """404 for a named object."""
    qualified = f"{resource}.{group}" if group else resource
    return ApiError(404, "NotFound", f'{qualified} "{name}" not found', name=name, group=group, kind=resource)


def already_exists(resource: str, group: str, name: str) -> ApiError:
    """409 AlreadyExists on create."""
    qualified = f"{resource}.{group}" if group else resource
    return ApiError(409, "AlreadyExists", f'{qualified} "{name}" already exists', name=name, group=group,
                    kind=resource)


def conflict(resource: str, group: str, name: str, why: str | None = None) -> ApiError:
    """409 Conflict: the write was based on a stale resourceVersion (or a failed precondition)."""
    qualified = f"{resource}.{group}" if group else resource
    why = why or "the object has been modified; please apply your changes to the latest version and try again"
    return ApiError(409, "Conflict", f'Operation cannot be fulfilled on {qualified} "{name}": {why}',
                    name=name, group=group, kind=resource)


def invalid(kind: str, group: str, name: str, errors: list[FieldError]) -> ApiError:
    """422 Invalid with one cause per field problem, worded like the real server."""
    qualified = f"{kind}.{group}" if group else kind
    joined = ", ".join(str(e) for e in errors)
    message = f'{qualified} "{name}" is invalid: ' + (f"[{joined}]" if len(errors) > 1 else joined)
    return ApiError(422, "Invalid", message, name=name, group=group, kind=kind, causes=errors)


def bad_request(message: str) -> ApiError:
    """400 BadRequest."""
    return ApiError(400, "BadRequest", message)


def gone(message: str) -> ApiError:
    """410 Gone / Expired: the requested resourceVersion was compacted away."""
    return ApiError(410, "Expired", message)
