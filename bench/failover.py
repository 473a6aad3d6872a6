"""Controller failover: how long pods wait when the leading replica dies or is stopped.

Two real `vgpu-dra controller` processes with leader election run against an API server: the
project's fake one, in this process (default), or a real kube-apiserver (`--kubeconfig`). Eight
nodes with two RTX 3080 each are published as Node objects and ResourceSlices. One replica leads;
the other stands by. Each run stops the leader — SIGKILL (a crash, an OOM kill, a node gone) or
SIGTERM (a rollout, a drain) — and creates a pending pod with a fresh claim: right after the
signal for SIGKILL; the moment the old leader has released the Lease for SIGTERM (it releases only
once its term has stopped), so the pod is the new leader's to allocate either way. It measures,
from the signal:

- lease: until the standby holds the Lease;
- allocated: until the new claim is allocated (what a user notices: the pod moves on).

Both are seen through this process's own watches of the Lease and of ResourceClaims, so they
mean the same against either server. The stopped replica is started again as the next standby,
as a Deployment would, and the next run stops whichever replica leads. Every run is printed,
then min / median / max, the ratio to the Lease duration, and the ratio to the baseline measured
in the same process: pod creation to allocation with a leader alive (the part of "allocated"
that is not failover).

Last, flapping. A burst of pods loads the API server (the fake one shares this machine's CPUs
with both replicas and the bench) while the leader allocates them; the times a leader stepped
down and the longest gap between two renewals are reported. Then (fake server only) every API
request but watches is delayed for a while at each of several latencies (an overloaded API
server or etcd), counting step-downs again: 0 means the leader held on.

    .venv/bin/python bench/failover.py                  # chart defaults, 5 runs per signal
    .venv/bin/python bench/failover.py --runs 3 -- --lease-duration 15 --renew-deadline 10 --retry-period 2
    .venv/bin/python bench/failover.py --kubeconfig ~/.kube/config --namespace vgpu-bench   # a real cluster

Against a real cluster the bench creates, and deletes at the end, a DeviceClass, two Nodes and
their ResourceSlices (all named vgpu-failover-*), pods and claims in `--namespace` (which must
exist) and the Lease there; it needs to be able to do that, and so do the replicas (they use the
same kubeconfig).
"""
from __future__ import annotations

import argparse
import itertools
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.controller.cluster import VGPU_SELECTOR, claim, gpu, pod, vgpu_config  # noqa: E402
from tests.fakes.apiserver import FakeApiServer  # noqa: E402
from tests.fakes.kubeconfig import write_kubeconfig  # noqa: E402
from vgpu_dra.api.names import ALLOCATOR_CONTROLLER, ALLOCATOR_LABEL  # noqa: E402
from vgpu_dra.cli.kube_client import api_client  # noqa: E402
from vgpu_dra.controller.informer import Informer  # noqa: E402
from vgpu_dra.controller.kubeapi import (  # noqa: E402
    DEVICE_CLASSES, LEASES, NODES, PODS, RESOURCE_CLAIMS, RESOURCE_SLICES, ApiError, JsonObject, KubeApi)
from vgpu_dra.driver.devices import build_slices  # noqa: E402
from vgpu_dra.driver.inventory import NodeInventory  # noqa: E402

LEASE = "vgpu-failover-bench"
CLASS = "vgpu-failover-bench"
NODE_NAMES = tuple(f"vgpu-failover-{n}" for n in range(8))


@dataclass
class Replica:
    """One `vgpu-dra controller` process."""

    identity: str
    process: subprocess.Popen
    log_path: Path


@dataclass
class Observed:
    """What this process's watches saw, stamped on arrival (perf_counter seconds)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    holder: str = ""
    holder_since: dict[str, float] = field(default_factory=dict)  # identity -> first seen holding
    lease_duration_s: float = 0.0
    released: threading.Event = field(default_factory=threading.Event)  # a holder emptied the Lease
    allocated: dict[str, float] = field(default_factory=dict)  # claim name -> first seen allocated
    last_renewal: float = 0.0
    longest_gap_s: float = 0.0  # between two renewals by the same holder, since reset_gap()

    def reset_gap(self) -> None:
        with self.lock:
            self.longest_gap_s, self.last_renewal = 0.0, 0.0

    def on_lease(self, key: str, old: JsonObject | None, new: JsonObject | None) -> None:
        now = time.perf_counter()
        spec = (new or {}).get("spec") or {}
        with self.lock:
            previous, self.holder = self.holder, spec.get("holderIdentity") or ""
            if self.holder and self.holder == previous and self.last_renewal:
                self.longest_gap_s = max(self.longest_gap_s, now - self.last_renewal)
            self.last_renewal = now
            if self.holder:
                self.holder_since.setdefault(self.holder, now)
                self.lease_duration_s = float(spec.get("leaseDurationSeconds") or 0)
            elif previous:
                self.released.set()

    def on_claim(self, key: str, old: JsonObject | None, new: JsonObject | None) -> None:
        now = time.perf_counter()
        if new is not None and (new.get("status") or {}).get("allocation"):
            with self.lock:
                self.allocated.setdefault(new["metadata"]["name"], now)


class Bench:
    """The cluster objects, the watches and the replicas."""

    def __init__(self, workdir: Path, kubeconfig: str | None, namespace: str, controller_args: list[str]):
        self.server = None if kubeconfig else FakeApiServer(bookmark_interval_s=0.5).start()
        if self.server is not None:
            kubeconfig = str(write_kubeconfig(self.server, workdir / "kubeconfig"))
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.api = KubeApi(api_client(kubeconfig, connection_pool_maxsize=8))
        self.workdir = workdir
        self.controller_args = controller_args
        self.replicas: list[Replica] = []
        self._names = itertools.count()
        self._claims = itertools.count()
        self._stop = threading.Event()
        self.observed = Observed()
        self._watches = [
            Informer(self.api, LEASES, self.observed.on_lease, namespace=namespace,
                     field_selector=f"metadata.name={LEASE}"),
            Informer(self.api, RESOURCE_CLAIMS, self.observed.on_claim, namespace=namespace),
        ]
        self._threads = [threading.Thread(target=w.run, args=(self._stop,), daemon=True) for w in self._watches]

    def set_up(self) -> None:
        """The DeviceClass, two Nodes and their slices; then the watches."""
        self.api.create(DEVICE_CLASSES, {
            "apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass",
            "metadata": {"name": CLASS, "labels": {ALLOCATOR_LABEL: ALLOCATOR_CONTROLLER}},
            "spec": {"selectors": [{"cel": {"expression": VGPU_SELECTOR}}]}})
        for node in NODE_NAMES:
            self.api.create(NODES, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}, "spec": {}})
            inventory = NodeInventory(node, (gpu(0, uuid_prefix=f"GPU-{node}"), gpu(1, uuid_prefix=f"GPU-{node}")))
            for i, spec in enumerate(build_slices(inventory, generation=1, allow_multiple_allocations=True)):
                self.api.create(RESOURCE_SLICES, {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
                                                  "metadata": {"name": f"{node}-{i}"}, "spec": spec})
        for thread in self._threads:
            thread.start()
        for watch in self._watches:
            watch.synced.wait(30)

    def clean_up(self) -> None:
        """Stop every replica, delete what `set_up` and the runs created."""
        claims = [f"c{i:03d}" for i in range(next(self._claims))]
        if self.server is None:
            # While a leader still runs: it deallocates the claims and drops its finalizer.
            for name in claims:
                self._delete(PODS, f"p-{name}", self.namespace)
                self._delete(RESOURCE_CLAIMS, name, self.namespace)
            deadline = time.monotonic() + 60
            while self._remaining(claims) and time.monotonic() < deadline:
                time.sleep(0.5)
        for replica in self.replicas:
            if replica.process.poll() is None:
                replica.process.send_signal(signal.SIGTERM)
        for replica in self.replicas:
            try:
                replica.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                replica.process.kill()
                replica.process.wait()
        self._stop.set()
        for watch in self._watches:
            watch.close()
        if self.server is not None:
            self.server.stop()
            return
        for name in self._remaining(claims):  # no leader left to release them
            try:
                self.api.patch(RESOURCE_CLAIMS, name, {"metadata": {"finalizers": None}}, self.namespace)
            except ApiError as exc:
                print(f"could not release claim {name}: {exc}", file=sys.stderr)
        self._delete(LEASES, LEASE, self.namespace)
        for node in NODE_NAMES:
            for item in self.api.list(RESOURCE_SLICES, field_selector=f"spec.nodeName={node}").get("items") or []:
                self._delete(RESOURCE_SLICES, item["metadata"]["name"])
            self._delete(NODES, node)
        self._delete(DEVICE_CLASSES, CLASS)

    def _remaining(self, claims: list[str]) -> list[str]:
        items = self.api.list(RESOURCE_CLAIMS, self.namespace).get("items") or []
        left = {item["metadata"]["name"] for item in items}
        return [name for name in claims if name in left]

    def _delete(self, resource, name: str, namespace: str | None = None) -> None:
        try:
            self.api.delete(resource, name, namespace, grace_period_s=0)
        except ApiError as exc:
            if not exc.not_found:
                print(f"could not delete {resource.plural}/{name}: {exc}", file=sys.stderr)

    def start_replica(self) -> Replica:
        identity = f"replica-{next(self._names)}"
        log_path = self.workdir / f"{identity}.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "vgpu_dra.cli.main", "controller", "--kubeconfig", str(self.kubeconfig),
             "--leader-elect", "--lease-namespace", self.namespace, "--lease-name", LEASE, "--identity", identity,
             "--metrics-port", "0", "--log-format", "json", *self.controller_args],
            stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        replica = Replica(identity, process, log_path)
        self.replicas.append(replica)
        return replica

    def leader(self) -> Replica:
        with self.observed.lock:
            holder = self.observed.holder
        return next(r for r in self.replicas if r.identity == holder)

    def new_pod(self, memory: str = "512Mi") -> str:
        name = f"c{next(self._claims):03d}"
        self.api.create(RESOURCE_CLAIMS, claim(name, namespace=self.namespace, device_class=CLASS,
                                               config=vgpu_config(memory=memory)), self.namespace)
        self.api.create(PODS, pod(f"p-{name}", [name], namespace=self.namespace), self.namespace)
        return name

    def allocated_at(self, name: str) -> float | None:
        with self.observed.lock:
            return self.observed.allocated.get(name)

    def holder_since(self, identity: str) -> float | None:
        with self.observed.lock:
            return self.observed.holder_since.get(identity)

    def wait(self, predicate, what: str, timeout_s: float = 120.0, interval_s: float = 0.002) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            for replica in self.replicas:
                if replica.process.poll() not in (None, 0, -signal.SIGKILL):
                    raise SystemExit(f"{replica.identity} exited with {replica.process.returncode}:\n"
                                     + replica.log_path.read_text()[-3000:])
            if time.monotonic() > deadline:
                raise SystemExit(f"timed out waiting for {what}:\n"
                                 + "\n".join(r.log_path.read_text()[-1500:] for r in self.replicas))
            time.sleep(interval_s)


@dataclass(frozen=True)
class Run:
    """One failover, in seconds from the signal."""

    lease_s: float
    allocated_s: float


def steady_latency(bench: Bench) -> float:
    """Pod creation to allocation seen, with a leader alive and ready."""
    started = time.perf_counter()
    name = bench.new_pod()
    bench.wait(lambda: bench.allocated_at(name) is not None, "a claim allocated by a live leader")
    return bench.allocated_at(name) - started  # type: ignore[operator]


def failover(bench: Bench, signum: signal.Signals) -> Run:
    """Stop the leader with `signum`, create a pod, wait for the standby to lead and allocate it."""
    leader = bench.leader()
    standby = next(r for r in bench.replicas if r.process.poll() is None and r is not leader)
    bench.wait(lambda: b'"event": "starting"' in standby.log_path.read_bytes(), f"{standby.identity} campaigning")
    # The standby sees some renewals; the random wait lands the signal anywhere in a renew cycle
    # (and, for a polling standby, anywhere in its poll cycle) instead of at one fixed phase.
    time.sleep(random.uniform(1.0, 3.0))
    bench.observed.released.clear()
    started = time.perf_counter()
    leader.process.send_signal(signum)
    if signum == signal.SIGTERM and not bench.observed.released.wait(60):
        raise SystemExit(f"{leader.identity} never released the Lease after SIGTERM")
    name = bench.new_pod()
    bench.wait(lambda: bench.holder_since(standby.identity) is not None, f"{standby.identity} holding the Lease")
    bench.wait(lambda: bench.allocated_at(name) is not None, f"claim {name} allocated after the failover")
    code = leader.process.wait(timeout=60)
    if signum == signal.SIGTERM and code != 0:
        raise SystemExit(f"{leader.identity} exited with {code} after SIGTERM:\n" + leader.log_path.read_text()[-3000:])
    return Run(bench.holder_since(standby.identity) - started, bench.allocated_at(name) - started)  # type: ignore


def step_downs(bench: Bench) -> int:
    """Times so far that a leader gave up a Lease it could not renew (or saw taken)."""
    return sum(r.log_path.read_bytes().count(b'"event": "lost the lease') for r in bench.replicas)


def under_latency(bench: Bench, latency_s: float, seconds: float) -> int:
    """Step-downs while every API request (watches aside) takes `latency_s`: 0 = no flapping."""
    assert bench.server is not None
    before = step_downs(bench)
    bench.server.latency_s = latency_s
    try:
        time.sleep(seconds)
    finally:
        bench.server.latency_s = 0.0
    flaps = step_downs(bench) - before
    bench.wait(lambda: bench.observed.holder != "", "a leader again")
    return flaps


@dataclass(frozen=True)
class Load:
    """A burst of pods for the leader to allocate while it keeps renewing."""

    pods: int
    pods_per_s: float
    step_downs: int
    longest_gap_s: float


def under_load(bench: Bench, pods: int) -> Load:
    """Create `pods` pods as fast as this process can and let the leader allocate them all, the
    API server (and, with the fake, this machine's CPUs) saturated meanwhile."""
    before = step_downs(bench)
    bench.observed.reset_gap()
    started = time.perf_counter()
    names = [bench.new_pod(memory="64Mi") for _ in range(pods)]
    bench.wait(lambda: all(bench.allocated_at(n) is not None for n in names), f"{pods} pods allocated",
               timeout_s=600, interval_s=0.1)
    rate = pods / (max(bench.allocated_at(n) for n in names) - started)  # type: ignore[type-var]
    return Load(pods, rate, step_downs(bench) - before, bench.observed.longest_gap_s)


def spread(values: list[float]) -> str:
    return f"min {min(values):6.3f}  median {statistics.median(values):6.3f}  max {max(values):6.3f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="failovers per signal (default: 5)")
    parser.add_argument("--kubeconfig", help="a real cluster instead of the in-process fake API server")
    parser.add_argument("--namespace", default="default", help="for the Lease, pods and claims (default: default)")
    parser.add_argument("--latencies", default="0.5,1,1.5,2.5",
                        help="API latencies (s) to hold for --latency-window each, counting leader step-downs "
                             "(fake server only; empty: skip)")
    parser.add_argument("--latency-window", type=float, default=12.0, help="seconds per latency (default: 12)")
    parser.add_argument("--load-pods", type=int, default=1000,
                        help="pods in the burst that loads the API server while the leader renews (0: skip)")
    parser.add_argument("controller_args", nargs="*", help="extra flags for both replicas (after --)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # still stop the replicas and clean up

    bench = Bench(Path(tempfile.mkdtemp(prefix="vgpu-failover-")), args.kubeconfig, args.namespace,
                  args.controller_args)
    results: dict[str, list[Run]] = {"SIGKILL": [], "SIGTERM": []}
    flaps: dict[float, int] = {}
    try:
        bench.set_up()
        bench.start_replica()
        bench.wait(lambda: bench.observed.holder != "", "a first leader")
        bench.start_replica()
        baseline = [steady_latency(bench) for _ in range(5)]
        for signum in (signal.SIGKILL, signal.SIGTERM):
            for i in range(args.runs):
                run = failover(bench, signum)
                results[signum.name].append(run)
                print(f"{signum.name} run {i + 1}: lease {run.lease_s:6.3f} s, allocated {run.allocated_s:6.3f} s",
                      flush=True)
                bench.start_replica()
        lease_duration = bench.observed.lease_duration_s
        load = under_load(bench, args.load_pods) if args.load_pods else None
        if bench.server is not None:
            for latency in (float(v) for v in args.latencies.split(",") if v):
                flaps[latency] = under_latency(bench, latency, args.latency_window)
    finally:
        bench.clean_up()

    steady = statistics.median(baseline)
    print(f"\nAPI server: {'real, ' + args.kubeconfig if args.kubeconfig else 'fake, in process'}; flags: "
          f"{' '.join(args.controller_args) or '(defaults)'}; Lease duration as stored: {lease_duration:g} s")
    print(f"baseline, pod created -> allocated with a live leader: {spread(baseline)}")
    for name, runs in results.items():
        allocated = [r.allocated_s for r in runs]
        print(f"{name}: lease taken over   {spread([r.lease_s for r in runs])}")
        print(f"{name}: claim allocated    {spread(allocated)}   "
              f"median / lease duration {statistics.median(allocated) / lease_duration:5.2f}, "
              f"median / baseline {statistics.median(allocated) / steady:6.1f}")
    if load is not None:
        gap = f"{load.longest_gap_s:.3f} s" if load.longest_gap_s else "none seen (too short a burst)"
        print(f"burst of {load.pods} pods allocated at {load.pods_per_s:.0f}/s: {load.step_downs} step-downs, "
              f"longest gap between renewals {gap} (the renew deadline is where a leader steps down)")
    for latency, count in flaps.items():
        print(f"every API request {latency:g} s late for {args.latency_window:g} s: {count} step-downs"
              f"{'' if count == 0 else ' (the leader lost the Lease)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
