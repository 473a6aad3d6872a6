"""Create → allocated → bound on a real control plane: the vgpu-dra controller against
kube-scheduler's own DRA allocator, same run, same machine.

The control plane of the real-cluster test tier (etcd, kube-apiserver, kube-controller-manager,
kube-scheduler from VGPU_K8S_BIN, default ../shared/k8s/bin) is started once. vgpu-dra is installed
with the chart through kubectl (tests/e2e/install.py: plugins on two fake-NVML GPU nodes, the
controller under its ServiceAccount) in each allocator mode in turn, and each round creates N pods
at once (`--rate 0`) or paced (`--rate R` pods/s), each with its own claim from a
ResourceClaimTemplate asking for the same capacity (`memory`, `cores`) — in controller mode the
vgpu-dra controller allocates it, in scheduler mode kube-scheduler does. Pods are created as a user's
would be, with no scheduling gate of their own; in controller mode the chart's admission policy
adds the controller's (`controller.admissionShortcuts`), as it does for every user.

Times are the watch events this process receives: pod created (the API server's answer to the
create) → its claim's allocation seen → the pod's nodeName seen. The ratio controller/native is
what the controller adds over the native path. After each round it prints the CPU seconds every
component used meanwhile (this process and everything it started), and with `--requests` what the
round cost the API server (requests by verb and resource, watch events, watchers it cut off as
too slow), read from its /metrics. `--profile DIR` records the API server's CPU profile of each
round and prints where its CPU went (bench/apiserver_profile.py); `--audit` audits every write to
pods and claims and prints who wrote each round's claims, creation to teardown, and every write on
the pods' way to their binding with the server's own times (bench/api_audit.py). `--controller-arg`
passes a flag to the controller; `--against-arg` measures the controller against itself with other
flags instead of against kube-scheduler (an A/B of one change, rounds alternating).
The table gives each ratio with a 95 % bootstrap interval over pods and the range of the rounds'
ratios (bench/latency_stats.py).

    .venv/bin/python bench/real_cluster.py                       # 200 pods, burst and paced, 2 rounds
    .venv/bin/python bench/real_cluster.py --pods 20 --rounds 1  # quick look
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import api_audit, apiserver_profile  # noqa: E402
from bench.latency_stats import percentile, ratio_interval  # noqa: E402
from tests.cluster.control_plane import ControlPlane, binaries_source, find_binaries  # noqa: E402
from tests.cluster.real_cluster import RealCluster, wait_until  # noqa: E402
from tests.e2e.install import installed  # noqa: E402
from vgpu_dra.api.names import SCHEDULING_GATE  # noqa: E402
from vgpu_dra.controller.kubeapi import PODS, RESOURCE_CLAIMS, ApiError, KubeApi, Resource  # noqa: E402

TEMPLATES = Resource("resource.k8s.io", "v1", "resourceclaimtemplates", True)
NAMESPACES = Resource("", "v1", "namespaces", False)



class Timeline:
    """First time this process saw each pod created, its claim allocated, and the pod bound."""

    def __init__(self, kube: KubeApi, namespace: str):
        self.kube = kube
        self.namespace = namespace
        self.created: dict[str, float] = {}
        self.claimed: dict[str, float] = {}     # pod name → its claim first seen
        self.allocated: dict[str, float] = {}   # pod name → time
        self.bound: dict[str, float] = {}
        self.ungated: dict[str, float] = {}     # pod name → first seen without the controller's gate
        self.named: dict[str, float] = {}       # pod name → first seen with its claim's name in its status (kcm)
        self.nominated: dict[str, float] = {}   # pod name → first seen with a nominated node
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._watch, args=(r,), daemon=True) for r in (PODS, RESOURCE_CLAIMS)]

    def start(self) -> Timeline:
        for thread in self._threads:
            thread.start()
        return self

    def _watch(self, resource: Resource) -> None:
        version = self.kube.list(resource, self.namespace, limit=1)["metadata"]["resourceVersion"]
        while not self._stop.is_set():
            try:
                for event in self.kube.watch(resource, version, namespace=self.namespace, timeout_seconds=30):
                    obj = event["object"]
                    if event.get("type") == "ERROR":
                        # The watch fell behind (410): what it missed is in a fresh list.
                        listed = self.kube.list(resource, self.namespace)
                        now = time.monotonic()
                        for item in listed.get("items") or []:
                            self._seen(resource, item, now)
                        version = listed["metadata"]["resourceVersion"]
                        break
                    version = obj["metadata"].get("resourceVersion", version)
                    if event.get("type") != "BOOKMARK":
                        self._seen(resource, obj, time.monotonic())
                    if self._stop.is_set():
                        return
            except ApiError:
                time.sleep(0.1)

    def _seen(self, resource: Resource, obj: dict[str, Any], now: float) -> None:
        if resource is PODS:
            if not any(g.get("name") == SCHEDULING_GATE for g in obj["spec"].get("schedulingGates") or []):
                self.ungated.setdefault(obj["metadata"]["name"], now)
            if obj["spec"].get("nodeName"):
                self.bound.setdefault(obj["metadata"]["name"], now)
            if (obj.get("status") or {}).get("resourceClaimStatuses"):
                self.named.setdefault(obj["metadata"]["name"], now)
            if (obj.get("status") or {}).get("nominatedNodeName"):
                self.nominated.setdefault(obj["metadata"]["name"], now)
            return
        owner = next((o["name"] for o in obj["metadata"].get("ownerReferences") or [] if o.get("kind") == "Pod"), None)
        if owner:
            self.claimed.setdefault(owner, now)
            if (obj.get("status") or {}).get("allocation"):
                self.allocated.setdefault(owner, now)

    def stop(self) -> None:
        self._stop.set()


def template(name: str, memory: str, cores: int) -> dict[str, Any]:
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate", "metadata": {"name": name},
            "spec": {"spec": {"devices": {"requests": [{"name": "gpu", "exactly": {
                "deviceClassName": "vgpu.dra.dev",
                "capacity": {"requests": {"memory": memory, "cores": str(cores)}}}}]}}}}


def pod(name: str, template_name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"terminationGracePeriodSeconds": 0,
                     "resourceClaims": [{"name": "gpu", "resourceClaimTemplateName": template_name}],
                     "containers": [{"name": "main", "image": "registry.example/none:1",
                                     "resources": {"claims": [{"name": "gpu"}]}}]}}


def one_round(cluster: RealCluster, mode: str, pods: int, rate: float, memory: str, cores: int,
              round_no: int | str, verbose: bool = False, profile_dir: Path | None = None) -> dict[str, list[float]]:
    namespace = f"bench-{mode}-{round_no}-{'paced' if rate else 'burst'}"
    cluster.create_namespace(namespace)
    kube = cluster.kube
    kube.create(TEMPLATES, template("share", memory, cores), namespace)
    timeline = Timeline(kube, namespace).start()
    time.sleep(0.5)  # both watches open
    creators = 8
    names = [f"p-{i:04d}" for i in range(pods)]
    before = api_server_counters(cluster) if verbose else {}
    profiler = None
    if profile_dir is not None:
        # The same window in both modes (a burst's makespan and then some; a paced round's length and
        # then some), so the two modes' profiles add up the same stretch of time.
        window_s = 8 if not rate else int(pods / rate) + 3
        profile_path = profile_dir / f"{namespace}.pb.gz"
        profiler = apiserver_profile.start_recording(cluster.kubectl_path, cluster.kubeconfig, window_s, profile_path)
        time.sleep(0.2)  # the profile has begun before the first pod
    cpu_before = component_cpu_seconds()
    # This process is the stopwatch: a full collection of its heap (35–50 ms, measured with
    # gc.callbacks) would stall every watch thread at once and show up as a tail on whichever
    # pods were in flight, in either mode. Reference counting still frees the round's objects.
    gc.collect()
    gc.disable()
    start = time.monotonic()

    def create(mine: list[tuple[int, str]]) -> None:
        for index, name in mine:
            if rate:
                delay = start + index / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            kube.create(PODS, pod(name, "share"), namespace)
            timeline.created[name] = time.monotonic()

    threads = [threading.Thread(target=create, args=([(i, n) for i, n in enumerate(names) if i % creators == c],))
               for c in range(creators)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        wait_until(lambda: len(timeline.bound) == pods and len(timeline.allocated) == pods, 300,
                   f"{pods} pods bound ({mode})", interval_s=0.1)
    finally:
        timeline.stop()
        gc.enable()
    cpu = counter_difference(component_cpu_seconds(), cpu_before)
    result = {"claimed": [timeline.claimed[n] - timeline.created[n] for n in names],
              "allocated": [timeline.allocated[n] - timeline.created[n] for n in names],
              "ungated": [timeline.ungated.get(n, timeline.created[n]) - timeline.created[n] for n in names],
              "named": [timeline.named.get(n, timeline.bound[n]) - timeline.created[n] for n in names],
              # A pod bound without a nomination seen (kube-scheduler skips it on a bind with no work
              # to do) counts at its binding.
              "nominated": [timeline.nominated.get(n, timeline.bound[n]) - timeline.created[n] for n in names],
              "bound": [timeline.bound[n] - timeline.created[n] for n in names],
              "makespan": [max(timeline.bound.values()) - start]}
    if profiler is not None:
        profiler.wait()
        try:
            print(f"  {namespace} API server profile ({profile_path.name}, CPU s): "
                  f"{apiserver_profile.areas_line(apiserver_profile.parse(profile_path.read_bytes()))}")
        except (OSError, ValueError) as exc:
            print(f"  {namespace} API server profile not read: {exc}")
    if verbose:
        requests = counter_difference(api_server_counters(cluster), before)
        print(f"  {namespace} API server: " + ", ".join(f"{name} {count:g}" for name, count in requests.items()))
    print(f"  {namespace} CPU seconds: " + ", ".join(f"{name} {seconds:.2f}" for name, seconds in cpu.items()),
          flush=True)
    cluster.kubectl("delete", "namespace", namespace, "--wait=false")
    wait_until(lambda: not kube.list(RESOURCE_CLAIMS, namespace, limit=1).get("items"), 300,
               f"{namespace}'s claims released")
    # The next round starts on a quiet cluster: kube-controller-manager deleting a namespace's
    # Events, pods and templates loaded the API server and etcd through most of the next round
    # (every mode's second round was a quarter slower than its first).
    wait_until(lambda: _gone(kube, namespace), 300, f"namespace {namespace} deleted")
    if cluster.control_plane is not None and cluster.control_plane.audit_writes:
        time.sleep(1.5)  # the audit log is written in batches of at most a second
        writes = api_audit.read(cluster.control_plane.audit_log, namespace)
        print(f"  {namespace} writes, creation to teardown: {api_audit.claim_writes_line(writes)}", flush=True)
        for line in api_audit.write_path_lines(writes):
            print(f"  {namespace} path to binding, {line}", flush=True)
        result["claim_requests"] = [float(sum(1 for w in writes if w.resource.startswith("resourceclaims")))]
    return result


def api_server_counters(cluster: RealCluster) -> dict[str, float]:
    """The API server's own counters that say what a round cost it: requests by verb and
    resource, watch events sent, its CPU seconds."""
    text = cluster.kubectl("get", "--raw", "/metrics").stdout
    counters: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "apiserver_request_total":
                resource = labels["resource"] + (f"/{labels['subresource']}" if labels.get("subresource") else "")
                key = f"{labels['verb']} {resource} {labels['code']}"
            elif sample.name == "apiserver_watch_events_total":
                key = f"watch-events {labels.get('kind') or labels.get('resource', '?')}"
            elif sample.name == "apiserver_watch_events_sizes_sum":
                key = f"watch-bytes {labels.get('kind') or labels.get('resource', '?')}"
            elif sample.name == "apiserver_terminated_watchers_total":
                key = f"watchers-cut {labels.get('resource', '?')}"
            elif sample.name == "process_cpu_seconds_total":
                key = "apiserver-cpu-s"
            else:
                continue
            counters[key] = counters.get(key, 0.0) + sample.value
    return counters


def component_cpu_seconds() -> dict[str, float]:
    """CPU seconds (user + system) each component has used so far: this process and every
    process it started (the control plane, the controller, the plugins), by component."""
    ticks = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    used: dict[int, tuple[str, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        parents[int(entry)] = int(fields[1])
        used[int(entry)] = (_component(argv), (int(fields[11]) + int(fields[12])) / ticks)
    me = os.getpid()
    totals: dict[str, float] = {}
    for pid, (component, seconds) in used.items():
        ancestor = pid
        while ancestor not in (me, 0, 1) and ancestor in parents:
            ancestor = parents[ancestor]
        if ancestor == me or pid == me:
            name = "bench" if pid == me else component
            totals[name] = totals.get(name, 0.0) + seconds
    return totals


def _component(argv: list[bytes]) -> str:
    words = [a.decode(errors="replace") for a in argv]
    program = Path(words[0]).name if words else "?"
    if "vgpu_dra.cli.main" in words:
        after = words[words.index("vgpu_dra.cli.main") + 1:]
        return f"vgpu-dra {after[0]}" if after else "vgpu-dra"
    return program


def counter_difference(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    """What grew between two readings, largest first."""
    grown = {key: round(value - before.get(key, 0.0), 2) for key, value in after.items()}
    return dict(sorted(((k, v) for k, v in grown.items() if v > 0), key=lambda kv: -kv[1]))


def _gone(kube: KubeApi, namespace: str) -> bool:
    try:
        kube.get(NAMESPACES, namespace)
    except ApiError as exc:
        if exc.not_found:
            return True
        raise
    return False


def summary(values: list[float]) -> str:
    return f"p50 {statistics.median(values) * 1000:7.1f} ms  p99 {percentile(values, 0.99) * 1000:7.1f} ms"


def controller_values(workers: int | None, extra_args: list[str]) -> dict[str, Any]:
    """The chart values that set the controller's workers and extra flags (none: the chart's own)."""
    controller: dict[str, Any] = {"workers": workers} if workers else {}
    if extra_args:
        controller["extraArgs"] = list(extra_args)
    return {"controller": controller} if controller else {}


def print_table(results: dict[tuple[str, str], dict[str, list[float]]],
                rounds: dict[tuple[str, str], list[dict[str, list[float]]]], phases: list[str],
                baseline: str = "scheduler") -> None:
    """The markdown table of docs/benchmarks.md: each side's pooled p50 / p99, the ratio with its
    bootstrap interval over pods, and the range of the ratios of the rounds (round k of each side).
    `baseline` is the other side's label: kube-scheduler ("scheduler", shown as native) or the
    controller with `--against-arg` flags ("baseline")."""
    shown = "native" if baseline == "scheduler" else baseline
    print(f"| phase | measure | controller p50 / p99 | {shown} p50 / p99 | ratio p50 [95 %] | ratio p99 [95 %] "
          "| rounds' ratios p50; p99 |")
    print("|---|---|---|---|---|---|---|")
    for phase in phases:
        for measure in ("allocated", "bound"):
            ours, native = results[("controller", phase)][measure], results[(baseline, phase)][measure]
            r50s, r99s = zip(*[tuple(percentile(a[measure], q) / percentile(b[measure], q) for q in (0.5, 0.99))
                               for a, b in zip(rounds[("controller", phase)], rounds[(baseline, phase)])])
            print(f"| {phase} | create → {measure} | {percentile(ours, 0.5) * 1000:.0f} / "
                  f"{percentile(ours, 0.99) * 1000:.0f} ms | {percentile(native, 0.5) * 1000:.0f} / "
                  f"{percentile(native, 0.99) * 1000:.0f} ms | {ratio_interval(ours, native, 0.5)} | "
                  f"{ratio_interval(ours, native, 0.99)} | {min(r50s):.2f}–{max(r50s):.2f}×; "
                  f"{min(r99s):.2f}–{max(r99s):.2f}× |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2, help="rounds per mode and phase (modes alternate)")
    parser.add_argument("--rate", type=float, default=20.0, help="pods/s in the paced phase")
    parser.add_argument("--memory", default="256Mi")
    parser.add_argument("--cores", type=int, default=0)
    parser.add_argument("--controller-workers", type=int, default=None,
                        help="the chart's controller.workers (default: the chart's)")
    parser.add_argument("--controller-arg", action="append", default=[], metavar="ARG",
                        help="an extra flag for the vgpu-dra controller (repeatable), e.g. --no-nominate-node")
    parser.add_argument("--against-arg", action="append", default=[], metavar="ARG",
                        help="measure the controller against itself run with this extra flag (repeatable) "
                             "instead of against kube-scheduler, e.g. --against-arg=--no-nominate-node")
    parser.add_argument("--phases", default="burst,paced", help="which phases to run")
    parser.add_argument("--warmup", type=int, default=20,
                        help="pods created (paced, not measured) after each installation, before its rounds")
    parser.add_argument("--requests", action="store_true",
                        help="also print, per round, the API server's requests and watch events it cost")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="record kube-apiserver's CPU profile of each measured round into DIR and print "
                             "where its CPU went (bench/apiserver_profile.py reads them again)")
    parser.add_argument("--audit", action="store_true",
                        help="audit every write to pods and claims and print, per round, who wrote its claims "
                             "and how often (creation to teardown); costs the API server a file write per request")
    parser.add_argument("--dump", type=Path, default=None,
                        help="write every pod's times (JSON, per mode and phase) here, to look at the tail")
    args = parser.parse_args()
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    # A SIGTERM (a runner's timeout) unwinds like Ctrl-C, so the control plane and the installed
    # components are stopped rather than left running under init.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    source = binaries_source()
    if source is None:
        print("no Kubernetes binaries: set VGPU_K8S_BIN (kube-apiserver, kube-controller-manager, kube-scheduler, "
              "kubectl)", file=sys.stderr)
        return 2
    control_plane = ControlPlane(find_binaries(source), audit_writes=args.audit).start()
    cluster = RealCluster(control_plane.admin_kubeconfig, control_plane.binaries.path("kubectl"),
                          Path(tempfile.mkdtemp(prefix="vgpu-bench-")), control_plane)
    results: dict[tuple[str, str], dict[str, list[float]]] = {}
    rounds: dict[tuple[str, str], list[dict[str, list[float]]]] = {}
    # (label, allocator mode, chart values) of the measured side and of its baseline.
    sides = [("controller", "controller", controller_values(args.controller_workers, args.controller_arg)),
             ("baseline", "controller", controller_values(args.controller_workers, args.against_arg))
             if args.against_arg else ("scheduler", "scheduler", {})]
    try:
        for round_no in range(args.rounds):
            for mode, allocator, values in sides:
                with installed(cluster, allocator, values):
                    if args.warmup:
                        # Both modes start measured on warm components: the first pods a fresh
                        # control plane sees pay its first-use costs (connections, caches).
                        one_round(cluster, mode, args.warmup, args.rate, args.memory, args.cores, f"warmup{round_no}")
                    for phase, rate in (("burst", 0.0), ("paced", args.rate)):
                        if phase not in args.phases.split(","):
                            continue
                        got = one_round(cluster, mode, args.pods, rate, args.memory, args.cores, round_no,
                                        verbose=args.requests, profile_dir=args.profile)
                        bucket = results.setdefault((mode, phase), {"claimed": [], "named": [], "nominated": [], "allocated": [],
                                                                     "ungated": [], "bound": [], "makespan": [],
                                                                     "claim_requests": []})
                        for key, values in got.items():
                            bucket[key] += values
                        rounds.setdefault((mode, phase), []).append(got)
                        print(f"round {round_no + 1} {mode:10s} {phase}: create→claim {summary(got['claimed'])}; "
                              f"create→allocated {summary(got['allocated'])}; "
                              f"create→ungated {summary(got['ungated'])}; "
                              f"create→bound {summary(got['bound'])}; all bound after {got['makespan'][0]:.2f} s",
                              flush=True)
    finally:
        cluster.close()
    if args.dump:
        args.dump.write_text(json.dumps({f"{mode} {phase}": got for (mode, phase), got in results.items()}))
    print(f"\n{args.pods} pods per round, {args.rounds} round(s) per mode; paced = {args.rate:g} pods/s")
    phases = [p for p in ("burst", "paced") if p in args.phases.split(",")]
    baseline = sides[1][0]
    print_table(results, rounds, phases, baseline)
    if args.audit:
        for phase in phases:
            ours, native = (sum(results[(mode, phase)]["claim_requests"]) for mode in ("controller", baseline))
            print(f"{phase}: claim requests per pod, creation to teardown: controller {ours / args.pods / args.rounds:.2f}, "
                  f"{baseline} {native / args.pods / args.rounds:.2f} ({ours / native:.2f}×)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
