"""Prometheus metrics of the allocation controller (names ``vgpu_dra_controller_*``).

Counters and histograms are updated as the controller works; the cluster's allocation view (per
GPU and per claim) is read from the live ledger at scrape time by `AllocationViewCollector`, so it
is never stale and costs nothing between scrapes.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True, slots=True)
class GpuView:
    """One GPU's allocation as the ledger books it."""

    node: str
    device: str
    uuid: str
    memory_bytes: int
    memory_allocated_bytes: int
    cores_allocated: int
    claims: int


@dataclass(frozen=True, slots=True)
class ClaimView:
    """One claim's share of one GPU."""

    namespace: str
    claim: str
    node: str
    device: str
    memory_bytes: int
    cores: int


class AllocationViewCollector(Collector):
    """Per-GPU and per-claim gauges computed from a snapshot function at scrape time."""

    def __init__(self, snapshot: Callable[[], tuple[list[GpuView], list[ClaimView]]]):
        self._snapshot = snapshot

    def collect(self) -> Iterable[GaugeMetricFamily]:
        gpus, claims = self._snapshot()
        gpu_labels = ["node", "gpu", "uuid"]
        capacity = GaugeMetricFamily("vgpu_dra_controller_gpu_memory_capacity_bytes",
                                     "Usable memory a GPU publishes", labels=gpu_labels)
        memory = GaugeMetricFamily("vgpu_dra_controller_gpu_memory_allocated_bytes",
                                   "GPU memory allocated to claims (consumedCapacity sum)", labels=gpu_labels)
        cores = GaugeMetricFamily("vgpu_dra_controller_gpu_cores_allocated",
                                  "SM-core percent allocated to claims on a GPU", labels=gpu_labels)
        sharing = GaugeMetricFamily("vgpu_dra_controller_gpu_claims",
                                    "Claims sharing a GPU", labels=gpu_labels)
        for gpu in gpus:
            labels = [gpu.node, gpu.device, gpu.uuid]
            capacity.add_metric(labels, gpu.memory_bytes)
            memory.add_metric(labels, gpu.memory_allocated_bytes)
            cores.add_metric(labels, gpu.cores_allocated)
            sharing.add_metric(labels, gpu.claims)
        claim_labels = ["namespace", "claim", "node", "gpu"]
        claim_memory = GaugeMetricFamily("vgpu_dra_controller_claim_memory_allocated_bytes",
                                         "GPU memory allocated to a claim on a GPU", labels=claim_labels)
        claim_cores = GaugeMetricFamily("vgpu_dra_controller_claim_cores_allocated",
                                        "SM-core percent allocated to a claim on a GPU", labels=claim_labels)
        for claim in claims:
            labels = [claim.namespace, claim.claim, claim.node, claim.device]
            claim_memory.add_metric(labels, claim.memory_bytes)
            claim_cores.add_metric(labels, claim.cores)
        yield from (capacity, memory, cores, sharing, claim_memory, claim_cores)


class ControllerMetrics:
    """The controller's metrics in their own registry (several controllers may share a process)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.allocation_latency = Histogram(
            "vgpu_dra_controller_allocation_duration_seconds",
            "From the controller first seeing a pod that needs claims to all of them being allocated",
            buckets=LATENCY_BUCKETS, registry=r)
        self.sync_duration = Histogram(
            "vgpu_dra_controller_sync_duration_seconds", "One work-queue sync (decision and writes)",
            ["kind"], buckets=LATENCY_BUCKETS, registry=r)
        self.allocations = Counter("vgpu_dra_controller_allocations_total", "Claims allocated", registry=r)
        self.deallocations = Counter("vgpu_dra_controller_deallocations_total",
                                     "Allocations this controller cleared (claim unreserved, unneeded or deleted)",
                                     registry=r)
        self.refusals = Counter("vgpu_dra_controller_refusals_total",
                                "Pods whose claims could not be allocated, by reason", ["reason"], registry=r)
        self.conflicts = Counter("vgpu_dra_controller_write_conflicts_total",
                                 "Writes that hit a resourceVersion conflict and were retried", registry=r)
        self.nominations = Counter("vgpu_dra_controller_node_nominations_total",
                                   "Pods' nominatedNodeName written with their allocation's node, by result "
                                   "(written, failed: kube-scheduler then picks the node itself)",
                                   ["result"], registry=r)
        self.wipes = Counter("vgpu_dra_controller_allocation_wipes_total",
                             "Allocations cleared by someone else (kube-scheduler) while the pod was pending",
                             registry=r)
        self.pending_claims = Gauge("vgpu_dra_controller_pending_claims",
                                    "Claims of pending pods waiting for an allocation", registry=r)
        self.queue_depth = Gauge("vgpu_dra_controller_queue_depth", "Keys waiting in the work queue", registry=r)
        self.is_leader = Gauge("vgpu_dra_controller_leader", "1 while this replica holds the leader Lease",
                               registry=r)
        self.ready = Gauge("vgpu_dra_controller_ready", "1 once the caches had their first full sync", registry=r)
        self.quota_refusals = Counter("vgpu_dra_controller_quota_refusals_total",
                                      "Pods refused because their namespace's GPU quota is used up or unreadable",
                                      ["namespace", "reason"], registry=r)
        self.invalid_quotas = Counter("vgpu_dra_controller_quota_invalid_total",
                                      "ResourceQuota values on GPU names that could not be read (fail closed)",
                                      registry=r)

    def register_view(self, snapshot: Callable[[], tuple[list[GpuView], list[ClaimView]]]) -> None:
        """Expose the allocation view computed by `snapshot`."""
        self.registry.register(AllocationViewCollector(snapshot))
