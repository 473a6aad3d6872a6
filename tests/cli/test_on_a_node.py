"""`smi` and `doctor` on a node where the real kubelet plugin runs (in this process, over the fake
API server and fake NVML) and prepared a claim, and a process uses it under the shim."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.cli.conftest import vgpu_dra
from tests.plugin.conftest import claims, kubelet, node_root, plugin, settings, shim_source, short_tmp  # noqa: F401
from tests.shim.harness import CUDAPROG, FAKES_OUT, MiB, TEST_SHIM, read_until, stop

T4_0 = "GPU-2f8e4d1a-7c3b-4e9f-a152-6d0c8b9e3f71"


def test_smi_shows_what_a_prepared_claims_process_uses(built: None, kubelet, claims, plugin, settings,  # noqa: F811
                                                       tmp_path: Path) -> None:
    claim = claims.create([{"request": "gpu", "device": "gpu-0", "shareID": "0f0e0d0c-0000-4000-8000-000000000001",
                            "consumedCapacity": {"memory": "64Mi", "cores": "25"}}], pods=("web-1",), name="web")
    kubelet.prepare([claim.ref])
    env = {"LD_LIBRARY_PATH": str(FAKES_OUT), "LD_PRELOAD": str(TEST_SHIM),
           "VGPU_CLAIMS_ROOT": str(settings.claims_dir),  # where the container would see its claim dir
           "FAKE_CUDA_DEVICES": f"{T4_0}={15 << 30}", "FAKE_CUDA_STATE": str(tmp_path / "fake-cuda.state")}
    holder = subprocess.Popen([str(CUDAPROG), "link", "init", "ctx", "0", "alloc", str(48 * MiB),
                               "alloc", str(48 * MiB), "sleep", "30000"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        read_until(holder, "alloc")
        assert read_until(holder, "alloc")[-1]["rc"] == "2"
        result = vgpu_dra("smi", "--state-dir", str(settings.state_dir), "-o", "json")
    finally:
        stop(holder)
    assert result.returncode == 0, result.stderr
    [row] = json.loads(result.stdout)["claims"]
    assert (row["namespace"], row["claim"], row["uid"], row["pods"]) == ("default", "web", claim.uid, ["web-1"])
    assert (row["device"], row["gpuUUID"], row["memoryLimitBytes"], row["coreCap"]) == ("gpu-0", T4_0, 64 * MiB, 25)
    assert (row["memoryUsedBytes"], row["rejectedAllocations"], row["liveProcesses"]) == (48 * MiB, 1, 1)


def test_doctor_finds_the_running_plugin_and_the_shim_it_installed(built: None, plugin, settings,  # noqa: F811
                                                                  fake_nvml) -> None:
    result = vgpu_dra("doctor", "--node-only", "--state-dir", str(settings.state_dir),
                      "--registrar-dir", str(settings.registrar_dir), "-o", "json",
                      env=fake_nvml.env("mixed-node"))
    verdicts = {check["check"]: check for check in json.loads(result.stdout)["checks"]}
    assert verdicts["plugin-registered"]["status"] == "ok", verdicts["plugin-registered"]
    assert str(settings.dra_socket) in verdicts["plugin-registered"]["message"]
    assert verdicts["shim-installed"]["status"] == "ok", verdicts["shim-installed"]
    assert str(settings.shim_dir) in verdicts["shim-installed"]["message"]
    assert verdicts["nvidia-driver"]["message"] == "driver 535.183.01, 3 GPU(s) (0: Tesla T4, 1: Tesla T4, 2: NVIDIA L40S)"
