"""The node's GPU health loop: NVML events and polls become DRA device taints.

One thread holds NVML open, registers every published GPU for XID, double-bit ECC and
page-retirement events, and waits on the event set; every ``poll_seconds`` it also polls each GPU
(fallen off the bus, retired pages or remapped rows pending, remapping failed, the volatile
uncorrected ECC count). Each signal goes through ``driver/device_health.classify``; the taints in
force (a :class:`TaintBook`) are handed to ``on_change`` whenever they change, and each taint
added or removed to ``on_taint``. A taint goes after ``quiet_seconds`` without a new signal.

Fail closed: a GPU whose event registration fails is counted and logged once and is watched by
polling alone; a GPU whose poll fails with anything but "not supported" reports health UNKNOWN,
never HEALTHY, until a poll succeeds.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from vgpu_dra.driver.device_health import (ActiveTaint, DoubleBitEcc, HealthSignal, PagesPending, TaintBook,
                                           XidError, classify, signals_from_poll)

log = structlog.get_logger(__name__)

# nvml.h nvmlEventType*: the ones that say something about the GPU's health.
EVENT_DOUBLE_BIT_ECC = 0x2
EVENT_XID = 0x8
EVENT_DRAM_RETIREMENT = 0x400
WATCHED_EVENTS = EVENT_DOUBLE_BIT_ECC | EVENT_XID | EVENT_DRAM_RETIREMENT
# NVML_MEMORY_ERROR_TYPE_UNCORRECTED, NVML_VOLATILE_ECC
_UNCORRECTED, _VOLATILE = 1, 0

HEALTHY, UNHEALTHY, UNKNOWN = "Healthy", "Unhealthy", "Unknown"


class HealthObserver(Protocol):
    """Counts what the loop sees (the node metrics)."""

    def signal_seen(self, device: str, kind: str) -> None: ...
    def registration_failed(self, device: str) -> None: ...
    def poll_failed(self, device: str) -> None: ...
    def taints_changed(self, book: TaintBook) -> None: ...


@dataclass(frozen=True, slots=True)
class DeviceHealth:
    """What the node knows about one GPU now (for NodeWatchResources and logs)."""

    device: str
    status: str
    message: str
    updated_at: float


def _signal_kind(signal: HealthSignal) -> str:
    return {XidError: "xid", DoubleBitEcc: "ecc", PagesPending: "pages"}.get(type(signal), "lost")


class HealthMonitor:
    """Watches the node's GPUs; ``start()`` then ``stop()``."""

    def __init__(self, devices: Mapping[str, str], *, quiet_seconds: float, poll_seconds: float,
                 on_change: Callable[[TaintBook], None], on_taint: Callable[[ActiveTaint, bool, str], None],
                 observer: HealthObserver, clock: Callable[[], float] = time.time, nvml: Any = None,
                 on_book: Callable[[TaintBook], None] | None = None):
        """``devices`` maps device name → GPU UUID; ``on_taint(taint, added, why)``; ``on_book`` gets
        the book after every change, a signal's last-seen time included (to keep it on disk)."""
        if quiet_seconds <= 0 or poll_seconds <= 0:
            raise ValueError("the health quiet period and poll interval must be positive")
        if nvml is None:
            import pynvml as nvml
        self._nvml = nvml
        self._devices = dict(devices)
        self._by_uuid = {uuid: name for name, uuid in self._devices.items()}
        self._quiet = quiet_seconds
        self._poll_seconds = poll_seconds
        self._on_change = on_change
        self._on_taint = on_taint
        self._on_book = on_book
        self._observer = observer
        self._clock = clock
        self.book = TaintBook()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._event_set: Any = None
        self._registered: set[str] = set()
        self._ecc_counts: dict[str, int | None] = {}
        self._poll_ok: dict[str, bool] = {}
        self._poll_error_logged: set[str] = set()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._version = 0

    def keep(self, book: TaintBook) -> None:
        """Start from ``book``'s taints on the devices this monitor watches (before ``start()``)."""
        self.book = TaintBook({slot: t for slot, t in book.active.items() if t.device in self._devices})

    # ---- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Open NVML, register for events, take a first poll, start the loop thread."""
        self._nvml.nvmlInit()
        self._register_events()
        self._poll_all()
        self._thread = threading.Thread(target=self._run, name="gpu-health", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop and release NVML."""
        self._stop.set()
        with self._changed:
            self._changed.notify_all()  # health streams waiting for a change end now
        if self._thread is not None:
            self._thread.join(timeout=10)
        nvml = self._nvml
        if self._event_set is not None:
            try:
                nvml.nvmlEventSetFree(self._event_set)
            except nvml.NVMLError:
                pass
            self._event_set = None
        try:
            nvml.nvmlShutdown()
        except nvml.NVMLError:
            pass

    def _register_events(self) -> None:
        nvml = self._nvml
        try:
            self._event_set = nvml.nvmlEventSetCreate()
        except nvml.NVMLError as exc:
            self._event_set = None
            for device in self._devices:
                self._observer.registration_failed(device)
            log.warning("cannot create an NVML event set; watching GPU health by polling only",
                        error=str(exc), poll_seconds=self._poll_seconds)
            return
        for device, uuid in sorted(self._devices.items()):
            try:
                handle = nvml.nvmlDeviceGetHandleByUUID(uuid)
                supported = nvml.nvmlDeviceGetSupportedEventTypes(handle)
                wanted = supported & WATCHED_EVENTS
                if not wanted & EVENT_XID:
                    raise nvml.NVMLError(nvml.NVML_ERROR_NOT_SUPPORTED)
                nvml.nvmlDeviceRegisterEvents(handle, wanted, self._event_set)
                self._registered.add(device)
            except nvml.NVMLError as exc:
                self._observer.registration_failed(device)
                log.warning("cannot register for NVML events of a GPU; watching it by polling only (XIDs are not "
                            "seen on it)", gpu=device, uuid=uuid, error=str(exc), poll_seconds=self._poll_seconds)

    # ---- loop ----------------------------------------------------------------------------------
    def _run(self) -> None:
        next_poll = time.monotonic() + self._poll_seconds
        while not self._stop.is_set():
            try:
                wait = max(0.0, min(0.5, next_poll - time.monotonic()))
                self._wait_event(wait)
                if time.monotonic() >= next_poll:
                    self._poll_all()
                    next_poll = time.monotonic() + self._poll_seconds
                self._expire()
            except Exception as exc:  # noqa: BLE001 - the loop must outlive any one bad answer
                log.warning("gpu health loop error; going on", error=str(exc))
                self._stop.wait(self._poll_seconds)

    def _wait_event(self, seconds: float) -> None:
        nvml = self._nvml
        if self._event_set is None or not self._registered:
            self._stop.wait(seconds)
            return
        try:
            data = nvml.nvmlEventSetWait(self._event_set, int(seconds * 1000))
        except nvml.NVMLError_Timeout:
            return
        except nvml.NVMLError as exc:
            # NVML could not wait (a GPU of the set fell off the bus, the driver went away): the
            # polls see what happened; wait as long as the poll would have.
            log.debug("NVML event wait failed", error=str(exc))
            self._stop.wait(seconds)
            return
        try:
            uuid = nvml.nvmlDeviceGetUUID(data.device)
        except nvml.NVMLError as exc:
            log.warning("NVML event for a GPU whose UUID cannot be read", error=str(exc))
            return
        device = self._by_uuid.get(uuid.decode() if isinstance(uuid, bytes) else uuid)
        if device is None:
            return
        signal = self._event_signal(int(data.eventType), int(data.eventData))
        if signal is not None:
            self._signal(device, signal, self._describe_event(signal))

    @staticmethod
    def _event_signal(event_type: int, event_data: int) -> HealthSignal | None:
        if event_type & EVENT_XID:
            return XidError(event_data)
        if event_type & EVENT_DOUBLE_BIT_ECC:
            return DoubleBitEcc()
        if event_type & EVENT_DRAM_RETIREMENT:
            return PagesPending("retirement")
        return None

    @staticmethod
    def _describe_event(signal: HealthSignal) -> str:
        match signal:
            case XidError(xid=xid):
                return f"NVML reported XID {xid}"
            case DoubleBitEcc():
                return "NVML reported a double-bit (uncorrectable) ECC error"
        return "NVML reported a page retirement"

    def _poll_all(self) -> None:
        for device, uuid in sorted(self._devices.items()):
            self._poll(device, uuid)

    def _poll(self, device: str, uuid: str) -> None:
        nvml = self._nvml
        unsupported = (nvml.NVMLError_NotSupported, nvml.NVMLError_FunctionNotFound)
        lost = False
        retired: bool | None = None
        remap_pending: bool | None = None
        remap_failed: bool | None = None
        ecc_now: int | None = None
        try:
            handle = nvml.nvmlDeviceGetHandleByUUID(uuid)
            try:
                retired = bool(nvml.nvmlDeviceGetRetiredPagesPendingStatus(handle))
            except unsupported:
                pass
            try:
                _corrected, _uncorrected, pending, failed = nvml.nvmlDeviceGetRemappedRows(handle)
                remap_pending, remap_failed = bool(pending), bool(failed)
            except unsupported:
                pass
            try:
                ecc_now = int(nvml.nvmlDeviceGetTotalEccErrors(handle, _UNCORRECTED, _VOLATILE))
            except unsupported:
                pass
        except nvml.NVMLError_GpuIsLost:
            lost = True
        except nvml.NVMLError as exc:
            self._poll_ok[device] = False
            self._observer.poll_failed(device)
            if device not in self._poll_error_logged:
                self._poll_error_logged.add(device)
                log.warning("cannot poll a GPU's health; reporting it Unknown until a poll succeeds",
                            gpu=device, uuid=uuid, error=str(exc))
            return
        self._poll_ok[device] = True
        self._poll_error_logged.discard(device)
        before = self._ecc_counts.get(device)
        if ecc_now is not None:
            self._ecc_counts[device] = ecc_now
        for signal in signals_from_poll(lost=lost, retired_pending=retired, remap_pending=remap_pending,
                                        remap_failed=remap_failed, uncorrected_before=before,
                                        uncorrected_now=ecc_now):
            self._signal(device, signal, _describe_poll(signal))

    # ---- book keeping --------------------------------------------------------------------------
    def _signal(self, device: str, signal: HealthSignal, why: str) -> None:
        self._observer.signal_seen(device, _signal_kind(signal))
        taint = classify(signal)
        if taint is None:
            log.info("gpu health signal that taints nothing (an application fault)", gpu=device, detail=why)
            return
        with self._lock:
            self.book, published = self.book.observe(device, taint, self._clock())
            book = self.book
        if self._on_book is not None:
            self._on_book(book)
        if published is not None:
            log.warning("gpu tainted", gpu=device, uuid=self._devices[device], taint=str(published.taint),
                        detail=why)
            self._publish()
            self._on_taint(published, True, why)

    def _expire(self) -> None:
        with self._lock:
            self.book, gone = self.book.expire(self._clock(), self._quiet)
            book = self.book
        if not gone:
            return
        if self._on_book is not None:
            self._on_book(book)
        self._publish()
        for entry in gone:
            log.info("gpu taint removed after the quiet period", gpu=entry.device, taint=str(entry.taint),
                     quiet_seconds=self._quiet)
            self._on_taint(entry, False, f"no new signal for {self._quiet:g} s")

    def _publish(self) -> None:
        with self._lock:
            book = self.book
            self._version += 1
            self._changed.notify_all()
        self._observer.taints_changed(book)
        self._on_change(book)

    # ---- views ---------------------------------------------------------------------------------
    def health(self) -> list[DeviceHealth]:
        """Every watched GPU's health: Unhealthy while tainted, Unknown while its polls fail."""
        now = self._clock()
        with self._lock:
            by_device = self.book.by_device()
        out = []
        for device in sorted(self._devices):
            taints = by_device.get(device)
            if taints:
                message = ", ".join(f"{t['key']}={t['value']}:{t['effect']}" for t in taints)
                out.append(DeviceHealth(device, UNHEALTHY, f"tainted {message}", now))
            elif not self._poll_ok.get(device, False):
                out.append(DeviceHealth(device, UNKNOWN, "NVML cannot report this GPU's health", now))
            else:
                out.append(DeviceHealth(device, HEALTHY, "", now))
        return out

    def wait_for_change(self, seen: int, timeout: float) -> int:
        """Block until the taints change after version ``seen`` (or ``timeout``); the current version."""
        with self._changed:
            self._changed.wait_for(lambda: self._version != seen or self._stop.is_set(), timeout)
            return self._version


def _describe_poll(signal: HealthSignal) -> str:
    match signal:
        case PagesPending(kind="remap-failed"):
            return "NVML reports that row remapping failed"
        case PagesPending(kind=kind):
            return f"NVML reports {'retired pages' if kind == 'retirement' else 'row remapping'} pending a reset"
        case DoubleBitEcc():
            return "the volatile uncorrected ECC count went up"
    return "NVML answers GPU_IS_LOST: the GPU fell off the bus"
