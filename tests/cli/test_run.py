"""`vgpu-dra run`: the production libvgpu.so over the fake driver, in a private claims root."""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

import pytest

from tests.cli.conftest import CUDAPROG, HOMELAB_GPU, PROD_SHIM, vgpu_dra
from tests.fakes.nvml_env import FakeNvml
from tests.shim.harness import LAUNCHLOOP
from vgpu_dra.api.names import CONTAINER_CLAIMS_ROOT
from vgpu_dra.cli.run import child_environment, probe_private_claims_root
from vgpu_dra.driver.inventory import GpuInfo

MiB = 1 << 20


def _private_root_problem() -> str | None:
    """Why this machine cannot give a command a private claims root (None: it can)."""
    if os.geteuid() != 0 and not Path(CONTAINER_CLAIMS_ROOT).is_dir():
        return f"{CONTAINER_CLAIMS_ROOT} is missing and only root can create it"
    base = Path(tempfile.mkdtemp(prefix="vgpu-dra-probe-"))
    try:
        (base / "source").mkdir()
        (base / "target").mkdir()
        return probe_private_claims_root(base / "source", base / "target")
    finally:
        shutil.rmtree(base)


# Where mount namespaces are refused (a container without CAP_SYS_ADMIN), `run` stops with an
# error by design; the tests that run a command under it need a machine where it can work.
PRIVATE_ROOT_PROBLEM = _private_root_problem()
needs_private_root = pytest.mark.skipif(PRIVATE_ROOT_PROBLEM is not None,
                                        reason=f"no private mount namespace here: {PRIVATE_ROOT_PROBLEM}")


def reports(stderr: str) -> dict[str, dict]:
    """The start and exit reports of `-o json` (one JSON object per stderr line)."""
    found = {}
    for line in stderr.splitlines():
        if line.startswith("{"):
            report = json.loads(line)
            found[report["event"]] = report
    return found


def run_json(env: dict[str, str], *command: str, memory: str = "64Mi", extra: tuple[str, ...] = ()):
    return vgpu_dra("run", "--memory", memory, "--shim", str(PROD_SHIM), "-o", "json", *extra, "--", *command,
                    env=env)


@needs_private_root
def test_the_wall_refuses_past_the_limit_and_the_summary_reports_it(machine_env: dict[str, str]) -> None:
    result = run_json(machine_env, str(CUDAPROG), "link", "init", "ctx", "0",
                      "alloc", str(32 * MiB), "alloc", str(32 * MiB), "alloc", "1", "info")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[2:5] == ["alloc rc=0 id=0", "alloc rc=0 id=1", "alloc rc=2 id=-1"]  # 2 = CUDA_ERROR_OUT_OF_MEMORY
    assert lines[5] == f"info rc=0 free=0 total={64 * MiB}"  # the claim's view of the GPU
    start, end = reports(result.stderr)["start"], reports(result.stderr)["exit"]
    assert start["gpus"][0]["uuid"] == HOMELAB_GPU and start["gpus"][0]["memoryLimitBytes"] == 64 * MiB
    assert end["gpus"][0]["rejectedAllocations"] == 1
    assert end["gpus"][0]["peakBytes"] == 64 * MiB
    assert end["exitStatus"] == 0


def test_without_run_the_same_program_is_not_limited(machine_env: dict[str, str]) -> None:
    # The baseline that makes the test above mean something: the fake driver alone has room.
    env = dict(machine_env, LD_PRELOAD=str(PROD_SHIM))
    proc = subprocess.run([str(CUDAPROG), "link", "init", "ctx", "0", "alloc", str(96 * MiB)],
                          env=env, capture_output=True, text=True, check=False)
    assert "alloc rc=0" in proc.stdout


@needs_private_root
def test_the_table_report_names_limits_and_usage(machine_env: dict[str, str]) -> None:
    result = vgpu_dra("run", "--memory", "64Mi", "--cores", "30", "--shim", str(PROD_SHIM), "--",
                      str(CUDAPROG), "link", "init", "ctx", "0", "alloc", str(80 * MiB), env=machine_env)
    assert result.returncode == 0
    first, last = result.stderr.splitlines()[0], result.stderr.splitlines()[-1]
    assert "memory wall 64Mi" in first and "30 % SMs (soft)" in first and HOMELAB_GPU in first
    assert "exit status 0" in last and "1 allocation(s) refused" in last and "throttled 0.0 s" in last


@needs_private_root
def test_the_command_sees_only_its_own_claim_and_it_is_removed_at_exit(machine_env: dict[str, str]) -> None:
    result = run_json(machine_env, "sh", "-c", f"ls {CONTAINER_CLAIMS_ROOT}; cat {CONTAINER_CLAIMS_ROOT}/*/config")
    assert result.returncode == 0, result.stderr
    start = reports(result.stderr)["start"]
    listed = result.stdout.splitlines()
    assert listed[0] == start["claim"]
    assert f"gpu uuid={HOMELAB_GPU} memory={64 * MiB} cores=0 policy=soft" in listed
    assert not Path(start["claimDir"]).exists()
    assert start["claim"] not in os.listdir(CONTAINER_CLAIMS_ROOT)  # the host's root never held it


@needs_private_root
def test_two_runs_at_once_each_get_their_own_limit(machine_env: dict[str, str], tmp_path: Path) -> None:
    procs = []
    for memory in ("64Mi", "128Mi"):
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "vgpu_dra.cli.main", "run", "--memory", memory, "--shim", str(PROD_SHIM),
             "--", str(CUDAPROG), "link", "init", "ctx", "0", "sleep", "300", "info"],
            env=machine_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [proc.communicate(timeout=60) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    assert f"total={64 * MiB}" in outputs[0][0]
    assert f"total={128 * MiB}" in outputs[1][0]


@needs_private_root
def test_a_signal_to_run_reaches_the_command_and_the_claim_is_removed(machine_env: dict[str, str]) -> None:
    # A Python child: its handler runs at once (a shell may defer a trap until its wait ends).
    script = ("import signal, sys, time\n"
              "def stop(*_): print('got-term', flush=True); sys.exit(42)\n"
              "signal.signal(signal.SIGTERM, stop)\n"
              "print('ready', flush=True)\n"
              "time.sleep(30)\n")
    proc = subprocess.Popen([sys.executable, "-m", "vgpu_dra.cli.main", "run", "--memory", "1Gi", "-o", "json",
                             "--shim", str(PROD_SHIM), "--", sys.executable, "-c", script],
                            env=machine_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=30)
    assert stdout == "got-term\n"
    assert proc.returncode == 42  # the command's own exit status
    start = reports(stderr)["start"]
    assert not Path(start["claimDir"]).parent.parent.exists()
    assert reports(stderr)["exit"]["exitStatus"] == 42


@needs_private_root
def test_a_command_killed_by_a_signal_exits_128_plus_it(machine_env: dict[str, str]) -> None:
    result = run_json(machine_env, "sh", "-c", "kill -KILL $$")
    assert result.returncode == 128 + signal.SIGKILL
    assert reports(result.stderr)["exit"]["signal"] == "SIGKILL"


@pytest.mark.parametrize(("options", "message"), [
    (("--memory", "2X"), "--memory: '2X' is not a Kubernetes quantity"),
    (("--memory", "0"), "--memory must be more than 0 bytes"),
    (("--memory", "64Gi"), "--memory 64Gi is more than GPU 0 (NVIDIA GeForce RTX 3080) can give: 9997Mi usable"),
    (("--memory", "1Gi", "--gpu", "3"), "--gpu 3: no such GPU on this machine; it has 0 (GPU-6b1f2c3d"),
    (("--memory", "1Gi", "--gpu", "GPU-deadbeef"), "--gpu GPU-deadbeef: no such GPU"),
    (("--memory", "1Gi", "--cores", "101"), "--cores 101 must be 0-100"),
    (("--memory", "1Gi", "--shim", "/nonexistent/libvgpu.so"), "--shim /nonexistent/libvgpu.so: no such file"),
])
def test_bad_input_is_one_line_and_exit_2(machine_env: dict[str, str], options: tuple[str, ...], message: str) -> None:
    result = vgpu_dra("run", *options, "--", "true", env=machine_env)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("vgpu-dra run: error: ")
    assert message in result.stderr


def test_no_command_is_bad_input(machine_env: dict[str, str]) -> None:
    result = vgpu_dra("run", "--memory", "1Gi", env=machine_env)
    assert result.returncode == 2 and "no command given" in result.stderr


def test_no_nvidia_driver_is_one_line(machine_env: dict[str, str]) -> None:
    env = dict(machine_env)
    env.pop("FAKE_NVML_INVENTORY")  # the fake then answers as a machine without the driver loaded
    result = vgpu_dra("run", "--memory", "1Gi", "--", "true", env=env)
    assert result.returncode == 2
    ours = [line for line in result.stderr.splitlines() if line.startswith("vgpu-dra run")]
    assert len(ours) == 1 and ours[0].startswith("vgpu-dra run: error: cannot list this machine's GPUs: ")
    assert "driver not loaded" in ours[0]
    assert "Traceback" not in result.stderr


def test_an_unknown_command_exits_127_without_leaving_a_claim(machine_env: dict[str, str]) -> None:
    before = set(os.listdir("/run")) if os.access("/run", os.W_OK) else set()
    result = vgpu_dra("run", "--memory", "1Gi", "--", "no-such-command-xyz", env=machine_env)
    assert result.returncode == 127 and "no-such-command-xyz: command not found" in result.stderr
    after = set(os.listdir("/run")) if os.access("/run", os.W_OK) else set()
    assert not {name for name in after - before if name.startswith("vgpu-dra-run-")}


def test_child_environment_puts_the_shim_first_and_names_the_gpu() -> None:
    gpu = GpuInfo(uuid=HOMELAB_GPU, index=0, minor_number=0, product_name="x", brand="GeForce",
                  architecture="Ampere", cuda_compute_capability="8.6", driver_version="550.54.15",
                  cuda_driver_version="12.4", pci_bus_id="0000:01:00.0", numa_node=-1,
                  memory_total_bytes=1 << 30, memory_reserved_bytes=0, mig_mode_enabled=False)
    shim = Path("/opt/libvgpu.so")
    env = child_environment(shim, [gpu], base={"LD_PRELOAD": "/x/libother.so:/opt/libvgpu.so"})
    assert env["LD_PRELOAD"] == "/opt/libvgpu.so /x/libother.so"
    assert env["CUDA_VISIBLE_DEVICES"] == HOMELAB_GPU
    assert child_environment(shim, [gpu], base={"CUDA_VISIBLE_DEVICES": "1"})["CUDA_VISIBLE_DEVICES"] == "1"


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
@pytest.mark.skipif(Path("/proc/sys/user/max_user_namespaces").read_text().strip() == "0",
                    reason="user namespaces are disabled on this kernel")
def test_an_unprivileged_user_gets_the_private_root_through_a_user_namespace() -> None:
    # Not under tmp_path: pytest's base temp dir is private to root, the other user could not
    # even reach the source.
    base = Path(tempfile.mkdtemp(prefix="vgpu-dra-userns-"))
    os.chmod(base, 0o755)
    source, target = base / "source", base / "target"
    (source / "claim-x").mkdir(parents=True)
    target.mkdir()
    # A fresh interpreter, as `vgpu-dra run` is: a process that loaded grpc gets threads in every
    # forked child, and a multithreaded process cannot enter a user namespace. It starts as root
    # (to load Python from wherever it lives) and becomes user 65534 before entering.
    script = (
        "import ctypes, os, sys\n"
        "from pathlib import Path\n"
        "from vgpu_dra.cli.run import enter_private_claims_root\n"
        "os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)\n"
        "ctypes.CDLL(None).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE, as a process that never changed uid\n"
        "enter_private_claims_root(Path(sys.argv[1]), Path(sys.argv[2]), 65534, 65534)\n"
        "print(os.getuid(), sorted(os.listdir(sys.argv[2])))\n")
    try:
        result = subprocess.run([sys.executable, "-c", script, str(source), str(target)],
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.stdout == "65534 ['claim-x']\n", result.stderr  # own user kept, the claim seen
        assert os.listdir(target) == []  # only inside that namespace
    finally:
        shutil.rmtree(base)


def test_the_run_command_does_not_load_grpc() -> None:
    # grpc starts threads in forked children; `run` forks the child that enters the namespaces.
    script = ("import sys\nfrom vgpu_dra.cli.main import build_parser\nbuild_parser()\n"
              "import vgpu_dra.cli.run\nprint('grpc' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout == "False\n"


@needs_private_root
def test_a_hard_core_cap_throttles_and_the_summary_reports_it(machine_env: dict[str, str]) -> None:
    result = run_json(machine_env, str(LAUNCHLOOP), "--seconds", "1.5", memory="1Gi",
                      extra=("--cores", "20", "--core-policy", "hard"))
    assert result.returncode == 0, result.stderr
    gpu = reports(result.stderr)["exit"]["gpus"][0]
    assert gpu["coreCap"] == 20
    assert gpu["launchesDelayed"] > 0 and gpu["throttledSeconds"] > 0


@needs_private_root
def test_ctrl_c_on_the_terminal_reaches_the_command_once(machine_env: dict[str, str]) -> None:
    # The terminal sends SIGINT to the whole foreground process group, `run` included; forwarding
    # it as well would interrupt the command twice.
    script = ("import signal, sys, time\n"
              "seen = []\n"
              "signal.signal(signal.SIGINT, lambda *_: seen.append(1))\n"
              "print('ready', flush=True)\n"
              "while not seen: time.sleep(0.05)\n"
              "time.sleep(1.0)\n"  # room for a second, forwarded SIGINT to arrive
              "sys.exit(len(seen))\n")
    controller, terminal = os.openpty()

    def take_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen([sys.executable, "-m", "vgpu_dra.cli.main", "run", "--memory", "1Gi",
                             "--shim", str(PROD_SHIM), "--", sys.executable, "-c", script],
                            env=machine_env, stdin=terminal, stdout=terminal, stderr=terminal,
                            start_new_session=True, preexec_fn=take_terminal)
    os.close(terminal)
    seen = b""
    try:
        while b"ready" not in seen:
            seen += os.read(controller, 4096)
        os.write(controller, b"\x03")  # Ctrl-C
        assert proc.wait(timeout=30) == 1  # one SIGINT, and `run` returned the command's status
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(controller)


MIXED = ("GPU-2f8e4d1a-7c3b-4e9f-a152-6d0c8b9e3f71", "GPU-9a4c7e2b-1d5f-4a8c-b3e6-0f2d9c1a7b84",
         "GPU-c51e0b9d-3a7f-4d26-8e4b-7f1a2c6d9e03")


@needs_private_root
def test_gpus_chosen_by_index_and_uuid_get_the_wall_and_the_others_refuse(
        machine_env: dict[str, str], fake_nvml: FakeNvml) -> None:
    env = dict(machine_env, FAKE_NVML_INVENTORY=fake_nvml.env("mixed-node")["FAKE_NVML_INVENTORY"],
               FAKE_CUDA_DEVICES=",".join(f"{uuid}={16 << 30}" for uuid in MIXED))
    result = run_json(env, str(CUDAPROG), "link", "init", "ctx", "2", "alloc", str(48 * MiB), "alloc", str(48 * MiB),
                      "ctx", "1", "alloc", str(48 * MiB), "ctx", "0", "alloc", str(MiB),
                      extra=("--gpu", "2", "--gpu", MIXED[1]))
    assert result.returncode == 0, result.stderr
    assert [line.split()[1] for line in result.stdout.splitlines() if line.startswith("alloc")] == [
        "rc=0", "rc=2", "rc=0", "rc=2"]  # 64 MiB per claimed GPU; GPU 0 is in no claim of the command
    start = reports(result.stderr)["start"]
    assert [gpu["uuid"] for gpu in start["gpus"]] == [MIXED[2], MIXED[1]]
    assert {gpu["uuid"]: gpu["rejectedAllocations"] for gpu in reports(result.stderr)["exit"]["gpus"]} == {
        MIXED[2]: 1, MIXED[1]: 0}


def test_the_same_gpu_twice_is_bad_input(machine_env: dict[str, str]) -> None:
    result = vgpu_dra("run", "--memory", "1Gi", "--gpu", "0", "--gpu", HOMELAB_GPU, "--", "true", env=machine_env)
    assert result.returncode == 2 and "GPU 0 named twice" in result.stderr


@needs_private_root
def test_a_claim_left_by_a_killed_run_is_removed_by_the_next(machine_env: dict[str, str]) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "vgpu_dra.cli.main", "run", "--memory", "1Gi", "-o", "json",
                             "--shim", str(PROD_SHIM), "--", "sleep", "30"],
                            env=machine_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert proc.stderr is not None
    start = json.loads(proc.stderr.readline())
    os.killpg(proc.pid, signal.SIGKILL)  # run and its command: no chance to clean up
    proc.wait()
    base = Path(start["claimDir"]).parent.parent
    assert base.is_dir()
    assert vgpu_dra("run", "--memory", "1Gi", "--shim", str(PROD_SHIM), "--", "true", env=machine_env).returncode == 0
    assert not base.exists()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="dropping CAP_SYS_ADMIN from a root process needs root and setpriv")
def test_without_mount_namespaces_run_refuses_in_one_line(machine_env: dict[str, str]) -> None:
    # Root without CAP_SYS_ADMIN: what `run` meets in a default container.
    result = subprocess.run(["setpriv", "--bounding-set", "-sys_admin", sys.executable, "-m", "vgpu_dra.cli.main",
                             "run", "--memory", "1Gi", "--shim", str(PROD_SHIM), "--", "true"],
                            env=machine_env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert result.stderr.startswith(f"vgpu-dra run: error: cannot give the command a private {CONTAINER_CLAIMS_ROOT} (")
    assert "give the container CAP_SYS_ADMIN" in result.stderr and result.stderr.count("\n") == 1


@needs_private_root
def test_run_inside_run_refuses_to_replace_the_outer_claim(machine_env: dict[str, str]) -> None:
    # The same holds inside a pod with a claim: a private root would lift the pod's limits.
    inner = f"{sys.executable} -m vgpu_dra.cli.main run --memory 8Gi --shim {PROD_SHIM} -- true; echo inner=$?"
    result = run_json(machine_env, "sh", "-c", inner, memory="1Gi")
    assert result.returncode == 0
    assert "inner=2" in result.stdout
    outer = reports(result.stderr)["start"]["claim"]
    assert f"vgpu-dra run: error: this process is already under vgpu-dra claim(s) {outer}" in result.stderr


def _processes_running(*commands: str) -> list[str]:
    """Command lines of live processes that are exactly one of the commands (read from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmdline.strip() in commands:
            found.append(cmdline)
    return found


def _wait_for(condition, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@needs_private_root
def test_nothing_the_command_started_outlives_a_run_killed_with_sigkill(machine_env: dict[str, str]) -> None:
    # The command and a process it started in the background: unique sleeps to find them by.
    tag = f"{os.getpid() % 1000}{time.monotonic_ns() % 100000}"
    child, grandchild = f"sleep 900.{tag}1", f"sleep 900.{tag}2"
    proc = subprocess.Popen([sys.executable, "-m", "vgpu_dra.cli.main", "run", "--memory", "1Gi", "-o", "json",
                             "--shim", str(PROD_SHIM), "--", "sh", "-c", f"{grandchild} & exec {child}"],
                            env=machine_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        assert proc.stderr is not None
        start = json.loads(proc.stderr.readline())
        assert _wait_for(lambda: len(_processes_running(child, grandchild)) == 2), _processes_running(child, grandchild)
        proc.send_signal(signal.SIGKILL)  # `run` alone, as an OOM killer or `kill -9 <pid>` would
        proc.wait()
        assert _wait_for(lambda: not _processes_running(child, grandchild)), _processes_running(child, grandchild)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # only if the test failed: leave nothing behind
        except ProcessLookupError:
            pass
    # Nothing uses the directory any more: the next run removes it.
    base = Path(start["claimDir"]).parent.parent
    assert vgpu_dra("run", "--memory", "1Gi", "--shim", str(PROD_SHIM), "--", "true", env=machine_env).returncode == 0
    assert not base.exists()


def _left_behind() -> Path:
    """A claim directory as a SIGKILLed run leaves it: its owner PID no longer runs."""
    from vgpu_dra.cli.run_claim import create_private_claim, private_claims_parent

    gpu = GpuInfo(uuid=HOMELAB_GPU, index=0, minor_number=0, product_name="x", brand="GeForce",
                  architecture="Ampere", cuda_compute_capability="8.6", driver_version="550.54.15",
                  cuda_driver_version="12.4", pci_bus_id="0000:01:00.0", numa_node=-1,
                  memory_total_bytes=1 << 30, memory_reserved_bytes=0, mig_mode_enabled=False)
    claim = create_private_claim([gpu], 1 << 30, 0, "soft")
    os.close(claim.lock_fd)
    gone = subprocess.Popen(["true"])
    gone.wait()
    (claim.base / "owner.pid").write_text(f"{gone.pid}\n")
    assert claim.base.parent == private_claims_parent()
    return claim.base


LOCK_HOLDER = ("import fcntl, os, sys, time\n"
               "fd = os.open(sys.argv[1], os.O_RDWR)\n"
               "fcntl.flock(fd, fcntl.LOCK_EX)\n"
               "print('held', flush=True)\n"
               "time.sleep(60)\n")
SLOT_HOLDER = ("import fcntl, mmap, os, struct, sys, time\n"
               "from vgpu_dra.driver import region as r\n"
               "fd = os.open(sys.argv[1], os.O_RDWR)\n"
               "with mmap.mmap(fd, r.REGION_SIZE) as mem:\n"
               "    view = r.ffi.from_buffer('struct vgpu_region *', mem)\n"
               "    view.procs[0].state = r.PROC_LIVE; view.proc_high_water = 1\n"
               "    del view\n"
               "fcntl.fcntl(fd, 37, struct.pack('hhqqi4x', fcntl.F_WRLCK, 0, r.LOCK_SLOT_BASE, 1, 0))\n"
               "print('held', flush=True)\n"
               "time.sleep(60)\n")


@needs_private_root
@pytest.mark.parametrize("holder", ["owner-lock", "region-slot"])
def test_a_claim_directory_still_in_use_is_never_removed_by_the_next_run(
        machine_env: dict[str, str], holder: str) -> None:
    base = _left_behind()
    # A process that still uses the directory although its run is gone: one that inherited the
    # owner lock, or one attached to the claim's region (a CUDA process of the command).
    region = next(base.glob("claims/*/region"))
    script, target = (LOCK_HOLDER, base / "owner.lock") if holder == "owner-lock" else (SLOT_HOLDER, region)
    user = subprocess.Popen([sys.executable, "-c", script, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        assert user.stdout is not None and user.stdout.readline() == "held\n"
        assert vgpu_dra("run", "--memory", "1Gi", "--shim", str(PROD_SHIM), "--", "true",
                        env=machine_env).returncode == 0
        assert base.is_dir() and region.is_file()  # the live user keeps its limits
    finally:
        user.kill()
        user.wait()
    assert vgpu_dra("run", "--memory", "1Gi", "--shim", str(PROD_SHIM), "--", "true", env=machine_env).returncode == 0
    assert not base.exists()
