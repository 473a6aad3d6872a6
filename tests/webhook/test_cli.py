"""`vgpu-dra webhook` refuses bad options with one line and exit status 2, before serving anything."""
from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(("args", "message"), [
    ([], "the certificate needs a name: give --service-name, --dns-name or --ip-address"),
    (["--ip-address", "nonsense"], "--ip-address 'nonsense' is not an IPv4 or IPv6 address"),
    (["--dns-name", "x", "--cert-validity-days", "400", "--ca-validity-days", "300"],
     "--cert-validity-days must be positive and at most --ca-validity-days"),
    (["--dns-name", "x", "--kubeconfig", "/nonexistent/kubeconfig", "--metrics-port", "0"],
     "no usable cluster configuration"),
])
def test_bad_options_are_one_line(args, message):
    done = subprocess.run([sys.executable, "-m", "vgpu_dra.cli.main", "webhook", *args], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith("vgpu-dra webhook: error: ") and message in line, line
