"""Inventory YAML files (`vgpu-dra plan` without a GPU): parsing and every rejection."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from vgpu_dra.driver.inventory_file import InventoryFileError, load_inventories, load_inventory, parse_inventory

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20


def _homelab() -> dict[str, Any]:
    return yaml.safe_load((REPO / "tests/fakes/inventories/rtx3080-homelab.yaml").read_text())


def test_builtin_example_inventory_is_the_homelab_rtx3080() -> None:
    example = load_inventory(REPO / "examples/inventory/rtx3080.yaml")
    homelab = load_inventory(REPO / "tests/fakes/inventories/rtx3080-homelab.yaml")

    assert example == homelab
    (gpu,) = example.gpus
    assert (gpu.product_name, gpu.usable_memory_bytes, gpu.pci_bus_id) == ("NVIDIA GeForce RTX 3080", 9997 * MiB, "0000:01:00.0")


def test_optional_fields_take_their_defaults() -> None:
    document = _homelab()
    for key in ("minorNumber", "numaNode", "reservedMemory", "migEnabled", "fakeNvml", "brand", "architecture"):
        del document["gpus"][0][key]
    document["gpus"][0]["memory"] = 10737418240  # bytes as an integer

    (gpu,) = parse_inventory(document).gpus

    assert (gpu.minor_number, gpu.numa_node, gpu.memory_reserved_bytes, gpu.mig_mode_enabled) == (0, -1, 0, False)
    assert (gpu.brand, gpu.architecture, gpu.memory_total_bytes) == ("Unknown", "Unknown", 10240 * MiB)


def test_gpus_come_out_in_index_order() -> None:
    document = yaml.safe_load((REPO / "tests/fakes/inventories/mixed-node.yaml").read_text())
    document["gpus"].reverse()

    assert [g.index for g in parse_inventory(document).gpus] == [0, 1, 2]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["gpus"][0].update(memroy="1Gi"), "gpus[0].memroy: Extra inputs are not permitted"),
        (lambda d: d["gpus"][0].update(memory="10 GB"), "gpus[0].memory: '10 GB' is not a Kubernetes quantity"),
        (lambda d: d["gpus"][0].update(memory="-1Gi"), "gpus[0].memory: '-1Gi' is negative"),
        (lambda d: d["gpus"][0].update(cudaComputeCapability=8.6), 'gpus[0].cudaComputeCapability: 8.6 must be a quoted string like "8.6"'),
        (lambda d: d["gpus"][0].update(cudaComputeCapability="8"), "gpus[0].cudaComputeCapability: '8' is not major.minor"),
        (lambda d: d.update(cudaDriverVersion=12.4), "cudaDriverVersion: 12.4 must be a quoted string"),
        (lambda d: d["gpus"][0].update(brand="Geforce"), "gpus[0].brand: unknown brand 'Geforce'; one of: "),
        (lambda d: d["gpus"][0].update(architecture="Ada"), "gpus[0].architecture: unknown architecture 'Ada'"),
        (lambda d: d["gpus"][0].update(pciBusID="slot 1"), "gpus[0].pciBusID: 'slot 1' is not a PCI address"),
        (lambda d: d["gpus"][0].update(numaNode=-2), "gpus[0].numaNode: Input should be greater than or equal to -1"),
        (lambda d: d["gpus"][0].update(reservedMemory="11Gi"), "reserved memory must be between 0 and the total memory"),
        (lambda d: d.update(kind="Node"), "kind: Input should be 'NodeInventory'"),
        (lambda d: d.pop("nodeName"), "nodeName: Field required"),
        (lambda d: d["gpus"].append(dict(d["gpus"][0], index=1)), "duplicate GPU UUID GPU-6b1f2c3d"),
    ],
)
def test_invalid_inventory_names_the_field(change: Any, message: str) -> None:
    document = _homelab()
    change(document)

    with pytest.raises(InventoryFileError) as caught:
        parse_inventory(document, source="inv.yaml")
    assert str(caught.value).startswith("inv.yaml: ")
    assert message in str(caught.value)


def test_a_file_may_hold_several_nodes(tmp_path: Path) -> None:
    second = _homelab()
    second["nodeName"] = "homelab-2"
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump_all([_homelab(), second]))

    assert [n.node_name for n in load_inventories(path)] == ["homelab", "homelab-2"]
    with pytest.raises(InventoryFileError, match="expected one NodeInventory, found 2"):
        load_inventory(path)


def test_the_same_node_twice_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump_all([_homelab(), _homelab()]))

    with pytest.raises(InventoryFileError, match="node homelab appears more than once"):
        load_inventories(path)


def test_unreadable_and_empty_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(InventoryFileError, match=r"cannot read inventory .*missing.yaml"):
        load_inventory(tmp_path / "missing.yaml")
    (tmp_path / "empty.yaml").write_text("# nothing\n")
    with pytest.raises(InventoryFileError, match="no NodeInventory document"):
        load_inventory(tmp_path / "empty.yaml")
    (tmp_path / "broken.yaml").write_text("gpus: [\n")
    with pytest.raises(InventoryFileError, match="not valid YAML"):
        load_inventory(tmp_path / "broken.yaml")
