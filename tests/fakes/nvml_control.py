"""Drive the fake NVML's device health from a test: XIDs, ECC errors, a GPU off the bus.

The fake reads the control file named by ``FAKE_NVML_CONTROL`` before every event wait and
health query (format: tests/fakes/nvml/README.md), so the process under test may be this one or
a child. ``env()`` adds the variable to a child's environment; ``use()`` sets it here.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest

CONTROL_VARIABLE = "FAKE_NVML_CONTROL"


class NvmlControl:
    """The control file of one test; each method appends one line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.touch()

    def env(self, base: Mapping[str, str]) -> dict[str, str]:
        """``base`` with the control file set (for a child process)."""
        return {**base, CONTROL_VARIABLE: str(self.path)}

    def use(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Make the fake loaded in this process read this control file."""
        monkeypatch.setenv(CONTROL_VARIABLE, str(self.path))

    def _line(self, text: str) -> None:
        with self.path.open("a") as out:
            out.write(text + "\n")

    def xid(self, uuid: str, code: int) -> None:
        """An XID critical-error event on the GPU."""
        self._line(f"xid {uuid} {int(code)}")

    def double_bit_ecc(self, uuid: str) -> None:
        """A double-bit ECC event; the volatile uncorrected count goes up by one."""
        self._line(f"ecc-double-bit {uuid}")

    def single_bit_ecc(self, uuid: str) -> None:
        """A single-bit (corrected) ECC event."""
        self._line(f"ecc-single-bit {uuid}")

    def page_retired(self, uuid: str) -> None:
        """A page-retirement event; retired pages are pending until a reset."""
        self._line(f"page-retired {uuid}")

    def remap_pending(self, uuid: str) -> None:
        """Row remapping pending (A100 and later) until a reset."""
        self._line(f"remap-pending {uuid}")

    def remap_failed(self, uuid: str) -> None:
        """Row remapping failed: the GPU needs service."""
        self._line(f"remap-failed {uuid}")

    def lost(self, uuid: str) -> None:
        """The GPU falls off the bus: every call on it answers GPU_IS_LOST."""
        self._line(f"lost {uuid}")

    def reset(self, uuid: str) -> None:
        """A GPU reset: back on the bus, nothing pending, volatile ECC counts zero."""
        self._line(f"reset {uuid}")
