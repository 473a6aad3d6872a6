"""The GPU taints in force, kept in the plugin's state folder across restarts.

An XID is reported by NVML once; a plugin restarted (upgrade, crash, node drain of the DaemonSet)
inside the quiet period must not publish the GPU untainted and let new claims land on it. The
file is rewritten atomically whenever the health loop's book changes (driver/checkpoint.py's
``atomic_write``), and read once at start.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from vgpu_dra.driver.checkpoint import atomic_write
from vgpu_dra.driver.device_health import TaintBook, book_from_json, book_to_json


class UnreadableTaints(RuntimeError):
    """The file is there but cannot be read or is not a taint state document."""


class TaintStore:
    """``gpu-taints.json`` in the plugin's state folder."""

    def __init__(self, path: Path):
        self.path = path
        self._written: bytes | None = None

    def load(self, uuids: Mapping[str, str]) -> TaintBook | None:
        """The taints kept before the restart on GPUs still there (``uuids``: device name → UUID);
        None when there is no file (first start). Raises UnreadableTaints."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise UnreadableTaints(f"{self.path}: {exc.strerror or exc}") from None
        try:
            book = book_from_json(json.loads(data), uuids)
        except ValueError as exc:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise UnreadableTaints(f"{self.path}: {exc}") from None
        self._written = data
        return book

    def quarantine(self) -> Path | None:
        """Move an unreadable file aside (kept for a post-mortem); where it went, None if it could not."""
        target = self.path.with_name(self.path.name + ".unreadable")
        try:
            os.replace(self.path, target)
        except OSError:
            return None
        return target

    def save(self, book: TaintBook, uuids: Mapping[str, str]) -> bool:
        """Write ``book`` unless the file already says the same; True when it wrote. Raises OSError."""
        data = json.dumps(book_to_json(book, uuids), sort_keys=True).encode()
        if data == self._written:
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, data, 0o600)
        self._written = data
        return True
