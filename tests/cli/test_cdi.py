"""`vgpu-dra cdi`: named shares for Docker and Podman, as a user runs the command, over the fake NVML.

What a container runtime does with the spec is in test_cdi_podman.py (a real CDI consumer)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.cli.conftest import HOMELAB_GPU, PROD_SHIM, vgpu_dra
from tests.plugin.cdi_schema import validate_cdi_spec
from tests.shim.harness import CUDAPROG, FAKES_OUT, TEST_SHIM, read_until, stop
from vgpu_dra.driver.claimconfig import parse
from vgpu_dra.driver.region import read_region
from vgpu_dra.kubeletplugin.claim_files import ClaimFiles

MiB = 1 << 20
SPEC = "vgpu.dra.dev-claim_{}.json"


@pytest.fixture
def host(tmp_path: Path, machine_env: dict[str, str]):  # noqa: ANN201
    """A host with one RTX 3080: its CDI, state and /dev directories, and a `cdi` runner."""
    cdi_dir, state, dev = tmp_path / "cdi", tmp_path / "state", tmp_path / "dev"
    dev.mkdir()
    for name in ("nvidia0", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"):
        (dev / name).touch()

    class Host:
        def __init__(self) -> None:
            self.cdi_dir, self.state, self.dev, self.env = cdi_dir, state, dev, machine_env

        def cdi(self, action: str, *args: str, cdi_dir: Path | None = None):  # noqa: ANN202
            where = ["--state-dir", str(state)]
            if action == "create":
                where += ["--cdi-dir", str(cdi_dir or self.cdi_dir), "--dev-dir", str(dev), "--shim", str(PROD_SHIM)]
            return vgpu_dra("cdi", action, *args, *where, env=self.env)

        def spec(self, name: str) -> dict:
            return json.loads((self.cdi_dir / SPEC.format(name)).read_text())

    return Host()


def test_create_writes_the_plugins_spec_and_claim_files_for_one_named_device(host) -> None:  # noqa: ANN001
    result = host.cdi("create", "worker-a", "--memory", "2Gi", "--cores", "25")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # every device node exists: no warning, no log line
    assert "docker run --device vgpu.dra.dev/claim=worker-a IMAGE" in result.stdout
    assert "memory wall 2Gi of 9.8 GiB, 25 % SMs (soft)" in result.stdout

    spec = host.spec("worker-a")
    validate_cdi_spec(spec)
    assert spec["kind"] == "vgpu.dra.dev/claim"
    assert [d["name"] for d in spec["devices"]] == ["worker-a"]
    claim_dir = host.state / "claims" / "worker-a"
    mounts = {m["containerPath"]: (m["hostPath"], m["options"][0]) for m in spec["devices"][0]["containerEdits"]["mounts"]}
    assert mounts == {"/var/run/vgpu-dra/claims/worker-a/config": (str(claim_dir / "config"), "ro"),
                      "/var/run/vgpu-dra/claims/worker-a/region": (str(claim_dir / "region"), "rw")}
    assert spec["devices"][0]["containerEdits"]["deviceNodes"] == [
        {"path": "/dev/nvidia0", "hostPath": str(host.dev / "nvidia0")}]
    common = spec["containerEdits"]
    assert common["env"] == ["NVIDIA_VISIBLE_DEVICES=void"]
    shim, preload = (next(m["hostPath"] for m in common["mounts"] if m["containerPath"] == path)
                     for path in ("/usr/lib/vgpu-dra/libvgpu.so", "/etc/ld.so.preload"))
    assert Path(shim).read_bytes() == PROD_SHIM.read_bytes()
    assert Path(preload).read_text() == "/usr/lib/vgpu-dra/libvgpu.so\n"
    assert [n["path"] for n in common["deviceNodes"]] == ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"]

    config = parse((claim_dir / "config").read_text())
    assert config.claim_uid == "worker-a"
    assert [(g.uuid, g.memory_bytes, g.cores, g.policy) for g in config.gpus] == [(HOMELAB_GPU, 2 << 30, 25, "soft")]
    assert read_region(claim_dir / "region").gpu(HOMELAB_GPU).limit_bytes == 2 << 30
    assert (claim_dir / "region").stat().st_mode & 0o777 == 0o666  # containers run as any user


def test_list_shows_each_share_and_delete_removes_every_file(host) -> None:  # noqa: ANN001
    assert host.cdi("create", "worker-a", "--memory", "2Gi", "--cores", "25").returncode == 0
    assert host.cdi("create", "worker-b", "--memory", "3Gi", "--gpu", HOMELAB_GPU, "--core-policy", "hard").returncode == 0
    listed = host.cdi("list", "-o", "json")
    shares = {s["name"]: s for s in json.loads(listed.stdout)["shares"]}
    assert shares["worker-a"]["memoryLimitBytes"] == 2 << 30 and shares["worker-b"]["corePolicy"] == "hard"
    assert shares["worker-b"]["deviceIds"] == ["vgpu.dra.dev/claim=worker-b"]
    assert shares["worker-a"]["processes"] == 0
    table = host.cdi("list").stdout.splitlines()
    assert table[0].split()[:3] == ["NAME", "GPU", "MEMORY"] and table[1].startswith("worker-a")

    deleted = host.cdi("delete", "worker-a")
    assert deleted.returncode == 0 and deleted.stdout == "deleted share worker-a\n"
    assert not (host.cdi_dir / SPEC.format("worker-a")).exists()
    assert not (host.state / "claims" / "worker-a").exists()
    assert [s["name"] for s in json.loads(host.cdi("list", "-o", "json").stdout)["shares"]] == ["worker-b"]
    assert host.cdi("delete", "worker-b").returncode == 0
    assert list((host.state / "shim").iterdir()) == []  # no share left: no shim version kept
    assert list(host.cdi_dir.iterdir()) == []


def test_the_kubelet_plugins_sweep_leaves_host_shares_alone(host) -> None:  # noqa: ANN001
    assert host.cdi("create", "worker-a", "--memory", "2Gi").returncode == 0
    # A node running the plugin too: it removes every claim file in its CDI dir it did not prepare.
    plugin_files = ClaimFiles(host.state.parent / "plugin-claims", host.cdi_dir)
    assert plugin_files.remove_strays(keep=set()) == []
    assert (host.cdi_dir / SPEC.format("worker-a")).is_file()


def test_with_nvidias_spec_the_share_leaves_the_gpu_to_it_and_prints_both_ids(host) -> None:  # noqa: ANN001
    host.cdi_dir.mkdir()
    (host.cdi_dir / "nvidia.yaml").write_text(
        "cdiVersion: 0.5.0\nkind: nvidia.com/gpu\ndevices:\n"
        "- name: '0'\n  containerEdits: {deviceNodes: [{path: /dev/nvidia0}]}\n"
        f"- name: {HOMELAB_GPU}\n  containerEdits: {{deviceNodes: [{{path: /dev/nvidia0}}]}}\n")
    result = host.cdi("create", "worker-a", "--memory", "2Gi", "-o", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["deviceIds"] == [f"nvidia.com/gpu={HOMELAB_GPU}", "vgpu.dra.dev/claim=worker-a"]
    spec = host.spec("worker-a")
    assert "deviceNodes" not in spec["devices"][0]["containerEdits"] and "deviceNodes" not in spec["containerEdits"]
    assert {m["containerPath"] for m in spec["containerEdits"]["mounts"]} == {"/usr/lib/vgpu-dra/libvgpu.so",
                                                                              "/etc/ld.so.preload"}


def test_a_missing_device_node_is_one_warning(host) -> None:  # noqa: ANN001
    (host.dev / "nvidia-uvm-tools").unlink()
    result = host.cdi("create", "worker-a", "--memory", "2Gi")
    assert result.returncode == 0
    assert result.stderr.count("\n") == 1
    assert f"{host.dev / 'nvidia-uvm-tools'} missing on this host" in result.stderr


@pytest.mark.parametrize(("args", "message"), [
    (("--memory", "2Gx"), "--memory 2Gx: '2Gx' is not a Kubernetes quantity"),
    (("--memory", "0"), "--memory must be more than 0 bytes"),
    (("--memory", "12Gi"), "--memory 12Gi is more than GPU 0 (NVIDIA GeForce RTX 3080) can give"),
    (("--memory", "1Gi", "--cores", "101"), "--cores 101 must be 0-100"),
    (("--memory", "1Gi", "--gpu", "3"), f"--gpu 3: no such GPU on this machine; it has 0 ({HOMELAB_GPU})"),
    (("--memory", "1Gi", "--gpu", "GPU-nope"), "--gpu GPU-nope: no such GPU on this machine"),
])
def test_bad_input_is_one_line_and_writes_nothing(host, args, message) -> None:  # noqa: ANN001
    result = host.cdi("create", "worker-a", *args)
    assert result.returncode == 2
    assert result.stderr.startswith(f"vgpu-dra cdi: error: {message}") and result.stderr.count("\n") == 1
    assert result.stdout == ""
    assert not list(host.cdi_dir.glob("*")) and not list((host.state / "shares").glob("*"))


def test_a_bad_name_is_one_line(host) -> None:  # noqa: ANN001
    for name in ("../etc", "a-", "a.b", "x" * 64):
        result = host.cdi("create", name, "--memory", "1Gi")
        assert result.returncode == 2 and result.stderr.count("\n") == 1
        assert result.stderr.startswith(f"vgpu-dra cdi: error: share name {name!r} is not valid")


def test_an_existing_name_is_refused_and_the_share_kept(host) -> None:  # noqa: ANN001
    assert host.cdi("create", "worker-a", "--memory", "2Gi").returncode == 0
    before = host.spec("worker-a")
    again = host.cdi("create", "worker-a", "--memory", "4Gi")
    assert again.returncode == 2 and again.stderr.count("\n") == 1
    assert "share worker-a exists already (2Gi on GPU 0" in again.stderr
    assert "vgpu-dra cdi delete worker-a" in again.stderr
    assert host.spec("worker-a") == before


def test_a_spec_of_that_name_from_elsewhere_is_refused(host) -> None:  # noqa: ANN001
    host.cdi_dir.mkdir()
    (host.cdi_dir / SPEC.format("worker-a")).write_text("{}")
    result = host.cdi("create", "worker-a", "--memory", "2Gi")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "already defines vgpu.dra.dev/claim=worker-a" in result.stderr


def test_an_unwritable_cdi_dir_is_one_line(host, tmp_path: Path) -> None:  # noqa: ANN001
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = host.cdi("create", "worker-a", "--memory", "2Gi", cdi_dir=blocker / "cdi")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"vgpu-dra cdi: error: --cdi-dir {blocker / 'cdi'}: cannot create it (Not a directory)")
    assert not (host.state / "shares").exists()


def test_shares_that_would_overcommit_a_gpu_are_refused(host) -> None:  # noqa: ANN001
    assert host.cdi("create", "worker-a", "--memory", "6Gi", "--cores", "60").returncode == 0
    memory = host.cdi("create", "worker-b", "--memory", "4Gi")
    assert memory.returncode == 2 and "shares worker-a (6Gi) hold 6 GiB" in memory.stderr
    cores = host.cdi("create", "worker-b", "--memory", "2Gi", "--cores", "50")
    assert cores.returncode == 2 and "ask for at most 40" in cores.stderr
    assert host.cdi("create", "worker-b", "--memory", "3Gi", "--cores", "40").returncode == 0


def test_delete_refuses_while_a_process_uses_the_share_unless_forced(host) -> None:  # noqa: ANN001
    assert host.cdi("create", "worker-a", "--memory", "64Mi").returncode == 0
    # A process of a container: the shim on the share's claim directory (the test build reads
    # its claims root from VGPU_CLAIMS_ROOT; in a container it is the fixed root the spec mounts).
    env = dict(host.env, LD_PRELOAD=str(TEST_SHIM), VGPU_CLAIMS_ROOT=str(host.state / "claims"),
               LD_LIBRARY_PATH=f"{FAKES_OUT}:{host.env['LD_LIBRARY_PATH']}")
    holder = subprocess.Popen([str(CUDAPROG), "link", "init", "ctx", "0", "alloc", str(48 * MiB), "alloc",
                               str(48 * MiB), "hold"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, start_new_session=True)
    try:
        lines = read_until(holder, "hold")
        assert [line["rc"] for line in lines if line["cmd"] == "alloc"] == ["0", "2"]  # the share's wall
        listed = json.loads(host.cdi("list", "-o", "json").stdout)["shares"][0]
        assert listed["processes"] == 1 and listed["usage"][0]["rejectedAllocations"] == 1
        refused = host.cdi("delete", "worker-a")
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1
        assert f"share worker-a is in use by 1 process(es) (pid {holder.pid})" in refused.stderr
        assert (host.cdi_dir / SPEC.format("worker-a")).is_file()
        assert host.cdi("delete", "worker-a", "--force").returncode == 0
        assert not (host.cdi_dir / SPEC.format("worker-a")).exists()
    finally:
        stop(holder)


def test_delete_of_an_unknown_share_names_the_shares_there(host) -> None:  # noqa: ANN001
    assert host.cdi("create", "worker-a", "--memory", "1Gi").returncode == 0
    result = host.cdi("delete", "worker-z")
    assert result.returncode == 2
    assert result.stderr == f"vgpu-dra cdi: error: no share worker-z in {host.state} (shares: worker-a)\n"


def test_without_a_writable_state_dir_create_is_one_line(host, tmp_path: Path) -> None:  # noqa: ANN001
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = vgpu_dra("cdi", "create", "worker-a", "--memory", "1Gi", "--state-dir", str(blocker / "state"),
                      "--cdi-dir", str(host.cdi_dir), "--shim", str(PROD_SHIM), env=host.env)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert f"cannot write the state directory {blocker / 'state'} (Not a directory)" in result.stderr

