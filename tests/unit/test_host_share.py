"""Host shares (`vgpu-dra cdi`): the plugin's CDI spec under the host kind, one device per share."""
from __future__ import annotations

import pytest

from tests.plugin.cdi_schema import validate_cdi_spec
from vgpu_dra.driver.host_share import HostShare, ShareError, ShareGpu, check_fits, check_share_name

GiB = 1 << 30
T4_0 = ShareGpu(0, "GPU-aaaa", 0, "Tesla T4", 15 * GiB)
T4_1 = ShareGpu(1, "GPU-bbbb", 3, "Tesla T4", 15 * GiB, nvidia_cdi_device="nvidia.com/gpu=1")


def share(name: str = "worker-a", *gpus: ShareGpu, memory: int = 2 * GiB, cores: int = 25) -> HostShare:
    return HostShare(name=name, memory_bytes=memory, cores=cores, core_policy="soft", gpus=gpus or (T4_0,),
                     shim_host_path="/var/lib/vgpu-dra/host/shim/v1/libvgpu.so",
                     preload_host_path="/var/lib/vgpu-dra/host/shim/v1/ld.so.preload",
                     shim_container_path="/usr/lib/vgpu-dra/libvgpu.so",
                     claim_dir=f"/var/lib/vgpu-dra/host/claims/{name}",
                     spec_path=f"/etc/cdi/vgpu.dra.dev-claim_{name}.json")


def test_a_share_on_two_gpus_is_one_cdi_device_with_the_node_of_the_gpu_nvidia_does_not_supply() -> None:
    shared = share("worker-a", T4_0, T4_1)
    spec = shared.spec()
    validate_cdi_spec(spec)
    assert spec["kind"] == "vgpu.dra.dev/claim"
    assert [d["name"] for d in spec["devices"]] == ["worker-a"]
    assert spec["devices"][0]["containerEdits"]["deviceNodes"] == [{"path": "/dev/nvidia0"}]
    assert shared.device_ids() == ("nvidia.com/gpu=1", "vgpu.dra.dev/claim=worker-a")
    config = shared.claim_config()
    assert config.claim_uid == "worker-a"
    assert [(g.uuid, g.memory_bytes, g.cores) for g in config.gpus] == [("GPU-aaaa", 2 * GiB, 25),
                                                                       ("GPU-bbbb", 2 * GiB, 25)]


def test_the_record_reads_back_as_the_same_share() -> None:
    shared = share("worker-a", T4_0, T4_1)
    assert HostShare.from_record(shared.to_record()) == shared
    with pytest.raises(ShareError, match="version"):
        HostShare.from_record({**shared.to_record(), "version": 99})


@pytest.mark.parametrize("name", ["a", "worker-a", "w_1", "x" * 63])
def test_good_names(name: str) -> None:
    assert check_share_name(name) == name


@pytest.mark.parametrize("name", ["", "-a", "a-", "a.b", "a/b", "../x", "x" * 64, "a b"])
def test_bad_names(name: str) -> None:
    with pytest.raises(ShareError, match="is not valid"):
        check_share_name(name)


def test_shares_on_one_gpu_add_up_to_at_most_the_gpu() -> None:
    existing = [share("a", memory=10 * GiB, cores=60), share("b", T4_1, memory=14 * GiB)]
    check_fits(share("c", memory=5 * GiB, cores=40), existing)  # T4_0: 10 + 5 = 15 GiB, 60 + 40 %
    with pytest.raises(ShareError, match="does not fit on GPU 0"):
        check_fits(share("c", memory=5 * GiB + 1, cores=0), existing)
    with pytest.raises(ShareError, match="ask for at most 40"):
        check_fits(share("c", memory=GiB, cores=41), existing)
    check_fits(share("a", memory=15 * GiB), existing)  # a share never counts against itself
