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
from vgpu_dra.controller.quota_gate import QuotaView
from vgpu_dra.controller.quota_metrics import QuotaViewCollector
from vgpu_dra.driver.checkpoint import PreparedClaim, PreparedDevice
from vgpu_dra.driver.namespace_quota import Usage, quota_from_objects
from vgpu_dra.driver.region import create_region
from vgpu_dra.kubeletplugin.health_metrics import HealthMetrics
from vgpu_dra.kubeletplugin.metrics import GpuSample, NodeMetrics
from vgpu_dra.kubeletplugin.preparer import claim_config_of
from vgpu_dra.kubeletplugin.watchdog import UsageWatchdog, WatchdogSettings
from vgpu_dra.webhook.server import WebhookMetrics

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
    _add_watchdog(metrics, claim, claims_dir)
    _touch_labelled(HealthMetrics("node-a", metrics.registry))
    return metrics.registry


def _add_watchdog(metrics: NodeMetrics, claim: PreparedClaim, claims_dir: Path) -> None:
    """The usage watchdog registers into the plugin's registry; one poll fills its gauges."""
    (claims_dir / claim.uid).mkdir(parents=True, exist_ok=True)
    create_region(claims_dir / claim.uid / "region", claim_config_of(claim))
    source = type("Source", (), {"processes": lambda self, uuids: []})()
    watchdog = UsageWatchdog("node-a", WatchdogSettings(proc_root=claims_dir / "proc"), lambda: {claim.uid: claim},
                             claims_dir, source=source, emit=lambda *a: None, emit_node=lambda *a: None,
                             registry=metrics.registry)
    _touch_labelled(watchdog)
    watchdog.poll()


def _controller_registry() -> CollectorRegistry:
    metrics = ControllerMetrics()
    metrics.register_view(lambda: ([GpuView("node-a", "gpu-0", _UUID, 1 << 34, 1 << 30, 25, 1)],
                                   [ClaimView("ns", "claim", "node-a", "gpu-0", 1 << 30, 25)]))
    _touch_labelled(metrics)
    quota = quota_from_objects("ns", [{"metadata": {"name": "gpu", "namespace": "ns"}, "spec": {"hard": {
        "limits.nvidia.com/gpumem": "20480", "limits.nvidia.com/gpucores": "150"}}}])
    bad = quota_from_objects("bad", [{"metadata": {"name": "gpu", "namespace": "bad"}, "spec": {"hard": {
        "limits.nvidia.com/gpumem": "lots"}}}])
    metrics.registry.register(QuotaViewCollector(lambda: [QuotaView("ns", quota, Usage(1 << 30, 25, 1)),
                                                          QuotaView("bad", bad, Usage())]))
    return metrics.registry


def _webhook_registry() -> CollectorRegistry:
    metrics = WebhookMetrics()
    _touch_labelled(metrics)
    return metrics.registry


def _parse(registry: CollectorRegistry, component: str) -> Iterable[ExposedMetric]:
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        series = {s.name for s in family.samples}
        labels = {label for s in family.samples for label in s.labels} - _STRUCTURAL_LABELS
        yield ExposedMetric(family.name, family.type, component, frozenset(series), frozenset(labels))


def exposed_metrics(claims_dir: Path) -> dict[str, ExposedMetric]:
    """Every metric family of the kubelet plugin, the controller and the HAMi webhook, by family name."""
    found: dict[str, ExposedMetric] = {}
    for metric in [*_parse(_node_registry(claims_dir), "node"), *_parse(_controller_registry(), "controller"),
                   *_parse(_webhook_registry(), "webhook")]:
        assert metric.name not in found, f"{metric.name} is defined by both components"
        found[metric.name] = metric
    return found


def series_names(metrics: dict[str, ExposedMetric]) -> dict[str, ExposedMetric]:
    """Every series name a PromQL query may use (``_total``, ``_bucket`` …) → its family."""
    return {series: metric for metric in metrics.values() for series in metric.series}
