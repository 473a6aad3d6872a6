"""Test hooks of the fake API server: injected faults and the audit trail of who wrote what."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from .errors import ApiError, conflict
from .resources import ResourceType

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
# Fault code meaning "close the connection without answering".
DROP_CONNECTION = 0
# Fault code meaning "answer as usual, only `delay_s` later" (a slow request, not a failed one).
SLOW = 200


@dataclass
class Fault:
    """Fail the next `remaining` matching requests with HTTP `code`."""

    code: int
    verbs: frozenset[str]
    resource: str | None  # plural or kind; None = any
    subresource: str | None  # "" = main resource only, None = any
    remaining: int
    hits: int = 0
    delay_s: float = 0.0  # SLOW: how long the request is held before it is served
    # Run just before the request is served: another client's write that lands first, a race.
    before: Callable[[], None] | None = None

    def matches(self, verb: str, rt: ResourceType, subresource: str) -> bool:
        """Whether this fault applies to a request."""
        if self.remaining <= 0 or verb not in self.verbs:
            return False
        if self.resource is not None and self.resource not in (rt.plural, rt.kind):
            return False
        return self.subresource is None or self.subresource == subresource

    def error(self, rt: ResourceType, name: str) -> ApiError:
        """The error the request gets."""
        if self.code == 409:
            return conflict(rt.plural, rt.group, name or "")
        if self.code == 429:
            return ApiError(429, "TooManyRequests", "the server has received too many requests and has asked us "
                            "to try again later (injected fault)", retry_after=1)
        if self.code == 503:
            return ApiError(503, "ServiceUnavailable", "the server is currently unable to handle the request "
                            "(injected fault)", retry_after=1)
        if self.code == 500:
            return ApiError(500, "InternalError", "Internal error occurred: injected fault")
        if self.code == 410:
            return ApiError(410, "Expired", "too old resource version (injected fault)")
        return ApiError(self.code, "InjectedFault", f"injected fault with status {self.code}")


class FaultInjector:
    """Faults to fail requests with, consumed in the order they were added."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(self, code: int, *, resource: str | None = None, verbs: tuple[str, ...] | frozenset[str] = tuple(WRITE_VERBS),
            subresource: str | None = None, count: int = 1, delay_s: float = 0.0,
            before: Callable[[], None] | None = None) -> Fault:
        """Make the next `count` requests matching (resource, verbs, subresource) fail with `code`
        (409 is a resourceVersion conflict, 500 an internal error, 429/503 ask to retry, 410 on a
        watch an in-stream "too old resource version", DROP_CONNECTION (0) no answer at all), or
        with SLOW (200) succeed `delay_s` later. `before`, when given, runs first: with SLOW and no
        delay, the request is then served as usual, after whatever `before` wrote."""
        fault = Fault(code, frozenset(verbs), resource, subresource, count, delay_s=delay_s, before=before)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        """Drop every pending fault."""
        with self._lock:
            self._faults.clear()

    def take(self, verb: str, rt: ResourceType, subresource: str) -> Fault | None:
        """The fault a request trips, if any (and count it)."""
        with self._lock:
            for fault in self._faults:
                if fault.matches(verb, rt, subresource):
                    fault.remaining -= 1
                    fault.hits += 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    return fault
        return None


@dataclass(frozen=True)
class AuditRecord:
    """One request as the API server's audit log would show it."""

    user: str
    verb: str
    resource: str  # plural
    group: str
    namespace: str
    name: str
    subresource: str
    code: int
    resource_version: str = ""  # of the object after a successful write


@dataclass
class AuditLog:
    """Every resource request, in arrival order of completion."""

    records: list[AuditRecord] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, record: AuditRecord) -> None:
        """Append one record."""
        with self._lock:
            self.records.append(record)

    def snapshot(self) -> list[AuditRecord]:
        """A copy of the records so far."""
        with self._lock:
            return list(self.records)
