"""The plugin as the DaemonSet runs it: a child process, SIGTERM, and kill -9 mid-prepare."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest

from tests.plugin.kubelet_client import FakeKubelet
from tests.plugin.node import plugin_command
from vgpu_dra.driver.checkpoint import is_temp_file


def _spawn(settings, kubeconfig: Path, env) -> subprocess.Popen:
    log = open(settings.state_dir.parent / "plugin.log", "ab")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(plugin_command(settings, kubeconfig), env=env, stdout=log, stderr=subprocess.STDOUT)


def _wait_registered(settings, process: subprocess.Popen, timeout: float = 30.0) -> FakeKubelet:
    deadline = time.monotonic() + timeout
    while not settings.registration_socket.exists():
        if process.poll() is not None:
            raise AssertionError(f"plugin exited with {process.returncode}:\n{_log(settings)}")
        if time.monotonic() > deadline:
            raise AssertionError(f"plugin did not register:\n{_log(settings)}")
        time.sleep(0.02)
    kubelet = FakeKubelet(settings.registration_socket)
    kubelet.register()
    return kubelet


def _log(settings) -> str:
    path = settings.state_dir.parent / "plugin.log"
    return path.read_text()[-4000:] if path.exists() else ""


def _all_files(settings) -> tuple[set[str], set[str], list[str]]:
    specs = {p.name for p in settings.cdi_dir.iterdir()} if settings.cdi_dir.exists() else set()
    dirs = {p.name for p in settings.claims_dir.iterdir()} if settings.claims_dir.exists() else set()
    temps = [str(p) for root in (settings.cdi_dir, settings.claims_dir, settings.state_dir) if root.exists()
             for p in root.rglob("*") if is_temp_file(p.name)]
    return specs, dirs, temps


@pytest.fixture
def child_env(fake_nvml):  # noqa: ANN001, ANN201
    return fake_nvml.env("mixed-node")


def test_sigterm_removes_both_sockets(settings, kubeconfig_path, child_env, claims):
    process = _spawn(settings, kubeconfig_path, child_env)
    try:
        kubelet = _wait_registered(settings, process)
        kubelet.close()
        assert settings.dra_socket.exists()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0, _log(settings)
    finally:
        if process.poll() is None:
            process.kill()
    assert not settings.registration_socket.exists()
    assert not settings.dra_socket.exists()


def _kill_during_prepare(settings, kubeconfig, env, batch) -> bool:
    """Start the plugin, prepare `batch`, kill -9 it as soon as the first claim directory appears.
    True when the kill interrupted the prepare."""
    process = _spawn(settings, kubeconfig, env)
    seen_before = set(_all_files(settings)[1])
    try:
        kubelet = _wait_registered(settings, process)
        outcome: dict[str, object] = {}

        def prepare() -> None:
            try:
                outcome["answers"] = kubelet.prepare([c.ref for c in batch])
            except grpc.RpcError as exc:
                outcome["error"] = exc.code()

        caller = threading.Thread(target=prepare)
        caller.start()
        deadline = time.monotonic() + 30
        while not set(_all_files(settings)[1]) - seen_before:
            assert time.monotonic() < deadline, _log(settings)
            time.sleep(0.0005)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        caller.join(timeout=60)
        kubelet.close()
    finally:
        if process.poll() is None:
            process.kill()
    print(f"claim specs on disk after the kill: {len(_all_files(settings)[0])}")
    return "error" in outcome


def test_kill_9_in_the_middle_of_a_prepare_then_restart(settings, kubeconfig_path, child_env, claims):
    batch: list = []
    for attempt in range(3):  # on a very busy machine the batch may finish before the kill lands
        more = [claims.create([{"request": "gpu", "device": f"gpu-{i % 3}",
                                "consumedCapacity": {"memory": "256Mi", "cores": "1"},
                                "shareID": f"00000000-0000-4000-8000-{attempt:04d}{i:08d}"}]) for i in range(50)]
        batch += more
        if _kill_during_prepare(settings, kubeconfig_path, child_env, more):
            break
    else:
        pytest.fail("three 50-claim prepares finished before a kill -9 could interrupt them")
    uids = {c.uid for c in batch}
    assert settings.registration_socket.exists()  # kill -9 leaves stale sockets behind...

    process = _spawn(settings, kubeconfig_path, child_env)  # ...which the restart replaces
    try:
        kubelet = _wait_registered(settings, process)
        answers = kubelet.prepare([c.ref for c in batch])
        assert {uid: a.error for uid, a in answers.items()} == {uid: "" for uid in uids}
        specs, dirs, temps = _all_files(settings)
        assert specs == {f"k8s.vgpu.dra.dev-claim_{uid}.json" for uid in uids}
        assert dirs == uids and temps == []
        assert kubelet.unprepare([c.ref for c in batch]) == {uid: "" for uid in uids}
        assert _all_files(settings) == (set(), set(), [])
        assert json.loads(settings.checkpoint_path.read_text())["claims"] == {}
        kubelet.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
