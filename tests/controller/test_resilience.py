"""Watches that expire, writes that conflict, books rebuilt from other writers' allocations."""
from __future__ import annotations

import threading
import time

from tests.controller.backends import client_for
from tests.fakes.apiserver.hooks import SLOW
from tests.fakes.kubeconfig import api_client_for
from vgpu_dra.controller.informer import Informer
from vgpu_dra.controller.kubeapi import RESOURCE_CLAIMS, KubeApi

from .cluster import add_device_class, add_node, claim, gpu, pod, running_controller, vgpu_config
from .waiting import wait_for


def allocation_of(server, name):
    obj = server.get("ResourceClaim", name, "default")
    return (obj.get("status") or {}).get("allocation") if obj else None


def test_informer_relists_after_410_and_reports_what_changed(fake_apiserver):
    server = fake_apiserver
    for name in ("keep", "drop"):
        server.create(claim(name))
    seen: list[tuple[str, bool, bool]] = []
    informer = Informer(KubeApi(api_client_for(server, user="informer")), RESOURCE_CLAIMS,
                        lambda key, old, new: seen.append((key, old is not None, new is not None)),
                        watch_timeout_s=30)
    stop = threading.Event()
    thread = threading.Thread(target=informer.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(informer.synced.is_set, what="first list")
        assert sorted(informer.snapshot()) == ["default/drop", "default/keep"]
        server.faults.add(410, resource="resourceclaims", verbs=("watch",), count=1)
        server.delete("ResourceClaim", "drop", "default")
        server.create(claim("new"))
        informer.close()  # the connection drops; the re-watch is answered 410 Gone
        wait_for(lambda: informer.relists >= 2, what="a relist after 410")
        wait_for(lambda: sorted(informer.snapshot()) == ["default/keep", "default/new"], what="store after relist")
        server.create(claim("after"))
        wait_for(lambda: "default/after" in informer.snapshot(), what="watching again after the relist")
    finally:
        stop.set()
        informer.close()
        thread.join(timeout=10)
    assert seen.count(("default/drop", True, False)) == 1
    assert ("default/new", False, True) in seen


def test_the_answer_to_removing_the_last_finalizer_is_a_deletion_not_a_claim_to_cache(api_backend):
    """Removing the last finalizer of a claim being deleted answers with the claim as it went.
    Whether the watch's DELETED arrives before or after that answer, the cache must not keep the
    claim: one cached after its deletion would stay forever, allocation and all, in the books."""
    server = api_backend
    api = KubeApi(client_for(server, "admin"))
    seen: list[tuple[str, bool, bool]] = []
    informer = Informer(api, RESOURCE_CLAIMS, lambda key, old, new: seen.append((key, old is not None, new is not None)),
                        namespace="default", watch_timeout_s=30)
    stop = threading.Event()
    thread = threading.Thread(target=informer.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(informer.synced.is_set, what="first list")
        for name, deleted_seen_first in (("watch-first", True), ("answer-first", False)):
            created = api.create(RESOURCE_CLAIMS, {**claim(name), "metadata": {"name": name, "finalizers": ["x/y"]}},
                                 "default")
            wait_for(lambda: informer.get(f"default/{name}") is not None, what=f"{name} cached")
            server.delete("ResourceClaim", name, "default")
            wait_for(lambda: (informer.get(f"default/{name}") or {}).get("metadata", {}).get("deletionTimestamp"),
                     what=f"{name} seen being deleted")
            if not deleted_seen_first:
                informer.close()  # hold the watch back, so the answer comes first
            answer = api.patch(RESOURCE_CLAIMS, name, {"metadata": {"finalizers": None}}, "default")
            assert answer["metadata"]["uid"] == created["metadata"]["uid"]
            if deleted_seen_first:
                wait_for(lambda: informer.get(f"default/{name}") is None, what=f"{name}'s DELETED from the watch")
            informer.observe(answer)
            assert informer.get(f"default/{name}") is None
            wait_for(lambda: (f"default/{name}", True, False) in seen, what=f"{name}'s deletion reported")
            time.sleep(0.3)  # the watch (reopened) delivers whatever it still has
            assert informer.get(f"default/{name}") is None, f"{name} came back into the cache"
            assert seen.count((f"default/{name}", True, False)) == 1
    finally:
        stop.set()
        informer.close()
        thread.join(timeout=10)


def test_status_write_conflicts_are_retried(fake_apiserver):
    server = fake_apiserver
    add_node(server, "node", [gpu(0)])
    add_device_class(server)
    server.create(claim("c", config=vgpu_config(memory="1Gi")))
    server.faults.add(409, resource="resourceclaims", verbs=("patch",), subresource="status", count=2)
    server.create(pod("app", ["c"]))
    with running_controller(server) as controller:
        wait_for(lambda: allocation_of(server, "c"), what="allocated despite two conflicts")
        conflicts = controller.service.metrics.conflicts._value.get()
    assert conflicts == 2
    assert len(allocation_of(server, "c")["devices"]["results"]) == 1


def test_a_claim_deleted_between_our_finalizer_and_our_allocation_is_not_held_by_the_finalizer(fake_apiserver):
    """The user deletes the claim after the controller added its finalizer and before its
    allocation landed. The allocation is abandoned; the finalizer it added must go with it, or
    the claim stays Terminating forever (`kubectl delete` hangs) with nothing to protect."""
    server = fake_apiserver
    add_node(server, "node", [gpu(0)])
    add_device_class(server)
    server.create(claim("c", config=vgpu_config(memory="1Gi")))
    race = server.faults.add(SLOW, resource="resourceclaims", verbs=("patch",), subresource="status", count=1,
                             before=lambda: server.delete("ResourceClaim", "c", "default"))
    server.create(pod("app", ["c"]))
    with running_controller(server):
        wait_for(lambda: race.hits == 1, what="the allocation's status write")
        wait_for(lambda: server.get("ResourceClaim", "c", "default") is None,
                 what="the deleted claim gone, not held by our finalizer")
    writes = [r for r in server.audit() if r.user == "vgpu-controller" and r.resource == "resourceclaims"
              and r.verb == "patch"]
    assert [(r.subresource, r.code) for r in writes] == [("", 200), ("status", 409), ("", 200)]


def test_gate_conflicts_outlasting_the_retries_are_tried_again_later(fake_apiserver):
    """More 409s than one sync retries: the work item comes back with backoff instead of leaving
    the pod gated forever."""
    server = fake_apiserver
    add_node(server, "node", [gpu(0)])
    add_device_class(server)
    server.create(claim("c", config=vgpu_config(memory="1Gi")))
    server.faults.add(409, resource="pods", verbs=("patch",), count=12)  # write_retries is 8
    server.create(pod("app", ["c"]))
    with running_controller(server):
        wait_for(lambda: not server.get("Pod", "app", "default")["spec"].get("schedulingGates"),
                 what="gate lifted after the conflicts ran out")
    assert allocation_of(server, "c")


def test_server_errors_are_retried_with_backoff(fake_apiserver):
    server = fake_apiserver
    add_node(server, "node", [gpu(0)])
    add_device_class(server)
    server.create(claim("c", config=vgpu_config(memory="1Gi")))
    server.faults.add(500, resource="resourceclaims", verbs=("patch",), count=3)
    server.create(pod("app", ["c"]))
    with running_controller(server):
        wait_for(lambda: allocation_of(server, "c"), what="allocated after transient errors")


def _foreign_allocation(server, name, node, device, *, share=True, memory="9Gi"):
    obj = server.get("ResourceClaim", name, "default")
    result = {"request": "gpu", "driver": "vgpu.dra.dev", "pool": node, "device": device}
    if share:
        result["shareID"] = "9c8a4f5e-2b1d-4e6f-8a7b-1c2d3e4f5a6b"
        result["consumedCapacity"] = {"memory": memory, "cores": "0"}
    obj["status"] = {"allocation": {"devices": {"results": [result]}, "nodeSelector": {"nodeSelectorTerms": [
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}]},
        "allocationTimestamp": "2026-01-01T00:00:00Z"}}
    server.update_status(obj, user="kube-scheduler")


def test_books_include_allocations_made_by_others(fake_apiserver):
    server = fake_apiserver
    add_node(server, "node", [gpu(0), gpu(1), gpu(2)])
    add_device_class(server)
    # kube-scheduler (or an earlier controller) already gave out gpu-0 exclusively and 9 GiB of gpu-1
    server.create(claim("exclusive", config=vgpu_config(memory="1Gi")))
    _foreign_allocation(server, "exclusive", "node", "gpu-0", share=False)
    server.create(claim("big-share", config=vgpu_config(memory="9Gi")))
    _foreign_allocation(server, "big-share", "node", "gpu-1")
    for i in range(2):
        server.create(claim(f"mine-{i}", config=vgpu_config(memory="2Gi")))
        server.create(pod(f"mine-{i}", [f"mine-{i}"]))
    with running_controller(server):
        for i in range(2):
            alloc = wait_for(lambda i=i: allocation_of(server, f"mine-{i}"), what=f"mine-{i} allocated")
            assert alloc["devices"]["results"][0]["device"] == "gpu-2", "gpu-0 and gpu-1 are taken by others"


def test_nothing_is_decided_before_every_cache_has_listed(fake_apiserver):
    """Were the controller to decide before the slices are listed, it would see no GPUs and refuse
    the pod (a spurious Warning event); it must wait for every first list instead."""
    server = fake_apiserver
    add_node(server, "node", [gpu(0)])
    add_device_class(server)
    server.create(claim("c", config=vgpu_config(memory="1Gi")))
    server.create(pod("app", ["c"]))
    server.faults.add(503, resource="resourceslices", verbs=("list",), count=3)
    with running_controller(server, user="ctl"):
        wait_for(lambda: allocation_of(server, "c"), what="allocated after the slices list succeeded")
    audit = [r for r in server.audit() if r.user == "ctl"]
    first_slice_list = next(i for i, r in enumerate(audit)
                            if r.resource == "resourceslices" and r.verb == "list" and r.code == 200)
    first_write = next(i for i, r in enumerate(audit) if r.verb in ("update", "patch", "create"))
    failed_lists = [r for r in audit[:first_slice_list] if r.resource == "resourceslices" and r.verb == "list"]
    assert len(failed_lists) == 3 and all(r.code == 503 for r in failed_lists)
    assert first_write > first_slice_list
    assert [e for e in server.events() if e.reason == "AllocationFailed"] == []


def test_a_forbidden_status_write_is_reported_on_the_claim_and_pod(fake_apiserver):
    """Missing RBAC (e.g. resourceclaims/binding) must reach the user, not just the logs."""
    server = fake_apiserver
    add_node(server, "node", [gpu(0)])
    add_device_class(server)
    server.create(claim("c", config=vgpu_config(memory="1Gi")))
    server.create(pod("app", ["c"]))
    server.faults.add(403, resource="resourceclaims", verbs=("patch",), subresource="status", count=1)
    with running_controller(server):
        event = wait_for(lambda: next((e for e in server.events() if e.regarding_name == "c"
                                       and e.reason == "AllocationFailed"), None), what="event about the rejection")
        assert "rejected" in event.message and "403" in event.message
        wait_for(lambda: allocation_of(server, "c"), timeout_s=30, what="allocated once the write is allowed")


def test_whole_gpu_allocation_seen_before_its_slices_is_booked_at_the_gpu_size(fake_apiserver):
    from vgpu_dra.controller.allocation_term import TermSettings

    server = fake_apiserver
    add_device_class(server)
    server.create(claim("exclusive", config=vgpu_config(memory="1Gi")))
    _foreign_allocation(server, "exclusive", "late", "gpu-0", share=False)
    with running_controller(server, settings=TermSettings(watch_timeout_s=30)) as controller:
        wait_for(lambda: controller.service.is_ready(), what="synced")
        add_node(server, "late", [gpu(0), gpu(1)])
        term = controller.service.current_term

        def view():
            gpus, _ = term.allocation_view()
            return {g.device: g for g in gpus if g.node == "late"}
        wait_for(lambda: len(view()) == 2, what="the late node's GPUs")
        gpu0 = view()["gpu-0"]
    assert gpu0.memory_allocated_bytes == gpu0.memory_bytes and gpu0.cores_allocated == 100
