"""GPU discovery through the unmodified pynvml over the fake libnvidia-ml.so.1."""
from __future__ import annotations

import ctypes
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.fakes.nvml_env import FakeNvml, fake_nvml, fake_nvml_library, inventory_document  # noqa: F401
from vgpu_dra.driver.inventory import GpuInfo, InventoryError, NodeInventory, discover, normalize_pci_bus_id
from vgpu_dra.driver.inventory_file import load_inventory

INVENTORIES = Path(__file__).resolve().parents[1] / "fakes" / "inventories"
MiB = 1 << 20

HOMELAB_RTX3080 = GpuInfo(
    uuid="GPU-6b1f2c3d-8e4a-4f5b-9c7d-0a1b2c3d4e5f",
    index=0,
    minor_number=0,
    product_name="NVIDIA GeForce RTX 3080",
    brand="GeForce",
    architecture="Ampere",
    cuda_compute_capability="8.6",
    driver_version="550.54.15",
    cuda_driver_version="12.4",
    pci_bus_id="0000:01:00.0",
    numa_node=-1,
    memory_total_bytes=10240 * MiB,
    memory_reserved_bytes=243 * MiB,
    mig_mode_enabled=False,
)


@pytest.fixture
def empty_sysfs(tmp_path: Path) -> Path:
    """A /sys without PCI devices, so the NUMA fallback cannot read the test machine's own."""
    root = tmp_path / "sys"
    (root / "bus/pci/devices").mkdir(parents=True)
    return root


def test_homelab_rtx3080_is_discovered_with_every_field(fake_nvml: FakeNvml, empty_sysfs: Path) -> None:
    fake_nvml.use("rtx3080-homelab")

    inventory = discover("homelab", sysfs_root=empty_sysfs)

    assert inventory == NodeInventory(node_name="homelab", gpus=(HOMELAB_RTX3080,))
    assert inventory.gpus[0].usable_memory_bytes == 9997 * MiB


def test_mixed_node_lists_two_t4_and_one_l40s(fake_nvml: FakeNvml, empty_sysfs: Path) -> None:
    fake_nvml.use("mixed-node")

    gpus = discover("mixed-node", sysfs_root=empty_sysfs).gpus

    assert [(g.index, g.product_name, g.architecture, g.cuda_compute_capability, g.brand) for g in gpus] == [
        (0, "Tesla T4", "Turing", "7.5", "NVIDIA"),
        (1, "Tesla T4", "Turing", "7.5", "NVIDIA"),
        (2, "NVIDIA L40S", "Ada Lovelace", "8.9", "NVIDIA"),
    ]
    assert [(g.pci_bus_id, g.numa_node, g.minor_number) for g in gpus] == [
        ("0000:3b:00.0", 0, 0),
        ("0000:af:00.0", 1, 1),
        ("0000:d8:00.0", 1, 2),
    ]
    assert [(g.memory_total_bytes // MiB, g.memory_reserved_bytes // MiB) for g in gpus] == [
        (15360, 255), (15360, 255), (46068, 579),
    ]
    assert {(g.driver_version, g.cuda_driver_version) for g in gpus} == {("535.183.01", "12.2")}
    assert len({g.uuid for g in gpus}) == 3
    assert not any(g.mig_mode_enabled for g in gpus)


@pytest.mark.parametrize("name", ["rtx3080-homelab", "mixed-node"])
def test_discovery_matches_the_inventory_file_it_was_faked_from(
    fake_nvml: FakeNvml, empty_sysfs: Path, name: str
) -> None:
    """`vgpu-dra plan` reads the YAML, the node reads NVML: both must describe the same GPUs."""
    from_file = load_inventory(INVENTORIES / f"{name}.yaml")
    fake_nvml.use(name)

    assert discover(from_file.node_name, sysfs_root=empty_sysfs) == from_file


def test_discovery_in_a_child_process_finds_the_fake_through_ld_library_path(fake_nvml: FakeNvml) -> None:
    """The way the kubelet plugin runs: pynvml dlopens libnvidia-ml.so.1 by name."""
    script = textwrap.dedent("""
        import dataclasses, json
        from vgpu_dra.driver.inventory import discover
        print(json.dumps([dataclasses.asdict(g) for g in discover("mixed-node").gpus]))
    """)
    result = subprocess.run([sys.executable, "-c", script], env=fake_nvml.env("mixed-node"),
                            capture_output=True, text=True, check=False, timeout=60)

    assert result.returncode == 0, result.stderr
    gpus = json.loads(result.stdout)
    assert [g["product_name"] for g in gpus] == ["Tesla T4", "Tesla T4", "NVIDIA L40S"]
    assert gpus[2]["memory_total_bytes"] == 46068 * MiB


def _real_nvml_present() -> bool:
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
        return True
    except OSError:
        return False


@pytest.mark.skipif(_real_nvml_present(), reason="this machine has a real NVML on the default search path")
def test_missing_nvml_library_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        from vgpu_dra.driver.inventory import InventoryError, discover
        try:
            discover("node-a")
        except InventoryError as exc:
            assert exc.__cause__ is None and exc.__suppress_context__
            print(exc)
    """)
    result = subprocess.run([sys.executable, "-c", script], env={"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": str(tmp_path)},
                            capture_output=True, text=True, check=False, timeout=60)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("NVML library libnvidia-ml.so.1 not found: is the NVIDIA driver installed")


@pytest.mark.parametrize(
    ("fail_init", "message"),
    [
        ("DRIVER_NOT_LOADED", "NVIDIA kernel driver (driver not loaded)"),
        ("NO_PERMISSION", "denied access to the GPUs"),
        ("LIB_RM_VERSION_MISMATCH", "NVML failed to initialise: RM has detected an NVML/RM version mismatch."),
    ],
)
def test_init_failures_name_the_cause(fake_nvml: FakeNvml, fail_init: str, message: str) -> None:
    fake_nvml.use("rtx3080-homelab", fail_init=fail_init)

    with pytest.raises(InventoryError, match=re.escape(message)) as caught:
        discover("homelab")
    assert caught.value.__suppress_context__


def test_node_without_driver_configured_is_driver_not_loaded(fake_nvml: FakeNvml) -> None:
    fake_nvml.use(None)

    with pytest.raises(InventoryError, match="driver not loaded"):
        discover("homelab")


def test_no_gpu_is_an_error_naming_the_node(fake_nvml: FakeNvml) -> None:
    document = inventory_document("rtx3080-homelab")
    document["gpus"] = []
    fake_nvml.use(document)

    with pytest.raises(InventoryError, match="NVML found no GPU on node homelab"):
        discover("homelab")


def test_failed_gpu_query_names_the_gpu_and_call_and_leaves_nvml_shut_down(
    fake_nvml: FakeNvml, empty_sysfs: Path
) -> None:
    document = inventory_document("mixed-node")
    document["gpus"][1]["fakeNvml"]["errors"] = {"nvmlDeviceGetUUID": "GPU_IS_LOST"}
    fake_nvml.use(document)

    with pytest.raises(InventoryError, match="NVML nvmlDeviceGetUUID failed for GPU 1: GPU is lost"):
        discover("mixed-node")

    # NVML was shut down on the way out, so the next init reads the next inventory.
    fake_nvml.use("rtx3080-homelab")
    assert discover("homelab", sysfs_root=empty_sysfs).gpus == (HOMELAB_RTX3080,)


def test_older_driver_without_newer_queries_gets_documented_defaults(fake_nvml: FakeNvml, empty_sysfs: Path) -> None:
    document = inventory_document("mixed-node")
    document["fakeNvml"] = {"errors": {"nvmlSystemGetCudaDriverVersion_v2": "FUNCTION_NOT_FOUND"}}
    document["gpus"][0]["fakeNvml"]["errors"] = {
        "nvmlDeviceGetMemoryInfo_v2": "FUNCTION_NOT_FOUND",
        "nvmlDeviceGetNumaNodeId": "FUNCTION_NOT_FOUND",
        "nvmlDeviceGetArchitecture": "FUNCTION_NOT_FOUND",
        "nvmlDeviceGetMigMode": "NOT_SUPPORTED",
        "nvmlDeviceGetBrand": "NOT_SUPPORTED",
    }
    fake_nvml.use(document)

    gpu, other, _ = discover("mixed-node", sysfs_root=empty_sysfs).gpus

    assert gpu.cuda_driver_version == "12.2"  # from the unversioned query
    assert (gpu.memory_total_bytes, gpu.memory_reserved_bytes) == (15360 * MiB, 0)
    assert (gpu.numa_node, gpu.architecture, gpu.brand, gpu.mig_mode_enabled) == (-1, "Unknown", "Unknown", False)
    assert (other.numa_node, other.architecture, other.memory_reserved_bytes) == (1, "Turing", 255 * MiB)


def test_numa_node_falls_back_to_sysfs_when_nvml_cannot_tell(fake_nvml: FakeNvml, empty_sysfs: Path) -> None:
    device = empty_sysfs / "bus/pci/devices/0000:01:00.0"
    device.mkdir()
    (device / "numa_node").write_text("1\n")
    fake_nvml.use("rtx3080-homelab")  # NVML answers NOT_SUPPORTED for its NUMA node

    assert discover("homelab", sysfs_root=empty_sysfs).gpus[0].numa_node == 1


def test_mig_enabled_gpu_is_reported_as_such(fake_nvml: FakeNvml, empty_sysfs: Path) -> None:
    document = inventory_document("mixed-node")
    document["gpus"][2]["migEnabled"] = True
    fake_nvml.use(document)

    assert [g.mig_mode_enabled for g in discover("mixed-node", sysfs_root=empty_sysfs).gpus] == [False, False, True]


@pytest.mark.parametrize(
    ("nvml", "linux"),
    [("00000000:3B:00.0", "0000:3b:00.0"), ("0000:d8:00.0", "0000:d8:00.0"), ("01:00.0", "0000:01:00.0"),
     ("00000001:0A:1F.7", "0001:0a:1f.7")],
)
def test_pci_bus_ids_are_normalized_to_the_linux_form(nvml: str, linux: str) -> None:
    assert normalize_pci_bus_id(nvml) == linux


@pytest.mark.parametrize("bad", ["", "01:00", "0000:01:00.8", "zz:00.0", "0000:01:00.0:1"])
def test_malformed_pci_bus_id_is_rejected(bad: str) -> None:
    with pytest.raises(ValueError, match="not a PCI address"):
        normalize_pci_bus_id(bad)


def test_gpu_info_rejects_impossible_memory() -> None:
    with pytest.raises(ValueError, match="reserved memory must be between 0 and the total"):
        GpuInfo(**{**HOMELAB_RTX3080.__dict__, "memory_reserved_bytes": 11 * 1024 * MiB})


def test_node_inventory_rejects_duplicate_uuids() -> None:
    twin = GpuInfo(**{**HOMELAB_RTX3080.__dict__, "index": 1, "minor_number": 1})
    with pytest.raises(ValueError, match="duplicate GPU UUID GPU-6b1f2c3d"):
        NodeInventory(node_name="homelab", gpus=(HOMELAB_RTX3080, twin))
