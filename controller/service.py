"""The allocation controller as a service: leader election around leadership terms, metrics.

Only the leader writes: each term (`AllocationTerm`) builds its own caches and ledger from a full
list and stops, with its workers, the moment the Lease is lost. Without leader election (one
replica, tests) a single term runs until stopped.
"""
from __future__ import annotations

import os
import socket
import threading
import uuid
from dataclasses import dataclass, field

import structlog
from kubernetes import client as k8s

from .allocation_term import AllocationTerm, TermSettings
from .events import EventRecorder
from .kubeapi import KubeApi
from .leader import LeaderElector
from .metrics import ClaimView, ControllerMetrics, GpuView
from .quota_gate import QuotaView
from .quota_metrics import QuotaViewCollector

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class LeaderSettings:
    """Where the Lease lives and how long a term lasts without renewal (see docs/controller.md for
    why 4 / 3 / 0.5 s: a standby leads within 4 s of a crashed leader's last renewal, and a leader
    steps down only after 3 s in which not one of its renewals got through)."""

    enabled: bool = True
    namespace: str = "kube-system"
    name: str = "vgpu-dra-controller"
    identity: str = field(default_factory=lambda: f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}")
    lease_duration_s: float = 4.0
    renew_deadline_s: float = 3.0
    retry_period_s: float = 0.5

    def problem(self) -> str | None:
        """What is wrong with the three durations (client-go's rules), or None."""
        if min(self.lease_duration_s, self.renew_deadline_s, self.retry_period_s) <= 0:
            return "lease duration, renew deadline and retry period must all be more than 0 seconds"
        if self.lease_duration_s <= self.renew_deadline_s:
            return (f"the lease duration ({self.lease_duration_s:g} s) must be longer than the renew deadline "
                    f"({self.renew_deadline_s:g} s), or a standby could lead while the old leader still does")
        if self.renew_deadline_s <= 1.2 * self.retry_period_s:
            return (f"the renew deadline ({self.renew_deadline_s:g} s) must be more than 1.2 x the retry period "
                    f"({self.retry_period_s:g} s), or a leader gets no second try before it steps down")
        return None


class ControllerService:
    """Runs the controller until `stop` is set; `current_term` is the term being led (or None)."""

    def __init__(self, api_client: k8s.ApiClient, settings: TermSettings = TermSettings(),
                 leader: LeaderSettings = LeaderSettings(), metrics: ControllerMetrics | None = None):
        self.api = KubeApi(api_client)
        self.settings = settings
        self.leader = leader
        self.metrics = metrics or ControllerMetrics()
        self.events = EventRecorder(self.api, host=leader.identity or os.uname().nodename)
        self.current_term: AllocationTerm | None = None
        self.terms = 0
        self._term_lock = threading.Lock()
        self.metrics.register_view(self._view)
        self.metrics.registry.register(QuotaViewCollector(self._quota_view))
        self.elector: LeaderElector | None = None

    def _view(self) -> tuple[list[GpuView], list[ClaimView]]:
        term = self.current_term
        return term.allocation_view() if term is not None else ([], [])

    def _quota_view(self) -> list[QuotaView]:
        term = self.current_term
        return term.quota_view() if term is not None else []

    def run(self, stop: threading.Event) -> None:
        """Block until `stop`: campaign for the Lease (or just run) and lead terms."""
        if not self.leader.enabled:
            self._lead(stop)
            return
        problem = self.leader.problem()
        if problem:
            raise ValueError(problem)
        self.elector = LeaderElector(self.api, self.leader.namespace, self.leader.name, self.leader.identity,
                                     on_started=self._lead, lease_duration_s=self.leader.lease_duration_s,
                                     renew_deadline_s=self.leader.renew_deadline_s,
                                     retry_period_s=self.leader.retry_period_s)
        self.elector.run(stop)

    def _lead(self, term_stop: threading.Event) -> None:
        term = AllocationTerm(self.api, self.settings, self.metrics, self.events)
        with self._term_lock:
            self.terms += 1
            self.current_term = term
        self.metrics.is_leader.set(1)
        try:
            term.run(term_stop)
        finally:
            self.metrics.is_leader.set(0)
            with self._term_lock:
                if self.current_term is term:
                    self.current_term = None

    def is_ready(self) -> bool:
        """True while leading with synced caches (or while a standby: nothing to be ready for)."""
        term = self.current_term
        return term.ready.is_set() if term is not None else False
