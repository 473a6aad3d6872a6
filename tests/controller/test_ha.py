"""Restarts and replicas: the books survive a kill -9, and only the leader writes."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

from vgpu_dra.controller.service import LeaderSettings

from tests.fakes.kubeconfig import write_kubeconfig

from .cluster import add_device_class, add_node, claim, gpu, pod, start_controller, vgpu_config
from .invariants import CapacityWatch
from .waiting import wait_for


def allocated_names(server):
    return {c["metadata"]["name"] for c in server.objects("ResourceClaim")
            if (c.get("status") or {}).get("allocation")}


def controller_process(kubeconfig, log_path):
    """`vgpu-dra controller` as a real process, as a Deployment would run it."""
    log = open(log_path, "ab")
    return subprocess.Popen([sys.executable, "-m", "vgpu_dra.cli.main", "controller", "--kubeconfig", str(kubeconfig),
                             "--no-leader-elect", "--metrics-port", "0", "--retry-refused-after", "1",
                             "--log-format", "json"], stdout=log, stderr=subprocess.STDOUT)


def test_killed_and_restarted_mid_stream_no_double_allocation_no_lost_claim(fake_apiserver, tmp_path):
    server = fake_apiserver
    for n in range(3):
        add_node(server, f"node-{n}", [gpu(0), gpu(1)])
    add_device_class(server)
    watch = CapacityWatch()
    watch.load_slices(server.objects("ResourceSlice"))
    server.add_observer(watch)
    kubeconfig = write_kubeconfig(server, tmp_path / "kubeconfig")
    sizes = ["512Mi", "1Gi", "256Mi"]
    for i in range(60):
        server.create(claim(f"c{i}", config=vgpu_config(memory=sizes[i % 3], cores=i % 4)))
        server.create(pod(f"p{i}", [f"c{i}"]))
    first = controller_process(kubeconfig, tmp_path / "first.log")
    allocations = []

    def kill_on_tenth_allocation(record):
        # Runs inside the server right after the write commits: the kill lands mid-stream, with
        # other writes of the controller in flight, however fast the machine is.
        if record.resource.kind == "ResourceClaim" and (record.obj.get("status") or {}).get("allocation") \
                and not ((record.old or {}).get("status") or {}).get("allocation"):
            allocations.append(record.obj["metadata"]["name"])
            if len(allocations) == 10:
                first.send_signal(signal.SIGKILL)

    server.add_observer(kill_on_tenth_allocation)
    try:
        wait_for(lambda: first.poll() is not None, timeout_s=60, what="the first controller killed mid-stream")
    finally:
        server.remove_observer(kill_on_tenth_allocation)
        if first.poll() is None:
            first.kill()
        first.wait(timeout=10)
    at_kill = allocated_names(server)
    assert len(at_kill) < 60, "killed too late to be mid-stream"
    for i in range(60, 90):
        server.create(claim(f"c{i}", config=vgpu_config(memory=sizes[i % 3], cores=i % 4)))
        server.create(pod(f"p{i}", [f"c{i}"]))
    second = controller_process(kubeconfig, tmp_path / "second.log")
    try:
        wait_for(lambda: len(allocated_names(server)) == 90, timeout_s=90, what="every claim allocated")
        time.sleep(0.5)
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=20) == 0, (tmp_path / "second.log").read_text()[-2000:]
    assert watch.violations == []
    for c in server.objects("ResourceClaim"):
        assert len(c["status"]["allocation"]["devices"]["results"]) == 1
    for p in server.objects("Pod"):
        assert not p["spec"].get("schedulingGates"), f"{p['metadata']['name']} still gated"


def test_only_the_leader_writes_and_a_standby_takes_over(fake_apiserver):
    server = fake_apiserver
    add_node(server, "node", [gpu(0), gpu(1)])
    add_device_class(server)
    fast = dict(lease_duration_s=2.0, renew_deadline_s=1.5, retry_period_s=0.2, namespace="default")
    a = start_controller(server, user="replica-a", leader=LeaderSettings(identity="replica-a", **fast))
    wait_for(lambda: a.service.is_ready(), what="replica-a leading")
    b = start_controller(server, user="replica-b", leader=LeaderSettings(identity="replica-b", **fast))
    try:
        for i in range(10):
            server.create(claim(f"c{i}", config=vgpu_config(memory="512Mi")))
            server.create(pod(f"p{i}", [f"c{i}"]))
        wait_for(lambda: len(allocated_names(server)) == 10, what="allocated by the leader")
        time.sleep(1.0)  # several renew periods: the standby keeps trying, and must not write
        claim_writers = {r.user for r in server.audit()
                         if r.verb in ("create", "update", "patch") and r.resource in ("resourceclaims", "pods", "events")
                         and r.code < 300 and r.user.startswith("replica")}
        assert claim_writers == {"replica-a"}
        assert not b.service.is_ready() and b.service.current_term is None
        a.halt()  # a clean stop releases the Lease
        wait_for(lambda: b.service.is_ready(), timeout_s=10, what="replica-b takes over")
        for i in range(10, 15):
            server.create(claim(f"c{i}", config=vgpu_config(memory="512Mi")))
            server.create(pod(f"p{i}", [f"c{i}"]))
        wait_for(lambda: len(allocated_names(server)) == 15, what="allocated by the new leader")
    finally:
        b.halt()
        if a.thread.is_alive():
            a.halt()
    late = [r for r in server.writes_by("replica-b") if r.resource == "resourceclaims"]
    assert {r.name for r in late} == {f"c{i}" for i in range(10, 15)}
    lease = server.get("Lease", "vgpu-dra-controller", "default")
    assert lease["spec"]["leaseTransitions"] >= 1
