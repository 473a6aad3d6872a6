"""Leader election over a coordination.k8s.io/v1 Lease, like client-go's leaderelection.

The holder renews ``renewTime`` every `retry_period_s`; a candidate takes the Lease over when it
has not been renewed for ``leaseDurationSeconds`` (judged by this process's own clock from the
moment it last saw the renew time change, so clock skew between replicas does not matter).
Every write is a PUT/POST with the last resourceVersion seen, so two candidates can never both
win the same term. A leader that cannot renew within `renew_deadline_s` steps down.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from .kubeapi import LEASES, ApiError, JsonObject, KubeApi

log = structlog.get_logger(__name__)


def _now_micro() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class LeaderElector:
    """Runs `on_started(term_stop)` while this process leads; `term_stop` is set when it stops."""

    api: KubeApi
    namespace: str
    name: str
    identity: str
    on_started: Callable[[threading.Event], None]
    lease_duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0
    is_leader: threading.Event = field(default_factory=threading.Event)
    terms: int = 0
    _observed_record: tuple[str, str] | None = None  # (holder, renewTime) as last seen
    _observed_at: float = 0.0
    _lease: JsonObject | None = None

    def run(self, stop: threading.Event) -> None:
        """Campaign, lead, and campaign again after losing the Lease, until `stop`."""
        while not stop.is_set():
            if not self._acquire(stop):
                return
            self.terms += 1
            term_stop = threading.Event()
            self.is_leader.set()
            log.info("became leader", lease=f"{self.namespace}/{self.name}", identity=self.identity, term=self.terms)
            worker = threading.Thread(target=self.on_started, args=(term_stop,), name="leader-term", daemon=True)
            worker.start()
            self._renew_loop(stop)
            self.is_leader.clear()
            term_stop.set()
            worker.join()
            log.info("stopped leading", identity=self.identity)
        self._release()

    def _acquire(self, stop: threading.Event) -> bool:
        while not stop.is_set():
            if self._try_acquire_or_renew():
                return True
            stop.wait(self.retry_period_s)
        return False

    def _renew_loop(self, stop: threading.Event) -> None:
        last_renew = time.monotonic()
        while not stop.wait(self.retry_period_s):
            if self._try_acquire_or_renew():
                last_renew = time.monotonic()
            elif time.monotonic() - last_renew > self.renew_deadline_s or not self._holds():
                log.warning("lost the lease", identity=self.identity)
                return

    def _holds(self) -> bool:
        return bool(self._lease) and (self._lease.get("spec") or {}).get("holderIdentity") == self.identity

    def _spec(self, previous: JsonObject | None) -> JsonObject:
        now = _now_micro()
        old = (previous or {}).get("spec") or {}
        taking_over = old.get("holderIdentity") != self.identity
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.lease_duration_s),
            "acquireTime": now if taking_over or not old.get("acquireTime") else old["acquireTime"],
            "renewTime": now,
            "leaseTransitions": int(old.get("leaseTransitions") or 0) + (1 if taking_over and old else 0),
        }

    def _try_acquire_or_renew(self) -> bool:
        try:
            current = self.api.get(LEASES, self.name, self.namespace)
        except ApiError as exc:
            if not exc.not_found:
                log.warning("reading the lease failed", error=str(exc))
                return False
            try:
                self._lease = self.api.create(LEASES, {
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": self._spec(None)}, self.namespace)
                return True
            except ApiError:
                return False
        spec = current.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime") or "")
        if record != self._observed_record:
            self._observed_record = record
            self._observed_at = time.monotonic()
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration_s)
        if holder and holder != self.identity and time.monotonic() - self._observed_at < duration:
            self._lease = current
            return False
        updated = dict(current)
        updated["spec"] = self._spec(current)
        try:
            self._lease = self.api.update(LEASES, updated)
        except ApiError as exc:
            log.info("lease update lost", identity=self.identity, error=str(exc))
            return False
        self._observed_record = (self.identity, updated["spec"]["renewTime"])
        self._observed_at = time.monotonic()
        return True

    def _release(self) -> None:
        """Give the Lease up on a clean shutdown so a standby takes over at once."""
        if not self._holds():
            return
        released = dict(self._lease or {})
        released["spec"] = {**released.get("spec", {}), "holderIdentity": "", "leaseDurationSeconds": 1,
                            "renewTime": _now_micro()}
        try:
            self.api.update(LEASES, released)
        except ApiError as exc:
            log.info("releasing the lease failed", error=str(exc))
