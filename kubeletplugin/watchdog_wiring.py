"""Builds the usage watchdog from a running plugin: its settings, NVML, Events, metrics registry."""
from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from vgpu_dra.driver.usage_audit import GpuProcess, Tolerance
from vgpu_dra.kubeletplugin.node_events import report_node_event
from vgpu_dra.kubeletplugin.object_events import ObjectRef, post_event
from vgpu_dra.kubeletplugin.watchdog import (NvmlProcesses, ProcessQueryError, ProcessSource, UsageWatchdog,
                                             WatchdogSettings)

if TYPE_CHECKING:
    from vgpu_dra.kubeletplugin.plugin import KubeletPlugin

log = structlog.get_logger(__name__)


class UnavailableNvml:
    """NVML could not be initialised: every poll fails closed with the reason."""

    def __init__(self, reason: str):
        self.reason = reason

    def processes(self, uuids: set[str]) -> list[GpuProcess]:
        raise ProcessQueryError(f"NVML is not available: {self.reason}")


def nvml_source() -> ProcessSource:
    """NVML's process lists, or a source that says why there are none."""
    try:
        return NvmlProcesses()
    except Exception as exc:  # noqa: BLE001 - pynvml raises NVMLError or OSError without a driver
        log.warning("usage watchdog: NVML unavailable; every poll reports it", error=str(exc))
        return UnavailableNvml(str(exc))


def start_watchdog(plugin: KubeletPlugin, source: ProcessSource | None) -> UsageWatchdog:
    """A started watchdog over the plugin's prepared claims, Events through its API client."""
    settings = plugin.settings
    assert plugin.preparer is not None and plugin.metrics is not None
    timeout = settings.api_timeout_seconds

    def emit(regarding: ObjectRef, reason: str, message: str) -> None:
        post_event(plugin.api_client, settings.node_name, regarding, reason, message, timeout=timeout)

    def emit_node(reason: str, message: str) -> None:
        report_node_event(plugin.api_client, settings.node_name, reason, message, timeout=timeout)

    watchdog = UsageWatchdog(
        settings.node_name,
        WatchdogSettings(interval_seconds=settings.watchdog_seconds,
                         enforcement="kill" if settings.watchdog_enforcement == "kill" else "report",
                         tolerance=Tolerance(settings.watchdog_tolerance_bytes, settings.watchdog_tolerance_percent),
                         proc_root=settings.proc_root),
        plugin.preparer.prepared_claims, settings.claims_dir, source=source or nvml_source(), emit=emit,
        emit_node=emit_node, refresh_pods=plugin.refresh_pods, registry=plugin.metrics.registry)
    watchdog.start()
    log.info("usage watchdog started", every_seconds=settings.watchdog_seconds,
             enforcement=settings.watchdog_enforcement)
    return watchdog
