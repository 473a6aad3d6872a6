"""Node metrics (`/metrics`): per claim and GPU from the shim's regions, per GPU from NVML, and
the plugin's own prepare/unprepare timings and failures.

Claim series come from the checkpoint (limit, core cap) and the claim's region (used, peak,
rejected, throttling), read at scrape time, so they exist from the moment Prepare returns — not
from the first CUDA call. Names are ``vgpu_dra_*``; docs/metrics.md lists them.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from vgpu_dra.driver.cdi import REGION_FILE
from vgpu_dra.driver.checkpoint import PreparedClaim
from vgpu_dra.driver.region import RegionError, RegionSnapshot, read_region

log = structlog.get_logger(__name__)

# Same GPU label names as the controller's metrics (`gpu` = device name, `uuid`), so one dashboard
# can join both.
CLAIM_LABELS = ("node", "namespace", "claim", "claim_uid", "pod", "gpu", "uuid")
GPU_LABELS = ("node", "gpu", "uuid")
# Prepare of one claim should take milliseconds; of 50 claims well under a second.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 45.0)


@dataclass(frozen=True, slots=True)
class GpuSample:
    """What NVML says about one GPU right now."""

    uuid: str
    device: str
    memory_used_bytes: int
    memory_total_bytes: int
    utilization_percent: int


class NvmlSampler:
    """Reads used memory and utilization of the node's GPUs through pynvml (NVML stays initialised)."""

    def __init__(self, devices: Mapping[str, str]):
        """`devices` maps device name → GPU UUID."""
        import pynvml

        self._nvml = pynvml
        self._devices = dict(devices)
        pynvml.nvmlInit()

    def sample(self) -> list[GpuSample]:
        """One sample per GPU; a GPU NVML cannot answer for is left out (and logged)."""
        samples = []
        for device, uuid in sorted(self._devices.items()):
            try:
                handle = self._nvml.nvmlDeviceGetHandleByUUID(uuid)
                memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
                utilization = self._nvml.nvmlDeviceGetUtilizationRates(handle)
            except self._nvml.NVMLError as exc:
                log.warning("NVML cannot sample GPU", gpu=uuid, error=str(exc))
                continue
            samples.append(GpuSample(uuid=uuid, device=device, memory_used_bytes=int(memory.used),
                                     memory_total_bytes=int(memory.total),
                                     utilization_percent=int(utilization.gpu)))
        return samples

    def close(self) -> None:
        """Release NVML."""
        try:
            self._nvml.nvmlShutdown()
        except self._nvml.NVMLError:
            pass


class NodeMetrics(Collector):
    """The plugin's metrics registry; also the PrepareObserver of the preparer."""

    def __init__(self, node_name: str, claims: Callable[[], Mapping[str, PreparedClaim]], claims_dir: Path,
                 gpu_sampler: Callable[[], Iterable[GpuSample]] | None = None):
        self.node_name = node_name
        self._claims = claims
        self._claims_dir = claims_dir
        self._gpu_sampler = gpu_sampler
        self.registry = CollectorRegistry(auto_describe=False)
        self.prepare_seconds = Histogram(
            "vgpu_dra_prepare_duration_seconds", "Time of one NodePrepareResources call",
            ["node"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.unprepare_seconds = Histogram(
            "vgpu_dra_unprepare_duration_seconds", "Time of one NodeUnprepareResources call",
            ["node"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.prepare_errors = Counter(
            "vgpu_dra_prepare_errors", "Claims that failed to prepare, by reason", ["node", "reason"],
            registry=self.registry)
        self.unprepare_errors = Counter(
            "vgpu_dra_unprepare_errors", "Claims that failed to unprepare, by reason", ["node", "reason"],
            registry=self.registry)
        self.registry.register(self)
        self._server: Any = None
        # (claim uid, GPU uuid) whose fail-safe errors were already logged: one line each.
        self._errors_logged: set[tuple[str, str]] = set()

    # ---- PrepareObserver -----------------------------------------------------------------------
    def prepare_done(self, seconds: float, claims: int) -> None:
        self.prepare_seconds.labels(self.node_name).observe(seconds)

    def unprepare_done(self, seconds: float, claims: int) -> None:
        self.unprepare_seconds.labels(self.node_name).observe(seconds)

    def prepare_failed(self, reason: str) -> None:
        self.prepare_errors.labels(self.node_name, reason).inc()

    def unprepare_failed(self, reason: str) -> None:
        self.unprepare_errors.labels(self.node_name, reason).inc()

    # ---- scrape-time series --------------------------------------------------------------------
    def collect(self) -> Iterator[Any]:
        claims = self._claims()
        gauge = lambda name, doc, labels=CLAIM_LABELS: GaugeMetricFamily(name, doc, labels=labels)  # noqa: E731
        limit = gauge("vgpu_dra_claim_memory_limit_bytes", "GPU memory a claim may use on a GPU (hard wall)")
        cores = gauge("vgpu_dra_claim_core_limit_percent", "Soft cap on a claim's share of a GPU's SMs (0 = none)")
        used = gauge("vgpu_dra_claim_memory_used_bytes", "GPU memory a claim's processes use on a GPU")
        peak = gauge("vgpu_dra_claim_memory_peak_bytes", "Highest GPU memory use of a claim on a GPU")
        procs = gauge("vgpu_dra_claim_processes", "Live processes of a claim attached to the shim")
        rejected = CounterMetricFamily("vgpu_dra_claim_rejected_allocations",
                                       "GPU allocations refused because they would pass the claim's limit",
                                       labels=CLAIM_LABELS)
        throttled = CounterMetricFamily("vgpu_dra_claim_sm_throttled_seconds",
                                        "Time a claim's kernel launches were delayed by the SM cap",
                                        labels=CLAIM_LABELS)
        delayed = CounterMetricFamily("vgpu_dra_claim_launches_delayed",
                                      "Kernel launches of a claim that waited for the SM cap at least once",
                                      labels=CLAIM_LABELS)
        share = gauge("vgpu_dra_claim_sm_share_percent",
                      "A claim's measured share of a GPU's time (smoothed over about 0.2 s)")
        enforced = gauge("vgpu_dra_claim_core_cap_enforced",
                         "1 while the SM cap is holding the claim back (soft caps only when others want the GPU)")
        errors = CounterMetricFamily("vgpu_dra_claim_limit_errors",
                                     "Driver/NVML calls that failed where they decide a limit; the limit held anyway",
                                     labels=CLAIM_LABELS)
        per_gpu_claims: dict[str, set[str]] = {}
        per_gpu_memory: dict[str, int] = {}
        per_gpu_cores: dict[str, int] = {}
        devices_by_uuid: dict[str, str] = {}
        for uid, claim in sorted(claims.items()):
            snapshot = self._region(uid)
            pods = ",".join(claim.pods)
            for device in claim.devices:
                devices_by_uuid[device.gpu_uuid] = device.device
                per_gpu_claims.setdefault(device.gpu_uuid, set()).add(uid)
                per_gpu_memory[device.gpu_uuid] = per_gpu_memory.get(device.gpu_uuid, 0) + device.memory_bytes
                per_gpu_cores[device.gpu_uuid] = per_gpu_cores.get(device.gpu_uuid, 0) + device.cores
            for uuid in dict.fromkeys(d.gpu_uuid for d in claim.devices):
                mine = [d for d in claim.devices if d.gpu_uuid == uuid]
                labels = [self.node_name, claim.namespace, claim.name, uid, pods, mine[0].device, uuid]
                limit.add_metric(labels, sum(d.memory_bytes for d in mine))
                cores.add_metric(labels, min(100, sum(d.cores for d in mine)))
                usage = _gpu_usage(snapshot, uuid)
                # Bytes still booked to kill -9'd processes are already freed by the driver; the
                # shim refunds them when the claim's next process attaches. Report what is held.
                used.add_metric(labels, usage.used_bytes - usage.dead_process_bytes if usage else 0)
                peak.add_metric(labels, usage.peak_bytes if usage else 0)
                rejected.add_metric(labels, usage.rejected_allocations if usage else 0)
                throttled.add_metric(labels, (usage.throttled_ns if usage else 0) / 1e9)
                delayed.add_metric(labels, usage.launches_delayed if usage else 0)
                share.add_metric(labels, usage.measured_share_percent if usage else 0.0)
                enforced.add_metric(labels, 1 if usage and usage.core_cap_enforced else 0)
                errors.add_metric(labels, usage.limit_errors if usage else 0)
                if usage and usage.limit_errors:
                    self._log_limit_errors(claim, uid, usage)
                alive = sum(1 for p in snapshot.processes if p.alive) if snapshot else 0
                procs.add_metric(labels, alive)
        yield from (limit, cores, used, peak, procs, rejected, throttled, delayed, share, enforced, errors)
        yield from self._gpu_families(per_gpu_claims, per_gpu_memory, per_gpu_cores, devices_by_uuid)
        prepared = GaugeMetricFamily("vgpu_dra_prepared_claims", "Claims prepared on this node", labels=["node"])
        prepared.add_metric([self.node_name], len(claims))
        yield prepared

    def _gpu_families(self, claims: Mapping[str, set[str]], memory: Mapping[str, int], cores: Mapping[str, int],
                      devices: dict[str, str]) -> Iterator[Any]:
        sharing = GaugeMetricFamily("vgpu_dra_gpu_claims", "Claims sharing a GPU", labels=GPU_LABELS)
        allocated = GaugeMetricFamily("vgpu_dra_gpu_memory_allocated_bytes",
                                      "Sum of the memory limits of the claims on a GPU", labels=GPU_LABELS)
        cores_allocated = GaugeMetricFamily("vgpu_dra_gpu_cores_allocated_percent",
                                            "Sum of the SM caps of the claims on a GPU", labels=GPU_LABELS)
        used = GaugeMetricFamily("vgpu_dra_gpu_memory_used_bytes", "GPU memory in use (NVML)", labels=GPU_LABELS)
        total = GaugeMetricFamily("vgpu_dra_gpu_memory_total_bytes", "GPU memory (NVML)", labels=GPU_LABELS)
        utilization = GaugeMetricFamily("vgpu_dra_gpu_utilization_percent", "GPU utilization (NVML)",
                                        labels=GPU_LABELS)
        samples = []
        if self._gpu_sampler is not None:
            try:
                samples = list(self._gpu_sampler())
            except Exception as exc:  # noqa: BLE001 - a scrape must still show the claim series
                log.warning("cannot sample GPUs", error=str(exc))
        for sample in samples:
            devices.setdefault(sample.uuid, sample.device)
            labels = [self.node_name, sample.device, sample.uuid]
            used.add_metric(labels, sample.memory_used_bytes)
            total.add_metric(labels, sample.memory_total_bytes)
            utilization.add_metric(labels, sample.utilization_percent)
        for uuid, device in sorted(devices.items()):
            labels = [self.node_name, device, uuid]
            sharing.add_metric(labels, len(claims.get(uuid, ())))
            allocated.add_metric(labels, memory.get(uuid, 0))
            cores_allocated.add_metric(labels, cores.get(uuid, 0))
        yield from (sharing, allocated, cores_allocated, used, total, utilization)

    def _log_limit_errors(self, claim: PreparedClaim, uid: str, usage: Any) -> None:
        """One line per claim and GPU the first time its shim reports fail-safe errors."""
        key = (uid, usage.uuid)
        if key in self._errors_logged:
            return
        self._errors_logged.add(key)
        log.warning("a driver call failed where it decides a limit; the shim applied the limit anyway",
                    namespace=claim.namespace, claim=claim.name, gpu=usage.uuid, errors=usage.limit_errors,
                    call=usage.limit_error_call, code=usage.limit_error_code)

    def _region(self, uid: str) -> RegionSnapshot | None:
        try:
            return read_region(self._claims_dir / uid / REGION_FILE)
        except RegionError as exc:
            log.debug("region unreadable", uid=uid, error=str(exc))
            return None

    # ---- HTTP ----------------------------------------------------------------------------------
    def serve(self, address: str, port: int) -> int:
        """Serve /metrics; returns the bound port (useful with port 0)."""
        server, _thread = start_http_server(port, addr=address, registry=self.registry)
        self._server = server
        return int(server.server_address[1])

    def stop(self) -> None:
        """Stop the HTTP server."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _gpu_usage(snapshot: RegionSnapshot | None, uuid: str) -> Any:
    if snapshot is None:
        return None
    try:
        return snapshot.gpu(uuid)
    except KeyError:
        return None
