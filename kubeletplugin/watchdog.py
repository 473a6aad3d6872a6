"""The usage watchdog: every few seconds, NVML's per-process GPU memory against the prepared claims.

One poll reads NVML's compute and graphics process lists of every GPU that carries a prepared claim
(host PIDs, bytes), the owner of each PID from its cgroup (``proc_owners``), and each claim's region,
and hands them to the pure ``driver.usage_audit``. A finding is confirmed by a second sample taken
at once (a process that allocates between reading NVML and reading its region must not read as an
attack); a process whose pod is unknown first makes the plugin re-read which pods reserve its
claims. Each new finding gives one log line, a Warning Event on the claim(s) and their pod(s) (on
the Node for a process of no claim), and counts in ``vgpu_dra_watchdog_violations_total``. With
enforcement ``kill`` the offending processes get SIGKILL and the Event says so.

Fail closed: when NVML cannot list a GPU's processes, the poll counts the error, logs once (and
once more on recovery), shows ``vgpu_dra_watchdog_up 0`` and no untracked-bytes series: an
unanswered question never reads as "all fine".
"""
from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import structlog
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from vgpu_dra.driver.cdi import REGION_FILE
from vgpu_dra.driver.checkpoint import PreparedClaim
from vgpu_dra.driver.region import RegionError
from vgpu_dra.driver.region_accounting import RegionReaders
from vgpu_dra.driver.usage_audit import (KINDS, AuditResult, ClaimView, Finding, GpuProcess, PodRef, ProcessOwner,
                                         RegionView, Tolerance, audit)
from vgpu_dra.kubeletplugin.object_events import ObjectRef
from vgpu_dra.kubeletplugin.proc_owners import ProcOwners, kill_process

log = structlog.get_logger(__name__)

Enforcement = Literal["report", "kill"]
ENFORCEMENTS: tuple[Enforcement, ...] = ("report", "kill")
REASONS: dict[str, str] = {
    "untracked": "GpuProcessWithoutClaim",
    "unshimmed": "GpuProcessWithoutShim",
    "over_wall": "GpuMemoryOverWall",
    "region_mismatch": "GpuRegionMismatch",
    "region_tampered": "GpuRegionTampered",
}
_CLAIM_LABELS = ("node", "namespace", "claim", "claim_uid", "pod", "gpu", "uuid")


class ProcessQueryError(RuntimeError):
    """NVML could not list a GPU's processes."""


class ProcessSource(Protocol):
    """Where per-process GPU memory comes from (NVML through pynvml)."""

    def processes(self, uuids: set[str]) -> list[GpuProcess]: ...


class _ProcessInfo(ctypes.Structure):
    """nvmlProcessInfo_t (the _v2/_v3 layout), without pynvml's slow attribute hooks."""

    _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong), ("gpuInstanceId", ctypes.c_uint),
                ("computeInstanceId", ctypes.c_uint)]


class NvmlProcesses:
    """Compute and graphics processes of GPUs through pynvml's NVML binding (NVML stays initialised).

    The lists are read with one call into a reused array (NVML fills it when it is large enough),
    not pynvml's two-call helpers, whose per-entry objects cost more than the rest of a poll.
    """

    _CALLS = ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses")

    def __init__(self) -> None:
        import pynvml

        self._nvml = pynvml
        pynvml.nvmlInit()
        self._handles: dict[str, Any] = {}
        self._capacity = 64
        self._array: Any = (_ProcessInfo * self._capacity)()
        self._functions: dict[str, Any] = {}

    def _function(self, name: str) -> Any:
        if name not in self._functions:
            try:
                self._functions[name] = self._nvml._nvmlGetFunctionPointer(f"{name}_v3")
            except self._nvml.NVMLError_FunctionNotFound:  # drivers before R510; same entry layout
                self._functions[name] = self._nvml._nvmlGetFunctionPointer(f"{name}_v2")
        return self._functions[name]

    def _list(self, name: str, handle: Any) -> list[tuple[int, int | None]]:
        nvml, function = self._nvml, self._function(name)
        for _ in range(4):  # processes may start between a too-small answer and the next try
            count = ctypes.c_uint(self._capacity)
            ret = function(handle, ctypes.byref(count), self._array)
            if ret == nvml.NVML_SUCCESS:
                unknown = nvml.NVML_VALUE_NOT_AVAILABLE_ulonglong.value
                return [(int(e.pid), None if e.usedGpuMemory == unknown else int(e.usedGpuMemory))
                        for e in self._array[:count.value]]
            if ret != nvml.NVML_ERROR_INSUFFICIENT_SIZE:
                raise nvml.NVMLError(ret)
            self._capacity = max(self._capacity * 2, int(count.value) * 2 + 16)
            self._array = (_ProcessInfo * self._capacity)()
        raise nvml.NVMLError(nvml.NVML_ERROR_INSUFFICIENT_SIZE)

    def processes(self, uuids: set[str]) -> list[GpuProcess]:
        """Every process on those GPUs; raises ProcessQueryError when any GPU cannot answer."""
        found: dict[tuple[str, int], GpuProcess] = {}
        for uuid in sorted(uuids):
            try:
                handle = self._handles.get(uuid) or self._nvml.nvmlDeviceGetHandleByUUID(uuid)
                self._handles[uuid] = handle
                listed = [entry for name in self._CALLS for entry in self._list(name, handle)]
            except self._nvml.NVMLError as exc:
                self._handles.pop(uuid, None)
                raise ProcessQueryError(f"NVML cannot list the processes of GPU {uuid}: {exc}") from exc
            for pid, used in listed:
                seen = found.get((uuid, pid))
                # A process with both a compute and a graphics context is listed twice, same bytes.
                if seen is None or (used or 0) > (seen.used_bytes or 0):
                    found[(uuid, pid)] = GpuProcess(gpu_uuid=uuid, pid=pid, used_bytes=used)
        return list(found.values())

    def close(self) -> None:
        """Release NVML."""
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError:
            pass


@dataclass(frozen=True)
class WatchdogSettings:
    """The watchdog's knobs (chart: kubeletPlugin.watchdog)."""

    interval_seconds: float = 5.0
    enforcement: Enforcement = "report"
    tolerance: Tolerance = field(default_factory=Tolerance)
    proc_root: Path = Path("/proc")


@dataclass(frozen=True)
class PollOutcome:
    """What one poll decided: confirmed findings, what was killed, whether it saw everything."""

    findings: tuple[Finding, ...] = ()
    new: tuple[Finding, ...] = ()
    kills: Mapping[int, str] = field(default_factory=dict)  # pid -> killed | gone | reused | failed (...)
    healthy: bool = True


class UsageWatchdog(Collector):
    """The polling loop, its metrics (a Collector for the plugin's registry) and its enforcement."""

    def __init__(self, node_name: str, settings: WatchdogSettings,
                 claims: Callable[[], Mapping[str, PreparedClaim]], claims_dir: Path, *,
                 source: ProcessSource, emit: Callable[[ObjectRef, str, str], None],
                 emit_node: Callable[[str, str], None], refresh_pods: Callable[[], None] | None = None,
                 registry: CollectorRegistry | None = None):
        if settings.enforcement not in ENFORCEMENTS:
            raise ValueError(f"watchdog enforcement {settings.enforcement!r}: use report or kill")
        if settings.interval_seconds <= 0:
            raise ValueError("watchdog interval must be more than 0 seconds")
        self.node_name = node_name
        self.settings = settings
        self._claims = claims
        self._claims_dir = claims_dir
        self._source = source
        self._emit = emit
        self._emit_node = emit_node
        self._refresh_pods = refresh_pods
        self.owners = ProcOwners(settings.proc_root)
        self._regions = RegionReaders()
        self._claim_parts: dict[str, tuple[Any, Any, dict[str, int], tuple[PodRef, ...], str]] = {}
        self._active: set[tuple[Any, ...]] = set()
        self._refreshed_for: set[str] = set()
        self._failing: set[str] = set()  # what is failing now, logged once
        self._last: AuditResult | None = None
        self._last_claims: Mapping[str, PreparedClaim] = {}
        self._healthy = True
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        registry = registry or CollectorRegistry(auto_describe=False)
        self.registry = registry
        self.violations = Counter("vgpu_dra_watchdog_violations", "Usage watchdog findings, counted when they appear",
                                  ["node", "kind"], registry=registry)
        self.kills = Counter("vgpu_dra_watchdog_kills", "Processes the usage watchdog killed (enforcement: kill)",
                             ["node", "kind"], registry=registry)
        self.errors = Counter("vgpu_dra_watchdog_errors",
                              "Polls that could not read something they need (nvml, proc, region)",
                              ["node", "what"], registry=registry)
        for kind in KINDS:
            self.violations.labels(node_name, kind)
        for what in ("nvml", "proc", "region"):
            self.errors.labels(node_name, what)
        registry.register(self)

    # ---- one poll ------------------------------------------------------------------------------
    def _sample(self) -> tuple[Mapping[str, PreparedClaim], AuditResult, bool]:
        claims = self._claims()
        views, healthy = self._views(claims)
        shared = {d.gpu_uuid for c in claims.values() for d in c.devices}
        if not shared:
            return claims, AuditResult(findings=()), healthy
        processes = self._source.processes(shared)
        owners, errors = self.owners.owners({p.pid for p in processes})
        self._note("proc", errors)
        return claims, audit(processes, owners, views, self.settings.tolerance), healthy and not errors

    def _views(self, claims: Mapping[str, PreparedClaim]) -> tuple[list[ClaimView], bool]:
        views, errors = [], []
        self._regions.keep_only(set(claims))
        for uid in set(self._claim_parts) - set(claims):
            del self._claim_parts[uid]
        for uid, claim in claims.items():
            walls, pods, path = self._parts(uid, claim)
            try:
                region: RegionView | None = self._regions.read(uid, path)
            except (RegionError, OSError) as exc:
                region = None  # judged as accounting for nothing: fails closed
                errors.append(f"claim {claim.namespace}/{claim.name}: {exc}")
            views.append(ClaimView(uid=uid, namespace=claim.namespace, name=claim.name, pods=pods, walls=walls,
                                   region=region))
        self._note("region", errors)
        return views, not errors

    def _parts(self, uid: str, claim: PreparedClaim) -> tuple[dict[str, int], tuple[PodRef, ...], str]:
        """A claim's walls, pods and region path, recomputed only when its devices or pods changed."""
        cached = self._claim_parts.get(uid)
        if cached is not None and cached[0] is claim.devices and cached[1] == claim.pod_refs:
            return cached[2], cached[3], cached[4]
        walls: dict[str, int] = {}
        for device in claim.devices:
            walls[device.gpu_uuid] = walls.get(device.gpu_uuid, 0) + device.memory_bytes
        pods = tuple(PodRef(name, pod_uid) for name, pod_uid in claim.pod_refs)
        path = os.path.join(str(self._claims_dir), uid, REGION_FILE)
        self._claim_parts[uid] = (claim.devices, claim.pod_refs, walls, pods, path)
        return walls, pods, path

    def _note(self, what: str, errors: list[str]) -> None:
        """Count failures; one log line when they start and one when they stop."""
        if errors:
            self.errors.labels(self.node_name, what).inc(len(errors))
            if what not in self._failing:
                self._failing.add(what)
                log.warning("usage watchdog cannot read what it needs; findings stay open", what=what,
                            errors=errors[:3], count=len(errors))
        elif what in self._failing:
            self._failing.discard(what)
            log.info("usage watchdog reads again", what=what)

    def poll(self) -> PollOutcome:
        """One poll: sample, confirm, enforce, report."""
        with self._lock:
            try:
                claims, first, healthy = self._sample()
                if first.findings and self._maybe_refresh(first.findings):
                    claims, first, healthy = self._sample()  # with the pods as they are now
                findings = first.findings
                if findings:
                    claims, second, confirmed_healthy = self._sample()
                    keys = {f.key for f in findings}
                    findings = tuple(f for f in second.findings if f.key in keys)
                    first, healthy = second, healthy and confirmed_healthy
                self._note("nvml", [])
            except ProcessQueryError as exc:
                self._note("nvml", [str(exc)])
                self._healthy = False
                return PollOutcome(healthy=False)
            self._last, self._last_claims, self._healthy = first, claims, healthy
            return self._act(findings, claims, healthy)

    def _maybe_refresh(self, findings: tuple[Finding, ...]) -> bool:
        """Re-read the claims' pods when a process's pod is unknown (once per such pod)."""
        unknown = {f.pod_uid for f in findings if f.kind == "untracked" and f.pod_uid}
        self._refreshed_for &= unknown
        if self._refresh_pods is None or not unknown - self._refreshed_for:
            return False
        self._refreshed_for |= unknown
        try:
            self._refresh_pods()  # a pod that joined a shared claim since Prepare
        except Exception as exc:  # noqa: BLE001 - the finding stands without the refresh
            log.warning("cannot re-read the pods of prepared claims", error=str(exc))
            return False
        return True

    def _act(self, findings: tuple[Finding, ...], claims: Mapping[str, PreparedClaim], healthy: bool) -> PollOutcome:
        kills: dict[int, str] = {}
        new = tuple(f for f in findings if f.key not in self._active)
        for finding in findings:
            killed = self._enforce(finding, kills) if self.settings.enforcement == "kill" else []
            is_new = finding in new
            if is_new:
                self.violations.labels(self.node_name, finding.kind).inc()
            if is_new or killed:
                self._report(finding, claims, killed)
        self._active = {f.key for f in findings}
        return PollOutcome(findings=findings, new=new, kills=kills, healthy=healthy)

    def _enforce(self, finding: Finding, kills: dict[int, str]) -> list[int]:
        killed = []
        for pid in finding.kill_pids:
            if pid not in kills:
                owner = self.owners.cached(pid) or ProcessOwner(pid=pid, pod_uid=finding.pod_uid)
                kills[pid] = kill_process(pid, owner, self.owners)
                if kills[pid] == "killed":
                    self.kills.labels(self.node_name, finding.kind).inc()
            if kills[pid] == "killed":
                killed.append(pid)
        return killed

    def _report(self, finding: Finding, claims: Mapping[str, PreparedClaim], killed: list[int]) -> None:
        message = finding.message
        if killed:
            message += (f"; vgpu-dra killed process {', '.join(map(str, killed))} (SIGKILL, watchdog "
                        "enforcement: kill)")
        elif finding.kill_pids and self.settings.enforcement == "report":
            message += "; not stopped (watchdog enforcement: report)"
        reason = REASONS[finding.kind]
        log.warning("usage watchdog finding", kind=finding.kind, gpu=finding.gpu_uuid,
                    claims=[f"{claims[u].namespace}/{claims[u].name}" for u in finding.claims if u in claims],
                    pids=list(finding.pids), measured_bytes=finding.measured_bytes,
                    accounted_bytes=finding.accounted_bytes, wall_bytes=finding.wall_bytes, killed=killed,
                    message=message)
        if not finding.claims:
            self._emit_node(reason, message)
            return
        for uid in finding.claims:
            claim = claims.get(uid)
            if claim is None:
                continue
            self._emit(ObjectRef("resource.k8s.io/v1", "ResourceClaim", claim.namespace, claim.name, uid),
                       reason, message)
            for name, pod_uid in claim.pod_refs:
                # A process's own pod; for a whole claim's usage, every pod that holds it.
                if finding.pod_uid is None or pod_uid == finding.pod_uid:
                    self._emit(ObjectRef("v1", "Pod", claim.namespace, name, pod_uid), reason, message)

    # ---- metrics -------------------------------------------------------------------------------
    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily("vgpu_dra_watchdog_up",
                               "1 when the usage watchdog's last poll read NVML, /proc and every region",
                               labels=["node"])
        up.add_metric([self.node_name], 1 if self._healthy and self._last is not None else 0)
        yield up
        untracked = GaugeMetricFamily("vgpu_dra_claim_untracked_bytes",
                                      "GPU memory NVML measures for a claim's processes beyond what its region "
                                      "accounts for", labels=list(_CLAIM_LABELS))
        unclaimed = GaugeMetricFamily("vgpu_dra_gpu_unclaimed_bytes",
                                      "GPU memory of processes on a shared GPU that belong to no claim",
                                      labels=["node", "gpu", "uuid"])
        last, claims = self._last, self._last_claims
        if last is not None and self._healthy:  # no series at all rather than a reassuring 0
            devices: dict[str, str] = {}
            for (uid, uuid), value in sorted(last.untracked_bytes.items()):
                claim = claims.get(uid)
                if claim is None:
                    continue
                device = next((d.device for d in claim.devices if d.gpu_uuid == uuid), "")
                devices[uuid] = device
                untracked.add_metric([self.node_name, claim.namespace, claim.name, uid, ",".join(claim.pods),
                                      device, uuid], value)
            for uuid in sorted(set(devices) | set(last.unclaimed_bytes)):
                unclaimed.add_metric([self.node_name, devices.get(uuid, ""), uuid],
                                     last.unclaimed_bytes.get(uuid, 0))
        yield untracked
        yield unclaimed

    # ---- thread --------------------------------------------------------------------------------
    def start(self) -> None:
        """Poll every interval in a daemon thread."""
        self._thread = threading.Thread(target=self._loop, name="usage-watchdog", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.interval_seconds):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - the next poll tries again
                self._healthy = False
                self.errors.labels(self.node_name, "internal").inc()
                log.exception("usage watchdog poll failed")

    def stop(self) -> None:
        """End the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            self._regions.close()
            close = getattr(self._source, "close", None)
            if close is not None:
                close()  # NVML's reference: the plugin's other users keep theirs
