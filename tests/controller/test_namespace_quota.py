"""Namespace GPU quotas (ResourceQuota limits.nvidia.com/gpumem / gpucores) enforced by the controller:
refusal with an event, release on deletion, many claims at once, restart, lowering, bad values."""
from __future__ import annotations

import threading
import time

from tests.controller.backends import client_for
from vgpu_dra.controller.allocation_term import TermSettings
from vgpu_dra.controller.kubeapi import RESOURCE_QUOTAS, KubeApi
from vgpu_dra.driver.namespace_quota import QUOTA_CORES, QUOTA_MEMORY

from .cluster import add_device_class, add_node, claim, gpu, pod, running_controller, vgpu_config
from .waiting import wait_for

GIB = 1 << 30
# Refused pods are retried on a timer too; a long one shows that deletions and quota changes
# retry them at once.
NO_TIMER = TermSettings(watch_timeout_s=30, retry_refused_after_s=600.0)


def resource_quota(memory_mib: str | None = None, cores: str | None = None, name: str = "team-gpu") -> dict:
    hard = {}
    if memory_mib is not None:
        hard[QUOTA_MEMORY] = memory_mib
    if cores is not None:
        hard[QUOTA_CORES] = cores
    return {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": name, "namespace": "default"},
            "spec": {"hard": hard}}


def set_quota(server, memory_mib: str | None = None, cores: str | None = None, name: str = "team-gpu") -> None:
    api = KubeApi(client_for(server, "admin"))
    current = api.get(RESOURCE_QUOTAS, name, "default")
    current["spec"]["hard"] = resource_quota(memory_mib, cores)["spec"]["hard"]
    api.update(RESOURCE_QUOTAS, current)


def allocated(server, name: str) -> bool:
    obj = server.get("ResourceClaim", name, "default")
    return bool(obj and (obj.get("status") or {}).get("allocation"))


def quota_events(server, name: str, reason: str = "QuotaExceeded"):
    return [e for e in server.events() if e.regarding_name == name and e.reason == reason]


def workload(server, name: str, memory: str, cores: int | None = None) -> None:
    fields = {"memory": memory} if cores is None else {"memory": memory, "cores": cores}
    server.create(claim(name, config=vgpu_config(**fields)))
    server.create(pod(name, [name]))


def remove(server, name: str) -> None:
    server.delete("Pod", name, "default")
    server.delete("ResourceClaim", name, "default")


def test_over_quota_stays_pending_with_an_event_and_allocates_once_a_claim_is_deleted(api_backend):
    server = api_backend
    add_node(server, "node", [gpu(0)])
    add_device_class(server)
    server.create(resource_quota(memory_mib="4096", cores="100"))
    workload(server, "a", "2Gi", cores=30)
    workload(server, "b", "2Gi", cores=30)
    with running_controller(server, settings=NO_TIMER):
        wait_for(lambda: allocated(server, "a") and allocated(server, "b"), what="a and b within the quota")
        workload(server, "c", "1Gi", cores=30)
        [event] = wait_for(lambda: [e for e in quota_events(server, "c") if e.regarding_kind == "ResourceClaim"],
                           what="QuotaExceeded on claim c")
        assert event.type == "Warning"
        for words in (f"{QUOTA_MEMORY} of ResourceQuota team-gpu is 4096 MiB (4 GiB)",
                      "4096 MiB (4 GiB) is in use by 2 claim(s)", "need 1024 MiB (1 GiB) more"):
            assert words in event.message
        assert QUOTA_CORES not in event.message  # 90 % of 100 % fits
        wait_for(lambda: [e for e in quota_events(server, "c") if e.regarding_kind == "Pod"], what="event on pod c")
        assert not allocated(server, "c")
        remove(server, "a")
        wait_for(lambda: allocated(server, "c"), what="c allocated after a was deleted")
        assert allocated(server, "b")


def test_claims_created_at_once_get_exactly_what_the_quota_fits(api_backend):
    # 16 workers race for a quota of five 1 GiB shares; the GPUs could take all twelve.
    server = api_backend
    add_node(server, "node-0", [gpu(0), gpu(1)])
    add_node(server, "node-1", [gpu(0), gpu(1)])
    add_device_class(server)
    server.create(resource_quota(memory_mib="5120"))
    names = [f"w{i:02d}" for i in range(12)]
    for name in names:
        server.create(claim(name, config=vgpu_config(memory="1Gi")))
    with running_controller(server, settings=TermSettings(workers=16, watch_timeout_s=30,
                                                          retry_refused_after_s=0.5)):
        for name in names:
            server.create(pod(name, [name]))
        wait_for(lambda: all(allocated(server, n) or quota_events(server, n) for n in names),
                 what="every claim allocated or refused")
        time.sleep(1.5)  # retries of the refused (every 0.5 s) must keep refusing
        winners = [n for n in names if allocated(server, n)]
        assert len(winners) == 5
        assert all(quota_events(server, n) for n in names if n not in winners)
        for name in winners[:2]:
            remove(server, name)
        wait_for(lambda: sum(allocated(server, n) for n in names) == 5 and
                 not any(allocated(server, n) for n in winners[:2]), what="two more allocated in place of two deleted")
        time.sleep(1.0)
        assert sum(allocated(server, n) for n in names) == 5


def test_a_restarted_controller_counts_what_is_allocated_and_a_lowered_quota_evicts_nothing(api_backend):
    server = api_backend
    add_node(server, "node", [gpu(0)])
    add_device_class(server)
    server.create(resource_quota(memory_mib="4096"))
    workload(server, "a", "2Gi")
    workload(server, "b", "2Gi")
    with running_controller(server):
        wait_for(lambda: allocated(server, "a") and allocated(server, "b"), what="a and b allocated")
    workload(server, "c", "1Gi")
    with running_controller(server, settings=NO_TIMER):  # a new term: usage rebuilt from the claims it lists
        wait_for(lambda: quota_events(server, "c"), what="c refused after the restart")
        set_quota(server, memory_mib="2048")  # lowered below what a and b hold
        wait_for(lambda: [e for e in quota_events(server, "c") if "2048 MiB (2 GiB)," in e.message],
                 what="c refused against the lowered quota")
        assert allocated(server, "a") and allocated(server, "b")
        set_quota(server, memory_mib="6144")
        wait_for(lambda: allocated(server, "c"), what="c allocated once the quota was raised")


def test_an_unreadable_quota_refuses_its_namespace_until_fixed(api_backend):
    server = api_backend
    add_node(server, "node", [gpu(0)])
    add_device_class(server)
    server.create(resource_quota(memory_mib="20Gi"))
    workload(server, "a", "1Gi")
    with running_controller(server, settings=NO_TIMER) as controller:
        [event] = wait_for(lambda: [e for e in quota_events(server, "a", "QuotaInvalid")
                                    if e.regarding_kind == "ResourceClaim"], what="QuotaInvalid on claim a")
        assert f"{QUOTA_MEMORY} = '20Gi'" in event.message and '"20480" for 20 GiB' in event.message
        assert not allocated(server, "a")
        registry = controller.service.metrics.registry
        assert registry.get_sample_value("vgpu_dra_controller_quota_invalid_total") == 1
        assert registry.get_sample_value("vgpu_dra_controller_namespace_quota_invalid", {"namespace": "default"}) == 1
        set_quota(server, memory_mib="20480")
        wait_for(lambda: allocated(server, "a"), what="a allocated once the quota was fixed")


def test_a_percentage_claim_counts_its_share_of_the_gpu_it_lands_on(fake_apiserver):
    server = fake_apiserver
    add_node(server, "node", [gpu(0)])  # 10 GiB RTX 3080, about 9.76 GiB usable
    add_device_class(server)
    server.create(resource_quota(memory_mib="4096"))
    server.create(claim("half", config=vgpu_config(memoryPercent=50)))
    server.create(pod("half", ["half"]))
    server.create(claim("fifth", config=vgpu_config(memoryPercent=20)))
    server.create(pod("fifth", ["fifth"]))
    with running_controller(server):
        [event] = wait_for(lambda: [e for e in quota_events(server, "half") if e.regarding_kind == "ResourceClaim"],
                           what="the 50 % claim refused")
        assert "need 4998 MiB (4.9 GiB) more" in event.message
        wait_for(lambda: allocated(server, "fifth"), what="the 20 % claim (about 2 GiB) allocated")


def test_metrics_show_quota_use_and_refusals(fake_apiserver):
    server = fake_apiserver
    add_node(server, "node", [gpu(0)])
    add_device_class(server)
    server.create(resource_quota(memory_mib="3072", cores="50"))
    workload(server, "a", "2Gi", cores=20)
    workload(server, "b", "2Gi", cores=20)
    with running_controller(server) as controller:
        wait_for(lambda: allocated(server, "a") or allocated(server, "b"), what="one allocated")
        wait_for(lambda: quota_events(server, "a") or quota_events(server, "b"), what="the other refused")
        registry = controller.service.metrics.registry
        labels = {"namespace": "default"}
        assert registry.get_sample_value("vgpu_dra_controller_namespace_quota_memory_bytes", labels) == 3 * GIB
        assert registry.get_sample_value("vgpu_dra_controller_namespace_memory_used_bytes", labels) == 2 * GIB
        assert registry.get_sample_value("vgpu_dra_controller_namespace_quota_cores", labels) == 50
        assert registry.get_sample_value("vgpu_dra_controller_namespace_cores_used", labels) == 20
        assert registry.get_sample_value("vgpu_dra_controller_quota_refusals_total",
                                         {"namespace": "default", "reason": "over-quota"}) >= 1
        assert registry.get_sample_value("vgpu_dra_controller_refusals_total", {"reason": "over-quota"}) >= 1



class YieldingRLock:
    """An RLock that hands the CPU to other threads after every release: whatever a worker does
    between two holds of the lock, another worker gets to run there."""

    def __init__(self) -> None:
        self._lock = threading.RLock()

    def acquire(self, *args, **kwargs) -> bool:
        return self._lock.acquire(*args, **kwargs)

    def release(self) -> None:
        self._lock.release()
        time.sleep(0.0002)

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def test_workers_racing_for_the_last_shares_never_both_pass(fake_apiserver, monkeypatch):
    """Sixteen workers decide at once and are switched at every release of the term's lock: the
    quota check and the booking must be one step under that lock, or two claims pass a quota that
    fits one."""
    import types

    import vgpu_dra.controller.allocation_term as allocation_term

    monkeypatch.setattr(allocation_term, "threading", types.SimpleNamespace(**{**vars(threading),
                                                                               "RLock": YieldingRLock}))
    server = fake_apiserver
    add_node(server, "node", [gpu(0), gpu(1)])
    add_device_class(server)
    server.create(resource_quota(memory_mib="3072"))
    names = [f"s{i:02d}" for i in range(10)]
    for name in names:  # all queued before the workers start, so they all decide at once
        server.create(claim(name, config=vgpu_config(memory="1Gi")))
        server.create(pod(name, [name]))
    with running_controller(server, settings=TermSettings(workers=16, watch_timeout_s=30)):
        wait_for(lambda: all(allocated(server, n) or quota_events(server, n) for n in names),
                 what="every claim allocated or refused")
        assert sum(allocated(server, n) for n in names) == 3
