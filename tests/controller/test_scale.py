"""Many pods at once: the books stay right on every stored state."""
from __future__ import annotations

import random
import time

from vgpu_dra.api.quantity import format_bytes

from .cluster import add_device_class, add_node, claim, gpu, pod, running_controller
from .invariants import CapacityWatch
from .waiting import wait_for

MIB = 1 << 20


def settled(server, watch, quiet_s):
    """True once no claim changed for `quiet_s` (refused pods are retried every 2 s meanwhile)."""
    last = {"rv": -1, "since": time.monotonic()}

    def check():
        rv = max((int(c["metadata"]["resourceVersion"]) for c in server.objects("ResourceClaim")), default=0)
        if rv != last["rv"]:
            last.update(rv=rv, since=time.monotonic())
            return False
        return time.monotonic() - last["since"] >= quiet_s
    return check


def test_100_pods_on_3_nodes_never_exceed_a_gpu(fake_apiserver):
    server = fake_apiserver
    for n in range(3):
        add_node(server, f"node-{n}", [gpu(0), gpu(1)])
    add_device_class(server)
    watch = CapacityWatch()
    watch.load_slices(server.objects("ResourceSlice"))
    server.add_observer(watch)
    rng = random.Random(7)
    sizes = {}
    with running_controller(server) as controller:
        for i in range(100):
            memory = rng.choice([256, 512, 1024, 1536, 2048, 3072]) * MIB
            cores = rng.choice([0, 5, 10, 20, 30])
            sizes[f"c{i}"] = (memory, cores)
            server.create(claim(f"c{i}", capacity={"memory": format_bytes(memory), "cores": str(cores)}))
            server.create(pod(f"p{i}", [f"c{i}"]))
        wait_for(settled(server, watch, quiet_s=3.0), timeout_s=90, what="allocations to settle")
        view_gpus, _ = controller.service.current_term.allocation_view()
    assert watch.states_checked > 100
    assert watch.violations == []
    claims = {c["metadata"]["name"]: c for c in server.objects("ResourceClaim")}
    allocated = [n for n, c in claims.items() if (c.get("status") or {}).get("allocation")]
    refused = [n for n in claims if n not in allocated]
    assert len(allocated) > 20
    assert refused, "the workload is sized to overflow the cluster"
    free = watch.free()
    for name in refused:
        memory, cores = sizes[name]
        fits = [g for g, (m, c) in free.items() if m >= memory and c >= cores]
        assert not fits, f"{name} ({memory} bytes, {cores} cores) was left pending although {fits} has room"
    messages = [e for e in server.events() if e.reason == "AllocationFailed" and e.type == "Warning"]
    assert {e.regarding_name for e in messages} >= set(refused)
    # The controller's own view agrees with what the server stores.
    for view in view_gpus:
        memory_free, cores_free = free[(view.node, view.device)]
        assert view.memory_bytes - view.memory_allocated_bytes == memory_free
        assert 100 - view.cores_allocated == cores_free
