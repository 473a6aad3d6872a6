"""Processes the fake NVML lists while it runs: the test side of ``FAKE_NVML_PROCESSES``.

The fake (tests/fakes/nvml/processes.c) reads the file again at every process query, so a test
changes what a running kubelet plugin sees through NVML by calling :meth:`LiveProcesses.set`.
Each process: the GPU's UUID, the host PID NVML reports, the bytes it uses, and whether it is a
compute or a graphics process. :meth:`fail` makes a process query answer an NVML error.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

ENV = "FAKE_NVML_PROCESSES"


@dataclass(frozen=True)
class FakeProcess:
    """One process as the fake NVML lists it (``pid`` may be ``"self"``)."""

    gpu_uuid: str
    pid: int | str
    used_bytes: int
    kind: Literal["compute", "graphics"] = "compute"


class LiveProcesses:
    """The live process file of one test."""

    def __init__(self, path: Path):
        self.path = path
        self._processes: tuple[FakeProcess, ...] = ()
        self._errors: dict[str, str] = {}
        self._write()

    def env(self) -> dict[str, str]:
        """The variable a child process needs to read this file."""
        return {ENV: str(self.path)}

    def set(self, processes: Iterable[FakeProcess]) -> None:
        """From the next query on, NVML lists exactly these processes (besides the inventory's)."""
        self._processes = tuple(processes)
        self._write()

    def fail(self, errors: Mapping[str, str]) -> None:
        """Make each named NVML function answer its error code (a name such as ``UNKNOWN``); {} heals."""
        self._errors = dict(errors)
        self._write()

    def _write(self) -> None:
        lines = [f"error {function} {code}" for function, code in sorted(self._errors.items())]
        lines += [f"{p.gpu_uuid} {p.pid} {int(p.used_bytes)} {p.kind}" for p in self._processes]
        scratch = self.path.with_suffix(f".{os.getpid()}.tmp")
        scratch.write_text("\n".join(lines) + "\n")
        scratch.replace(self.path)  # a query in another thread never sees half a file


@pytest.fixture
def live_nvml_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LiveProcesses:
    """A LiveProcesses file that this process's fake NVML reads (FAKE_NVML_PROCESSES is set)."""
    live = LiveProcesses(tmp_path / "fake-nvml-processes.txt")
    monkeypatch.setenv(ENV, str(live.path))
    return live
