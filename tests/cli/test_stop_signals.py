"""A component stops on SIGTERM even when the kernel hands the signal to one of its other threads."""

import subprocess
import sys

SCRIPT = r"""
import signal, threading, time
from vgpu_dra.cli.stop_signals import run_until_stopped

def busy():
    # The signal lands in this thread, not the main one (the kernel may pick any thread).
    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
    time.sleep(60)

def work(stop):
    threading.Thread(target=busy, daemon=True).start()
    print("stopped" if stop.wait(10) else "not stopped", flush=True)

run_until_stopped(work, "test")
"""

FAILING = r"""
from vgpu_dra.cli.stop_signals import run_until_stopped

def work(stop):
    raise RuntimeError("cannot reach the API server")

run_until_stopped(work, "test")
"""


def test_a_sigterm_delivered_to_another_thread_still_stops_the_component() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "stopped"
    assert "signal received; shutting down" in done.stdout + done.stderr


def test_what_the_component_raises_reaches_the_caller() -> None:
    done = subprocess.run([sys.executable, "-c", FAILING], capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "RuntimeError: cannot reach the API server" in done.stderr
