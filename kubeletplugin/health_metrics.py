"""Metrics of the node's GPU health loop and of the claim status writes (docs/metrics.md).

Registered in the node's registry next to NodeMetrics; also the HealthObserver of the health
loop and the failure counter of the claim status writer.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from vgpu_dra.driver.device_health import TaintBook


class HealthMetrics:
    """``vgpu_dra_device_*`` and ``vgpu_dra_claim_status_*`` series of one node."""

    def __init__(self, node_name: str, registry: CollectorRegistry):
        self.node_name = node_name
        self.tainted = Gauge(
            "vgpu_dra_device_tainted", "1 while the node's health loop has this taint on the device",
            ["node", "device", "key", "effect"], registry=registry)
        self.signals = Counter(
            "vgpu_dra_device_health_signals", "GPU health signals seen (NVML events and polls), by kind",
            ["node", "device", "kind"], registry=registry)
        self.registration_failures = Counter(
            "vgpu_dra_device_event_registration_failures",
            "GPUs whose NVML event registration failed (watched by polling only)", ["node", "device"],
            registry=registry)
        self.poll_failures = Counter(
            "vgpu_dra_device_health_poll_failures", "GPU health polls NVML could not answer (health Unknown)",
            ["node", "device"], registry=registry)
        self.status_write_failures = Counter(
            "vgpu_dra_claim_status_write_failures",
            "Claim status.devices writes that failed (the limits still apply)", ["node", "operation"],
            registry=registry)
        self.taint_state_failures = Counter(
            "vgpu_dra_device_taint_state_failures",
            "Reads or writes of the GPU taints kept across restarts that failed (operation: load, save)",
            ["node", "operation"], registry=registry)
        self._shown: set[tuple[str, str, str]] = set()

    # ---- HealthObserver ------------------------------------------------------------------------
    def signal_seen(self, device: str, kind: str) -> None:
        self.signals.labels(self.node_name, device, kind).inc()

    def registration_failed(self, device: str) -> None:
        self.registration_failures.labels(self.node_name, device).inc()

    def poll_failed(self, device: str) -> None:
        self.poll_failures.labels(self.node_name, device).inc()

    def taints_changed(self, book: TaintBook) -> None:
        now = {(t.device, t.taint.key, t.taint.effect) for t in book.active.values()}
        for gone in self._shown - now:
            self.tainted.remove(self.node_name, *gone)
        for shown in now:
            self.tainted.labels(self.node_name, *shown).set(1)
        self._shown = now

    def taint_state_failed(self, operation: str) -> None:
        self.taint_state_failures.labels(self.node_name, operation).inc()

    # ---- claim status writer -------------------------------------------------------------------
    def status_write_failed(self, operation: str) -> None:
        self.status_write_failures.labels(self.node_name, operation).inc()
