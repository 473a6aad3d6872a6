"""The controller and the kubelet plugin refuse what cannot work with one line and exit 2: a bad
flag or an unusable cluster configuration names itself and its fix, never as a traceback."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

NO_CONFIG = "no usable cluster configuration ("
FIX = "give --kubeconfig, set KUBECONFIG, or run in a pod"


def vgpu_dra(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vgpu_dra.cli.main", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd)


def kubeconfig(tmp_path: Path, kind: str) -> str:
    """A kubeconfig that is absent, malformed YAML, or valid (a server nobody listens on)."""
    path = tmp_path / f"kubeconfig-{kind}"
    if kind == "malformed":
        path.write_text("clusters: [\n")
    elif kind == "valid":
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "x",
            "clusters": [{"name": "x", "cluster": {"server": "http://127.0.0.1:1"}}],
            "users": [{"name": "x", "user": {}}], "contexts": [{"name": "x", "context": {"cluster": "x", "user": "x"}}]}))
    return str(path)


@pytest.mark.parametrize(("config", "args", "message"), [
    ("absent", [], NO_CONFIG),
    ("malformed", [], NO_CONFIG),
    ("absent", ["--lease-duration", "3", "--renew-deadline", "3"], "must be longer than the renew deadline"),
    ("absent", ["--owner-gone-grace", "-1"], "--owner-gone-grace -1 is negative"),
])
def test_the_controller_refuses_with_one_line(tmp_path, config, args, message):
    done = vgpu_dra("controller", "--kubeconfig", kubeconfig(tmp_path, config), *args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("vgpu-dra controller: error: ") and message in line, line
    if message == NO_CONFIG:
        assert line.endswith(FIX), line


@pytest.mark.parametrize(("config", "args", "message"), [
    ("absent", ["--node-name", "n1"], NO_CONFIG),
    ("malformed", ["--node-name", "n1"], NO_CONFIG),
    ("valid", ["--node-name", ""], "node name is empty: pass --node-name or set NODE_NAME"),
    ("valid", ["--node-name", "n1", "--watchdog-tolerance", "lots"], "'lots' is not a Kubernetes quantity"),
    ("valid", ["--node-name", "n1", "--resync-seconds", "0"], "the resync period 0 s must be positive"),
])
def test_the_kubelet_plugin_refuses_with_one_log_line(tmp_path, config, args, message):
    done = vgpu_dra("kubelet-plugin", "--kubeconfig", kubeconfig(tmp_path, config), *args,
                    "--registrar-dir", str(tmp_path / "registry"), "--plugin-dir", str(tmp_path / "plugin"),
                    "--cdi-dir", str(tmp_path / "cdi"), "--state-dir", str(tmp_path / "state"),
                    "--metrics-port", "-1", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    [line] = (done.stdout + done.stderr).splitlines()
    record = json.loads(line)  # the DaemonSet's log: structured, one record
    assert record["event"] == "kubelet plugin cannot start" and message in record["error"], record
    assert "exception" not in record, record
