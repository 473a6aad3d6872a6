"""Where the card runs: the fake driver or the real GPU, claims in temporary roots, child programs.

Every program a measurement starts gets its environment from :func:`env`: on the fakes, the fake
``libcuda.so.1`` / ``libnvidia-ml.so.1`` first on ``LD_LIBRARY_PATH`` and a fake-driver state file
(one per scenario unless processes must share a device); on a GPU, this process's environment
without any shim variables. Under the shim, the test build ``libvgpu-test.so`` is preloaded with
``VGPU_CLAIMS_ROOT`` naming a root that holds exactly one claim, written like the kubelet plugin
writes it (config + region); its hot paths are compiled from the release build's sources.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vgpu_dra.driver.claimconfig import ClaimConfig, GpuLimit, Policy, render
from vgpu_dra.driver.region import RegionSnapshot, create_region, read_region

REPO = Path(__file__).resolve().parents[2]
FAKES_OUT = REPO / "tests" / "fakes" / "out"
TEST_SHIM = REPO / "shim" / "out" / "libvgpu-test.so"
CUDAPROG = FAKES_OUT / "progs" / "cudaprog"
LAUNCHLOOP = FAKES_OUT / "progs" / "launchloop"

GiB = 1 << 30
MiB = 1 << 20
# The fake GPU is H100-sized, so percentages of it are the sizes a user's H100 would give.
FAKE_GPU = "GPU-5c0f0000-0000-4000-8000-00000000e100"
FAKE_GPU_NAME = "NVIDIA Fake H100 80GB HBM3"
FAKE_TOTAL = 80 * GiB
FAKE_RESERVED = 512 * MiB
FAKE_CTX_BYTES = 500 * MiB  # a CUDA context's footprint on an H100, order of magnitude
FAKE_DRIVER = "550.54.15"
FAKE_CUDA_DRIVER = 12040


@dataclass
class Context:
    """What every measurement needs to know; written to a file for the child processes."""

    mode: str
    work: str
    quick: bool = False
    torch_python: str = ""
    gpu_uuid: str = FAKE_GPU
    gpu_total: int = FAKE_TOTAL
    gpu_usable: int = FAKE_TOTAL - FAKE_RESERVED
    loop: str = ""  # the compiled bench/shim_overhead_loop.c
    python_path: str = ""  # put first on the PYTHONPATH of every child (the fake torch's folder)

    @property
    def fake(self) -> bool:
        """On the fake driver and NVML (with or without the fake torch)."""
        return self.mode in ("fake", "fake-torch")

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def load(cls, path: Path) -> Context:
        return cls(**json.loads(path.read_text()))

    def scratch(self, name: str) -> Path:
        """A fresh directory for one scenario under the run's work directory."""
        path = Path(self.work) / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def seconds(self, gpu: float, fake: float) -> float:
        """A scenario's duration: the GPU's, or the fake's (shorter still with --quick)."""
        if not self.fake:
            return gpu
        return max(1.5, fake * 0.6) if self.quick else fake


def fake_inventory(path: Path) -> Path:
    """The fake NVML's inventory: one GPU, the fake driver's device."""
    path.write_text("\n".join([
        "fake-nvml-inventory 1", f"driver_version {FAKE_DRIVER}", f"cuda_driver_version {FAKE_CUDA_DRIVER}",
        "gpu", f"uuid {FAKE_GPU}", f"name {FAKE_GPU_NAME}", "pci_bus_id 00000000:01:00.0",
        f"memory_total {FAKE_TOTAL}", f"memory_reserved {FAKE_RESERVED}"]) + "\n")
    return path


def write_claim(root: Path, uuid: str, memory: int, cores: int = 0, policy: Policy = "hard",
                uid: str = "scorecard") -> Path:
    """A claims root holding one claim (config + region) as the kubelet plugin writes it."""
    directory = root / uid
    directory.mkdir(parents=True, exist_ok=True)
    config = ClaimConfig(uid, (GpuLimit(uuid, memory, cores, policy),))
    (directory / "config").write_text(render(config))
    create_region(directory / "region", config)
    return root


def region(root: Path, uid: str = "scorecard") -> RegionSnapshot:
    return read_region(root / uid / "region")


def env(ctx: Context, claims: Path | None, state: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of one program: under the shim when ``claims`` names a claims root."""
    if ctx.fake:
        base = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LD_LIBRARY_PATH": str(FAKES_OUT),
            "FAKE_CUDA_DEVICES": f"{FAKE_GPU}={FAKE_TOTAL}",
            "FAKE_CUDA_CTX_BYTES": str(FAKE_CTX_BYTES),
            "FAKE_NVML_INVENTORY": str(fake_inventory(Path(ctx.work) / "nvml-inventory.txt")),
            "FAKE_CUDA_STATE": str(state or Path(ctx.work) / "fake-cuda.state"),
        }
        for name in ("PYTHONPATH", "HOME", "TMPDIR"):
            if name in os.environ:
                base[name] = os.environ[name]
    else:
        base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "VGPU_CLAIMS_ROOT")}
        base.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")  # CUDA's device 0 is NVML's index 0
    if ctx.python_path:
        base["PYTHONPATH"] = os.pathsep.join(p for p in (ctx.python_path, base.get("PYTHONPATH", "")) if p)
    if claims is not None:
        base["LD_PRELOAD"] = str(TEST_SHIM)
        base["VGPU_CLAIMS_ROOT"] = str(claims)
    base.update(extra)
    return base


def run(argv: list[str], environ: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a program to completion; a failure names the program and its last stderr."""
    out = subprocess.run(argv, env=environ, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        label = Path(argv[0]).name + (" -c <program>" if argv[1:2] == ["-c"] else f" {' '.join(argv[1:3])}")
        raise RuntimeError(f"{label} exited {out.returncode}: {last_line(out.stderr)}")
    return out


def last_line(text: str) -> str:
    """What a failed program said last (for a Python child: its exception, not the traceback)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(nothing on stderr)"


def cudaprog(ctx: Context, claims: Path | None, *commands: str, state: Path | None = None,
             timeout: float = 60) -> list[dict[str, str]]:
    """tests/shim/progs/cudaprog's lines ("<cmd> rc=<n> key=value ...") as dicts."""
    out = run([str(CUDAPROG), "link", *commands], env(ctx, claims, state), timeout)
    return parse_lines(out.stdout)


def parse_lines(stdout: str) -> list[dict[str, str]]:
    lines = []
    for raw in stdout.splitlines():
        parts = raw.split()
        if parts:
            lines.append({"cmd": parts[0], **dict(p.partition("=")[::2] for p in parts[1:])})
    return lines


def python_json(python: str, script: str, args: list[str], environ: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run a Python child; the JSON object it printed last."""
    out = run([require(python), "-c", script, *args], environ, timeout)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"the child printed no JSON: {out.stdout[-300:]} {out.stderr[-300:]}")
    return json.loads(lines[-1])


class Child:
    """A running Python child whose stdout is read by a thread, so waits have timeouts."""

    def __init__(self, argv: list[str], environ: dict[str, str]) -> None:
        self.proc = subprocess.Popen(argv, env=environ, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.lines), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, None), daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _pump(self, stream: Any, into: queue.Queue[str | None] | None) -> None:
        for line in stream:
            if into is not None:
                into.put(line)
            else:
                self.stderr.append(line)
        if into is not None:
            into.put(None)

    def next_json(self, timeout: float) -> dict[str, Any]:
        """The next stdout line that is a JSON object (the child's other prints are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"no answer within {timeout:.0f} s; stderr: {last_line(''.join(self.stderr))}") from None
            if line is None:
                self.proc.wait()
                raise RuntimeError(f"exited {self.proc.returncode} before answering: {last_line(''.join(self.stderr))}")
            if line.startswith("{"):
                return json.loads(line)

    def send(self, text: str = "\n") -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def require(python: str) -> str:
    """The interpreter, or the reason there is none (the PyTorch rows need one)."""
    if not python:
        raise RuntimeError("no Python with PyTorch found: pass --torch-python PATH")
    return python


def start_python(python: str, script: str, args: list[str], environ: dict[str, str]) -> Child:
    return Child([require(python), "-c", script, *args], environ)


def stop(proc: subprocess.Popen[str] | Child) -> None:
    if isinstance(proc, Child):
        proc.stop()
        return
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def python_with_torch() -> str:
    """An interpreter that imports torch: this one, else python3 on PATH; "" when none does."""
    for candidate in (sys.executable, shutil.which("python3") or ""):
        if not candidate:
            continue
        try:
            ok = subprocess.run([candidate, "-c", "import torch"], capture_output=True, timeout=120).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            return candidate
    return ""


def start_cudaprog(ctx: Context, claims: Path | None, *commands: str, state: Path | None = None) -> subprocess.Popen[str]:
    """cudaprog running in the background (e.g. ending in "hold"); stop it with :func:`stop`."""
    return subprocess.Popen([str(CUDAPROG), "link", *commands], env=env(ctx, claims, state),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_until(proc: subprocess.Popen[str], cmd: str, timeout: float) -> list[dict[str, str]]:
    """A running cudaprog's lines up to and including the first line of command ``cmd``."""
    assert proc.stdout is not None
    seen: list[dict[str, str]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        raw = proc.stdout.readline()
        if not raw:
            break
        seen += parse_lines(raw)
        if seen and seen[-1]["cmd"] == cmd:
            return seen
    err = proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
    raise RuntimeError(f"cudaprog never reached {cmd!r}: {seen} {err[-400:]}")
