"""Limit resolution: capacity requests beat configs; rounding matches the slice's requestPolicy."""
import pytest

from vgpu_dra.api.config import parse_config
from vgpu_dra.api.names import GIBIBYTE, MEBIBYTE
from vgpu_dra.driver.limits import LimitError, ShareRequest, parse_cores

TEN_GIB = 10 * GIBIBYTE


def config(**fields):
    return parse_config({"apiVersion": "vgpu.dra.dev/v1alpha1", "kind": "VgpuConfig", **fields})


def test_nothing_asked_means_the_whole_gpu_and_no_cap():
    share = ShareRequest.from_sources(None).resolve(TEN_GIB)
    assert (share.memory_bytes, share.cores, share.core_policy) == (TEN_GIB, 0, "soft")


def test_percent_resolves_against_the_chosen_gpu_rounded_down_to_mib():
    request = ShareRequest.from_sources(config(memoryPercent=20, cores=25))
    assert request.resolve(TEN_GIB).memory_bytes == 2048 * MEBIBYTE
    odd = 10_000_000_000
    assert request.resolve(odd).memory_bytes == (odd // 5) // MEBIBYTE * MEBIBYTE
    assert ShareRequest.from_sources(config(memoryPercent=100)).resolve(odd).memory_bytes <= odd


def test_bytes_round_up_to_the_step_and_minimum():
    assert ShareRequest.from_sources(config(memory="1500000000")).resolve(TEN_GIB).memory_bytes == 1431 * MEBIBYTE
    assert ShareRequest.from_sources(config(memory="1Mi")).resolve(TEN_GIB).memory_bytes == 64 * MEBIBYTE


def test_capacity_requests_override_config():
    request = ShareRequest.from_sources(config(memoryPercent=50, cores=10), {"memory": "3Gi", "cores": "40"})
    share = request.resolve(TEN_GIB)
    assert (share.memory_bytes, share.cores) == (3 * GIBIBYTE, 40)


def test_too_big_for_the_gpu_says_both_sizes():
    with pytest.raises(LimitError, match=r"needs 12 GiB of GPU memory but the GPU has only 10 GiB usable"):
        ShareRequest.from_sources(config(memory="12Gi")).resolve(TEN_GIB)


@pytest.mark.parametrize("bad", [{"memory": "lots"}, {"cores": "150"}, {"cores": "2.5"}, {"gpus": "1"}])
def test_bad_capacity_requests_are_named(bad):
    with pytest.raises(LimitError, match=next(iter(bad))):
        ShareRequest.from_sources(None, bad)


def test_parse_cores_accepts_quantity_strings():
    assert parse_cores("25") == 25
    assert parse_cores(0) == 0
