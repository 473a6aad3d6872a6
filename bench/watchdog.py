"""Usage-watchdog benchmark: CPU time of one poll with 100 prepared claims and 400 GPU processes.

Everything a real poll touches is real except the GPU: pynvml over the fake NVML (mixed-node
inventory, 3 GPUs; the 400 processes come from its live process file), one region file per claim
created as Prepare creates it, with 4 live process slots each (their slot locks held by this
process, so the regions read as a running claim's), and a /proc tree with each PID's cgroup and
status. The claims are honest (NVML's numbers match their regions), so a poll is the steady state:
one NVML query per GPU, 100 region reads, the audit, no finding.

Baselines, same process and run: a poll of 1 claim with 4 processes (the per-claim unit: the ratio
says how the poll scales), and a poll with no claim at all (the loop's floor). The first poll of
the big node (every PID's cgroup read) is shown apart. Target: ≤ 5 ms CPU per poll; RSS of this
process, which imports the plugin's modules, ≤ 100 MB.

    .venv/bin/python bench/watchdog.py                 # 3 rounds x 300 polls
    .venv/bin/python bench/watchdog.py --polls 50      # quick look
"""
from __future__ import annotations

import argparse
import fcntl
import mmap
import os
import resource
import statistics
import struct
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fakes.nvml_env import build_library, inventory_document, preload_in_process, render_flat_inventory  # noqa: E402
from vgpu_dra.driver.checkpoint import PreparedClaim, PreparedDevice  # noqa: E402
from vgpu_dra.driver.claimconfig import ClaimConfig, GpuLimit  # noqa: E402
from vgpu_dra.driver.region import LOCK_SLOT_BASE, REGION_SIZE, create_region, ffi  # noqa: E402
import vgpu_dra.kubeletplugin.plugin  # noqa: E402,F401  - the plugin's modules, for an honest RSS
from vgpu_dra.kubeletplugin.watchdog import NvmlProcesses, UsageWatchdog, WatchdogSettings  # noqa: E402

MiB = 1 << 20
GPUS = [g["uuid"] for g in inventory_document("mixed-node")["gpus"]]
PER_PROCESS = 200 * MiB


class Node:
    """Claims, regions with live slots, a /proc tree and the fake NVML's process file."""

    def __init__(self, root: Path, claims: int, processes_per_claim: int, first_pid: int):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.claims: dict[str, PreparedClaim] = {}
        self._held: list[int] = []
        lines: list[str] = []
        pid = first_pid
        for n in range(claims):
            uid, pod = str(uuid.uuid4()), str(uuid.uuid4())
            gpu = GPUS[n % len(GPUS)]
            wall = 2 << 30
            directory = root / "claims" / uid
            directory.mkdir(parents=True)
            create_region(directory / "region", ClaimConfig(uid, (GpuLimit(gpu, wall, 0, "soft"),)))
            pids = list(range(pid, pid + processes_per_claim))
            pid += processes_per_claim
            self._hold_slots(directory / "region", pids)
            for p in pids:
                proc = root / "proc" / str(p)
                proc.mkdir(parents=True)
                (proc / "cgroup").write_text(
                    f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{pod.replace('-', '_')}"
                    f".slice/cri-containerd-{'ab' * 32}.scope\n")
                (proc / "status").write_text(f"Name:\tworker\nNSpid:\t{p}\t{p - first_pid + 1}\n")
                lines.append(f"{gpu} {p} {PER_PROCESS} compute")
            device = PreparedDevice(request="gpu", pool="mixed-node", device=f"gpu-{GPUS.index(gpu)}", share_id=None,
                                    gpu_uuid=gpu, gpu_index=GPUS.index(gpu), gpu_minor=GPUS.index(gpu),
                                    memory_bytes=wall, cores=0, core_policy="soft", nvidia_cdi_device=None,
                                    cdi_device_ids=())
            self.claims[uid] = PreparedClaim(uid=uid, namespace="bench", name=f"claim-{n}", state="prepared",
                                             devices=(device,), shim_host_path="", pods=(f"pod-{n}",),
                                             pod_refs=((f"pod-{n}", pod),))
        self.process_file = root / "nvml-processes.txt"
        self.process_file.write_text("\n".join(lines) + "\n")

    def _hold_slots(self, region: Path, pids: list[int]) -> None:
        """Make the region read like one with running shimmed processes."""
        fd = os.open(region, os.O_RDWR)
        self._held.append(fd)
        with mmap.mmap(fd, REGION_SIZE) as mem:
            view = ffi.from_buffer("struct vgpu_region *", mem)
            for i, pid in enumerate(pids):
                view.procs[i].state = 1
                view.procs[i].pid = pid
                view.procs[i].host_pid = pid
                view.procs[i].used[0] = PER_PROCESS
            view.gpus[0].used_bytes = PER_PROCESS * len(pids)
            view.proc_high_water = len(pids)
            del view
        for i in range(len(pids)):  # OFD locks: another open file description sees them held
            fcntl.fcntl(fd, 37, struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, LOCK_SLOT_BASE + i, 1, 0))

    def close(self) -> None:
        for fd in self._held:
            os.close(fd)


def current_rss_mb() -> float:
    """VmRSS of this process now."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def watchdog_for(node: Node, source: NvmlProcesses) -> UsageWatchdog:
    os.environ["FAKE_NVML_PROCESSES"] = str(node.process_file)
    return UsageWatchdog("mixed-node", WatchdogSettings(proc_root=node.root / "proc"), lambda: node.claims,
                         node.root / "claims", source=source, emit=lambda *a: None, emit_node=lambda *a: None)


def cpu_ms_per_poll(watchdog: UsageWatchdog, node: Node, polls: int) -> float:
    """The median CPU time of ``polls`` polls (a median: the VM's neighbours show up as outliers)."""
    os.environ["FAKE_NVML_PROCESSES"] = str(node.process_file)
    times = []
    for _ in range(polls):
        started = time.process_time_ns()
        outcome = watchdog.poll()
        times.append((time.process_time_ns() - started) / 1e6)
        assert outcome.healthy and not outcome.findings, outcome.findings[:2]
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--polls", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--claims", type=int, default=100)
    parser.add_argument("--processes-per-claim", type=int, default=4)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="vgpu-bench-wd-") as tmp:
        root = Path(tmp)
        flat = root / "inventory.txt"
        flat.write_text(render_flat_inventory(inventory_document("mixed-node")))
        os.environ["FAKE_NVML_INVENTORY"] = str(flat)
        preload_in_process(build_library())
        rss_before = current_rss_mb()
        source = NvmlProcesses()
        big = Node(root / "big", args.claims, args.processes_per_claim, first_pid=100_000)
        unit = Node(root / "unit", 1, args.processes_per_claim, first_pid=900_000)
        empty = Node(root / "empty", 0, 0, first_pid=1)
        nodes = {"big": big, "unit": unit, "empty": empty}
        dogs = {name: watchdog_for(node, source) for name, node in nodes.items()}
        os.environ["FAKE_NVML_PROCESSES"] = str(big.process_file)
        started = time.process_time()
        assert not dogs["big"].poll().findings
        first = (time.process_time() - started) * 1e3
        total = args.claims * args.processes_per_claim
        print(f"usage watchdog: {args.claims} claims, {total} processes on 3 GPUs; {args.polls} polls per round")
        print(f"first poll of the big node (every cgroup read): {first:.2f} ms CPU")
        rows: dict[str, list[float]] = {name: [] for name in nodes}
        for round_ in range(args.rounds):
            for name in ("empty", "unit", "big"):  # each round measures all three, one after another
                rows[name].append(cpu_ms_per_poll(dogs[name], nodes[name], args.polls))
            print(f"round {round_ + 1}: empty {rows['empty'][-1]:.3f} ms  1 claim {rows['unit'][-1]:.3f} ms  "
                  f"{args.claims} claims {rows['big'][-1]:.3f} ms  ratio big/1-claim "
                  f"{rows['big'][-1] / rows['unit'][-1]:.1f}x")
        for name, label in (("empty", "no claim"), ("unit", f"1 claim, {args.processes_per_claim} processes"),
                            ("big", f"{args.claims} claims, {total} processes")):
            values = rows[name]
            print(f"{label:>28}: {statistics.median(values):.3f} ms CPU/poll, median of the rounds "
                  f"(rounds {', '.join(f'{v:.3f}' for v in values)}; each a median of {args.polls} polls)")
        ratios = [b / u for b, u in zip(rows["big"], rows["unit"])]
        print(f"{'ratio big / 1 claim':>28}: {', '.join(f'{r:.1f}x' for r in ratios)}")
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{'peak RSS of this process':>28}: {rss:.1f} MB (imports the plugin's modules)")
        print(f"{'RSS of the watchdog state':>28}: {current_rss_mb() - rss_before:+.1f} MB (NVML, 3 watchdogs, "
              f"{args.claims + 1} open regions, owners of {total + args.processes_per_claim} PIDs)")
        verdict = statistics.median(rows["big"]) <= 5.0 and rss <= 100
        print("target (<= 5 ms CPU per poll, RSS <= 100 MB):", "met" if verdict else "NOT met")
        for node in nodes.values():
            node.close()
        source.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
