"""The usage watchdog in the running plugin: fake NVML process lists, a fake /proc tree, Events in
the fake API server, metrics; kills of real child processes; the region-edit attack under the shim."""
from __future__ import annotations

import mmap
import os
import subprocess
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.nvml_processes import FakeProcess, LiveProcesses, live_nvml_processes  # noqa: F401
from tests.plugin.node import GIB, kubelet_for, node_settings
from vgpu_dra.driver.region import REGION_SIZE, ffi
from vgpu_dra.driver.usage_audit import ProcessOwner
from vgpu_dra.kubeletplugin.proc_owners import ProcOwners, kill_process

NODE = "mixed-node"
T4_0 = "GPU-2f8e4d1a-7c3b-4e9f-a152-6d0c8b9e3f71"
STRANGER_POD = "0a0b0c0d-1111-4222-8333-444455556666"


def write_proc(root: Path, pid: int, pod_uid: str | None, container: str = "ab" * 32, ns_pid: int | None = None) -> None:
    """/proc/<pid>/cgroup and status as a containerd node with the systemd cgroup driver writes them."""
    directory = root / str(pid)
    directory.mkdir(parents=True, exist_ok=True)
    if pod_uid is None:
        cgroup = "0::/system.slice/display-manager.service\n"
    else:
        cgroup = (f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{pod_uid.replace('-', '_')}"
                  f".slice/cri-containerd-{container}.scope\n")
    (directory / "cgroup").write_text(cgroup)
    (directory / "status").write_text(f"Name:\tworker\nNSpid:\t{pid}\t{ns_pid or pid}\n")


class Node:
    """A plugin with its watchdog on the mixed node, claims prepared through a fake kubelet."""

    def __init__(self, plugin: Any, kubelet: Any, claims: Any, settings: Any, live: LiveProcesses):
        self.plugin, self.kubelet, self.claims, self.settings, self.live = plugin, kubelet, claims, settings, live
        self.proc = settings.proc_root

    def prepare(self, memory: str = "2Gi", device: str = "gpu-0", pods: tuple[str, ...] = ("pod-a",)) -> Any:
        claim = self.claims.create([{"request": "gpu", "device": device, "shareID": str(uuidlib.uuid4()),
                                     "consumedCapacity": {"memory": memory, "cores": "0"}}], pods=pods)
        assert self.kubelet.prepare([claim.ref])[claim.uid].error == ""
        # The limits go into the claim's status from a worker thread: a test that then writes the
        # claim itself must not race that write.
        if self.plugin.status_writer is not None:
            assert self.plugin.status_writer.wait_idle(10)
        return claim

    def pod_uid(self, claim: Any, index: int = 0) -> str:
        stored = self.claims.server.get("ResourceClaim", claim.name, claim.namespace)
        return stored["status"]["reservedFor"][index]["uid"]

    def events(self, reason: str) -> list[Any]:
        return [e for e in self.claims.server.events() if e.reason == reason]

    def metric(self, name: str, **labels: str) -> float | None:
        return self.plugin.metrics.registry.get_sample_value(name, {"node": NODE, **labels})


@pytest.fixture
def start_node(short_tmp: Path, shim_source: Path, kube_client, fake_nvml, claims,  # noqa: ANN001
               live_nvml_processes: LiveProcesses) -> Iterator[Callable[..., Node]]:  # noqa: F811
    from vgpu_dra.kubeletplugin.plugin import KubeletPlugin

    started: list[tuple[Any, Any]] = []

    def start(enforcement: str = "report", seconds: float = 3600.0) -> Node:
        settings = node_settings(short_tmp, NODE, shim_source, proc_root=short_tmp / "proc",
                                 watchdog_seconds=seconds, watchdog_enforcement=enforcement)
        (short_tmp / "proc").mkdir(exist_ok=True)
        fake_nvml.use("mixed-node")
        plugin = KubeletPlugin(settings, kube_client)
        plugin.start()
        kubelet = kubelet_for(settings)
        started.append((plugin, kubelet))
        return Node(plugin, kubelet, claims, settings, live_nvml_processes)

    yield start
    for plugin, kubelet in started:
        kubelet.close()
        plugin.stop()


def test_a_process_of_no_claim_is_reported_once_on_the_node_with_metrics(start_node):
    node = start_node()
    node.prepare()
    node.live.set([FakeProcess(T4_0, 4000, GIB)])
    write_proc(node.proc, 4000, STRANGER_POD)
    outcome = node.plugin.watchdog.poll()
    assert [f.kind for f in outcome.findings] == ["untracked"]
    (event,) = node.events("GpuProcessWithoutClaim")
    assert event.regarding_kind == "Node" and event.regarding_name == NODE and event.type == "Warning"
    assert "process 4000" in event.message and STRANGER_POD in event.message
    assert "not stopped (watchdog enforcement: report)" in event.message
    assert node.metric("vgpu_dra_watchdog_violations_total", kind="untracked") == 1
    assert node.metric("vgpu_dra_gpu_unclaimed_bytes", gpu="gpu-0", uuid=T4_0) == GIB
    node.plugin.watchdog.poll()  # still there: the same finding, no second Event or count
    assert len(node.events("GpuProcessWithoutClaim")) == 1
    assert node.metric("vgpu_dra_watchdog_violations_total", kind="untracked") == 1
    node.live.set([])
    assert node.plugin.watchdog.poll().findings == ()
    assert node.metric("vgpu_dra_gpu_unclaimed_bytes", gpu="gpu-0", uuid=T4_0) == 0


def test_a_claims_process_without_the_shim_over_its_wall_gets_events_on_claim_and_pod(start_node):
    node = start_node()
    claim = node.prepare(memory="2Gi")
    pod_uid = node.pod_uid(claim)
    node.live.set([FakeProcess(T4_0, 4100, 3 * GIB)])
    write_proc(node.proc, 4100, pod_uid)
    kinds = sorted(f.kind for f in node.plugin.watchdog.poll().findings)
    assert kinds == ["over_wall", "region_mismatch", "unshimmed"]
    for reason in ("GpuProcessWithoutShim", "GpuMemoryOverWall", "GpuRegionMismatch"):
        on = sorted((e.regarding_kind, e.regarding_name, e.regarding_namespace) for e in node.events(reason))
        assert on == [("Pod", "pod-a", "default"), ("ResourceClaim", claim.name, "default")], reason
    (unshimmed, _) = node.events("GpuProcessWithoutShim")
    assert "without libvgpu.so loaded" in unshimmed.message and "process 4100" in unshimmed.message
    labels = {"namespace": "default", "claim": claim.name, "claim_uid": claim.uid, "pod": "pod-a", "gpu": "gpu-0",
              "uuid": T4_0}
    assert node.metric("vgpu_dra_claim_untracked_bytes", **labels) == 3 * GIB
    assert node.metric("vgpu_dra_watchdog_violations_total", kind="over_wall") == 1


def test_a_graphics_process_counts_like_a_compute_one(start_node):
    node = start_node()
    node.prepare()
    node.live.set([FakeProcess(T4_0, 4200, GIB, kind="graphics")])
    write_proc(node.proc, 4200, None)
    (finding,) = node.plugin.watchdog.poll().findings
    assert finding.kind == "untracked" and finding.kill_pids == ()  # a host process: never killed


def test_nvml_failing_fails_closed_counted_and_logged_once(start_node, capsys):
    node = start_node()
    claim = node.prepare()
    node.live.set([FakeProcess(T4_0, 4300, GIB)])
    write_proc(node.proc, 4300, node.pod_uid(claim))
    node.live.fail({"nvmlDeviceGetComputeRunningProcesses_v3": "UNKNOWN"})
    for _ in range(2):
        assert node.plugin.watchdog.poll().healthy is False
    assert node.metric("vgpu_dra_watchdog_up") == 0
    assert node.metric("vgpu_dra_watchdog_errors_total", what="nvml") == 2
    labels = {"namespace": "default", "claim": claim.name, "claim_uid": claim.uid, "pod": "pod-a", "gpu": "gpu-0",
              "uuid": T4_0}
    assert node.metric("vgpu_dra_claim_untracked_bytes", **labels) is None  # no reassuring 0
    assert capsys.readouterr().out.count("usage watchdog cannot read what it needs") == 1
    node.live.fail({})
    outcome = node.plugin.watchdog.poll()
    assert outcome.healthy and [f.kind for f in outcome.findings] == ["unshimmed", "region_mismatch"]
    assert node.metric("vgpu_dra_watchdog_up") == 1


def test_a_pod_that_joined_a_shared_claim_since_prepare_is_not_untracked(start_node):
    node = start_node()
    claim = node.prepare(pods=("pod-a",))
    stored = node.claims.server.get("ResourceClaim", claim.name, claim.namespace)
    joined = str(uuidlib.uuid4())
    stored["status"]["reservedFor"].append({"resource": "pods", "name": "pod-b", "uid": joined})
    node.claims.server.update_status(stored)
    node.live.set([FakeProcess(T4_0, 4400, 10 << 20)])
    write_proc(node.proc, 4400, joined)
    # pod-b's process has no shim slot here (it is a fake), so it reads as unshimmed: of the claim,
    # not as a process of nobody.
    assert [f.kind for f in node.plugin.watchdog.poll().findings] == ["unshimmed"]
    assert node.events("GpuProcessWithoutClaim") == []


def test_the_poll_loop_detects_within_its_interval(start_node):
    node = start_node(seconds=0.2)
    node.prepare()
    write_proc(node.proc, 4500, STRANGER_POD)
    node.live.set([FakeProcess(T4_0, 4500, GIB)])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not node.events("GpuProcessWithoutClaim"):
        time.sleep(0.05)
    assert node.events("GpuProcessWithoutClaim")


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "600"], start_new_session=True)


def test_kill_enforcement_kills_a_real_child_and_the_event_says_so(start_node):
    node = start_node(enforcement="kill")
    claim = node.prepare()
    child = _sleeper()
    try:
        write_proc(node.proc, child.pid, node.pod_uid(claim))
        node.live.set([FakeProcess(T4_0, child.pid, 512 << 20)])
        outcome = node.plugin.watchdog.poll()
        assert outcome.kills == {child.pid: "killed"}
        assert child.wait(timeout=10) == -9
        (on_claim,) = [e for e in node.events("GpuProcessWithoutShim") if e.regarding_kind == "ResourceClaim"]
        assert f"vgpu-dra killed process {child.pid} (SIGKILL" in on_claim.message
        assert node.metric("vgpu_dra_watchdog_kills_total", kind="unshimmed") == 1
    finally:
        child.kill()
        child.wait()


def test_report_enforcement_leaves_the_child_running(start_node):
    node = start_node(enforcement="report")
    node.prepare()
    child = _sleeper()
    try:
        write_proc(node.proc, child.pid, STRANGER_POD)
        node.live.set([FakeProcess(T4_0, child.pid, GIB)])
        assert [f.kind for f in node.plugin.watchdog.poll().findings] == ["untracked"]
        time.sleep(0.2)
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()


def test_a_pid_that_now_belongs_to_another_pod_is_not_killed(tmp_path):
    child = _sleeper()
    try:
        write_proc(tmp_path, child.pid, STRANGER_POD)
        expected = ProcessOwner(pid=child.pid, pod_uid="11111111-2222-4333-8444-555555555555",
                                container_id="ab" * 32)
        assert kill_process(child.pid, expected, ProcOwners(tmp_path)) == "reused"
        assert child.poll() is None
        now = ProcOwners(tmp_path).read(child.pid)
        assert kill_process(child.pid, now, ProcOwners(tmp_path)) == "killed"
        assert child.wait(timeout=10) == -9
    finally:
        child.kill()
        child.wait()


# ---- the region-edit attack, under the real shim over the fake CUDA driver ----------------------

def _zero_region_counter(region: Path) -> None:
    """What a tenant can do: the region is mode 0666 and mapped read-write into the pod."""
    fd = os.open(region, os.O_RDWR)
    try:
        with mmap.mmap(fd, REGION_SIZE) as mem:
            view = ffi.from_buffer("struct vgpu_region *", mem)
            view.gpus[0].used_bytes = 0
            del view
    finally:
        os.close(fd)


@pytest.fixture
def shim_node(start_node, monkeypatch):  # noqa: ANN001, ANN201
    from tests.shim import harness

    harness.build_all()
    node = start_node(enforcement="kill")
    cuda = harness.Node(root=node.settings.state_dir, devices={T4_0: 16 * GIB})
    # The plugin's NVML lists the fake driver's processes (as a real NVML lists CUDA's).
    monkeypatch.setenv("FAKE_CUDA_STATE", str(cuda.state_file))
    return node, cuda, harness


def test_the_region_edit_attack_is_detected_in_one_poll_and_stopped(shim_node):
    node, cuda, harness = shim_node
    claim = node.prepare(memory="2Gi")
    pod_uid = node.pod_uid(claim)
    region = node.settings.claims_dir / claim.uid / "region"
    first = cuda.start("init", "ctx", "0", "alloc", str(2 * GIB), "hold")
    second = None
    try:
        assert [line["rc"] for line in harness.read_until(first, "hold")] == ["0"] * 4
        refused = cuda.run("init", "ctx", "0", "alloc", str(GIB))
        assert refused.rc(2) == 2  # CUDA_ERROR_OUT_OF_MEMORY: the wall holds ...
        _zero_region_counter(region)
        second = cuda.start("init", "ctx", "0", "alloc", str(2 * GIB), "hold")
        # ... until the tenant rewrites the counter: the second process gets a second wall.
        assert [line["rc"] for line in harness.read_until(second, "hold")] == ["0"] * 4
        for proc in (first, second):
            write_proc(node.proc, proc.pid, pod_uid)
        outcome = node.plugin.watchdog.poll()
        kinds = {f.kind for f in outcome.findings}
        assert {"over_wall", "region_mismatch", "region_tampered"} <= kinds
        mismatch = next(f for f in outcome.findings if f.kind == "region_mismatch")
        assert mismatch.measured_bytes >= 4 * GIB and mismatch.accounted_bytes == 2 * GIB
        assert outcome.kills == {first.pid: "killed", second.pid: "killed"}
        assert first.wait(timeout=10) == -9 and second.wait(timeout=10) == -9
        (on_pod,) = [e for e in node.events("GpuRegionMismatch") if e.regarding_kind == "Pod"]
        assert "killed process" in on_pod.message and str(first.pid) in on_pod.message
    finally:
        for proc in (first, second):
            if proc is not None:
                harness.stop(proc)


def test_honest_shimmed_processes_are_not_findings(shim_node):
    node, cuda, harness = shim_node
    claim = node.prepare(memory="2Gi")
    procs: list[subprocess.Popen[str]] = []
    try:
        # Started together, as a pod's workers are: the first one's context bound fills this
        # tight claim until it is measured, and the second's allocation waits for that.
        procs = [cuda.start("init", "ctx", "0", "alloc", str(GIB - (64 << 20)), "hold") for _ in range(2)]
        for proc in procs:
            assert [line["rc"] for line in harness.read_until(proc, "hold")] == ["0"] * 4
            write_proc(node.proc, proc.pid, node.pod_uid(claim))
        outcome = node.plugin.watchdog.poll()
        assert outcome.findings == () and outcome.healthy
        assert all(p.poll() is None for p in procs)
    finally:
        for proc in procs:
            harness.stop(proc)


def test_a_process_in_the_slot_of_a_killed_one_is_not_mistaken_for_one_without_the_shim(shim_node):
    """A worker killed and restarted in its pod takes over the dead one's process slot; what the
    dead one learned (its host PID) must not be taken for the new one's."""
    node, cuda, harness = shim_node
    cuda.ctx_bytes = 2 << 20  # measured by the first process, charged to the later one without NVML
    claim = node.prepare(memory="2Gi")
    first = cuda.start("init", "ctx", "0", "alloc", str(64 << 20), "hold")
    later = None
    try:
        assert [line["rc"] for line in harness.read_until(first, "hold")] == ["0"] * 4
        harness.stop(first)
        # Too small an allocation to learn its host PID by: known to the watchdog by its own PID.
        later = cuda.start("init", "ctx", "0", "alloc", str(1 << 20), "hold")
        assert [line["rc"] for line in harness.read_until(later, "hold")] == ["0"] * 4
        write_proc(node.proc, later.pid, node.pod_uid(claim))
        outcome = node.plugin.watchdog.poll()
        assert outcome.findings == () and outcome.healthy
        assert later.poll() is None
    finally:
        for proc in (first, later):
            if proc is not None:
                harness.stop(proc)


def test_a_finding_the_second_sample_does_not_confirm_is_not_reported(tmp_path):
    """NVML and the regions are read moments apart: an allocation in between must not read as an attack."""
    from vgpu_dra.driver.checkpoint import PreparedClaim, PreparedDevice
    from vgpu_dra.driver.claimconfig import ClaimConfig, GpuLimit
    from vgpu_dra.driver.region import create_region
    from vgpu_dra.driver.usage_audit import GpuProcess
    from vgpu_dra.kubeletplugin.watchdog import UsageWatchdog, WatchdogSettings

    pod = "11111111-2222-4333-8444-555555555555"
    device = PreparedDevice(request="gpu", pool="n", device="gpu-0", share_id=None, gpu_uuid=T4_0, gpu_index=0,
                            gpu_minor=0, memory_bytes=GIB, cores=0, core_policy="soft", nvidia_cdi_device=None,
                            cdi_device_ids=())
    claim = PreparedClaim(uid="c1", namespace="t", name="c", state="prepared", devices=(device,), shim_host_path="",
                          pods=("p",), pod_refs=(("p", pod),))
    (tmp_path / "claims" / "c1").mkdir(parents=True)
    create_region(tmp_path / "claims" / "c1" / "region", ClaimConfig("c1", (GpuLimit(T4_0, GIB, 0, "soft"),)))
    write_proc(tmp_path / "proc", 4600, pod)
    samples = [[GpuProcess(T4_0, 4600, 2 * GIB)], [GpuProcess(T4_0, 4600, 0)]]  # a spike, then nothing
    events: list[tuple[Any, ...]] = []

    class Source:
        def processes(self, uuids: set[str]) -> list[GpuProcess]:
            return samples.pop(0) if samples else [GpuProcess(T4_0, 4600, 2 * GIB)]

    watchdog = UsageWatchdog("n", WatchdogSettings(proc_root=tmp_path / "proc"), lambda: {"c1": claim},
                             tmp_path / "claims", source=Source(), emit=lambda *a: events.append(a),
                             emit_node=lambda *a: events.append(a))
    assert [f.kind for f in watchdog.poll().findings] == ["unshimmed"]  # only what both samples show
    assert {e[1] for e in events} == {"GpuProcessWithoutShim"}
    events.clear()
    kinds = sorted(f.kind for f in watchdog.poll().findings)  # now it persists: confirmed
    assert kinds == ["over_wall", "region_mismatch", "unshimmed"]
    assert {e[1] for e in events} == {"GpuMemoryOverWall", "GpuRegionMismatch"}
