"""Per-namespace GPU quota gauges, read from the live term at scrape time (like the allocation view)."""
from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .quota_gate import QuotaView


class QuotaViewCollector(Collector):
    """``vgpu_dra_controller_namespace_*``: quota and use per namespace. A namespace with claims
    but no quota gets only the used gauges; one with an unreadable quota gets
    ``..._namespace_quota_invalid`` 1 (and no limit gauges: no limit can be read)."""

    def __init__(self, snapshot: Callable[[], list[QuotaView]]):
        self._snapshot = snapshot

    def collect(self) -> Iterable[GaugeMetricFamily]:
        labels = ["namespace"]
        quota_memory = GaugeMetricFamily("vgpu_dra_controller_namespace_quota_memory_bytes",
                                         "GPU memory a namespace may use (limits.nvidia.com/gpumem)", labels=labels)
        used_memory = GaugeMetricFamily("vgpu_dra_controller_namespace_memory_used_bytes",
                                        "GPU memory walls of a namespace's allocated claims, summed", labels=labels)
        quota_cores = GaugeMetricFamily("vgpu_dra_controller_namespace_quota_cores",
                                        "Percent of one GPU's SMs a namespace may use (limits.nvidia.com/gpucores)",
                                        labels=labels)
        used_cores = GaugeMetricFamily("vgpu_dra_controller_namespace_cores_used",
                                       "Core caps of a namespace's allocated claims, summed (uncapped = 100)",
                                       labels=labels)
        invalid = GaugeMetricFamily("vgpu_dra_controller_namespace_quota_invalid",
                                    "1 while a namespace's GPU quota cannot be read (its claims are refused)",
                                    labels=labels)
        for view in self._snapshot():
            name = [view.namespace]
            used_memory.add_metric(name, view.used.memory_bytes)
            used_cores.add_metric(name, view.used.cores)
            quota = view.quota
            if quota is None:
                continue
            invalid.add_metric(name, 1 if quota.problem else 0)
            if quota.problem:
                continue
            if quota.memory is not None:
                quota_memory.add_metric(name, quota.memory.value)
            if quota.cores is not None:
                quota_cores.add_metric(name, quota.cores.value)
        yield from (quota_memory, used_memory, quota_cores, used_cores, invalid)
