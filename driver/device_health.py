"""What a GPU health signal means for scheduling: which DRA device taint it puts on the device.

Pure. The kubelet plugin's health loop (kubeletplugin/health.py) turns NVML events and polls into
the signals below; :func:`classify` maps each to a taint or to nothing, and :class:`TaintBook`
keeps the taints in force: a taint stays while its signal keeps coming and goes once none has
been seen for the quiet period.

Keys (documented in docs/kubelet-plugin.md):

- ``vgpu.dra.dev/xid=<code>``: a critical XID. ``NoExecute`` for the XIDs after which the GPU
  cannot be trusted until a reset (off the bus, uncorrectable memory errors, GSP/NVLink faults),
  ``NoSchedule`` for the rest; XIDs that a faulty application causes (13, 31, 43, 45, 68, 109)
  taint nothing.
- ``vgpu.dra.dev/ecc=double-bit:NoExecute``: an uncorrectable (double-bit) ECC error.
- ``vgpu.dra.dev/lost=gpu-is-lost:NoExecute``: NVML answers GPU_IS_LOST for the device.
- ``vgpu.dra.dev/pages=retirement-pending|remap-pending:NoSchedule``: memory pages wait for a
  reset to be retired or remapped; ``remap-failed:NoExecute``: remapping failed.
- ``vgpu.dra.dev/health=state-unreadable:NoSchedule``: the plugin restarted and could not read
  the taints it had in force, so it does not know which GPUs were faulty (fail closed).

The taints in force outlive a plugin restart (:func:`book_to_json`, :func:`book_from_json`): an
XID is reported once, and a restarted plugin must not forget it before its quiet period ends.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from types import MappingProxyType
from typing import Any

from vgpu_dra.api.names import DRIVER_NAME
from vgpu_dra.driver.device_taints import DeviceTaint

XID_KEY = f"{DRIVER_NAME}/xid"
ECC_KEY = f"{DRIVER_NAME}/ecc"
LOST_KEY = f"{DRIVER_NAME}/lost"
PAGES_KEY = f"{DRIVER_NAME}/pages"
HEALTH_KEY = f"{DRIVER_NAME}/health"
TAINT_KEYS = (XID_KEY, ECC_KEY, LOST_KEY, PAGES_KEY, HEALTH_KEY)
STATE_UNREADABLE = DeviceTaint(HEALTH_KEY, "state-unreadable", "NoSchedule")
"""Put on every GPU when the taints kept across a restart cannot be read."""
_STATE_VERSION = 1

APPLICATION_XIDS = frozenset({13, 31, 43, 45, 68, 109})
"""XIDs an application's own fault causes (illegal access, page fault, its context reset)."""

FATAL_XIDS = frozenset({48, 62, 64, 74, 79, 95, 119, 120, 140})
"""XIDs after which no work on the GPU can be trusted until it is reset: 48 double-bit ECC, 62
internal micro-controller halt, 64 page retirement / row remapping failure, 74 NVLink error, 79
fallen off the bus, 95 uncontained ECC error, 119/120 GSP errors, 140 unrecovered ECC error."""

_EFFECT_RANK = {"None": 0, "NoSchedule": 1, "NoExecute": 2}


@dataclass(frozen=True, slots=True)
class XidError:
    """An ``nvmlEventTypeXidCriticalError`` event with its XID."""

    xid: int


@dataclass(frozen=True, slots=True)
class DoubleBitEcc:
    """An uncorrectable ECC error (event, or the volatile uncorrected count went up)."""


@dataclass(frozen=True, slots=True)
class GpuLost:
    """NVML answered ``GPU_IS_LOST`` for the device."""


@dataclass(frozen=True, slots=True)
class PagesPending:
    """Retired pages or remapped rows pending (``kind``: ``retirement`` or ``remap``), or a
    failed remapping (``remap-failed``)."""

    kind: str


HealthSignal = XidError | DoubleBitEcc | GpuLost | PagesPending


def classify(signal: HealthSignal) -> DeviceTaint | None:
    """The taint a signal puts on its device, or None when it says nothing about the GPU."""
    match signal:
        case XidError(xid=xid):
            if xid in APPLICATION_XIDS:
                return None
            return DeviceTaint(XID_KEY, str(xid), "NoExecute" if xid in FATAL_XIDS else "NoSchedule")
        case DoubleBitEcc():
            return DeviceTaint(ECC_KEY, "double-bit", "NoExecute")
        case GpuLost():
            return DeviceTaint(LOST_KEY, "gpu-is-lost", "NoExecute")
        case PagesPending(kind="remap-failed"):
            return DeviceTaint(PAGES_KEY, "remap-failed", "NoExecute")
        case PagesPending(kind=kind) if kind in ("retirement", "remap"):
            return DeviceTaint(PAGES_KEY, f"{kind}-pending", "NoSchedule")
    raise ValueError(f"unknown health signal {signal!r}")


def stronger(a: str, b: str) -> str:
    """The stronger of two taint effects (NoExecute > NoSchedule > None)."""
    return a if _EFFECT_RANK.get(a, 0) >= _EFFECT_RANK.get(b, 0) else b


@dataclass(frozen=True, slots=True)
class ActiveTaint:
    """A taint in force on a device: when it was first added, when its signal was last seen."""

    device: str
    taint: DeviceTaint
    added_at: float
    last_seen: float

    def to_json(self) -> dict[str, str]:
        """The ``devices[].taints[]`` entry of a ResourceSlice."""
        added = datetime.fromtimestamp(self.added_at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"key": self.taint.key, "value": self.taint.value, "effect": self.taint.effect, "timeAdded": added}


@dataclass(frozen=True)
class TaintBook:
    """The taints in force, one per (device, key). Immutable: each change returns a new book."""

    active: Mapping[tuple[str, str], ActiveTaint] = field(default_factory=lambda: MappingProxyType({}))

    def observe(self, device: str, taint: DeviceTaint, now: float) -> tuple[TaintBook, ActiveTaint | None]:
        """Record ``taint`` seen on ``device`` at ``now``.

        Returns the new book and the taint as published when it is new or changed (value, or an
        effect that got stronger), None when only its last-seen time moved. An effect never
        weakens while the taint is in force: a NoSchedule XID after a fatal one keeps NoExecute.
        """
        slot = (device, taint.key)
        held = self.active.get(slot)
        if held is None:
            entry = ActiveTaint(device, taint, now, now)
            return self._with(slot, entry), entry
        merged = DeviceTaint(taint.key, taint.value, stronger(held.taint.effect, taint.effect))
        entry = replace(held, taint=merged, last_seen=max(held.last_seen, now))
        return self._with(slot, entry), (entry if merged != held.taint else None)

    def expire(self, now: float, quiet_seconds: float) -> tuple[TaintBook, list[ActiveTaint]]:
        """Drop the taints whose signal has not been seen for ``quiet_seconds``; returns the new
        book and what was dropped."""
        gone = [t for t in self.active.values() if now - t.last_seen >= quiet_seconds]
        if not gone:
            return self, []
        kept = {slot: t for slot, t in self.active.items() if t not in gone}
        return TaintBook(MappingProxyType(kept)), gone

    def by_device(self) -> dict[str, list[dict[str, str]]]:
        """Per device name, its taints as slice JSON (sorted by key, so publishing is stable)."""
        out: dict[str, list[dict[str, str]]] = {}
        for (device, _key), entry in sorted(self.active.items()):
            out.setdefault(device, []).append(entry.to_json())
        return out

    def devices(self) -> frozenset[str]:
        """The devices with at least one taint."""
        return frozenset(device for device, _key in self.active)

    def _with(self, slot: tuple[str, str], entry: ActiveTaint) -> TaintBook:
        return TaintBook(MappingProxyType({**self.active, slot: entry}))


def signals_from_poll(*, lost: bool, retired_pending: bool | None, remap_pending: bool | None,
                      remap_failed: bool | None, uncorrected_before: int | None,
                      uncorrected_now: int | None) -> list[HealthSignal]:
    """The signals one health poll of a device gives (None: the board does not report it)."""
    if lost:
        return [GpuLost()]
    found: list[HealthSignal] = []
    if retired_pending:
        found.append(PagesPending("retirement"))
    if remap_failed:
        found.append(PagesPending("remap-failed"))
    elif remap_pending:
        found.append(PagesPending("remap"))
    if uncorrected_before is not None and uncorrected_now is not None and uncorrected_now > uncorrected_before:
        found.append(DoubleBitEcc())
    return found



def book_to_json(book: TaintBook, uuids: Mapping[str, str]) -> dict[str, Any]:
    """The taints in force as the plugin keeps them across a restart; each names its GPU's UUID
    (``uuids``: device name → UUID), so a device name that now means another GPU drops it."""
    return {"version": _STATE_VERSION, "taints": [
        {"device": t.device, "uuid": uuids.get(t.device, ""), "key": t.taint.key, "value": t.taint.value,
         "effect": t.taint.effect, "addedAt": t.added_at, "lastSeen": t.last_seen}
        for _slot, t in sorted(book.active.items())]}


def book_from_json(data: Any, uuids: Mapping[str, str]) -> TaintBook:
    """The book :func:`book_to_json` wrote, keeping only taints of GPUs still there under the same
    name. Raises ValueError when ``data`` is not such a document."""
    if not isinstance(data, Mapping) or data.get("version") != _STATE_VERSION or \
            not isinstance(data.get("taints"), list):
        raise ValueError(f"not a version-{_STATE_VERSION} taint state document")
    active: dict[tuple[str, str], ActiveTaint] = {}
    for index, raw in enumerate(data["taints"]):
        try:
            entry = ActiveTaint(str(raw["device"]), DeviceTaint(str(raw["key"]), str(raw["value"]), str(raw["effect"])),
                                float(raw["addedAt"]), float(raw["lastSeen"]))
            uuid = str(raw["uuid"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"taints[{index}] is malformed ({exc!r})") from None
        if entry.taint.effect not in _EFFECT_RANK:
            raise ValueError(f"taints[{index}]: unknown effect {entry.taint.effect!r}")
        if uuids.get(entry.device) == uuid:
            active[(entry.device, entry.taint.key)] = entry
    return TaintBook(MappingProxyType(active))
