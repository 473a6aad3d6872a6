"""The fake libnvidia-ml.so.1 itself, through pynvml: the behaviour other tests (the shim's NVML
interception, the plugin's metrics) rely on, as documented in tests/fakes/nvml/README.md."""
from __future__ import annotations

import ctypes
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pynvml
import pytest

from tests.fakes.nvml_env import FakeNvml, fake_nvml, fake_nvml_library, inventory_document  # noqa: F401

MiB = 1 << 20
GiB = 1 << 30


@pytest.fixture
def busy_l40s(fake_nvml: FakeNvml) -> Iterator[None]:
    """The mixed node with two processes and some utilization on the L40S; NVML initialised."""
    document = inventory_document("mixed-node")
    document["gpus"][2]["fakeNvml"]["processes"] = [
        {"pid": 4242, "usedGpuMemory": "2Gi"},
        {"pid": 4343, "usedGpuMemory": 512 * MiB},
    ]
    document["gpus"][2]["fakeNvml"]["utilization"] = {"gpu": 35, "memory": 20}
    fake_nvml.use(document)
    pynvml.nvmlInit()
    yield
    pynvml.nvmlShutdown()


def test_memory_info_v2_separates_reserved_from_process_memory(busy_l40s: None) -> None:
    info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(2), version=pynvml.nvmlMemory_v2)

    assert (info.total, info.reserved, info.used) == (46068 * MiB, 579 * MiB, 2 * GiB + 512 * MiB)
    assert info.free == info.total - info.reserved - info.used


def test_memory_info_v1_counts_reserved_memory_as_used(busy_l40s: None) -> None:
    info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(2))

    assert (info.total, info.used) == (46068 * MiB, 579 * MiB + 2 * GiB + 512 * MiB)
    assert info.free == info.total - info.used


def test_idle_gpu_uses_no_memory_and_lists_no_process(busy_l40s: None) -> None:
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)

    assert pynvml.nvmlDeviceGetComputeRunningProcesses(handle) == []
    assert pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2).used == 0


def test_compute_processes_follow_nvml_two_call_protocol(busy_l40s: None) -> None:
    processes = pynvml.nvmlDeviceGetComputeRunningProcesses(pynvml.nvmlDeviceGetHandleByIndex(2))

    assert [(p.pid, p.usedGpuMemory) for p in processes] == [(4242, 2 * GiB), (4343, 512 * MiB)]
    assert {(p.gpuInstanceId, p.computeInstanceId) for p in processes} == {(0xFFFFFFFF, 0xFFFFFFFF)}


def test_too_small_process_buffer_answers_insufficient_size_with_the_count(busy_l40s: None) -> None:
    function = pynvml._nvmlGetFunctionPointer("nvmlDeviceGetComputeRunningProcesses_v3")
    count = ctypes.c_uint(1)
    infos = (pynvml.c_nvmlProcessInfo_v3_t * 1)()

    ret = function(pynvml.nvmlDeviceGetHandleByIndex(2), ctypes.byref(count), infos)

    assert (ret, count.value) == (pynvml.NVML_ERROR_INSUFFICIENT_SIZE, 2)


def test_utilization_comes_from_the_inventory(busy_l40s: None) -> None:
    rates = pynvml.nvmlDeviceGetUtilizationRates(pynvml.nvmlDeviceGetHandleByIndex(2))

    assert (rates.gpu, rates.memory) == (35, 20)


def test_handles_by_uuid_and_pci_address_find_the_same_gpu(busy_l40s: None) -> None:
    by_uuid = pynvml.nvmlDeviceGetHandleByUUID("GPU-9a4c7e2b-1d5f-4a8c-b3e6-0f2d9c1a7b84")
    by_pci = pynvml.nvmlDeviceGetHandleByPciBusId("0000:af:00.0")

    assert pynvml.nvmlDeviceGetIndex(by_uuid) == pynvml.nvmlDeviceGetIndex(by_pci) == 1
    with pytest.raises(pynvml.NVMLError_NotFound):
        pynvml.nvmlDeviceGetHandleByUUID("GPU-00000000-0000-0000-0000-000000000000")


def test_pci_info_and_versions_read_like_nvml(busy_l40s: None) -> None:
    pci = pynvml.nvmlDeviceGetPciInfo(pynvml.nvmlDeviceGetHandleByIndex(2))

    assert (pci.busId, pci.busIdLegacy, pci.bus, pci.pciDeviceId) == ("00000000:D8:00.0", "0000:D8:00.0", 0xD8, 0x26B910DE)
    assert pynvml.nvmlSystemGetDriverVersion() == "535.183.01"
    assert pynvml.nvmlSystemGetCudaDriverVersion_v2() == 12020
    assert pynvml.nvmlSystemGetNVMLVersion() == "12.535.183.01"


def test_out_of_range_index_is_invalid_argument(busy_l40s: None) -> None:
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        pynvml.nvmlDeviceGetHandleByIndex(3)


def test_calls_before_init_answer_uninitialized(fake_nvml: FakeNvml) -> None:
    fake_nvml.use("rtx3080-homelab")
    pynvml.nvmlInit()  # pynvml resolves symbols only after a successful load
    pynvml.nvmlShutdown()

    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlDeviceGetCount()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        pynvml.nvmlShutdown()


def test_malformed_inventory_fails_init_and_says_where(fake_nvml: FakeNvml, tmp_path) -> None:
    flat = tmp_path / "bad.txt"
    flat.write_text("fake-nvml-inventory 1\ndriver_version 550.54.15\ncuda_driver_version 12040\ngpu\nuuid GPU-1\nmemroy_total 5\n")
    env = fake_nvml.env(None)
    env["FAKE_NVML_INVENTORY"] = str(flat)
    script = textwrap.dedent("""
        import pynvml
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError_Unknown:
            print("init failed")
    """)

    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)

    assert result.stdout.strip() == "init failed"
    assert f"fake-nvml: {flat}:6: unknown GPU key 'memroy_total'" in result.stderr


def test_a_c_program_built_against_the_nvml_abi_reads_the_same_inventory(fake_nvml: FakeNvml, tmp_path) -> None:
    """What the shim's C tests do: link nothing, dlopen by soname with LD_LIBRARY_PATH."""
    source = tmp_path / "probe.c"
    source.write_text(textwrap.dedent("""
        #include <dlfcn.h>
        #include <stdio.h>
        typedef struct { unsigned int version; unsigned long long total, reserved, free, used; } mem_v2;
        int main(void) {
            void *lib = dlopen("libnvidia-ml.so.1", RTLD_NOW);
            if (!lib) { puts(dlerror()); return 1; }
            int (*init)(void) = (int (*)(void))dlsym(lib, "nvmlInit_v2");
            int (*handle)(unsigned, void **) = (int (*)(unsigned, void **))dlsym(lib, "nvmlDeviceGetHandleByIndex_v2");
            int (*memory)(void *, mem_v2 *) = (int (*)(void *, mem_v2 *))dlsym(lib, "nvmlDeviceGetMemoryInfo_v2");
            void *device; mem_v2 m = {sizeof(mem_v2) | (2u << 24), 0, 0, 0, 0};
            if (init() || handle(0, &device) || memory(device, &m)) return 2;
            printf("%llu %llu\\n", m.total, m.reserved);
            return 0;
        }
    """))
    binary = tmp_path / "probe"
    subprocess.run(["cc", "-o", str(binary), str(source), "-ldl"], check=True, timeout=60)

    result = subprocess.run([str(binary)], env=fake_nvml.env("rtx3080-homelab"), capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == [str(10240 * MiB), str(243 * MiB)]


def test_a_process_entry_named_self_reports_the_callers_pid(fake_nvml: FakeNvml) -> None:
    document = inventory_document("rtx3080-homelab")
    document["gpus"][0]["fakeNvml"]["processes"] = [{"pid": "self", "usedGpuMemory": "1Gi"}]
    script = "import os, pynvml; pynvml.nvmlInit(); " \
             "print(os.getpid(), *[(p.pid, p.usedGpuMemory) for p in " \
             "pynvml.nvmlDeviceGetComputeRunningProcesses(pynvml.nvmlDeviceGetHandleByIndex(0))])"

    result = subprocess.run([sys.executable, "-c", script], env=fake_nvml.env(document),
                            capture_output=True, text=True, timeout=60)

    own_pid, listed = result.stdout.split(" ", 1)
    assert listed.strip() == f"({own_pid}, {1 << 30})", result.stderr
