"""`vgpu-dra status` / `kubectl vgpu`: the real controller allocates on the fake API server, the
command reads back what a user would see."""
from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from tests.cli.conftest import hami_pod, vgpu_dra
from tests.controller.cluster import (add_device_class, add_node, claim, gpu, pod, rtx3080_usable,
                                      running_controller, vgpu_config)
from tests.controller.waiting import wait_for
from tests.fakes.apiserver import FakeApiServer
from tests.fakes.kubeconfig import write_kubeconfig
from vgpu_dra.api.quantity import parse_bytes
from vgpu_dra.cli.status import cluster_status, kubectl_main, render_status
from vgpu_dra.driver.devices import build_slices
from vgpu_dra.driver.inventory import NodeInventory

MIB = 1 << 20


def allocated(server: FakeApiServer, name: str) -> dict | None:
    found = server.get("ResourceClaim", name, "default")
    return found if found and (found.get("status") or {}).get("allocation") else None


@pytest.fixture
def busy_cluster(fake_apiserver: FakeApiServer) -> FakeApiServer:
    """homelab: one RTX 3080 with worker-a (20 %, 25 cores) and worker-b (30 %, 40 cores); spare:
    a node whose taint no pod tolerates; big (80 %), created once the workers hold half of
    homelab's card, fits nowhere."""
    server = fake_apiserver
    add_node(server, "homelab", [gpu(0)])
    add_node(server, "spare", [gpu(0, uuid_prefix="GPU-spare")],
             taints=[{"key": "maintenance", "effect": "NoSchedule"}])
    add_device_class(server)
    for name, percent, cores in (("worker-a", 20, 25), ("worker-b", 30, 40)):
        server.create(claim(name, config=vgpu_config(memoryPercent=percent, cores=cores)))
        server.create(pod(name, [name]))
    with running_controller(server):
        wait_for(lambda: allocated(server, "worker-a") and allocated(server, "worker-b"), what="workers allocated")
        server.create(claim("big", config=vgpu_config(memoryPercent=80)))
        server.create(pod("big", ["big"]))
        wait_for(lambda: [e for e in server.events() if e.regarding_name == "big" and e.type == "Warning"
                          and e.regarding_kind == "ResourceClaim"], what="a refusal event on big")
    worker_a = server.get("ResourceClaim", "worker-a", "default")
    worker_a["status"]["reservedFor"] = [{"resource": "pods", "name": "worker-a",
                                          "uid": server.get("Pod", "worker-a", "default")["metadata"]["uid"]}]
    server.update_status(worker_a)
    return server


def test_json_shows_each_gpu_its_claims_and_the_pending_refusal(busy_cluster: FakeApiServer, tmp_path: Path) -> None:
    kubeconfig = write_kubeconfig(busy_cluster, tmp_path / "kubeconfig")
    result = vgpu_dra("status", "--kubeconfig", str(kubeconfig), "-o", "json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    by_node = {entry["node"]: entry for entry in document["gpus"]}
    assert set(by_node) == {"homelab", "spare"}
    homelab = by_node["homelab"]
    taken = {}
    for name in ("worker-a", "worker-b"):
        [result_entry] = allocated(busy_cluster, name)["status"]["allocation"]["devices"]["results"]
        taken[name] = parse_bytes(result_entry["consumedCapacity"]["memory"])
    assert homelab["device"] == "gpu-0" and homelab["memoryBytes"] == rtx3080_usable()
    assert homelab["memoryAllocatedBytes"] == taken["worker-a"] + taken["worker-b"]
    assert homelab["coresAllocated"] == 65
    claims = {entry["name"]: entry for entry in homelab["claims"]}
    assert claims["worker-a"] == {"namespace": "default", "name": "worker-a", "memoryBytes": taken["worker-a"],
                                  "cores": 25, "pods": ["worker-a"], "exclusive": False}
    assert by_node["spare"]["memoryAllocatedBytes"] == 0 and by_node["spare"]["claims"] == []
    [pending] = document["pending"]
    assert pending["name"] == "big" and pending["reason"] == "AllocationFailed"
    assert pending["message"]  # the controller's sentence, whatever its words
    assert document["hamiPods"]["status"] == "ok"


def test_the_table_and_kubectl_vgpu(busy_cluster: FakeApiServer, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    kubeconfig = write_kubeconfig(busy_cluster, tmp_path / "kubeconfig")
    assert kubectl_main(["--kubeconfig", str(kubeconfig)]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].split() == ["NODE", "GPU", "PRODUCT", "MEMORY", "ALLOCATED", "CORES", "CLAIMS"]
    homelab = next(line for line in lines if line.startswith("homelab"))
    assert "65 %" in homelab and "default/worker-a, default/worker-b" in homelab
    assert "Pending claims" in text
    assert next(line for line in lines if line.startswith("default/big")).split()[1] == "AllocationFailed:"
    assert "Pods written for HAMi" not in text  # no such pod waits: no section


def test_pending_pods_written_for_hami_are_shown_with_the_way_over(fake_apiserver: FakeApiServer,
                                                                    tmp_path: Path) -> None:
    add_node(fake_apiserver, "homelab", [gpu(0)])
    hami_pod(fake_apiserver, "trainer", {"nvidia.com/gpu": "1", "nvidia.com/gpumem": "3000"})
    hami_pod(fake_apiserver, "served", {"nvidia.com/gpumem": "3000"}, phase="Running")
    kubeconfig = str(write_kubeconfig(fake_apiserver, tmp_path / "kubeconfig"))
    table = vgpu_dra("status", "--kubeconfig", kubeconfig)
    assert table.returncode == 0, table.stderr
    section = table.stdout[table.stdout.index("Pods written for HAMi"):].splitlines()
    assert "1 pending pod(s)" in section[1] and "team-a/trainer" in section[1] and "served" not in section[1]
    assert section[2].strip().startswith("fix: install vgpu-dra with --set hamiWebhook.enabled=true")
    document = json.loads(vgpu_dra("status", "--kubeconfig", kubeconfig, "-o", "json").stdout)
    assert document["hamiPods"]["status"] == "warn" and "vgpu-dra migrate" in document["hamiPods"]["fix"]


def test_a_user_who_may_not_list_pods_is_told_the_hami_check_is_skipped(fake_apiserver: FakeApiServer,
                                                                         tmp_path: Path) -> None:
    add_node(fake_apiserver, "homelab", [gpu(0)])
    fake_apiserver.faults.add(403, resource="pods", verbs=("list",))
    result = vgpu_dra("status", "--kubeconfig", str(write_kubeconfig(fake_apiserver, tmp_path / "kubeconfig")))
    assert result.returncode == 0, result.stderr
    assert "homelab" in result.stdout
    [line] = [line for line in result.stdout.splitlines() if "cannot list pending pods (403" in line]
    assert line.endswith("so pods written for HAMi are not checked")
    assert "fix: use a kubeconfig whose user may list pods in every namespace" in result.stdout


def test_an_unreachable_api_server_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "x", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "x", "user": {}}], "contexts": [{"name": "x", "context": {"cluster": "x", "user": "x"}}]}))
    result = vgpu_dra("status", "--kubeconfig", str(kubeconfig))
    assert result.returncode == 1
    assert result.stderr.startswith("vgpu-dra status: error: cannot list ResourceSlices: ")
    assert result.stderr.count("\n") == 1


def test_a_missing_kubeconfig_is_one_line(tmp_path: Path) -> None:
    result = vgpu_dra("status", "--kubeconfig", str(tmp_path / "absent"))
    assert result.returncode == 1
    assert result.stderr.startswith("vgpu-dra status: error: no usable cluster configuration (")
    assert result.stderr.count("\n") == 1


def test_scheduler_allocations_and_whole_gpus_are_counted() -> None:
    """Allocations kube-scheduler wrote (no finalizer of ours): a share by consumedCapacity, and a
    result without shareID, which holds the whole GPU."""
    slices = [{"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice", "metadata": {"name": f"n1-{i}"},
               "spec": spec} for i, spec in enumerate(build_slices(NodeInventory("n1", (gpu(0), gpu(1))),
                                                                     generation=1, allow_multiple_allocations=True))]

    def allocated_claim(name: str, device: str, **result: object) -> dict:
        return {"metadata": {"name": name, "namespace": "ml", "uid": name},
                "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "vgpu.dra.dev"}}]}},
                "status": {"allocation": {"devices": {"results": [
                    {"request": "gpu", "driver": "vgpu.dra.dev", "pool": "n1", "device": device, **result}]}}}}

    claims = [allocated_claim("share", "gpu-0", shareID="7f1c0c8e-6a3a-4a53-9a51-8f3c1f1f2a10",
                              consumedCapacity={"memory": "2Gi", "cores": "30"}),
              allocated_claim("whole", "gpu-1")]
    status = cluster_status(slices, claims, classes=[], events=[])
    gpu0, gpu1 = status.gpus
    assert (gpu0.device, gpu0.memory_allocated_bytes, gpu0.cores_allocated) == ("gpu-0", 2 << 30, 30)
    assert gpu1.memory_allocated_bytes == gpu1.memory_bytes and gpu1.claims[0].exclusive
    assert "ml/whole (whole GPU)" in render_status(status)
    assert status.pending == ()


def test_an_allocation_on_a_device_no_slice_publishes_is_still_shown() -> None:
    claim_obj = {"metadata": {"name": "orphan", "namespace": "ml"},
                 "status": {"allocation": {"devices": {"results": [
                     {"request": "gpu", "driver": "vgpu.dra.dev", "pool": "gone", "device": "gpu-0",
                      "shareID": "7f1c0c8e-6a3a-4a53-9a51-8f3c1f1f2a10", "consumedCapacity": {"memory": "1Gi"}}]}}}}
    [shown] = cluster_status([], [claim_obj], [], []).gpus
    assert (shown.node, shown.memory_bytes, shown.memory_allocated_bytes) == ("gone", None, 1 << 30)
    assert "(not published)" in render_status(cluster_status([], [claim_obj], [], []))


def test_kubectl_vgpu_is_a_console_script_of_the_package() -> None:
    import importlib
    import tomllib

    scripts = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, function = scripts["kubectl-vgpu"].partition(":")
    assert getattr(importlib.import_module(module), function) is kubectl_main


def test_a_pending_claim_without_events_says_so() -> None:
    classes = [{"metadata": {"name": "vgpu.dra.dev", "labels": {"vgpu.dra.dev/allocator": "scheduler"}}}]
    waiting = {"metadata": {"name": "new", "namespace": "ml", "uid": "u1"},
               "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "vgpu.dra.dev"}}]}}}
    other_driver = {"metadata": {"name": "nic", "namespace": "ml", "uid": "u2"},
                    "spec": {"devices": {"requests": [{"name": "n", "exactly": {"deviceClassName": "sriov"}}]}}}
    status = cluster_status([], [waiting, other_driver], classes, [])
    assert [(p.name, p.reason) for p in status.pending] == [("new", None)]
    text = render_status(status)
    assert text.startswith("No GPUs published by vgpu.dra.dev")
    assert "ml/new  (no event yet)" in text
    assert render_status(cluster_status([], [], [], [])).startswith("No GPUs published")
