"""What a namespace GPU quota costs the allocation controller: throughput with and without one.

Two measurements, each alternating "no quota" and "quota in force" rounds in this one process so
the machine's noise falls on both alike; every round is printed, then the median ratio.

1. decision path (no API I/O): the same claims' allocator requests (built once, untimed) placed
   with `allocate`, then booked with `Ledger.record` (no quota) or checked and booked with
   `NamespacedLedger.book_within_quota` against a quota that admits them all, the two arms fed
   in alternating chunks of 50 claims, each arm first every other chunk;
2. end to end: a real `vgpu-dra controller` process (16 workers, the chart's default) against the
   in-process fake API server, a burst of gated pods with one claim each (first pod created → last
   claim allocated); with a quota, the namespace holds a ResourceQuota on limits.nvidia.com/gpumem
   and gpucores that every claim must pass and that the burst fills to within a few claims.

    .venv/bin/python bench/namespace_quota.py
    .venv/bin/python bench/namespace_quota.py --nodes 10 --pods 200 --rounds 2   # quick look
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from controller import build_cluster, make_claim, wait_all  # noqa: E402

from tests.controller.cluster import pod  # noqa: E402
from tests.fakes.apiserver import FakeApiServer  # noqa: E402
from tests.fakes.kubeconfig import write_kubeconfig  # noqa: E402
from vgpu_dra.api.names import CORES_MAX, MEBIBYTE  # noqa: E402
from vgpu_dra.driver.allocator import Placement, PodRequest, allocate  # noqa: E402
from vgpu_dra.driver.claim_requests import claim_request  # noqa: E402
from vgpu_dra.driver.ledger import Ledger  # noqa: E402
from vgpu_dra.driver.namespace_quota import QUOTA_CORES, QUOTA_MEMORY, Limit, NamespaceQuota  # noqa: E402
from vgpu_dra.driver.namespace_usage import NamespacedLedger  # noqa: E402
from vgpu_dra.driver.placement_policy import PlacementPolicy  # noqa: E402
from vgpu_dra.driver.published_gpus import gpus_by_node  # noqa: E402


def burst_need(pods: int) -> tuple[int, int]:
    """(MiB, cores) the burst's claims count: the quota is set a little above this."""
    memory = cores = 0
    for i in range(pods):
        config = make_claim(i)["spec"]["devices"]["config"][0]["opaque"]["parameters"]
        size = config["memory"]
        memory += int(size[:-2]) * (1024 if size.endswith("Gi") else 1)
        cores += config.get("cores") or CORES_MAX
    return memory, cores


def decision_round(server: FakeApiServer, pods: int, chunk: int = 50) -> tuple[float, float]:
    """Claims/s of the decision path booking without and with the quota check: two ledgers on the
    same slices, fed the same claims in alternating chunks so the machine's noise hits both."""
    need_mib, need_cores = burst_need(pods)
    plain = Ledger()
    counted = NamespacedLedger(lambda uid: "default")
    for node, found in gpus_by_node(server.objects("ResourceSlice")).items():
        plain.set_node(node, found.gpus)
        counted.set_node(node, found.gpus)
    limits = NamespaceQuota("default", Limit((need_mib + 64) * MEBIBYTE, "bench"), Limit(need_cores + 100, "bench"))
    classes = {c["metadata"]["name"]: c for c in server.objects("DeviceClass")}
    claims = [make_claim(i) for i in range(pods)]
    for i, obj in enumerate(claims):
        obj["metadata"]["uid"] = f"uid-{i}"
    # Built once, untimed: a request is the same with or without a quota, and building it a
    # second time is cheaper (compiled selectors are cached), which would favour the second arm.
    requests = [PodRequest(claims=(claim_request(obj, classes),), allowed_nodes=None) for obj in claims]
    elapsed = {False: 0.0, True: 0.0}
    for number, first in enumerate(range(0, pods, chunk)):
        for quota in ((False, True) if number % 2 == 0 else (True, False)):  # neither arm always first
            ledger = counted if quota else plain
            started = time.perf_counter()
            for request in requests[first:first + chunk]:
                decision = allocate(ledger, request, PlacementPolicy())
                assert isinstance(decision, Placement), decision
                if quota:
                    assert counted.book_within_quota("default", limits, decision) is None
                else:
                    plain.apply(decision)
            elapsed[quota] += time.perf_counter() - started
    assert counted.usage.used("default").claims == pods
    return pods / elapsed[False], pods / elapsed[True]


def controller_round(nodes: int, gpus: int, pods: int, workers: int, quota: bool) -> float:
    """Claims/s of a burst through a real controller process, with or without a quota in force."""
    server = FakeApiServer(bookmark_interval_s=5.0).start()
    build_cluster(server, nodes, gpus)
    if quota:
        need_mib, need_cores = burst_need(pods)
        server.create({"apiVersion": "v1", "kind": "ResourceQuota",
                       "metadata": {"name": "team-gpu", "namespace": "default"},
                       "spec": {"hard": {QUOTA_MEMORY: str(need_mib + 64), QUOTA_CORES: str(need_cores + 100)}}})
    allocated_at: dict[str, float] = {}
    lock = threading.Lock()

    def observe(record) -> None:
        if record.resource.kind == "ResourceClaim" and (record.obj.get("status") or {}).get("allocation"):
            with lock:
                allocated_at.setdefault(record.obj["metadata"]["name"], time.perf_counter())

    server.add_observer(observe)
    workdir = Path(tempfile.mkdtemp(prefix="vgpu-bench-quota-"))
    log_path = workdir / "controller.log"
    controller = subprocess.Popen(
        [sys.executable, "-m", "vgpu_dra.cli.main", "controller", "--kubeconfig",
         str(write_kubeconfig(server, workdir / "kubeconfig")), "--no-leader-elect", "--metrics-port", "0",
         "--workers", str(workers), "--log-format", "json"],
        stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 60
        while b"caches synced" not in log_path.read_bytes():
            if time.monotonic() > deadline or controller.poll() is not None:
                raise SystemExit("controller did not start:\n" + log_path.read_text()[-3000:])
            time.sleep(0.05)
        names = [f"c{i:05d}" for i in range(pods)]
        for i in range(pods):
            server.create(make_claim(i))
        started = time.perf_counter()
        for i in range(pods):
            server.create(pod(f"p{i:05d}", [names[i]]))
        wait_all(allocated_at, lock, names, controller, log_path)
        if b"over the GPU quota" in log_path.read_bytes():
            raise SystemExit("a claim was refused: the benchmark's quota must admit the whole burst")
        return pods / (max(allocated_at.values()) - started)
    finally:
        controller.send_signal(signal.SIGTERM)
        try:
            controller.wait(timeout=30)
        except subprocess.TimeoutExpired:
            controller.kill()
        server.stop()


def report(title: str, without: list[float], with_quota: list[float]) -> None:
    print(title)
    for i, (a, b) in enumerate(zip(without, with_quota), 1):
        print(f"  round {i}: no quota {a:9.1f} claims/s   quota {b:9.1f} claims/s   ratio {b / a:.3f}")
    ratios = [b / a for a, b in zip(without, with_quota)]
    print(f"  median ratio quota / no quota: {statistics.median(ratios):.3f} "
          f"(spread {min(ratios):.3f}-{max(ratios):.3f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--pods", type=int, default=600, help="pods in each end-to-end burst")
    parser.add_argument("--decisions", type=int, default=3000, help="claims in each decision-path round")
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    inventory = FakeApiServer().start()
    build_cluster(inventory, args.nodes, args.gpus)
    plain: list[float] = []
    quota: list[float] = []
    for _ in range(args.rounds * 2):
        without, with_quota = decision_round(inventory, args.decisions)
        plain.append(without)
        quota.append(with_quota)
    inventory.stop()
    print(f"cluster: {args.nodes} nodes x {args.gpus} GPUs; decision path {args.decisions} claims per round; "
          f"end to end {args.pods} pods per burst, {args.workers} controller workers")
    report("decision path (allocate + book, no API I/O):", plain, quota)
    plain, quota = [], []
    for _ in range(args.rounds):
        plain.append(controller_round(args.nodes, args.gpus, args.pods, args.workers, quota=False))
        quota.append(controller_round(args.nodes, args.gpus, args.pods, args.workers, quota=True))
    report("end to end (controller process, fake API server, burst):", plain, quota)
    return 0


if __name__ == "__main__":
    sys.exit(main())
