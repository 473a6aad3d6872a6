"""Point the unmodified ``pynvml`` at the fake libnvidia-ml.so.1 (tests/fakes/nvml) for an inventory.

Two ways, both driven by a NodeInventory YAML (tests/fakes/inventories/*.yaml or a dict):

* another process (the shim, the kubelet plugin, a C test program): ``fake.env(...)`` gives the
  environment it needs — ``LD_LIBRARY_PATH`` leading to tests/fakes/out, so ``dlopen
  ("libnvidia-ml.so.1")`` finds the fake, and ``FAKE_NVML_INVENTORY`` naming the flat file.
* this process: ``fake.use(...)``. glibc reads ``LD_LIBRARY_PATH`` once at start-up, so instead
  the fake is loaded once by absolute path; pynvml's later ``CDLL("libnvidia-ml.so.1")`` then
  finds it already loaded under its soname. The fake re-reads ``FAKE_NVML_INVENTORY`` on every
  first ``nvmlInit``, so each test may use a different inventory as long as NVML is shut down
  in between (``discover()`` always shuts it down).

Fixtures: ``fake_nvml_library`` (session; builds the library with make) and ``fake_nvml``
(per test; a :class:`FakeNvml` bound to the test's tmp_path). Import them into a test module
(``from tests.fakes.nvml_env import fake_nvml, fake_nvml_library  # noqa: F401``).
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from vgpu_dra.api.quantity import parse_bytes
from vgpu_dra.driver.inventory import ARCHITECTURE_NAMES, BRAND_NAMES, UNKNOWN
from vgpu_dra.driver.inventory_file import parse_inventory

FAKES_DIR = Path(__file__).resolve().parent
NVML_SOURCE_DIR = FAKES_DIR / "nvml"
OUT_DIR = FAKES_DIR / "out"
LIBRARY = OUT_DIR / "libnvidia-ml.so.1"
INVENTORIES_DIR = FAKES_DIR / "inventories"

_ARCHITECTURE_CODES = {name: code for code, name in ARCHITECTURE_NAMES.items()} | {UNKNOWN: 0xFFFFFFFF}
_BRAND_CODES = {name: code for code, name in BRAND_NAMES.items()}

# Process-wide: the library object that keeps the fake loaded in this interpreter, so pynvml's
# dlopen by soname resolves to it. Set once by preload_in_process(), never unloaded.
_preloaded: ctypes.CDLL | None = None


def build_library() -> Path:
    """Build the fake with make (idempotent) and return its path.

    Several pytest processes may build at once (helpers run their tiers in parallel), so the
    build holds an exclusive lock on a file next to the output.
    """
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    with open(OUT_DIR / ".nvml-build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = subprocess.run(
            ["make", "--no-print-directory", "-C", str(NVML_SOURCE_DIR)],
            capture_output=True,
            text=True,
            check=False,
        )
    if result.returncode != 0:
        raise RuntimeError(f"building the fake NVML failed:\n{result.stdout}\n{result.stderr}")
    return LIBRARY


def inventory_document(inventory: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """A NodeInventory as a dict: a name under tests/fakes/inventories ("mixed-node"), a path,
    or a dict (returned as a copy)."""
    if isinstance(inventory, Mapping):
        return yaml.safe_load(yaml.safe_dump(dict(inventory)))
    path = Path(inventory)
    if not path.suffix and not path.exists():
        path = INVENTORIES_DIR / f"{inventory}.yaml"
    return yaml.safe_load(path.read_text())


def render_flat_inventory(document: Mapping[str, Any]) -> str:
    """The fake's flat file for a NodeInventory document (format: tests/fakes/nvml/README.md).

    The document is first checked as vgpu-dra checks inventory files, so a typo fails here with
    the field's name rather than as a puzzling NVML answer later.
    """
    parse_inventory(document, source="fake NVML inventory")
    lines = [
        "fake-nvml-inventory 1",
        f"driver_version {document['driverVersion']}",
        f"cuda_driver_version {_cuda_version_code(str(document['cudaDriverVersion']))}",
    ]
    lines += _error_lines(document.get("fakeNvml") or {})
    for position, gpu in enumerate(document.get("gpus") or []):
        if gpu["index"] != position:
            raise ValueError(f"GPU indexes must be 0, 1, ... in order for the fake; got {gpu['index']} at {position}")
        fake = gpu.get("fakeNvml") or {}
        major, minor = str(gpu["cudaComputeCapability"]).split(".")
        mig = 1 if gpu.get("migEnabled") else 0
        utilization = fake.get("utilization") or {}
        lines += [
            "gpu",
            f"uuid {gpu['uuid']}",
            f"name {gpu['productName']}",
            f"brand {_BRAND_CODES[gpu.get('brand', UNKNOWN)]}",
            f"architecture {_ARCHITECTURE_CODES[gpu.get('architecture', UNKNOWN)]}",
            f"compute_capability {major} {minor}",
            f"pci_bus_id {gpu['pciBusID']}",
            f"pci_device_id {int(fake.get('pciDeviceId', 0)):#x}",
            f"pci_subsystem_id {int(fake.get('pciSubSystemId', 0)):#x}",
            f"minor_number {gpu.get('minorNumber', position)}",
            f"numa_node {gpu.get('numaNode', -1)}",
            f"memory_total {parse_bytes(gpu['memory'])}",
            f"memory_reserved {parse_bytes(gpu.get('reservedMemory', 0))}",
            f"mig_mode {mig} {mig}",
            f"utilization {int(utilization.get('gpu', 0))} {int(utilization.get('memory', 0))}",
        ]
        lines += [
            f"process {_pid(p['pid'])} {parse_bytes(p['usedGpuMemory'])}" for p in fake.get("processes") or []
        ]
        lines += _error_lines(fake)
    return "\n".join(lines) + "\n"


def _pid(value: int | str) -> str:
    """A process id, or "self": whichever process asks NVML sees its own pid there."""
    return "self" if value == "self" else str(int(value))


def _cuda_version_code(text: str) -> int:
    major, minor = text.split(".")
    return int(major) * 1000 + int(minor) * 10


def _error_lines(fake: Mapping[str, Any]) -> list[str]:
    return [f"error {function} {code}" for function, code in (fake.get("errors") or {}).items()]


def preload_in_process(library: Path) -> None:
    """Make this interpreter's pynvml use the fake (see the module docstring)."""
    global _preloaded
    import pynvml

    if _preloaded is None:
        loaded = pynvml.nvmlLib
        if loaded is not None and Path(getattr(loaded, "_name", "")).resolve() != library.resolve():
            raise RuntimeError(
                f"pynvml already loaded {loaded._name} in this process; the fake NVML cannot replace it"
            )
        _preloaded = ctypes.CDLL(str(library), mode=ctypes.RTLD_GLOBAL)


class FakeNvml:
    """The fake NVML for one test: writes inventories under ``workdir`` and selects them."""

    def __init__(self, library: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.library = library
        self.workdir = workdir
        self._monkeypatch = monkeypatch
        self._count = 0

    def write_inventory(self, inventory: str | Path | Mapping[str, Any]) -> Path:
        """Write the flat file for ``inventory`` and return its path."""
        self._count += 1
        path = self.workdir / f"fake-nvml-inventory-{self._count}.txt"
        path.write_text(render_flat_inventory(inventory_document(inventory)))
        return path

    def env(
        self,
        inventory: str | Path | Mapping[str, Any] | None,
        *,
        fail_init: str | None = None,
        base: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        """Environment for a child process that should load the fake for ``inventory``.

        ``inventory=None`` leaves FAKE_NVML_INVENTORY unset (the fake then answers
        DRIVER_NOT_LOADED); ``fail_init`` (an NVML error name such as "DRIVER_NOT_LOADED")
        makes nvmlInit fail with it.
        """
        env = dict(os.environ if base is None else base)
        env.pop("FAKE_NVML_INVENTORY", None)
        env.pop("FAKE_NVML_FAIL_INIT", None)
        previous = env.get("LD_LIBRARY_PATH")
        env["LD_LIBRARY_PATH"] = f"{self.library.parent}:{previous}" if previous else str(self.library.parent)
        if inventory is not None:
            env["FAKE_NVML_INVENTORY"] = str(self.write_inventory(inventory))
        if fail_init is not None:
            env["FAKE_NVML_FAIL_INIT"] = fail_init
        return env

    def use(self, inventory: str | Path | Mapping[str, Any] | None, *, fail_init: str | None = None) -> None:
        """Make pynvml in this process answer from ``inventory`` from its next nvmlInit on."""
        preload_in_process(self.library)
        if inventory is None:
            self._monkeypatch.delenv("FAKE_NVML_INVENTORY", raising=False)
        else:
            self._monkeypatch.setenv("FAKE_NVML_INVENTORY", str(self.write_inventory(inventory)))
        if fail_init is None:
            self._monkeypatch.delenv("FAKE_NVML_FAIL_INIT", raising=False)
        else:
            self._monkeypatch.setenv("FAKE_NVML_FAIL_INIT", fail_init)


@pytest.fixture(scope="session")
def fake_nvml_library() -> Path:
    """The built fake libnvidia-ml.so.1."""
    return build_library()


@pytest.fixture
def fake_nvml(fake_nvml_library: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeNvml]:
    """A :class:`FakeNvml` for this test; call ``.use(...)`` or ``.env(...)``."""
    workdir = tmp_path / "fake-nvml"
    workdir.mkdir()
    yield FakeNvml(fake_nvml_library, workdir, monkeypatch)
