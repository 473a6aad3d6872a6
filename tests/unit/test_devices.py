"""Inventory → ResourceSlice devices and slices, checked against the real v1 schema."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.fakes.nvml_env import FakeNvml, fake_nvml, fake_nvml_library  # noqa: F401
from tests.fakes.openapi_schema import validate
from vgpu_dra.api.quantity import parse_bytes
from vgpu_dra.driver.devices import (
    build_slices,
    device_name,
    driver_semver,
    major_minor_semver,
    slice_device_limit,
    to_device,
)
from vgpu_dra.driver.inventory import GpuInfo, NodeInventory, discover
from vgpu_dra.driver.inventory_file import load_inventory

INVENTORIES = Path(__file__).resolve().parents[1] / "fakes" / "inventories"
SLICE = "io.k8s.api.resource.v1.ResourceSlice"
MiB = 1 << 20

HOMELAB = load_inventory(INVENTORIES / "rtx3080-homelab.yaml")
MIXED = load_inventory(INVENTORIES / "mixed-node.yaml")


def _slice_object(spec: dict[str, Any], number: int = 0) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": f"{spec['nodeName']}-vgpu.dra.dev-{number}"},
        "spec": spec,
    }


def _many_gpus(count: int) -> NodeInventory:
    template = HOMELAB.gpus[0]
    gpus = tuple(
        dataclasses.replace(template, index=i, minor_number=i, uuid=f"GPU-{i:08x}-0000-4000-8000-000000000000",
                            pci_bus_id=f"0000:{i // 32 + 1:02x}:{i % 32:02x}.0")
        for i in range(count)
    )
    return NodeInventory(node_name="big-node", gpus=gpus)


def test_shareable_rtx3080_device_is_exactly_the_designed_shape() -> None:
    assert to_device(HOMELAB.gpus[0], allow_multiple_allocations=True) == {
        "name": "gpu-0",
        "attributes": {
            "type": {"string": "gpu"},
            "uuid": {"string": "GPU-6b1f2c3d-8e4a-4f5b-9c7d-0a1b2c3d4e5f"},
            "index": {"int": 0},
            "productName": {"string": "NVIDIA GeForce RTX 3080"},
            "brand": {"string": "GeForce"},
            "architecture": {"string": "Ampere"},
            "cudaComputeCapability": {"version": "8.6.0"},
            "driverVersion": {"version": "550.54.15"},
            "cudaDriverVersion": {"version": "12.4.0"},
            "pciBusID": {"string": "0000:01:00.0"},
            "numaNode": {"int": -1},
        },
        "capacity": {
            "memory": {
                "value": "9997Mi",
                "requestPolicy": {"default": "9997Mi", "validRange": {"min": "64Mi", "max": "9997Mi", "step": "1Mi"}},
            },
            "cores": {
                "value": "100",
                "requestPolicy": {"default": "0", "validRange": {"min": "0", "max": "100", "step": "1"}},
            },
        },
        "allowMultipleAllocations": True,
    }


def test_mixed_node_devices_carry_each_gpus_own_facts() -> None:
    devices = [to_device(g, allow_multiple_allocations=True) for g in MIXED.gpus]

    def attr(device: dict[str, Any], name: str) -> Any:
        return next(iter(device["attributes"][name].values()))

    assert [device["name"] for device in devices] == ["gpu-0", "gpu-1", "gpu-2"]
    assert [(attr(d, "productName"), attr(d, "architecture"), attr(d, "cudaComputeCapability")) for d in devices] == [
        ("Tesla T4", "Turing", "7.5.0"), ("Tesla T4", "Turing", "7.5.0"), ("NVIDIA L40S", "Ada Lovelace", "8.9.0"),
    ]
    assert [attr(d, "numaNode") for d in devices] == [0, 1, 1]
    assert {attr(d, "driverVersion") for d in devices} == {"535.183.1"}  # 535.183.01 made semver
    assert [d["capacity"]["memory"]["value"] for d in devices] == ["15105Mi", "15105Mi", "45489Mi"]
    assert [d["capacity"]["memory"]["requestPolicy"]["default"] for d in devices] == ["15105Mi", "15105Mi", "45489Mi"]


def test_device_without_multiple_allocations_has_no_request_policy() -> None:
    """The API server accepts requestPolicy only on devices that allow multiple allocations."""
    device = to_device(MIXED.gpus[2], allow_multiple_allocations=False)

    assert "allowMultipleAllocations" not in device
    assert device["capacity"] == {"memory": {"value": "45489Mi"}, "cores": {"value": "100"}}


@pytest.mark.parametrize("inventory", [HOMELAB, MIXED], ids=["homelab", "mixed"])
def test_request_policies_obey_the_api_servers_rules(inventory: NodeInventory) -> None:
    """Default inside the range, max ≤ value, max/default multiples of step, min + step ≤ value."""
    for gpu in inventory.gpus:
        for name, capacity in to_device(gpu, allow_multiple_allocations=True)["capacity"].items():
            value = parse_bytes(capacity["value"])
            policy = capacity["requestPolicy"]
            low, high, step = (parse_bytes(policy["validRange"][k]) for k in ("min", "max", "step"))
            default = parse_bytes(policy["default"])
            assert low <= default <= high <= value, name
            assert high % step == 0 and default % step == 0, name
            assert low + step <= value, name


def test_memory_capacity_is_usable_memory_rounded_down_to_the_step() -> None:
    gpu = dataclasses.replace(HOMELAB.gpus[0], memory_reserved_bytes=243 * MiB + 12345)

    memory = to_device(gpu, allow_multiple_allocations=True)["capacity"]["memory"]

    assert memory["value"] == memory["requestPolicy"]["default"] == memory["requestPolicy"]["validRange"]["max"] == "9996Mi"


def test_device_stays_within_per_device_limits() -> None:
    device = to_device(dataclasses.replace(MIXED.gpus[0], product_name="X" * 100), allow_multiple_allocations=True)

    assert len(device["attributes"]) + len(device["capacity"]) <= 32
    assert device["attributes"]["productName"] == {"string": "X" * 64}
    validate(_slice_object({"driver": "vgpu.dra.dev", "pool": {"name": "n", "generation": 1, "resourceSliceCount": 1},
                            "nodeName": "n", "devices": [device]}), SLICE)


@pytest.mark.parametrize(
    ("nvidia", "semver"),
    [("550.54.15", "550.54.15"), ("535.183.01", "535.183.1"), ("470.82", "470.82.0"), ("418.87.00", "418.87.0"),
     ("551.61.2.1", "551.61.2+1"), ("560", "560.0.0")],
)
def test_driver_versions_become_semver(nvidia: str, semver: str) -> None:
    assert driver_semver(nvidia) == semver


@pytest.mark.parametrize("bad", ["", "550.54.15-beta", "r550", "550..15"])
def test_unparseable_driver_version_is_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="is not dot-separated numbers"):
        driver_semver(bad)


def test_major_minor_versions_gain_a_patch() -> None:
    assert (major_minor_semver("8.6"), major_minor_semver("12.4"), major_minor_semver("10.0")) == ("8.6.0", "12.4.0", "10.0.0")


def test_device_names_follow_the_nvml_index() -> None:
    assert [device_name(g) for g in MIXED.gpus] == ["gpu-0", "gpu-1", "gpu-2"]


@pytest.mark.parametrize("inventory", [HOMELAB, MIXED], ids=["homelab", "mixed"])
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "exclusive"])
def test_slices_validate_against_the_resource_v1_schema(inventory: NodeInventory, shared: bool) -> None:
    (spec,) = build_slices(inventory, generation=3, allow_multiple_allocations=shared)

    validate(_slice_object(spec), SLICE)
    assert spec["driver"] == "vgpu.dra.dev"
    assert spec["pool"] == {"name": inventory.node_name, "generation": 3, "resourceSliceCount": 1}
    assert spec["nodeName"] == inventory.node_name
    assert [d["name"] for d in spec["devices"]] == [device_name(g) for g in inventory.gpus]


def test_130_gpus_split_into_two_slices_of_one_pool() -> None:
    specs = build_slices(_many_gpus(130), generation=7, allow_multiple_allocations=True)

    assert [len(spec["devices"]) for spec in specs] == [128, 2]
    assert [spec["pool"] for spec in specs] == [{"name": "big-node", "generation": 7, "resourceSliceCount": 2}] * 2
    names = [d["name"] for spec in specs for d in spec["devices"]]
    assert names == [f"gpu-{i}" for i in range(130)]
    for number, spec in enumerate(specs):
        validate(_slice_object(spec, number), SLICE)


def test_exactly_128_gpus_fit_one_slice() -> None:
    assert [len(s["devices"]) for s in build_slices(_many_gpus(128), generation=1, allow_multiple_allocations=True)] == [128]


def test_a_smaller_slice_limit_is_honoured() -> None:
    specs = build_slices(MIXED, generation=1, allow_multiple_allocations=True, max_devices_per_slice=2)

    assert [[d["name"] for d in s["devices"]] for s in specs] == [["gpu-0", "gpu-1"], ["gpu-2"]]
    assert {s["pool"]["resourceSliceCount"] for s in specs} == {2}


def test_node_without_gpus_publishes_one_empty_slice() -> None:
    (spec,) = build_slices(NodeInventory(node_name="cpu-node", gpus=()), generation=1, allow_multiple_allocations=True)

    assert spec["devices"] == []
    assert spec["pool"] == {"name": "cpu-node", "generation": 1, "resourceSliceCount": 1}
    validate(_slice_object(spec), SLICE)


def test_taints_counters_or_list_attributes_lower_the_limit_to_64() -> None:
    plain = to_device(HOMELAB.gpus[0], allow_multiple_allocations=True)
    tainted = dict(plain, taints=[{"key": "maintenance", "effect": "NoSchedule"}])
    listed = dict(plain, attributes={**plain["attributes"], "models": {"strings": ["a", "b"]}})

    assert slice_device_limit([plain] * 3) == 128
    assert slice_device_limit([plain, tainted]) == 64
    assert slice_device_limit([listed, plain]) == 64
    assert slice_device_limit([plain], max_devices_per_slice=16) == 16


def test_mig_enabled_gpu_is_skipped_with_a_warning() -> None:
    gpus = (MIXED.gpus[0], dataclasses.replace(MIXED.gpus[1], mig_mode_enabled=True), MIXED.gpus[2])

    with capture_logs() as logs:
        (spec,) = build_slices(NodeInventory("mixed-node", gpus), generation=1, allow_multiple_allocations=True)

    assert [d["name"] for d in spec["devices"]] == ["gpu-0", "gpu-2"]
    (warning,) = [entry for entry in logs if entry["log_level"] == "warning"]
    assert warning["gpu"] == "gpu-1" and warning["uuid"] == MIXED.gpus[1].uuid
    assert "MIG mode is enabled" in warning["reason"]


def test_gpu_too_small_for_one_share_is_skipped_with_a_warning() -> None:
    tiny = dataclasses.replace(HOMELAB.gpus[0], memory_total_bytes=64 * MiB, memory_reserved_bytes=0)

    with capture_logs() as logs:
        (spec,) = build_slices(NodeInventory("homelab", (tiny,)), generation=1, allow_multiple_allocations=True)

    assert spec["devices"] == []
    assert any("less than the smallest share" in entry.get("reason", "") for entry in logs)


@pytest.mark.parametrize(("kwargs", "message"), [({"generation": -1}, "generation must not be negative"),
                                                 ({"generation": 1, "max_devices_per_slice": 0}, "at least 1")])
def test_bad_slice_arguments_are_rejected(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_slices(HOMELAB, allow_multiple_allocations=True, **kwargs)


def test_gpu_info_is_immutable() -> None:
    gpu: GpuInfo = HOMELAB.gpus[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        gpu.index = 3  # type: ignore[misc]


@pytest.mark.parametrize("name", ["rtx3080-homelab", "mixed-node"])
def test_slices_from_nvml_discovery_validate_and_offer_usable_memory(
    fake_nvml: FakeNvml, tmp_path: Path, name: str
) -> None:
    """End to end on a node: fake NVML → pynvml → discover → slices."""
    fake_nvml.use(name)
    inventory = discover(name, sysfs_root=tmp_path)

    (spec,) = build_slices(inventory, generation=1, allow_multiple_allocations=True)

    validate(_slice_object(spec), SLICE)
    expected = {"rtx3080-homelab": ["9997Mi"], "mixed-node": ["15105Mi", "15105Mi", "45489Mi"]}[name]
    assert [d["capacity"]["memory"]["value"] for d in spec["devices"]] == expected
    assert all(d["allowMultipleAllocations"] is True for d in spec["devices"])
    assert all(d["capacity"]["cores"]["requestPolicy"]["default"] == "0" for d in spec["devices"])
