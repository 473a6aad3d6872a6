"""CDI spec building: content, naming, minimum cdiVersion, schema validity."""
from __future__ import annotations

import pytest

from tests.plugin.cdi_schema import validate_cdi_spec
from vgpu_dra.api.names import CONTAINER_CLAIMS_ROOT
from vgpu_dra.driver import cdi

UID = "0b7e3c4a-3f4c-4e4b-9a59-6f0f6a1e2d10"


def _request(*gpus: cdi.CdiGpu, dev_dir: str = "/dev", uid: str = UID) -> cdi.ClaimCdiRequest:
    return cdi.ClaimCdiRequest(
        claim_uid=uid, gpus=gpus, shim_host_path="/var/lib/vgpu-dra/shim/0.1.0-abc/libvgpu.so",
        shim_container_path="/usr/lib/vgpu-dra/libvgpu.so",
        preload_host_path="/var/lib/vgpu-dra/shim/0.1.0-abc/ld.so.preload",
        claim_dir_host_path=f"/var/lib/vgpu-dra/claims/{uid}", host_dev_dir=dev_dir)


def _mounts(edits):
    return {m["containerPath"]: m for m in edits.get("mounts", [])}


def test_spec_with_device_nodes_has_every_edit_the_design_lists():
    spec = cdi.build_claim_spec(_request(cdi.CdiGpu("gpu-0", minor=0), cdi.CdiGpu("gpu-1", minor=3)))
    validate_cdi_spec(spec)
    assert spec["kind"] == "k8s.vgpu.dra.dev/claim"
    assert [d["name"] for d in spec["devices"]] == [f"{UID}-gpu-0", f"{UID}-gpu-1"]
    assert spec["devices"][1]["containerEdits"]["deviceNodes"] == [{"path": "/dev/nvidia3"}]
    common = spec["containerEdits"]
    assert common["env"] == ["NVIDIA_VISIBLE_DEVICES=void"]
    assert [n["path"] for n in common["deviceNodes"]] == ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"]
    mounts = _mounts(common)
    shim = mounts["/usr/lib/vgpu-dra/libvgpu.so"]
    assert shim["hostPath"].endswith("/libvgpu.so") and "ro" in shim["options"]
    preload = mounts["/etc/ld.so.preload"]
    assert "ro" in preload["options"] and preload["hostPath"].endswith("ld.so.preload")
    claim_mounts = _mounts(spec["devices"][0]["containerEdits"])
    config = claim_mounts[f"{CONTAINER_CLAIMS_ROOT}/{UID}/config"]
    region = claim_mounts[f"{CONTAINER_CLAIMS_ROOT}/{UID}/region"]
    assert config["hostPath"] == f"/var/lib/vgpu-dra/claims/{UID}/config" and "ro" in config["options"]
    assert region["hostPath"] == f"/var/lib/vgpu-dra/claims/{UID}/region" and "rw" in region["options"]
    # No limit travels in the environment.
    all_env = common["env"] + [e for d in spec["devices"] for e in d["containerEdits"].get("env", [])]
    assert all_env == ["NVIDIA_VISIBLE_DEVICES=void"]


def test_nvidia_cdi_device_replaces_our_device_nodes():
    gpu = cdi.CdiGpu("gpu-0", minor=0, nvidia_cdi_device="nvidia.com/gpu=GPU-aaaa")
    request = _request(gpu)
    spec = cdi.build_claim_spec(request)
    validate_cdi_spec(spec)
    assert "deviceNodes" not in spec["containerEdits"]
    assert "deviceNodes" not in spec["devices"][0]["containerEdits"]
    assert spec["devices"][0]["containerEdits"]["mounts"]  # still non-empty edits: CDI refuses empty devices
    assert cdi.device_ids(request, gpu) == ("nvidia.com/gpu=GPU-aaaa", f"k8s.vgpu.dra.dev/claim={UID}-gpu-0")


def test_same_gpu_twice_in_a_claim_gives_one_cdi_device():
    spec = cdi.build_claim_spec(_request(cdi.CdiGpu("gpu-0", 0), cdi.CdiGpu("gpu-0", 0)))
    assert len(spec["devices"]) == 1


@pytest.mark.parametrize(("uid", "dev_dir", "expected"), [
    ("abc-def", "/dev", "0.3.0"),          # letter first, no hostPath: the oldest version
    (UID, "/dev", "0.5.0"),                # a device name starting with a digit needs 0.5.0
    ("abc-def", "/host/dev", "0.5.0"),     # deviceNode hostPath needs 0.5.0
])
def test_cdi_version_is_the_lowest_covering_the_fields(uid, dev_dir, expected):
    spec = cdi.build_claim_spec(_request(cdi.CdiGpu("gpu-0", 0), dev_dir=dev_dir, uid=uid))
    validate_cdi_spec(spec)
    assert spec["cdiVersion"] == expected
    if dev_dir != "/dev":
        assert spec["devices"][0]["containerEdits"]["deviceNodes"] == [{"path": "/dev/nvidia0",
                                                                         "hostPath": "/host/dev/nvidia0"}]


def test_minimum_version_rules():
    base = {"kind": "v.com/c", "devices": [{"name": "a", "containerEdits": {}}]}
    assert cdi.minimum_cdi_version(base) == "0.3.0"
    assert cdi.minimum_cdi_version({**base, "containerEdits": {"mounts": [{"type": "bind"}]}}) == "0.4.0"
    assert cdi.minimum_cdi_version({**base, "annotations": {"a": "b"}}) == "0.6.0"
    assert cdi.minimum_cdi_version({**base, "kind": "v.com/c.d"}) == "0.6.0"
    assert cdi.minimum_cdi_version({**base, "containerEdits": {"additionalGids": [5]}}) == "0.7.0"


def test_names():
    assert cdi.spec_file_name(UID) == f"k8s.vgpu.dra.dev-claim_{UID}.json"
    with pytest.raises(cdi.CdiError, match="not valid"):
        cdi.device_name("bad uid", "gpu-0")
    with pytest.raises(cdi.CdiError, match="at least one device"):
        cdi.build_claim_spec(_request())


def test_nvidia_device_lookup_prefers_uuid_then_index():
    specs = [{"kind": "nvidia.com/gpu", "devices": [{"name": "0"}, {"name": "GPU-aaaa"}, {"name": "all"}]},
             {"kind": "other.com/x", "devices": [{"name": "1"}]}]
    names = cdi.nvidia_gpu_device_names(specs)
    assert cdi.nvidia_device_for("GPU-aaaa", 0, names) == "nvidia.com/gpu=GPU-aaaa"
    assert cdi.nvidia_device_for("GPU-bbbb", 0, names) == "nvidia.com/gpu=0"
    assert cdi.nvidia_device_for("GPU-bbbb", 1, names) is None
