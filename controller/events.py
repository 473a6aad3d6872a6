"""Kubernetes Events (core/v1) on claims and pods, aggregated like client-go's recorder.

A repeat of the same (object, type, reason, message) within the aggregation window bumps the
existing Event's ``count`` instead of creating a new object, so a refusal retried every few
seconds does not flood the namespace.
"""
from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from .kubeapi import EVENTS, ApiError, JsonObject, KubeApi

log = structlog.get_logger(__name__)

COMPONENT = "vgpu-dra-controller"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class EventRecorder:
    """Writes Events; failures are logged, never raised (an Event is best effort)."""

    api: KubeApi
    host: str = ""
    window_s: float = 600.0
    _recent: dict[tuple[str, str, str, str, str], tuple[float, JsonObject]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, involved: JsonObject, event_type: str, reason: str, message: str) -> None:
        """Emit (or count again) an Event about `involved` (a claim or pod JSON)."""
        meta = involved.get("metadata") or {}
        namespace = meta.get("namespace") or "default"
        key = (meta.get("uid", ""), namespace, event_type, reason, message)
        now = time.monotonic()
        with self._lock:
            previous = self._recent.get(key)
        try:
            if previous and now - previous[0] < self.window_s:
                existing = previous[1]
                patched = self.api.patch(EVENTS, existing["metadata"]["name"], {
                    "count": int(existing.get("count") or 1) + 1, "lastTimestamp": _now()}, namespace)
                with self._lock:
                    self._recent[key] = (previous[0], patched)
                return
            created = self.api.create(EVENTS, {
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"name": f"{meta.get('name', 'object')}.{uuid.uuid4().hex[:16]}", "namespace": namespace},
                "involvedObject": {"apiVersion": involved.get("apiVersion"), "kind": involved.get("kind"),
                                   "name": meta.get("name"), "namespace": namespace, "uid": meta.get("uid"),
                                   "resourceVersion": meta.get("resourceVersion")},
                "reason": reason, "message": message[:1024], "type": event_type,
                "source": {"component": COMPONENT, "host": self.host} if self.host else {"component": COMPONENT},
                "reportingComponent": COMPONENT, "reportingInstance": self.host or COMPONENT,
                "firstTimestamp": _now(), "lastTimestamp": _now(), "count": 1,
            }, namespace)
            with self._lock:
                if len(self._recent) > 10000:
                    self._recent.clear()
                self._recent[key] = (now, created)
        except ApiError as exc:
            log.warning("could not record event", reason=reason, object=meta.get("name"), error=str(exc))
