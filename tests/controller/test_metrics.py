"""The controller's /metrics: latency, pending claims, refusals, and the allocation view."""
from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from .cluster import add_device_class, add_node, claim, gpu, pod, running_controller, vgpu_config
from .waiting import wait_for


def samples(registry):
    found = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def value(found, name, **labels):
    return sum(v for l, v in found.get(name, []) if all(l.get(k) == want for k, want in labels.items()))


def test_metrics_show_allocations_refusals_and_per_gpu_view(fake_apiserver):
    server = fake_apiserver
    add_node(server, "node", [gpu(0)])
    add_device_class(server)
    server.create(claim("a", config=vgpu_config(memory="2Gi", cores=25)))
    server.create(claim("b", config=vgpu_config(memory="3Gi", cores=40)))
    server.create(claim("huge", config=vgpu_config(memory="64Gi")))
    for name in ("a", "b", "huge"):
        server.create(pod(name, [name]))
    with running_controller(server) as controller:
        registry = controller.service.metrics.registry
        wait_for(lambda: value(samples(registry), "vgpu_dra_controller_allocations_total") == 2, what="2 allocations")
        wait_for(lambda: value(samples(registry), "vgpu_dra_controller_refusals_total", reason="too-large") >= 1,
                 what="a too-large refusal")
        found = samples(registry)
    assert value(found, "vgpu_dra_controller_allocation_duration_seconds_count") == 2
    assert value(found, "vgpu_dra_controller_pending_claims") == 1
    assert value(found, "vgpu_dra_controller_gpu_memory_allocated_bytes", node="node", gpu="gpu-0") == 5 << 30
    assert value(found, "vgpu_dra_controller_gpu_cores_allocated", node="node", gpu="gpu-0") == 65
    assert value(found, "vgpu_dra_controller_gpu_claims", node="node", gpu="gpu-0") == 2
    assert value(found, "vgpu_dra_controller_claim_memory_allocated_bytes", namespace="default", claim="b") == 3 << 30
    assert value(found, "vgpu_dra_controller_claim_cores_allocated", claim="a") == 25
    assert value(found, "vgpu_dra_controller_ready") == 1
