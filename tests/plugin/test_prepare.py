"""Prepare/Unprepare end to end: kubelet → gRPC → plugin → fake API server → files on disk."""
from __future__ import annotations

import json
import os
import stat

import pytest

from tests.plugin.cdi_schema import validate_cdi_spec
from tests.plugin.kubelet_client import Claim
from tests.plugin.node import GIB, vgpu_config
from vgpu_dra.api.names import CONTAINER_CLAIMS_ROOT
from vgpu_dra.driver.claimconfig import parse
from vgpu_dra.driver.region import read_region

T4_0 = "GPU-2f8e4d1a-7c3b-4e9f-a152-6d0c8b9e3f71"
SHARE = "1c2d3e4f-0000-4000-8000-00000000000a"


def _spec(settings, uid):
    path = settings.cdi_dir / f"k8s.vgpu.dra.dev-claim_{uid}.json"
    spec = json.loads(path.read_text())
    validate_cdi_spec(spec)
    return spec


def _files_of(settings):
    return sorted(p.name for p in settings.cdi_dir.iterdir()), sorted(p.name for p in settings.claims_dir.iterdir())


def test_consumed_capacity_claim_prepares_with_its_limits(kubelet, claims, settings, plugin):
    claim = claims.create([{"request": "gpu", "device": "gpu-0", "shareID": SHARE,
                            "consumedCapacity": {"memory": "2Gi", "cores": "25"}}])
    answer = kubelet.prepare([claim.ref])[claim.uid]
    assert answer.error == ""
    (device,) = answer.devices
    assert (device.pool_name, device.device_name, device.request_names) == ("mixed-node", "gpu-0", ("gpu",))
    assert device.cdi_device_ids == (f"k8s.vgpu.dra.dev/claim={claim.uid}-gpu-0",)
    assert device.share_id == SHARE
    config = parse((settings.claims_dir / claim.uid / "config").read_text())
    (gpu,) = config.gpus
    assert (gpu.uuid, gpu.memory_bytes, gpu.cores, gpu.policy) == (T4_0, 2 * GIB, 25, "soft")
    assert stat.S_IMODE(os.stat(settings.claims_dir / claim.uid / "config").st_mode) == 0o444
    assert stat.S_IMODE(os.stat(settings.claims_dir / claim.uid / "region").st_mode) == 0o666
    region = read_region(settings.claims_dir / claim.uid / "region")
    assert region.claim_uid == claim.uid and region.gpu(T4_0).limit_bytes == 2 * GIB
    spec = _spec(settings, claim.uid)
    assert spec["devices"][0]["containerEdits"]["deviceNodes"] == [{"path": "/dev/nvidia0"}]
    mounts = {m["containerPath"]: m for m in spec["devices"][0]["containerEdits"]["mounts"]}
    assert mounts[f"{CONTAINER_CLAIMS_ROOT}/{claim.uid}/config"]["hostPath"] == \
        str(settings.claims_dir / claim.uid / "config")
    common = {m["containerPath"]: m for m in spec["containerEdits"]["mounts"]}
    shim_host = common["/usr/lib/vgpu-dra/libvgpu.so"]["hostPath"]
    assert shim_host.startswith(str(settings.shim_dir)) and os.path.isfile(shim_host)
    assert open(common["/etc/ld.so.preload"]["hostPath"]).read() == "/usr/lib/vgpu-dra/libvgpu.so\n"


def test_controller_allocated_claim_takes_limits_from_configs(kubelet, claims, settings, plugin):
    claim = claims.create(
        [{"request": "gpu", "device": "gpu-2"}],
        config=[{"source": "FromClass", "requests": [], "opaque": vgpu_config(memory="8Gi", cores=10)},
                {"source": "FromClaim", "requests": ["gpu"], "opaque": vgpu_config(memory="3Gi", corePolicy="hard")}])
    assert kubelet.prepare([claim.ref])[claim.uid].error == ""
    (gpu,) = parse((settings.claims_dir / claim.uid / "config").read_text()).gpus
    assert (gpu.memory_bytes, gpu.cores, gpu.policy) == (3 * GIB, 10, "hard")
    assert gpu.uuid == plugin._gpus.by_device["gpu-2"].uuid


def test_multi_gpu_claim(kubelet, claims, settings, plugin):
    claim = claims.create([{"request": "a", "device": "gpu-0", "consumedCapacity": {"memory": "1Gi", "cores": "0"},
                            "shareID": SHARE},
                           {"request": "b", "device": "gpu-1", "consumedCapacity": {"memory": "4Gi", "cores": "50"},
                            "shareID": "1c2d3e4f-0000-4000-8000-00000000000b"}])
    answer = kubelet.prepare([claim.ref])[claim.uid]
    assert answer.error == ""
    assert [(d.device_name, d.request_names) for d in answer.devices] == [("gpu-0", ("a",)), ("gpu-1", ("b",))]
    config = parse((settings.claims_dir / claim.uid / "config").read_text())
    assert [(g.memory_bytes, g.cores) for g in config.gpus] == [(GIB, 0), (4 * GIB, 50)]
    spec = _spec(settings, claim.uid)
    assert [d["containerEdits"]["deviceNodes"][0]["path"] for d in spec["devices"]] == ["/dev/nvidia0", "/dev/nvidia1"]


def test_claim_shared_by_two_pods_is_prepared_once_and_answers_the_same(kubelet, claims, settings, plugin,
                                                                       fake_apiserver):
    claim = claims.create([{"request": "gpu", "device": "gpu-0"}], pods=("pod-a", "pod-b"))
    first = kubelet.prepare([claim.ref])
    reads_before = [r for r in fake_apiserver.audit() if r.resource == "resourceclaims" and r.verb == "get"]
    second = kubelet.prepare([claim.ref])  # a kubelet restart re-asks; answered from the checkpoint
    reads_after = [r for r in fake_apiserver.audit() if r.resource == "resourceclaims" and r.verb == "get"]
    assert first == second
    assert reads_before and len(reads_after) == len(reads_before)
    assert plugin.preparer.prepared_claims()[claim.uid].pods == ("pod-a", "pod-b")


def test_repeat_prepare_is_idempotent_and_repairs_missing_files(kubelet, claims, settings, plugin):
    claim = claims.create([{"request": "gpu", "device": "gpu-1"}])
    first = kubelet.prepare([claim.ref])[claim.uid]
    spec_before = _spec(settings, claim.uid)
    (settings.cdi_dir / f"k8s.vgpu.dra.dev-claim_{claim.uid}.json").unlink()
    again = kubelet.prepare([claim.ref])[claim.uid]
    assert again == first
    assert _spec(settings, claim.uid) == spec_before


def test_batch_with_one_bad_claim_of_each_kind(kubelet, claims, settings, plugin, fake_apiserver):
    good = claims.create([{"request": "gpu", "device": "gpu-0"}], name="good")
    not_allocated = claims.create([{"request": "gpu", "device": "gpu-0"}], name="pending", allocate=False)
    elsewhere = claims.create([{"request": "gpu", "device": "gpu-0"}], name="elsewhere", node="other-node")
    bad_config = claims.create([{"request": "gpu", "device": "gpu-0"}], name="bad-config",
                               config=[{"source": "FromClaim", "requests": [], "opaque": vgpu_config(memroy="1Gi")}])
    recreated = claims.create([{"request": "gpu", "device": "gpu-0"}], name="recreated")
    missing = Claim("default", "0000aaaa-0000-4000-8000-000000000000", "never-existed")
    stale_uid = Claim("default", "0000bbbb-0000-4000-8000-000000000000", "recreated")
    batch = [good.ref, not_allocated.ref, elsewhere.ref, bad_config.ref, stale_uid, missing]
    answers = kubelet.prepare(batch)
    assert answers[good.uid].error == "" and answers[good.uid].devices
    assert "is not allocated" in answers[not_allocated.uid].error
    assert "another node" in answers[elsewhere.uid].error
    assert "unknown field 'memroy'" in answers[bad_config.uid].error
    assert "re-created" in answers[stale_uid.uid].error and recreated.uid in answers[stale_uid.uid].error
    assert "does not exist" in answers[missing.uid].error
    cdi_files, claim_dirs = _files_of(settings)
    assert cdi_files == [f"k8s.vgpu.dra.dev-claim_{good.uid}.json"]
    assert claim_dirs == [good.uid]
    metrics = plugin.metrics.registry
    for reason in ("not_allocated", "other_node", "invalid_config", "uid_mismatch", "not_found"):
        assert metrics.get_sample_value("vgpu_dra_prepare_errors_total",
                                        {"node": "mixed-node", "reason": reason}) == 1.0, reason


def test_unprepare_removes_everything_and_unknown_claims_succeed(kubelet, claims, settings, plugin, fake_apiserver):
    one = claims.create([{"request": "gpu", "device": "gpu-0"}])
    two = claims.create([{"request": "gpu", "device": "gpu-1"}])
    kubelet.prepare([one.ref, two.ref])
    assert plugin.status_writer.wait_idle(10)
    claim_calls = lambda: [r for r in fake_apiserver.audit() if r.resource == "resourceclaims"]  # noqa: E731
    calls_before = len(claim_calls())
    unknown = Claim("default", "0000cccc-0000-4000-8000-000000000000", "gone")
    assert kubelet.unprepare([one.ref, unknown]) == {one.uid: "", unknown.uid: ""}
    # The answer needs no API call; afterwards, in the background, only `one`'s status entries
    # are removed (the unknown claim is nobody's business).
    assert plugin.status_writer.wait_idle(10)
    assert {(r.name, r.verb, r.subresource) for r in claim_calls()[calls_before:]} == \
        {(one.name, "get", ""), (one.name, "patch", "status")}
    assert _files_of(settings) == ([f"k8s.vgpu.dra.dev-claim_{two.uid}.json"], [two.uid])
    assert set(json.loads(settings.checkpoint_path.read_text())["claims"]) == {two.uid}
    assert kubelet.unprepare([one.ref]) == {one.uid: ""}  # again: still a success


def test_nvidia_cdi_spec_on_the_node_is_used_for_the_gpu(kubelet, claims, settings, plugin):
    settings.nvidia_cdi_dirs[0].mkdir(parents=True, exist_ok=True)
    (settings.nvidia_cdi_dirs[0] / "nvidia.yaml").write_text(
        "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n"
        f"- name: '0'\n  containerEdits: {{deviceNodes: [{{path: /dev/nvidia0}}]}}\n"
        f"- name: {T4_0}\n  containerEdits: {{deviceNodes: [{{path: /dev/nvidia0}}]}}\n"
        "containerEdits: {deviceNodes: [{path: /dev/nvidiactl}]}\n")
    claim = claims.create([{"request": "gpu", "device": "gpu-0"}])
    (device,) = kubelet.prepare([claim.ref])[claim.uid].devices
    assert device.cdi_device_ids == (f"nvidia.com/gpu={T4_0}", f"k8s.vgpu.dra.dev/claim={claim.uid}-gpu-0")
    spec = _spec(settings, claim.uid)
    assert "deviceNodes" not in spec["containerEdits"]
    assert "deviceNodes" not in spec["devices"][0]["containerEdits"]
    assert spec["containerEdits"]["env"] == ["NVIDIA_VISIBLE_DEVICES=void"]


def test_prepare_of_a_device_this_node_does_not_have(kubelet, claims, plugin):
    claim = claims.create([{"request": "gpu", "device": "gpu-9"}])
    assert "does not exist on node mixed-node" in kubelet.prepare([claim.ref])[claim.uid].error


@pytest.mark.parametrize("version", ["v1beta1.DRAPlugin"])
def test_a_v1beta1_kubelet_gets_the_same_devices(claims, settings, plugin, version):
    from tests.plugin.kubelet_client import FakeKubelet

    old = FakeKubelet(settings.registration_socket, supported_versions=(version,))
    old.register()
    claim = claims.create([{"request": "gpu", "device": "gpu-0", "shareID": SHARE,
                            "consumedCapacity": {"memory": "1Gi", "cores": "5"}}])
    (device,) = old.prepare([claim.ref])[claim.uid].devices
    assert device.cdi_device_ids == (f"k8s.vgpu.dra.dev/claim={claim.uid}-gpu-0",) and device.share_id is None
    old.close()


def test_a_uid_that_is_not_a_uid_never_reaches_the_file_system(kubelet, claims, settings, plugin):
    victim = settings.state_dir / "precious"
    victim.mkdir()
    hostile = Claim("default", "../precious", "x")
    assert "not a valid claim UID" in kubelet.prepare([hostile])["../precious"].error
    assert "not a valid claim UID" in kubelet.unprepare([hostile])["../precious"]
    assert victim.is_dir()


def test_the_same_claim_twice_in_one_batch(kubelet, claims, settings, plugin):
    claim = claims.create([{"request": "gpu", "device": "gpu-0"}])
    answers = kubelet.prepare([claim.ref, claim.ref])
    assert answers[claim.uid].error == "" and len(answers[claim.uid].devices) == 1


def test_api_server_errors_fail_the_claim_with_a_reason(kubelet, claims, plugin, fake_apiserver):
    claim = claims.create([{"request": "gpu", "device": "gpu-0"}])
    fake_apiserver.faults.add(500, resource="resourceclaims", verbs=("get",))
    answer = kubelet.prepare([claim.ref])[claim.uid]
    assert "cannot read claim default/" in answer.error and "500" in answer.error
    assert kubelet.prepare([claim.ref])[claim.uid].error == ""  # the kubelet's retry works


def test_a_write_failure_fails_only_that_claim(kubelet, claims, plugin, settings):
    one = claims.create([{"request": "gpu", "device": "gpu-0"}])
    two = claims.create([{"request": "gpu", "device": "gpu-1"}])
    settings.claims_dir.mkdir(parents=True, exist_ok=True)
    (settings.claims_dir / one.uid).write_text("a file where the claim directory goes")
    answers = kubelet.prepare([one.ref, two.ref])
    assert "cannot write the files of claim" in answers[one.uid].error
    assert answers[two.uid].error == ""
    assert not (settings.cdi_dir / f"k8s.vgpu.dra.dev-claim_{one.uid}.json").exists()
    assert plugin.metrics.registry.get_sample_value(
        "vgpu_dra_prepare_errors_total", {"node": "mixed-node", "reason": "write_failed"}) == 1.0


def test_unprepare_is_not_held_up_by_a_slow_api_server(kubelet, claims, settings, plugin, fake_apiserver):
    import threading

    from tests.plugin.kubelet_client import FakeKubelet

    done = claims.create([{"request": "gpu", "device": "gpu-0"}])
    kubelet.prepare([done.ref])
    slow = claims.create([{"request": "gpu", "device": "gpu-1"}])
    other = FakeKubelet(settings.registration_socket)
    other.register()
    fake_apiserver.latency_s = 3.0  # every API request now takes 3 s
    preparing = threading.Thread(target=lambda: other.prepare([slow.ref]))
    preparing.start()
    try:
        threading.Event().wait(1.0)  # the prepare is now waiting for its claim (3 s)
        assert kubelet.unprepare([done.ref]) == {done.uid: ""}
        assert preparing.is_alive()  # the unprepare finished while the prepare still waited for the API
    finally:
        preparing.join()
        fake_apiserver.latency_s = 0.0
        other.close()


def test_two_shares_of_one_gpu_in_one_claim_add_up(kubelet, claims, settings, plugin):
    claim = claims.create([
        {"request": "a", "device": "gpu-0", "shareID": "2a000000-0000-4000-8000-000000000001",
         "consumedCapacity": {"memory": "1Gi", "cores": "10"}},
        {"request": "b", "device": "gpu-0", "shareID": "2a000000-0000-4000-8000-000000000002",
         "consumedCapacity": {"memory": "3Gi", "cores": "15"}}])
    answer = kubelet.prepare([claim.ref])[claim.uid]
    assert [(d.request_names, d.share_id) for d in answer.devices] == [
        (("a",), "2a000000-0000-4000-8000-000000000001"), (("b",), "2a000000-0000-4000-8000-000000000002")]
    (gpu,) = parse((settings.claims_dir / claim.uid / "config").read_text()).gpus
    assert (gpu.uuid, gpu.memory_bytes, gpu.cores) == (T4_0, 4 * GIB, 25)
    assert len(_spec(settings, claim.uid)["devices"]) == 1


@pytest.mark.parametrize("hard", ["a", "b"])
def test_one_hard_share_makes_the_gpu_of_the_claim_hard(kubelet, claims, settings, plugin, hard):
    """Two shares of one GPU, one of them with corePolicy hard (first or second): the claim's one
    limit for that GPU is hard, whichever share said so."""
    claim = claims.create(
        [{"request": "a", "device": "gpu-0", "shareID": "2b000000-0000-4000-8000-000000000001",
          "consumedCapacity": {"memory": "1Gi", "cores": "10"}},
         {"request": "b", "device": "gpu-0", "shareID": "2b000000-0000-4000-8000-000000000002",
          "consumedCapacity": {"memory": "2Gi", "cores": "20"}}],
        config=[{"source": "FromClaim", "requests": [hard], "opaque": vgpu_config(corePolicy="hard")}])
    assert kubelet.prepare([claim.ref])[claim.uid].error == ""
    (gpu,) = parse((settings.claims_dir / claim.uid / "config").read_text()).gpus
    assert (gpu.memory_bytes, gpu.cores, gpu.policy) == (3 * GIB, 30, "hard")
