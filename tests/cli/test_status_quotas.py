"""`vgpu-dra status` shows each namespace's GPU quota, what its claims count and what is free, as
the controller counts it; and says when kube-scheduler allocates claims that the quota cannot refuse."""
from __future__ import annotations

import json
from pathlib import Path

from tests.cli.conftest import vgpu_dra
from tests.controller.cluster import add_device_class, add_node, claim, gpu, pod, running_controller, vgpu_config
from tests.controller.waiting import wait_for
from tests.fakes.apiserver import FakeApiServer
from tests.fakes.kubeconfig import write_kubeconfig
from vgpu_dra.api.names import ALLOCATOR_SCHEDULER
from vgpu_dra.cli.status import cluster_status, render_status
from vgpu_dra.driver.namespace_quota import QUOTA_CORES, QUOTA_MEMORY

GIB = 1 << 30


def quota(namespace: str, name: str, **hard: str) -> dict:
    return {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": name, "namespace": namespace},
            "spec": {"hard": hard}}


def test_status_shows_quota_used_and_free_per_namespace(fake_apiserver: FakeApiServer, tmp_path: Path) -> None:
    server = fake_apiserver
    add_node(server, "homelab", [gpu(0)])
    add_device_class(server)
    server.create(quota("default", "team-gpu", **{QUOTA_MEMORY: "4096", QUOTA_CORES: "100"}))
    for name, memory, cores in (("worker-a", "2Gi", 25), ("worker-b", "1Gi", 40), ("worker-c", "2Gi", 10)):
        server.create(claim(name, config=vgpu_config(memory=memory, cores=cores)))
        server.create(pod(name, [name]))
    with running_controller(server):
        wait_for(lambda: [e for e in server.events() if e.regarding_name == "worker-c" and e.reason == "QuotaExceeded"
                          and e.regarding_kind == "ResourceClaim"], what="worker-c over the quota")
    kubeconfig = str(write_kubeconfig(server, tmp_path / "kubeconfig"))
    result = vgpu_dra("status", "--kubeconfig", kubeconfig, "-o", "json")
    assert result.returncode == 0, result.stderr
    quotas = json.loads(result.stdout)["quotas"]
    assert quotas["namespaces"] == [{
        "namespace": "default", "problem": None, "memoryBytes": 4 * GIB, "memoryUsedBytes": 3 * GIB,
        "memoryFreeBytes": GIB, "cores": 100, "coresUsed": 65, "coresFree": 35, "claims": 2,
        "resourceQuotas": ["team-gpu"]}]
    assert quotas["notes"] == []
    table = vgpu_dra("status", "--kubeconfig", kubeconfig).stdout
    lines = table.splitlines()
    header = lines.index("Namespace GPU quotas")
    assert lines[header + 1].split() == ["NAMESPACE", "MEMORY", "USED", "MEMORY", "FREE", "CORES", "USED", "CORES",
                                         "FREE", "RESOURCEQUOTA"]
    assert lines[header + 2].split() == ["default", "3072", "MiB", "of", "4096", "MiB", "1024", "MiB",
                                         "65", "%", "of", "100", "%", "35", "%", "team-gpu"]
    pending = next(line for line in lines if line.startswith("default/worker-c"))
    assert "QuotaExceeded:" in pending


def _allocated(name: str, namespace: str, memory: str, cores: str) -> dict:
    return {"metadata": {"name": name, "namespace": namespace, "uid": name},
            "spec": {"devices": {"requests": []}},
            "status": {"allocation": {"devices": {"results": [
                {"driver": "vgpu.dra.dev", "pool": "n", "device": "gpu-0", "request": "gpu", "shareID": "s",
                 "consumedCapacity": {"memory": memory, "cores": cores}}]}}}}


def test_a_bad_quota_and_scheduler_allocated_classes_are_said_in_words() -> None:
    classes = [{"metadata": {"name": "vgpu.dra.dev", "labels": {"vgpu.dra.dev/allocator": ALLOCATOR_SCHEDULER}},
                "spec": {"selectors": []}}]
    quotas = [quota("team-a", "gpu", **{QUOTA_MEMORY: "20Gi"}), quota("team-b", "gpu", **{QUOTA_CORES: "200"})]
    claims = [_allocated("x", "team-b", "1Gi", "0"), _allocated("y", "team-b", "1Gi", "30"),
              _allocated("z", "team-c", "1Gi", "30")]
    text = render_status(cluster_status([], claims, classes, [], quotas))
    lines = text.splitlines()
    team_a = next(line for line in lines if line.startswith("team-a "))
    assert "INVALID, claims refused" in team_a and "'20Gi'" in team_a
    team_b = next(line for line in lines if line.startswith("team-b "))
    assert "2048 MiB (no limit)" in team_b and "130 % of 200 %" in team_b  # the uncapped share counts 100 %
    assert not any(line.startswith("team-c ") for line in lines)  # no quota there
    assert any(line.startswith("note: claims of DeviceClass(es) vgpu.dra.dev are allocated by kube-scheduler")
               for line in lines)


def test_a_user_who_may_not_list_quotas_still_gets_the_rest(fake_apiserver: FakeApiServer, tmp_path: Path) -> None:
    server = fake_apiserver
    add_node(server, "homelab", [gpu(0)])
    server.faults.add(403, resource="resourcequotas", verbs=("list",))
    result = vgpu_dra("status", "--kubeconfig", str(write_kubeconfig(server, tmp_path / "kubeconfig")))
    assert result.returncode == 0, result.stderr
    assert "homelab" in result.stdout
    assert "note: ResourceQuotas could not be read (403" in result.stdout
