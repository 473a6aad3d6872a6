"""A claim's life around the allocation: refusals, template claims, deallocation, deletion, wipes."""
from __future__ import annotations

import time

from tests.controller.backends import client_for
from vgpu_dra.api.names import FINALIZER
from vgpu_dra.controller.allocation_term import TermSettings
from vgpu_dra.controller.kubeapi import DEVICE_CLASSES, PODS, ApiError, KubeApi

from .cluster import add_device_class, add_node, claim, gpu, pod, running_controller, vgpu_config
from .waiting import wait_for


def allocation_of(server, name):
    obj = server.get("ResourceClaim", name, "default")
    return (obj.get("status") or {}).get("allocation") if obj else None


def refusals(server, name):
    return [e for e in server.events() if e.regarding_name == name and e.reason == "AllocationFailed"]


def test_bad_config_is_refused_with_event_then_fixed_claim_allocates(api_backend):
    server = api_backend
    add_node(server, "node", [gpu(0)])
    add_device_class(server)
    server.create(claim("bad", config=vgpu_config(memoryPercent=150)))
    server.create(pod("app", ["bad"]))
    with running_controller(server):
        events = wait_for(lambda: refusals(server, "bad"), what="Warning event on the claim")
        assert events[0].type == "Warning" and events[0].regarding_kind == "ResourceClaim"
        assert "memoryPercent" in events[0].message
        wait_for(lambda: [e for e in refusals(server, "app") if e.regarding_kind == "Pod"], what="event on the pod")
        assert allocation_of(server, "bad") is None
        assert FINALIZER not in (server.get("ResourceClaim", "bad", "default")["metadata"].get("finalizers") or [])
        # Claim specs are immutable: the user replaces the claim with a fixed one.
        server.delete("ResourceClaim", "bad", "default")
        server.create(claim("bad", config=vgpu_config(memoryPercent=15)))
        wait_for(lambda: allocation_of(server, "bad"), what="the fixed claim allocated")


def test_bad_class_config_then_fixed_class_allocates_without_touching_the_claim(api_backend):
    server = api_backend
    add_node(server, "node", [gpu(0)])
    add_device_class(server, "medium.vgpu.dra.dev", config=vgpu_config(memory="2Gi", colour="blue"))
    server.create(claim("c", device_class="medium.vgpu.dra.dev"))
    server.create(pod("app", ["c"]))
    with running_controller(server):
        event = wait_for(lambda: refusals(server, "c"), what="refusal")[0]
        assert "colour" in event.message and "medium.vgpu.dra.dev" in event.message
        fixed = server.get("DeviceClass", "medium.vgpu.dra.dev")
        fixed["spec"]["config"][0]["opaque"]["parameters"] = vgpu_config(memory="2Gi")
        KubeApi(client_for(server, "admin")).update(DEVICE_CLASSES, fixed)
        alloc = wait_for(lambda: allocation_of(server, "c"), what="allocation after the class was fixed")
    assert alloc["devices"]["results"][0]["consumedCapacity"]["memory"] == "2Gi"
    assert alloc["devices"]["config"][0]["source"] == "FromClass"


def test_template_claim_found_through_owner_reference(api_backend):
    server = api_backend
    add_node(server, "node", [gpu(0)])
    add_device_class(server)
    owner = server.create(pod("web-0", templates={"gpu": "small-gpu"}))
    # what kube-controller-manager creates for the template reference
    server.create(claim("web-0-gpu-x7k2p", config=vgpu_config(memory="1Gi"), owner=owner))
    with running_controller(server):
        wait_for(lambda: allocation_of(server, "web-0-gpu-x7k2p"), what="template claim allocated")
        wait_for(lambda: not server.get("Pod", "web-0", "default")["spec"].get("schedulingGates"), what="gate lifted")


def test_unreserved_claim_of_finished_pod_is_deallocated(api_backend):
    server = api_backend
    add_node(server, "node", [gpu(0)])
    add_device_class(server)
    server.create(claim("job", config=vgpu_config(memory="8Gi")))
    server.create(claim("next", config=vgpu_config(memory="8Gi")))
    server.create(pod("job", ["job"]))
    server.create(pod("next", ["next"]))
    with running_controller(server):
        first = wait_for(lambda: next((n for n in ("job", "next") if allocation_of(server, n)), None),
                         what="one of the two 8Gi claims allocated")
        other = "next" if first == "job" else "job"
        wait_for(lambda: refusals(server, other), what="the other refused (one GPU, 8Gi each)")
        # The first pod runs and finishes; the scheduler/kubelet side is played by hand.
        bind(server, first, "node")
        finished = server.get("Pod", first, "default")
        finished["status"] = {"phase": "Succeeded"}
        server.update_status(finished, user="kubelet")
        wait_for(lambda: allocation_of(server, first) is None, what="finished pod's claim deallocated")
        wait_for(lambda: FINALIZER not in (server.get("ResourceClaim", first, "default")["metadata"].get("finalizers")
                                           or []), what="our finalizer removed after the deallocation")
        wait_for(lambda: allocation_of(server, other), what="freed capacity goes to the waiting pod")


def test_deleting_an_allocated_claim_completes(api_backend):
    server = api_backend
    add_node(server, "node", [gpu(0)])
    add_device_class(server)
    server.create(claim("doomed", config=vgpu_config(memory="1Gi")))
    server.create(pod("app", ["doomed"]))
    with running_controller(server):
        wait_for(lambda: allocation_of(server, "doomed"), what="allocated")
        server.delete("Pod", "app", "default")
        server.delete("ResourceClaim", "doomed", "default")
        wait_for(lambda: server.get("ResourceClaim", "doomed", "default") is None, what="claim gone")


def test_a_template_claim_of_a_deleted_pod_frees_its_capacity_in_one_write(api_backend):
    """The pod goes and the garbage collector deletes the claim it owns: the controller waits for
    that deletion and drops its finalizer, allocation and all, without a status write first (which
    raced kube-controller-manager's own status write of the claim), and the capacity goes to the
    claim that was waiting for it."""
    server = api_backend
    add_node(server, "node", [gpu(0)])
    add_device_class(server)
    owner = server.create(pod("first", templates={"gpu": "big-gpu"}))
    # what kube-controller-manager creates for the template reference
    server.create(claim("first-gpu-x7k2p", config=vgpu_config(memory="8Gi"), owner=owner))
    with running_controller(server, user="ctl") as controller:
        wait_for(lambda: allocation_of(server, "first-gpu-x7k2p"), what="the first 8Gi claim allocated")
        server.create(claim("second", config=vgpu_config(memory="8Gi")))
        server.create(pod("second", ["second"]))
        wait_for(lambda: refusals(server, "second"), what="the second refused (one 10 GiB GPU)")
        deallocated = controller.service.metrics.deallocations._value.get()
        server.delete("Pod", "first", "default")
        if server.get("ResourceClaim", "first-gpu-x7k2p", "default") is not None:
            server.delete("ResourceClaim", "first-gpu-x7k2p", "default")  # as the garbage collector does
        wait_for(lambda: server.get("ResourceClaim", "first-gpu-x7k2p", "default") is None, what="the claim gone")
        wait_for(lambda: allocation_of(server, "second"), what="its capacity allocated to the second claim")
        assert controller.service.metrics.deallocations._value.get() == deallocated + 1
    if hasattr(server, "audit"):
        writes = [(r.verb, r.subresource) for r in server.audit() if r.user == "ctl" and
                  r.resource == "resourceclaims" and r.name == "first-gpu-x7k2p" and r.verb in ("patch", "update")]
        # The finalizer and the allocation (status), then the finalizer's removal alone.
        assert writes == [("patch", ""), ("patch", "status"), ("patch", "")], writes


def test_a_claim_whose_pod_is_gone_but_is_never_deleted_is_released_after_a_grace(fake_apiserver, monkeypatch):
    """No garbage collector deletes the claim of a deleted pod (a fault a real cluster's
    kube-controller-manager does not show on demand; the fake's collector is switched off): the
    controller releases it itself once `owner_gone_grace_s` has passed, so nothing stays booked."""
    server = fake_apiserver
    monkeypatch.setattr(server.store, "_collect_garbage", lambda *_args, **_kwargs: None)
    add_node(server, "node", [gpu(0)])
    add_device_class(server)
    owner = server.create(pod("first", templates={"gpu": "big-gpu"}))
    server.create(claim("kept", config=vgpu_config(memory="8Gi"), owner=owner))
    settings = TermSettings(watch_timeout_s=30, retry_refused_after_s=1.0, owner_gone_grace_s=2.0)
    with running_controller(server, settings=settings):
        wait_for(lambda: allocation_of(server, "kept"), what="the template claim allocated")
        server.create(claim("second", config=vgpu_config(memory="8Gi")))
        server.create(pod("second", ["second"]))
        wait_for(lambda: refusals(server, "second"), what="the second refused (one 10 GiB GPU)")
        server.delete("Pod", "first", "default")
        started = time.monotonic()
        wait_for(lambda: allocation_of(server, "kept") is None, timeout_s=20, what="the claim released after the grace")
        waited = time.monotonic() - started
        wait_for(lambda: allocation_of(server, "second"), what="its capacity allocated to the waiting claim")
    assert server.get("ResourceClaim", "kept", "default") is not None  # released, not deleted
    assert waited > 1.0, f"released after {waited:.1f} s: the garbage collector was not given its grace"


def test_claims_are_changed_only_by_patches_never_written_back_whole(fake_apiserver):
    """A real API server keeps opaque parameters as the bytes it was sent, so a PUT of a claim with
    re-serialised parameters reads as a change to the immutable spec (422): the finalizer, the
    allocation, the deallocation and the finalizer's removal must all be patches."""
    server = fake_apiserver
    add_node(server, "node", [gpu(0)])
    add_device_class(server)
    server.create(claim("c", config=vgpu_config(memory="1Gi")))
    server.create(pod("app", ["c"]))
    with running_controller(server, user="ctl"):
        wait_for(lambda: allocation_of(server, "c"), what="allocated")
        server.delete("Pod", "app", "default")
        server.delete("ResourceClaim", "c", "default")
        wait_for(lambda: server.get("ResourceClaim", "c", "default") is None, what="claim gone")
    writes = [(r.verb, r.subresource) for r in server.audit() if r.user == "ctl" and r.resource == "resourceclaims"
              and r.verb in ("update", "patch")]
    assert ("patch", "") in writes and ("patch", "status") in writes, writes
    assert all(verb == "patch" for verb, _ in writes), writes


def test_scheduler_wipe_reallocates_on_another_node(api_backend):
    server = api_backend
    add_node(server, "first", [gpu(0)])
    add_node(server, "second", [gpu(0)])
    add_device_class(server)
    server.create(claim("c", config=vgpu_config(memory="1Gi")))
    held = pod("app", ["c"])
    # Another gate keeps kube-scheduler (on a real cluster) from binding before the wipe: a wipe
    # happens while the pod is still unbound.
    held["spec"]["schedulingGates"].append({"name": "example.com/hold"})
    server.create(held)
    with running_controller(server):
        alloc = wait_for(lambda: allocation_of(server, "c"), what="first allocation")
        node = alloc["devices"]["results"][0]["pool"]
        # kube-scheduler's PostFilter: the pod does not fit that node, so it clears the allocation.
        wiped = server.get("ResourceClaim", "c", "default")
        wiped["status"] = {}
        server.update_status(wiped, user="kube-scheduler")
        again = wait_for(lambda: allocation_of(server, "c"), what="re-allocation")
    assert again["devices"]["results"][0]["pool"] != node


def bind(server, pod_name, node):
    """What kube-scheduler does once it picked a node: POST the pod's binding subresource."""
    api = KubeApi(client_for(server, "kube-scheduler"))
    try:
        api._request("POST", PODS.path("default", pod_name, "binding"), body={
            "apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod_name, "namespace": "default"},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node}})
    except ApiError as exc:
        # On a real cluster kube-scheduler may have bound it there already.
        if not (exc.conflict and f'already assigned to node "{node}"' in exc.message):
            raise


def test_device_class_created_after_the_pod_is_picked_up(api_backend):
    server = api_backend
    add_node(server, "node", [gpu(0)])
    server.create(claim("c", config=vgpu_config(memory="1Gi")))
    server.create(pod("app", ["c"]))
    with running_controller(server):
        wait_for(lambda: server.get("Pod", "app", "default") and True, what="pod stored")
        add_device_class(server)
        wait_for(lambda: allocation_of(server, "c"), what="allocated once its class exists")


def test_bound_pod_keeps_its_claim_even_before_the_reservation_is_seen(fake_apiserver):
    """The pod watch may show the binding before the claim watch shows reservedFor: the claim of a
    bound, live pod must never be treated as unused. (Fake only: on a real cluster kube-scheduler
    writes the reservation before binding, so this order cannot be set up there.)"""
    from vgpu_dra.controller.allocation_term import TermSettings

    server = fake_apiserver
    add_node(server, "node", [gpu(0)])
    add_device_class(server)
    server.create(claim("c", config=vgpu_config(memory="1Gi")))
    server.create(pod("app", ["c"]))
    with running_controller(server, settings=TermSettings(workers=1, watch_timeout_s=30)):
        wait_for(lambda: allocation_of(server, "c"), what="allocated")
        bind(server, "app", "node")  # no reservedFor written
        server.create(claim("later", config=vgpu_config(memory="1Gi")))
        server.create(pod("later", ["later"]))
        wait_for(lambda: allocation_of(server, "later"), what="a later pod processed after the binding")
        assert allocation_of(server, "c") is not None
        assert FINALIZER in server.get("ResourceClaim", "c", "default")["metadata"]["finalizers"]


def test_refused_pod_is_allocated_when_a_node_publishes_gpus(api_backend):
    from vgpu_dra.controller.allocation_term import TermSettings

    server = api_backend
    add_device_class(server)
    server.create(claim("c", config=vgpu_config(memory="1Gi")))
    server.create(pod("app", ["c"]))
    # retry-refused-after is long: only the new slices can trigger the retry in time
    with running_controller(server, settings=TermSettings(retry_refused_after_s=3600, watch_timeout_s=30)):
        wait_for(lambda: refusals(server, "c"), what="refused while no node has GPUs")
        add_node(server, "late", [gpu(0)])
        alloc = wait_for(lambda: allocation_of(server, "c"), what="allocated once a node publishes")
    assert alloc["devices"]["results"][0]["pool"] == "late"


def test_a_claim_shared_by_two_pods_is_allocated_once_and_both_pods_follow_it(fake_apiserver):
    from vgpu_dra.controller.allocation_term import TermSettings

    server = fake_apiserver
    add_node(server, "one", [gpu(0)])
    add_node(server, "two", [gpu(0)])
    add_device_class(server)
    server.create(claim("shared", config=vgpu_config(memory="1Gi")))
    server.create(claim("own-a", config=vgpu_config(memory="1Gi")))
    server.create(claim("own-b", config=vgpu_config(memory="1Gi")))
    server.create(pod("a", ["shared", "own-a"]))
    server.create(pod("b", ["shared", "own-b"]))
    with running_controller(server, settings=TermSettings(workers=4, watch_timeout_s=30)):
        for name in ("shared", "own-a", "own-b"):
            wait_for(lambda name=name: allocation_of(server, name), what=f"{name} allocated")
    nodes = {n: allocation_of(server, n)["devices"]["results"][0]["pool"] for n in ("shared", "own-a", "own-b")}
    assert nodes["own-a"] == nodes["shared"] == nodes["own-b"], nodes
    writes = [r for r in server.audit() if r.resource == "resourceclaims" and r.subresource == "status"
              and r.name == "shared" and r.code < 300]
    assert len(writes) == 1
