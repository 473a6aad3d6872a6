"""requestPolicy rounding: what a capacity request consumes, by kube-scheduler's rules."""
from __future__ import annotations

import pytest

from vgpu_dra.api.names import GIBIBYTE, MEBIBYTE
from vgpu_dra.driver.capacity_policy import PolicyError, RequestPolicy, driver_memory_policy
from vgpu_dra.driver.published_gpus import SliceDeviceError, gpu_from_device

RANGE = RequestPolicy.parse({"default": "1Gi", "validRange": {"min": "1Gi", "max": "8Gi", "step": "512Mi"}},
                            field="memory")
VALUES = RequestPolicy.parse({"default": "20", "validValues": ["10", "20", "50", "100"]}, field="cores")
OPEN_RANGE = RequestPolicy.parse({"default": "4", "validRange": {"min": "2"}}, field="x")


@pytest.mark.parametrize(("policy", "requested", "consumed"), [
    (RANGE, None, GIBIBYTE),                          # not asked for: the default
    (RANGE, 100 * MEBIBYTE, GIBIBYTE),                # below min: min
    (RANGE, GIBIBYTE + 1, GIBIBYTE + 512 * MEBIBYTE),  # up to the next step above min
    (RANGE, 8 * GIBIBYTE, 8 * GIBIBYTE),
    (RANGE, 8 * GIBIBYTE + 1, None),                  # above max: the device cannot take it
    (VALUES, None, 20),
    (VALUES, 11, 20),                                 # the first valid value at or above the request
    (VALUES, 50, 50),                                 # a valid value stays what it is
    (VALUES, 51, 100),
    (VALUES, 101, None),                              # above every valid value
    (OPEN_RANGE, 1, 2),
    (OPEN_RANGE, 3, 3),                               # no step: taken as asked
    (RequestPolicy(), None, 7),                       # no default: the whole capacity
    (RequestPolicy(), 3, 3),
])
def test_consumed(policy, requested, consumed):
    assert policy.consumed(requested, capacity=8 * GIBIBYTE if policy is RANGE else 7) == consumed


def test_a_default_off_the_grid_is_still_allowed():
    odd = RequestPolicy(default=3, minimum=0, maximum=10, step=2, has_range=True)
    assert odd.consumed(None, 10) == 3
    assert odd.consumed(3, 10) == 4


def test_percent_shares_land_on_the_grid_below():
    assert RANGE.at_most(3 * GIBIBYTE + 100) == 3 * GIBIBYTE
    assert RANGE.at_most(10) == GIBIBYTE
    assert VALUES.at_most(49) == 20 and VALUES.at_most(5) == 10


def test_the_driver_policy_published_by_the_plugin_reads_back_as_the_driver_default():
    device = {"name": "gpu-0", "attributes": {}, "capacity": {
        "memory": {"value": "10Gi", "requestPolicy": {"default": "10Gi", "validRange": {
            "min": "64Mi", "max": "10Gi", "step": "1Mi"}}},
        "cores": {"value": "100", "requestPolicy": {"default": "0", "validRange": {"min": "0", "max": "100",
                                                                                    "step": "1"}}}}}
    gpu = gpu_from_device(device)
    assert (gpu.memory_policy, gpu.cores_policy) == (None, None)
    device["capacity"]["memory"]["requestPolicy"]["validRange"]["step"] = "1Gi"
    custom = gpu_from_device(device).memory_policy
    assert custom is not None and custom != driver_memory_policy(10 * GIBIBYTE) and custom.step == GIBIBYTE


def test_an_unreadable_policy_skips_the_device_with_its_name():
    device = {"name": "gpu-3", "capacity": {"memory": {"value": "10Gi", "requestPolicy": {"default": "lots"}}}}
    with pytest.raises(SliceDeviceError, match="device gpu-3 capacity memory requestPolicy.default: 'lots'"):
        gpu_from_device(device)
    with pytest.raises(PolicyError, match="step: must be positive"):
        RequestPolicy.parse({"validRange": {"min": "0", "step": "0"}}, field="x")
