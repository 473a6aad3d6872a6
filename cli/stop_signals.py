"""Run a long-lived component until SIGTERM or SIGINT, stopping within a fraction of a second.

CPython runs signal handlers in the main thread only, and only once that thread comes back to the
interpreter. When the kernel delivers a process-directed signal to another thread (it may, to any
thread that does not block it), a main thread sleeping in a long ``Event.wait`` is not
interrupted: a controller waiting 20 s for its next Lease renewal noticed its SIGTERM 20 s late.
So the component runs in a thread of its own and the main thread only waits for it in short
slices, each of which ends in the interpreter, where the handler runs.
"""
from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

import structlog

# How late a signal may be noticed at most.
_SLICE_S = 0.2


def run_until_stopped(work: Callable[[threading.Event], None], name: str) -> None:
    """Call ``work(stop)`` in a thread; SIGTERM and SIGINT set ``stop``. Returns when ``work`` does,
    raising what it raised."""
    stop = threading.Event()
    log = structlog.get_logger(f"vgpu_dra.{name}")

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal received; shutting down", signal=signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    failure: list[BaseException] = []

    def body() -> None:
        try:
            work(stop)
        except BaseException as exc:  # handed to the main thread, which raises it
            failure.append(exc)

    worker = threading.Thread(target=body, name=name)
    worker.start()
    while worker.is_alive():
        worker.join(_SLICE_S)
    if failure:
        raise failure[0]
