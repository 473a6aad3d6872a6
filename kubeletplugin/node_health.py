"""Connects the GPU health loop to what the cluster sees: slice taints, Node Events, metrics.

A taint added or removed republishes the node's ResourceSlices with the device's ``taints``
(the allocators then keep new claims off it) and records an Event on the Node. Events are
written off the health thread, so a slow API server never delays the next NVML event.

The taints in force are kept in the state folder (kubeletplugin/taint_store.py) and restored at
start: a restarted plugin publishes them until their quiet period ends. Fail closed: when that
file cannot be read, every GPU is tainted ``vgpu.dra.dev/health=state-unreadable:NoSchedule`` for
one quiet period (the plugin cannot tell which GPUs were faulty), counted and logged once.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import structlog
from kubernetes import client

from vgpu_dra.driver.device_health import STATE_UNREADABLE, ActiveTaint, TaintBook
from vgpu_dra.kubeletplugin.health import DeviceHealth, HealthMonitor
from vgpu_dra.kubeletplugin.health_metrics import HealthMetrics
from vgpu_dra.kubeletplugin.node_events import report_node_event
from vgpu_dra.kubeletplugin.settings import PluginSettings
from vgpu_dra.kubeletplugin.slices import SlicePublisher
from vgpu_dra.kubeletplugin.taint_store import TaintStore, UnreadableTaints

log = structlog.get_logger(__name__)


class NodeHealth:
    """The running health loop of one plugin."""

    def __init__(self, settings: PluginSettings, api_client: client.ApiClient, devices: Mapping[str, str],
                 slices: SlicePublisher | None, metrics: HealthMetrics):
        """``devices`` maps device name → GPU UUID (the published GPUs)."""
        self._settings = settings
        self._api = api_client
        self._devices = dict(devices)
        self._slices = slices
        self._metrics = metrics
        self._events = ThreadPoolExecutor(max_workers=1, thread_name_prefix="node-event")
        self._store = TaintStore(settings.taint_state_path)
        self._save_failing = False
        self.monitor = self._monitor(devices)
        self._unreadable: str | None = None
        self.monitor.keep(self._restore())

    def _monitor(self, devices: Mapping[str, str]) -> HealthMonitor:
        return HealthMonitor(devices, quiet_seconds=self._settings.health_quiet_seconds,
                             poll_seconds=self._settings.health_poll_seconds, on_change=self._taints_changed,
                             on_taint=self._taint_event, observer=self._metrics, on_book=self._save)

    def _restore(self) -> TaintBook:
        """The taints kept before the restart; every GPU tainted when they cannot be read."""
        try:
            return self._store.load(self._devices) or TaintBook()
        except UnreadableTaints as exc:
            self._metrics.taint_state_failed("load")
            moved = self._store.quarantine()
            self._unreadable = str(exc)
            log.error("cannot read the GPU taints kept across the restart; every GPU is tainted until the quiet "
                      "period ends", error=str(exc), taint=str(STATE_UNREADABLE), moved_to=str(moved),
                      quiet_seconds=self._settings.health_quiet_seconds)
            book, now = TaintBook(), time.time()
            for device in sorted(self._devices):
                book, _ = book.observe(device, STATE_UNREADABLE, now)
            return book

    def start(self) -> None:
        """Start watching; the restored taints go into the first publication of the slices."""
        self.monitor.start()
        book = self.monitor.book
        if book.active:
            if self._slices is not None:
                self._slices.set_taints(book.by_device())
            self._metrics.taints_changed(book)
            self._save(book)
            if self._unreadable is None:
                log.info("kept gpu taints from before the restart", taints=sorted(
                    f"{t.device} {t.taint}" for t in book.active.values()))
        if self._unreadable is not None:
            why = f"the taints in force before the plugin restarted could not be read ({self._unreadable})"
            for entry in book.active.values():
                if entry.taint == STATE_UNREADABLE:
                    self._taint_event(entry, True, why)
        log.info("watching gpu health", gpus=sorted(self._devices),
                 quiet_seconds=self._settings.health_quiet_seconds, poll_seconds=self._settings.health_poll_seconds)

    def _save(self, book: TaintBook) -> None:
        try:
            self._store.save(book, self._devices)
        except OSError as exc:
            self._metrics.taint_state_failed("save")
            if not self._save_failing:
                log.warning("cannot keep the GPU taints on disk; a plugin restart now would forget them",
                            path=str(self._store.path), error=str(exc))
            self._save_failing = True
            return
        self._save_failing = False

    def stop(self) -> None:
        """Stop watching (taints in force stay published until the next plugin clears them)."""
        self.monitor.stop()
        self._events.shutdown(wait=True, cancel_futures=False)

    def restart(self, devices: Mapping[str, str]) -> None:
        """Watch ``devices`` instead (the inventory changed); taints of GPUs still there are kept."""
        old = self.monitor
        old.stop()
        self._devices = dict(devices)
        self.monitor = self._monitor(devices)
        self.monitor.keep(old.book)
        self.monitor.start()

    def health(self) -> list[DeviceHealth]:
        """Every watched GPU's health now."""
        return self.monitor.health()

    def wait_for_change(self, seen: int, timeout: float) -> int:
        """Block until the taints change (see HealthMonitor.wait_for_change)."""
        return self.monitor.wait_for_change(seen, timeout)

    def _taints_changed(self, book: TaintBook) -> None:
        if self._slices is None:
            return
        self._slices.set_taints(book.by_device())
        try:
            self._slices.sync()
        except Exception as exc:  # noqa: BLE001 - the publisher's own loop publishes the taints later
            log.warning("publishing the slices with the new device taints failed; the publisher retries",
                        error=str(exc))

    def _taint_event(self, entry: ActiveTaint, added: bool, why: str) -> None:
        uuid = self._devices.get(entry.device, "")
        if added:
            effect = ("running pods using it are evicted" if entry.taint.effect == "NoExecute"
                      else "new claims are not placed on it")
            message = f"GPU {entry.device} ({uuid}) tainted {entry.taint}: {why}; {effect}"
            reason, kind = "GpuTainted", "Warning"
        else:
            message = f"GPU {entry.device} ({uuid}) taint {entry.taint} removed: {why}"
            reason, kind = "GpuTaintRemoved", "Normal"
        self._events.submit(report_node_event, self._api, self._settings.node_name, reason, message,
                            event_type=kind, timeout=self._settings.api_timeout_seconds)
