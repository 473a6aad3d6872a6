"""Allocation controller benchmark, end to end against the fake API server.

200 nodes × 8 GPUs publish ResourceSlices (rendered by the kubelet plugin's own code); the
controller runs as a real `vgpu-dra controller` process talking HTTP to the in-process fake API
server. Two phases, 2,000 pods in all, each pod with one claim and the scheduling gate:

1. burst: half the pods are created at once → claims allocated per second (first pod created →
   last claim allocated), the controller's throughput;
2. paced: the other half arrive at a steady rate (default 100 pods/s) → p50/p99 from pod
   creation (the API server storing the pod) to its claim's allocation being stored.

Controller RSS (VmRSS and peak VmHWM) is read from /proc at the end.

Baselines, same run: (1) the pure decision path without API I/O — the same claims turned into
allocator requests (CEL selectors, VgpuConfig layers) and placed with `allocate` + `Ledger.record`
on a ledger built from the same slices; (2) the fake API server's own rate for claim PUTs
over HTTP with as many clients as the controller has workers, i.e. the ceiling any controller
making three writes per claim could reach on this machine. The second ratio is the one that says
how close the controller gets to what the machine allows.

    .venv/bin/python bench/controller.py
    .venv/bin/python bench/controller.py --nodes 20 --pods 200     # quick look
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.latency_stats import percentile  # noqa: E402
from tests.controller.cluster import VGPU_SELECTOR, claim, gpu, pod, vgpu_config  # noqa: E402
from tests.fakes.apiserver import FakeApiServer  # noqa: E402
from tests.fakes.kubeconfig import api_client_for, write_kubeconfig  # noqa: E402
from vgpu_dra.api.names import ALLOCATOR_CONTROLLER, ALLOCATOR_LABEL, DEVICE_CLASS  # noqa: E402
from vgpu_dra.driver.claim_requests import claim_request  # noqa: E402
from vgpu_dra.controller.kubeapi import RESOURCE_CLAIMS, KubeApi  # noqa: E402
from vgpu_dra.driver.published_gpus import gpus_by_node  # noqa: E402
from vgpu_dra.driver.allocator import Placement, PodRequest, allocate  # noqa: E402
from vgpu_dra.driver.devices import build_slices  # noqa: E402
from vgpu_dra.driver.inventory import NodeInventory  # noqa: E402
from vgpu_dra.driver.ledger import Ledger  # noqa: E402
from vgpu_dra.driver.placement_policy import PlacementPolicy  # noqa: E402

SIZES = ("512Mi", "1Gi", "2Gi", "1Gi", "768Mi")


def build_cluster(server: FakeApiServer, nodes: int, gpus_per_node: int) -> None:
    device_class = {"apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass",
                    "metadata": {"name": DEVICE_CLASS, "labels": {ALLOCATOR_LABEL: ALLOCATOR_CONTROLLER}},
                    "spec": {"selectors": [{"cel": {"expression": VGPU_SELECTOR}}]}}
    server.create(device_class)
    for n in range(nodes):
        name = f"node-{n:03d}"
        server.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": {}})
        inventory = NodeInventory(name, tuple(gpu(i, numa=i // 4, uuid_prefix=f"GPU-{n:03d}")
                                              for i in range(gpus_per_node)))
        for i, spec in enumerate(build_slices(inventory, generation=1, allow_multiple_allocations=True)):
            server.create({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
                           "metadata": {"name": f"{name}-vgpu-{i}"}, "spec": spec})


def make_claim(i: int) -> dict:
    return claim(f"c{i:05d}", config=vgpu_config(memory=SIZES[i % len(SIZES)], cores=(i % 4) * 5))


def baseline(server: FakeApiServer, pods: int) -> float:
    """Claims/s of the pure decision path (requests built from JSON, allocate, book)."""
    ledger = Ledger()
    for node, found in gpus_by_node(server.objects("ResourceSlice")).items():
        ledger.set_node(node, found.gpus)
    classes = {c["metadata"]["name"]: c for c in server.objects("DeviceClass")}
    claims = [make_claim(i) for i in range(pods)]
    for i, obj in enumerate(claims):
        obj["metadata"]["uid"] = f"uid-{i}"
    started = time.perf_counter()
    for obj in claims:
        request = claim_request(obj, classes)
        decision = allocate(ledger, PodRequest(claims=(request,), allowed_nodes=None), PlacementPolicy())
        assert isinstance(decision, Placement), decision
        ledger.apply(decision)
    return pods / (time.perf_counter() - started)


def server_write_rate(server: FakeApiServer, claims: int, threads: int) -> float:
    """Writes/s the fake API server sustains over HTTP: `threads` clients each PUT-ting claims
    (the same object sizes and validation the controller's writes pay), nothing else running."""
    api = KubeApi(api_client_for(server, user="bench"))
    objects = server.objects("ResourceClaim")[:claims]  # read in-process: only the PUTs are timed
    for obj in objects:
        obj["metadata"].setdefault("annotations", {})["bench"] = "1"
    chunks = [objects[i::threads] for i in range(threads)]

    def writer(chunk: list[dict]) -> None:
        for obj in chunk:
            api.update(RESOURCE_CLAIMS, obj)

    workers = [threading.Thread(target=writer, args=(chunk,)) for chunk in chunks]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return len(objects) / (time.perf_counter() - started)


def rss_mib(pid: int) -> tuple[float, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--pods", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=100.0, help="pods/s in the paced phase")
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()

    server = FakeApiServer(bookmark_interval_s=5.0).start()
    build_cluster(server, args.nodes, args.gpus)
    allocated_at: dict[str, float] = {}
    lock = threading.Lock()

    def observe(record) -> None:
        if record.resource.kind == "ResourceClaim" and (record.obj.get("status") or {}).get("allocation"):
            name = record.obj["metadata"]["name"]
            with lock:
                allocated_at.setdefault(name, time.perf_counter())

    server.add_observer(observe)
    workdir = Path(tempfile.mkdtemp(prefix="vgpu-bench-"))
    kubeconfig = write_kubeconfig(server, workdir / "kubeconfig")
    log_path = workdir / "controller.log"
    controller = subprocess.Popen(
        [sys.executable, "-m", "vgpu_dra.cli.main", "controller", "--kubeconfig", str(kubeconfig),
         "--no-leader-elect", "--metrics-port", "0", "--workers", str(args.workers), "--log-format", "json"],
        stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        # Ready = it has listed everything: wait for its first watch of pods to open.
        deadline = time.monotonic() + 60
        while b"caches synced" not in log_path.read_bytes():
            if time.monotonic() > deadline or controller.poll() is not None:
                raise SystemExit("controller did not start:\n" + log_path.read_text()[-3000:])
            time.sleep(0.05)
        burst = args.pods // 2
        created: dict[str, float] = {}
        claims = [make_claim(i) for i in range(args.pods)]
        for i in range(burst):
            server.create(claims[i])
        burst_start = time.perf_counter()
        for i in range(burst):
            created[f"c{i:05d}"] = time.perf_counter()
            server.create(pod(f"p{i:05d}", [f"c{i:05d}"]))
        wait_all(allocated_at, lock, [f"c{i:05d}" for i in range(burst)], controller, log_path)
        burst_end = max(allocated_at[f"c{i:05d}"] for i in range(burst))
        throughput = burst / (burst_end - burst_start)

        interval = 1.0 / args.rate
        next_at = time.perf_counter()
        for i in range(burst, args.pods):
            server.create(claims[i])
            now = time.perf_counter()
            if now < next_at:
                time.sleep(next_at - now)
            created[f"c{i:05d}"] = time.perf_counter()
            server.create(pod(f"p{i:05d}", [f"c{i:05d}"]))
            next_at += interval
        wait_all(allocated_at, lock, [f"c{i:05d}" for i in range(burst, args.pods)], controller, log_path)
        latencies = [(allocated_at[n] - created[n]) * 1000 for n in list(created)[burst:]]
        rss, peak = rss_mib(controller.pid)
    finally:
        controller.send_signal(signal.SIGTERM)
        try:
            controller.wait(timeout=30)
        except subprocess.TimeoutExpired:
            controller.kill()
    raw = baseline(server, args.pods)
    writes = server_write_rate(server, min(args.pods, 1000), args.workers)
    server.stop()
    # Per claim the controller makes 3 writes (finalizer, status, pod gate) and reads nothing back.
    ceiling = writes / 3

    print(f"cluster: {args.nodes} nodes x {args.gpus} GPUs, {args.pods} pods ({burst} burst, "
          f"{args.pods - burst} paced at {args.rate:g}/s), {args.workers} controller workers")
    print(f"burst throughput:        {throughput:8.1f} claims/s   (target >= 200)")
    print(f"paced latency p50/p99:   {percentile(latencies, 0.5):8.1f} / {percentile(latencies, 0.99):.1f} ms "
          f"(target p99 <= 250)")
    print(f"controller RSS now/peak: {rss:8.1f} / {peak:.1f} MiB (target <= 300)")
    print(f"baseline, allocator without API I/O: {raw:8.1f} claims/s")
    print(f"ratio end-to-end / allocator-only:   {throughput / raw:8.3f}")
    print(f"baseline, fake API server claim PUTs over HTTP ({args.workers} clients): {writes:8.1f} writes/s "
          f"-> ceiling at 3 writes per claim: {ceiling:.1f} claims/s")
    print(f"ratio end-to-end / server-bound ceiling:  {throughput / ceiling:8.3f}")
    return 0


def wait_all(allocated_at: dict[str, float], lock: threading.Lock, names: list[str], controller: subprocess.Popen,
             log_path: Path, timeout_s: float = 600.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with lock:
            missing = [n for n in names if n not in allocated_at]
        if not missing:
            return
        if controller.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{len(missing)} claims never allocated (e.g. {missing[:3]}):\n"
                             + log_path.read_text()[-3000:])
        time.sleep(0.01)


if __name__ == "__main__":
    sys.exit(main())
