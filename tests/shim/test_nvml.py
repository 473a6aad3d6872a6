"""NVML answers the claim's view: pynvml (unmodified) in a process under libvgpu.so."""

import json
import subprocess
import sys
from pathlib import Path

from tests.shim.harness import GPU_A, GPU_B, MiB, Node, read_until, stop

GiB = 1 << 30
OTHER_PID = 4242

PROBE = r"""
import ctypes, json, sys
import pynvml as n
n.nvmlInit()
out = {}
for uuid in sys.argv[1:]:
    h = n.nvmlDeviceGetHandleByUUID(uuid.encode())
    m1 = n.nvmlDeviceGetMemoryInfo(h)
    m2 = n.nvmlDeviceGetMemoryInfo(h, version=n.nvmlMemory_v2)
    v3 = sorted(p.pid for p in n.nvmlDeviceGetComputeRunningProcesses(h))
    v2 = sorted(p.pid for p in n.nvmlDeviceGetComputeRunningProcesses_v2(h))
    # The unversioned symbol has the v1 layout (pid, usedGpuMemory).
    class P1(ctypes.Structure):
        _fields_ = [("pid", ctypes.c_uint), ("used", ctypes.c_ulonglong)]
    fn = n._nvmlGetFunctionPointer("nvmlDeviceGetComputeRunningProcesses")
    count = ctypes.c_uint(16)
    arr = (P1 * 16)()
    rc = fn(h, ctypes.byref(count), arr)
    v1 = sorted(arr[i].pid for i in range(count.value)) if rc == 0 else ["rc", rc]
    # Two-call protocol: asking with room for nothing reports how many the claim view holds.
    need = ctypes.c_uint(0)
    rc0 = fn(h, ctypes.byref(need), None)
    out[uuid] = {"v1": [m1.total, m1.used, m1.free], "v2": [m2.total, m2.reserved, m2.used, m2.free],
                 "procs": {"v1": v1, "v2": v2, "v3": v3, "need": [rc0, need.value]}}
out["me"] = __import__("os").getpid()
print(json.dumps(out))
"""


def write_inventory(path: Path, holder_pid: int, other_bytes: int = GiB) -> None:
    lines = ["fake-nvml-inventory 1", "driver_version 550.54.15", "cuda_driver_version 12040"]
    for index, uuid in enumerate((GPU_A, GPU_B)):
        lines += [
            "gpu",
            f"uuid {uuid}",
            "name NVIDIA Fake",
            f"pci_bus_id 00000000:0{index + 1}:00.0",
            f"memory_total {8 * GiB}",
            f"memory_reserved {256 * MiB}",
            f"process {OTHER_PID} {other_bytes}",
            f"process {holder_pid} {512 * MiB}",
            f"process self {128 * MiB}",
        ]
    path.write_text("\n".join(lines) + "\n")


def probe_nvml(node: Node, holder_pid: int, *gpus: str, other_bytes: int = GiB) -> dict:
    """Run PROBE under the shim against a fake NVML listing `holder_pid`; its JSON answer."""
    inventory = node.root / "inventory.txt"
    write_inventory(inventory, holder_pid, other_bytes)
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, *gpus],
        env={**node.env(), "FAKE_NVML_INVENTORY": str(inventory)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode == 0, probe.stderr
    return json.loads(probe.stdout)


def test_nvml_reports_the_claim_view_and_only_the_claims_processes(node: Node) -> None:
    node.devices = {GPU_A: 8 * GiB, GPU_B: 8 * GiB}
    node.add_claim("claim-a", {GPU_A: 2 * GiB})
    holder = node.start("init", "ctx", "0", "alloc", str(512 * MiB), "hold")
    try:
        read_until(holder, "hold")
        seen = probe_nvml(node, holder.pid, GPU_A, GPU_B)
    finally:
        stop(holder)
    me = seen["me"]
    claimed = seen[GPU_A]
    assert claimed["v1"] == [2 * GiB, 512 * MiB, 1536 * MiB]
    assert claimed["v2"] == [2 * GiB, 0, 512 * MiB, 1536 * MiB]
    ours = sorted([holder.pid, me])
    assert claimed["procs"] == {"v1": ours, "v2": ours, "v3": ours, "need": [7, 2]}  # 7 = INSUFFICIENT_SIZE
    # A GPU of no claim: the physical answers, every process.
    other = seen[GPU_B]
    assert other["v1"][0] == 8 * GiB
    assert other["procs"]["v3"] == sorted([OTHER_PID, holder.pid, me])


def test_nvml_without_claims_is_untouched(node: Node) -> None:
    seen = probe_nvml(node, 1, GPU_A)
    assert seen[GPU_A]["v1"][0] == 8 * GiB
    assert seen[GPU_A]["procs"]["v3"] == sorted([1, OTHER_PID, seen["me"]])


def test_nvml_free_never_exceeds_what_the_card_has_left(node: Node) -> None:
    node.devices = {GPU_A: 8 * GiB, GPU_B: 8 * GiB}
    node.add_claim("claim-a", {GPU_A: 2 * GiB})
    # Another tenant holds 7 GiB of the 8 GiB card; with 256 MiB reserved and the two other listed
    # processes (512 + 128 MiB), 128 MiB are physically left.
    total, used, free = probe_nvml(node, 1, GPU_A, other_bytes=7 * GiB)[GPU_A]["v1"]
    assert (total, used) == (2 * GiB, 0)
    assert free == 128 * MiB


PID_PROBE = r"""
import json, sys
import pynvml as n
n.nvmlInit()
h = n.nvmlDeviceGetHandleByUUID(sys.argv[1].encode())
print(json.dumps({
    "v3": sorted([p.pid, p.usedGpuMemory] for p in n.nvmlDeviceGetComputeRunningProcesses(h)),
    "v2": sorted([p.pid, p.usedGpuMemory] for p in n.nvmlDeviceGetComputeRunningProcesses_v2(h)),
}))
"""
OFFSET = 100_000  # the fake NVML reports every PID 100,000 higher: host PIDs of a container


def probe_processes(env: dict[str, str], gpu: str) -> dict:
    probe = subprocess.run([sys.executable, "-c", PID_PROBE, gpu], env=env, capture_output=True, text=True,
                           timeout=60)
    assert probe.returncode == 0, probe.stderr
    return json.loads(probe.stdout)


def test_in_a_container_nvml_lists_the_pods_own_processes_with_their_usage(node: Node) -> None:
    node.devices = {GPU_A: 8 * GiB}
    node.add_claim("claim-a", {GPU_A: 2 * GiB})
    # Another tenant on the same GPU, under its own claim.
    tenant = Node(root=node.root / "tenant", devices=node.devices, shared_state=node.state_file)
    tenant.add_claim("claim-b", {GPU_A: 2 * GiB})
    offset = {"FAKE_NVML_PID_OFFSET": str(OFFSET)}
    ours = [node.start("init", "ctx", "0", "alloc", str(512 * MiB), "hold", **offset),
            node.start("init", "ctx", "0", "alloc", str(256 * MiB), "alloc", str(4 * MiB), "hold", **offset)]
    theirs = tenant.start("init", "ctx", "0", "alloc", str(GiB), "hold", **offset)
    try:
        for proc in (*ours, theirs):
            read_until(proc, "hold")
        inside = probe_processes(node.env(**offset), GPU_A)
        host = probe_processes(node.env(shim=None, **offset), GPU_A)
        slots = {slot.pid: slot.host_pid for slot in node.region("claim-a").processes if slot.alive}
    finally:
        for proc in (*ours, theirs):
            stop(proc)
    # The host sees host PIDs, everyone's.
    assert [pid for pid, _ in host["v3"]] == sorted(p.pid + OFFSET for p in (*ours, theirs))
    # The pod sees its own two processes, under the PIDs it knows them by, with their usage; the
    # other tenant's process is not there.
    expected = sorted([[ours[0].pid, 512 * MiB], [ours[1].pid, 260 * MiB]])
    assert inside["v3"] == expected and inside["v2"] == expected
    # Each process learned its host PID once and keeps it in its slot.
    assert {slots[p.pid] for p in ours} == {p.pid + OFFSET for p in ours}


def test_a_process_that_could_not_learn_its_host_pid_is_not_shown_in_a_container(node: Node) -> None:
    node.devices = {GPU_A: 8 * GiB}
    node.ctx_bytes = 2 * MiB
    node.add_claim("claim-a", {GPU_A: 2 * GiB})
    offset = {"FAKE_NVML_PID_OFFSET": str(OFFSET)}
    # The claim's first process measures its context through NVML's process list and learns its
    # host PID on the way; a later one is charged that measurement without asking NVML, and
    # allocates too little (1 MiB) for its allocation to be watched.
    first = node.start("init", "ctx", "0", "alloc", str(MiB), "hold", **offset)
    try:
        read_until(first, "hold")
        later = node.start("init", "ctx", "0", "alloc", str(MiB), "hold", **offset)
        try:
            read_until(later, "hold")
            inside = probe_processes(node.env(**offset), GPU_A)
            slots = {slot.pid: slot.host_pid for slot in node.region("claim-a").processes if slot.alive}
        finally:
            stop(later)
    finally:
        stop(first)
    assert (slots[first.pid], slots[later.pid]) == (first.pid + OFFSET, 0)
    # Never a wrong one: the unknown process is left out rather than matched by its own PID.
    assert inside["v3"] == [[first.pid, 3 * MiB]]
