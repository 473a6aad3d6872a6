"""The metrics the code actually exposes, read the way Prometheus reads them: both registries are
built, every labelled metric gets one child and the scrape-time collectors get one claim and one
GPU, then the text exposition is parsed. Nothing here lists metric names by hand."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from vgpu_dra.controller.metrics import ClaimView, ControllerMetrics, GpuView
from vgpu_dra.driver.checkpoint import PreparedClaim, PreparedDevice
from vgpu_dra.kubeletplugin.health_metrics import HealthMetrics
from vgpu_dra.kubeletplugin.metrics import GpuSample, NodeMetrics

_UUID = "GPU-00000000-0000-4000-8000-000000000000"
# Labels Prometheus adds to every series of a histogram or summary, not labels of the metric.
_STRUCTURAL_LABELS = {"le", "quantile"}


@dataclass(frozen=True)
class ExposedMetric:
    """One metric family as scraped: its type, its series names and its label names."""

    name: str
    type: str
    component: str
    series: frozenset[str]
    labels: frozenset[str]


def _touch_labelled(owner: object) -> None:
    """Give every labelled metric of `owner` one child, so its series and labels show in a scrape."""
    for value in vars(owner).values():
        if isinstance(value, MetricWrapperBase) and value._labelnames:  # noqa: SLF001 - no public accessor
            value.labels(*["x"] * len(value._labelnames))  # noqa: SLF001


def _node_registry(claims_dir: Path) -> CollectorRegistry:
    device = PreparedDevice(request="gpu", pool="node-a", device="gpu-0", share_id=None, gpu_uuid=_UUID,
                            gpu_index=0, gpu_minor=0, memory_bytes=1 << 30, cores=25, core_policy="soft",
                            nvidia_cdi_device=None, cdi_device_ids=("k8s.vgpu.dra.dev/claim=u-gpu-0",))
    claim = PreparedClaim(uid="u", namespace="ns", name="claim", state="prepared", devices=(device,),
                          shim_host_path="/nonexistent", pods=("pod",))
    sample = GpuSample(uuid=_UUID, device="gpu-0", memory_used_bytes=0, memory_total_bytes=1 << 34,
                       utilization_percent=0)
    metrics = NodeMetrics("node-a", lambda: {"u": claim}, claims_dir, gpu_sampler=lambda: [sample])
    _touch_labelled(metrics)
    _touch_labelled(HealthMetrics("node-a", metrics.registry))
    return metrics.registry


def _controller_registry() -> CollectorRegistry:
    metrics = ControllerMetrics()
    metrics.register_view(lambda: ([GpuView("node-a", "gpu-0", _UUID, 1 << 34, 1 << 30, 25, 1)],
                                   [ClaimView("ns", "claim", "node-a", "gpu-0", 1 << 30, 25)]))
    _touch_labelled(metrics)
    return metrics.registry


def _parse(registry: CollectorRegistry, component: str) -> Iterable[ExposedMetric]:
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        series = {s.name for s in family.samples}
        labels = {label for s in family.samples for label in s.labels} - _STRUCTURAL_LABELS
        yield ExposedMetric(family.name, family.type, component, frozenset(series), frozenset(labels))


def exposed_metrics(claims_dir: Path) -> dict[str, ExposedMetric]:
    """Every metric family of the kubelet plugin and the controller, by family name."""
    found: dict[str, ExposedMetric] = {}
    for metric in [*_parse(_node_registry(claims_dir), "node"), *_parse(_controller_registry(), "controller")]:
        assert metric.name not in found, f"{metric.name} is defined by both components"
        found[metric.name] = metric
    return found


def series_names(metrics: dict[str, ExposedMetric]) -> dict[str, ExposedMetric]:
    """Every series name a PromQL query may use (``_total``, ``_bucket`` …) → its family."""
    return {series: metric for metric in metrics.values() for series in metric.series}
