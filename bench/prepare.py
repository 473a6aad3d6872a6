"""Kubelet-plugin benchmark: NodePrepareResources / NodeUnprepareResources latency and plugin RSS.

The plugin runs as a real `vgpu-dra kubelet-plugin` child process (fake NVML with the mixed-node
inventory, temp dirs for every path) talking HTTP to the in-process fake API server; a kubelet-like
client registers and calls it over the unix sockets. Every Prepare is of fresh claims (no
checkpoint hit), followed by their Unprepare:

* 1 claim per call, `--rounds` times;
* 50 claims per call, `--batches` times.

Baseline, same run and same client stack: a bare GET of one claim through the `kubernetes` client
(the one API call a Prepare cannot avoid), and 50 sequential GETs for the batch. The ratio says
what Prepare costs on top of reading the claim. Targets: p99 ≤ 50 ms (1 claim), ≤ 1 s (50 claims),
plugin RSS ≤ 100 MB.

    .venv/bin/python bench/prepare.py
    .venv/bin/python bench/prepare.py --rounds 50 --batches 5     # quick look
"""
from __future__ import annotations

import argparse
import os
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kubernetes import client  # noqa: E402

from bench.latency_stats import percentile  # noqa: E402
from tests.fakes.apiserver import FakeApiServer  # noqa: E402
from tests.fakes.kubeconfig import api_client_for, write_kubeconfig  # noqa: E402
from tests.fakes.nvml_env import INVENTORIES_DIR, build_library, inventory_document, render_flat_inventory  # noqa: E402
from tests.plugin.kubelet_client import FakeKubelet  # noqa: E402
from tests.plugin.node import ClaimMaker, create_node, node_settings, plugin_command, shim_library  # noqa: E402

NODE = "mixed-node"


def rss_mb(pid: int) -> tuple[float, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def make_claims(maker: ClaimMaker, count: int) -> list:
    return [maker.create([{"request": "gpu", "device": f"gpu-{i % 3}", "shareID": str(uuid.uuid4()),
                           "consumedCapacity": {"memory": "512Mi", "cores": "10"}}]) for i in range(count)]


def timed(call) -> float:  # noqa: ANN001
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def summary(name: str, values: list[float]) -> dict[str, float]:
    p50, p99 = percentile(values, 0.5) * 1e3, percentile(values, 0.99) * 1e3
    print(f"  {name:<34} p50 {p50:8.2f} ms   p99 {p99:8.2f} ms   (n={len(values)})")
    return {"p50_ms": p50, "p99_ms": p99}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=200, help="1-claim Prepare/Unprepare rounds")
    parser.add_argument("--batches", type=int, default=20, help="50-claim Prepare/Unprepare rounds")
    parser.add_argument("--batch-size", type=int, default=50)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="vgpu-bench-"))
    server = FakeApiServer().start()
    process = None
    try:
        create_node(server, NODE)
        maker = ClaimMaker(server, NODE)
        settings = node_settings(root, NODE, shim_library(root))
        inventory_file = root / "nvml-inventory.txt"
        inventory_file.write_text(render_flat_inventory(inventory_document(INVENTORIES_DIR / "mixed-node.yaml")))
        library = build_library()
        env = {**os.environ, "LD_LIBRARY_PATH": str(library.parent),
               "FAKE_NVML_INVENTORY": str(inventory_file)}
        kubeconfig = write_kubeconfig(server, root / "kubeconfig")
        log = open(root / "plugin.log", "wb")  # noqa: SIM115
        process = subprocess.Popen(plugin_command(settings, kubeconfig), env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not settings.registration_socket.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("plugin did not start:\n" + (root / "plugin.log").read_text()[-3000:])
            time.sleep(0.05)
        kubelet = FakeKubelet(settings.registration_socket)
        kubelet.register()
        idle_rss, _ = rss_mb(process.pid)
        api = client.ResourceV1Api(api_client_for(server))

        def get(claim) -> None:  # noqa: ANN001
            api.read_namespaced_resource_claim(claim.name, claim.namespace, _preload_content=False).data

        # Warm-up: first calls pay imports, connection set-up, thread start.
        warm = make_claims(maker, 5)
        kubelet.prepare([c.ref for c in warm])
        kubelet.unprepare([c.ref for c in warm])
        for c in warm:
            get(c)

        singles = make_claims(maker, args.rounds)
        get_one, prep_one, unprep_one, repeat_one = [], [], [], []
        for claim in singles:
            get_one.append(timed(lambda: get(claim)))
            prep_one.append(timed(lambda: check(kubelet.prepare([claim.ref]))))
            repeat_one.append(timed(lambda: check(kubelet.prepare([claim.ref]))))
            unprep_one.append(timed(lambda: kubelet.unprepare([claim.ref])))

        get_batch, prep_batch, unprep_batch = [], [], []
        for _ in range(args.batches):
            batch = make_claims(maker, args.batch_size)
            refs = [c.ref for c in batch]
            get_batch.append(timed(lambda: [get(c) for c in batch]))
            prep_batch.append(timed(lambda: check(kubelet.prepare(refs))))
            unprep_batch.append(timed(lambda: kubelet.unprepare(refs)))
        rss, hwm = rss_mb(process.pid)

        print(f"kubelet plugin, {NODE} (3 fake GPUs), fake API server over HTTP")
        print("1 claim per call:")
        s_get1 = summary("baseline: GET one claim", get_one)
        s_prep1 = summary("NodePrepareResources", prep_one)
        summary("NodePrepareResources (repeat)", repeat_one)
        s_unprep1 = summary("NodeUnprepareResources", unprep_one)
        print(f"{args.batch_size} claims per call:")
        s_get50 = summary(f"baseline: {args.batch_size} sequential GETs", get_batch)
        s_prep50 = summary("NodePrepareResources", prep_batch)
        s_unprep50 = summary("NodeUnprepareResources", unprep_batch)
        print(f"ratio prepare/GET p50: 1 claim {s_prep1['p50_ms'] / s_get1['p50_ms']:.1f}x, "
              f"{args.batch_size} claims {s_prep50['p50_ms'] / s_get50['p50_ms']:.2f}x")
        print(f"plugin RSS {rss:.1f} MB (peak {hwm:.1f} MB; {idle_rss:.1f} MB before the first call)")
        ok = s_prep1["p99_ms"] <= 50 and s_prep50["p99_ms"] <= 1000 and hwm <= 100 \
            and s_unprep1["p99_ms"] <= 50 and s_unprep50["p99_ms"] <= 1000
        print("targets (p99 ≤ 50 ms / ≤ 1 s, RSS ≤ 100 MB):", "met" if ok else "NOT met")
        print(json.dumps({"prepare_1": s_prep1, "prepare_50": s_prep50, "unprepare_1": s_unprep1,
                          "unprepare_50": s_unprep50, "get_1": s_get1, "get_50": s_get50,
                          "rss_mb": round(rss, 1), "rss_peak_mb": round(hwm, 1),
                          "rss_idle_mb": round(idle_rss, 1)}))
        kubelet.close()
        return 0 if ok else 1
    finally:
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def check(answers: dict) -> None:
    errors = {uid: a.error for uid, a in answers.items() if a.error}
    if errors:
        raise SystemExit(f"prepare failed: {errors}")


if __name__ == "__main__":
    sys.exit(main())
