"""Running C programs under libvgpu.so on the fake libcuda.so.1, with claim dirs in a temp root."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from vgpu_dra.driver.claimconfig import ClaimConfig, GpuLimit, Policy, render
from vgpu_dra.driver.region import RegionSnapshot, read_region

REPO = Path(__file__).resolve().parents[2]
FAKES_OUT = REPO / "tests" / "fakes" / "out"
SHIM_OUT = REPO / "shim" / "out"
TEST_SHIM = SHIM_OUT / "libvgpu-test.so"
PROD_SHIM = SHIM_OUT / "libvgpu.so"
CUDAPROG = FAKES_OUT / "progs" / "cudaprog"
PLAIN = FAKES_OUT / "progs" / "plain"
LAUNCHLOOP = FAKES_OUT / "progs" / "launchloop"

GPU0 = "GPU-00000000-0000-0000-0000-000000000000"
GPU_A = "GPU-aaaaaaaa-1111-2222-3333-444444444444"
GPU_B = "GPU-bbbbbbbb-5555-6666-7777-888888888888"
MiB = 1 << 20


def build_all() -> None:
    """Build the shim, the fakes and the test programs (make is incremental)."""
    for target in (REPO / "shim", REPO / "tests" / "fakes", REPO / "tests" / "shim" / "progs"):
        subprocess.run(["make", "-s", "-C", str(target)], check=True)


@dataclass
class Result:
    """Parsed output of cudaprog: one dict per printed line, plus the process's stderr."""

    lines: list[dict[str, str]]
    stderr: str
    returncode: int

    def rc(self, index: int) -> int:
        return int(self.lines[index]["rc"])

    def rcs(self) -> list[int]:
        return [int(line["rc"]) for line in self.lines]


def parse_lines(stdout: str) -> list[dict[str, str]]:
    lines = []
    for raw in stdout.splitlines():
        parts = raw.split()
        if not parts:
            continue
        entry = {"cmd": parts[0]}
        for part in parts[1:]:
            key, _, value = part.partition("=")
            entry[key] = value
        lines.append(entry)
    return lines


@dataclass
class Node:
    """A fake node: devices of the fake driver, a shared fake-driver state, a claims root."""

    root: Path
    devices: dict[str, int] = field(default_factory=lambda: {GPU0: 16 << 30})
    ctx_bytes: int = 0
    fail: tuple[str, ...] = ()
    shared_state: Path | None = None  # another node's fake-driver state: the same physical GPUs
    # A fake driver that lacks part of the API (tests/fakes/cuda/Makefile: "old-driver", "no-events").
    driver: str | None = None
    # NVML, as every node with the driver has it (tests/fakes/nvml, its memory, processes and
    # utilization following the fake driver); False: a node without a usable NVML.
    nvml: bool = True

    @property
    def claims_root(self) -> Path:
        return self.root / "claims"

    @property
    def state_file(self) -> Path:
        return self.shared_state or self.root / "fake-cuda.state"

    def add_claim(self, uid: str, limits: dict[str, int], cores: int = 0, policy: Policy = "soft") -> Path:
        """Write a claim dir (config + region) the way the kubelet plugin does; return the region."""
        from vgpu_dra.driver.region import create_region

        directory = self.claims_root / uid
        directory.mkdir(parents=True, exist_ok=True)
        config = ClaimConfig(uid, tuple(GpuLimit(u, m, cores, policy) for u, m in limits.items()))
        (directory / "config").write_text(render(config))
        create_region(directory / "region", config)
        return directory / "region"

    def region(self, uid: str) -> RegionSnapshot:
        return read_region(self.claims_root / uid / "region")

    def env(self, shim: Path | None = TEST_SHIM, **extra: str) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LD_LIBRARY_PATH": f"{FAKES_OUT / 'variants' / self.driver}:{FAKES_OUT}" if self.driver else str(FAKES_OUT),
            "VGPU_CLAIMS_ROOT": str(self.claims_root),
            "FAKE_CUDA_DEVICES": ",".join(f"{u}={b}" for u, b in self.devices.items()),
            "FAKE_CUDA_STATE": str(self.state_file),
            "FAKE_CUDA_CTX_BYTES": str(self.ctx_bytes),
        }
        if self.fail:
            env["FAKE_CUDA_FAIL"] = ",".join(self.fail)
        if self.nvml:
            env["FAKE_NVML_INVENTORY"] = str(self.write_nvml_inventory())
        if shim is not None:
            env["LD_PRELOAD"] = str(shim)
        env.update(extra)
        return env

    def run(self, *args: str, mode: str = "link", shim: Path | None = TEST_SHIM, timeout: float = 30, **extra: str) -> Result:
        proc = subprocess.run(
            [str(CUDAPROG), mode, *args],
            env=self.env(shim, **extra),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return Result(parse_lines(proc.stdout), proc.stderr, proc.returncode)

    def start(self, *args: str, mode: str = "link", **extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(CUDAPROG), mode, *args],
            env=self.env(**extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # its own process group: stop() also ends fork children
        )

    def start_loop(self, *args: str, **extra: str) -> subprocess.Popen[str]:
        """Start the busy-loop program (tests/shim/progs/launchloop.c) with options args."""
        return subprocess.Popen(
            [str(LAUNCHLOOP), *args],
            env=self.env(**extra),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def write_nvml_inventory(self) -> Path:
        """A fake NVML inventory with this node's devices; their utilization follows the fake driver."""
        lines = ["fake-nvml-inventory 1", "driver_version 550.54.15", "cuda_driver_version 12040"]
        for index, (uuid, size) in enumerate(self.devices.items()):
            lines += ["gpu", f"uuid {uuid}", "name NVIDIA Fake", f"pci_bus_id 00000000:{index + 1:02x}:00.0",
                      f"memory_total {size}"]
        path = self.root / "nvml-inventory.txt"
        text = "\n".join(lines) + "\n"
        if not path.exists() or path.read_text() != text:
            # Renamed into place: processes started earlier may be reading it right now.
            scratch = path.with_suffix(f".{os.getpid()}.tmp")
            scratch.write_text(text)
            scratch.replace(path)
        return path

    def fake_device_used(self, device: int = 0) -> int:
        """Device-wide bytes live processes hold now, as the fake driver counts them."""
        data = self.state_file.read_bytes()
        offset = 8 + 8 * device
        return int.from_bytes(data[offset : offset + 8], "little", signed=True)

    def fake_device_peak(self, device: int = 0) -> int:
        """Device-wide peak usage of live processes the fake driver saw (struct fake_state)."""
        data = self.state_file.read_bytes()
        offset = 8 + 8 * 8 + 8 * device
        return int.from_bytes(data[offset : offset + 8], "little", signed=True)


def stop(proc: subprocess.Popen[str]) -> None:
    """SIGKILL a process started by Node.start and every process it forked."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def read_until(proc: subprocess.Popen[str], cmd: str, timeout: float = 20) -> list[dict[str, str]]:
    """Read a running cudaprog's lines up to and including the first line of command cmd."""
    assert proc.stdout is not None
    seen: list[dict[str, str]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        raw = proc.stdout.readline()
        if not raw:
            break
        seen.extend(parse_lines(raw))
        if seen and seen[-1]["cmd"] == cmd:
            return seen
    raise AssertionError(f"{cmd!r} never printed; got {seen}")


@contextmanager
def neighbour_holding(node: Node, held: int, **fields: int | bool) -> Iterator[None]:
    """While the block runs, a process of another node's claim on node's GPUs (one fake device
    state) holds a context and `held` bytes there: a tenant node's shim knows nothing of."""
    neighbour = Node(root=node.root / "neighbour", devices=node.devices, shared_state=node.state_file,
                     **fields)  # type: ignore[arg-type]
    neighbour.add_claim("claim-n", {uuid: size for uuid, size in node.devices.items()})
    holder = neighbour.start("init", "ctx", "0", "alloc", str(held), "hold")
    try:
        read_until(holder, "hold")
        yield
    finally:
        stop(holder)
