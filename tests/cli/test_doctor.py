"""`vgpu-dra doctor`: every check with a passing and a failing case, on fake roots, the fake API
server, the fake NVML and a real registration socket."""
from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from tests.cli.conftest import PROD_SHIM, hami_pod, vgpu_dra
from tests.controller.cluster import add_device_class, add_node, gpu
from tests.fakes.apiserver import FakeApiServer
from tests.fakes.kubeconfig import api_client_for, write_kubeconfig
from tests.fakes.nvml_env import FakeNvml
from vgpu_dra.api.names import ALLOCATOR_SCHEDULER, DRIVER_NAME
from vgpu_dra.cli import doctor
from vgpu_dra.driver import doctor_checks as checks
from vgpu_dra.driver.doctor_checks import Status
from vgpu_dra.kubeletplugin.proto import pluginregistration_pb2_grpc as pb_grpc
from vgpu_dra.kubeletplugin.registration import RegistrationService

V1_GROUP = {"name": "resource.k8s.io", "versions": [{"groupVersion": "resource.k8s.io/v1", "version": "v1"}]}


# --- cluster: DRA API --------------------------------------------------------------------------------

def test_dra_api_served_by_the_fake_1_36_server(fake_apiserver: FakeApiServer) -> None:
    with api_client_for(fake_apiserver) as client:
        first = next(doctor.cluster_verdicts(client))
    assert (first.check, first.status) == ("dra-api", Status.OK)
    assert "v1.36.3 serves resource.k8s.io/v1" in first.message


@pytest.mark.parametrize(("version", "group", "words"), [
    ({"major": "1", "minor": "33", "gitVersion": "v1.33.4"}, V1_GROUP, "v1.33.4 is older than 1.34"),
    ({"major": "1", "minor": "34+", "gitVersion": "v1.34.1-eks"},
     {"versions": [{"version": "v1beta2"}]}, "does not serve resource.k8s.io/v1 (served: v1beta2)"),
    ({"major": "1", "minor": "35", "gitVersion": "v1.35.0"}, None, "(served: none)"),
])
def test_dra_api_fails_on_old_or_unserved(version: dict, group: dict | None, words: str) -> None:
    verdict = checks.check_dra_api(version, group)
    assert verdict.status is Status.FAIL and words in verdict.message and verdict.fix


def test_provider_minor_versions_parse() -> None:
    assert checks.check_dra_api({"major": "1", "minor": "34+", "gitVersion": "v1.34.2-gke.1"}, V1_GROUP).status \
        is Status.OK


def test_an_unreachable_api_server_is_a_failed_check(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "x", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "x", "user": {}}], "contexts": [{"name": "x", "context": {"cluster": "x", "user": "x"}}]}))
    result = vgpu_dra("doctor", "--cluster-only", "--kubeconfig", str(kubeconfig), "-o", "json")
    assert result.returncode == 1
    [verdict] = json.loads(result.stdout)["checks"]
    assert verdict["status"] == "fail" and "Connection refused" in verdict["message"]


# --- cluster: consumable capacity --------------------------------------------------------------------

def consumable(server: FakeApiServer) -> checks.Verdict:
    with api_client_for(server) as client:
        return list(doctor.cluster_verdicts(client))[-1]


# --- cluster: pods still written for HAMi -------------------------------------------------------------

def hami(server: FakeApiServer) -> checks.Verdict:
    with api_client_for(server) as client:
        return next(v for v in doctor.cluster_verdicts(client) if v.check == checks.HAMI_PODS)


def test_pending_hami_pods_without_the_webhook_are_named_with_the_way_over(fake_apiserver: FakeApiServer) -> None:
    hami_pod(fake_apiserver, "plain-gpu", {"nvidia.com/gpu": "1"})  # the NVIDIA device plugin's: not HAMi's
    hami_pod(fake_apiserver, "already-running", {"nvidia.com/gpu": "1", "nvidia.com/gpumem": "3000"}, phase="Running")
    assert hami(fake_apiserver).status is Status.OK
    hami_pod(fake_apiserver, "trainer", {"nvidia.com/gpu": "1", "nvidia.com/gpumem": "3000"})
    hami_pod(fake_apiserver, "notebook", {"nvidia.com/gpu": "1"}, scheduler="hami-scheduler")
    verdict = hami(fake_apiserver)
    assert verdict.status is Status.WARN
    assert "2 pending pod(s)" in verdict.message and "team-a/notebook, team-a/trainer" in verdict.message
    assert "hamiWebhook.enabled=true" in verdict.fix and "vgpu-dra migrate" in verdict.fix


def test_with_the_webhook_installed_pending_hami_pods_need_recreating(fake_apiserver: FakeApiServer) -> None:
    hami_pod(fake_apiserver, "trainer", {"nvidia.com/gpucores": "30"})
    fake_apiserver.create({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "vgpu-dra-hami-webhook", "labels": {
            "app.kubernetes.io/name": "vgpu-dra", "app.kubernetes.io/component": "hami-webhook"}},
        "webhooks": [{"name": "translate-hami-gpu.vgpu.dra.dev", "admissionReviewVersions": ["v1"],
                      "sideEffects": "None", "clientConfig": {"url": "https://webhook.example/mutate"}}]})
    verdict = hami(fake_apiserver)
    assert verdict.status is Status.WARN and "created before it" in verdict.message
    assert "recreate them" in verdict.fix


def test_consumable_capacity_seen_on_published_gpus(fake_apiserver: FakeApiServer) -> None:
    add_node(fake_apiserver, "n1", [gpu(0)])
    verdict = consumable(fake_apiserver)
    assert (verdict.check, verdict.status) == ("consumable-capacity", Status.OK)


def test_a_server_dropping_the_field_warns_in_controller_mode_and_fails_in_scheduler_mode(
        fake_apiserver: FakeApiServer) -> None:
    fake_apiserver.disable_feature("DRAConsumableCapacity")
    add_node(fake_apiserver, "n1", [gpu(0)])  # the plugin asked for allowMultipleAllocations; it was dropped
    verdict = consumable(fake_apiserver)
    assert verdict.status is Status.WARN and "VgpuConfig still work" in verdict.message
    assert "DRAConsumableCapacity" in verdict.fix
    add_device_class(fake_apiserver, allocator=ALLOCATOR_SCHEDULER)
    assert consumable(fake_apiserver).status is Status.FAIL


def test_without_published_gpus_the_dry_run_probe_decides() -> None:
    probe_kept = {"spec": {"devices": [{"name": "probe", "allowMultipleAllocations": True}]}}
    assert checks.check_consumable_capacity([], probe_kept, None, False).status is Status.OK
    probe_dropped = {"spec": {"devices": [{"name": "probe"}]}}
    assert checks.check_consumable_capacity([], probe_dropped, None, True).status is Status.FAIL


def test_when_the_probe_is_refused_it_says_it_cannot_tell(fake_apiserver: FakeApiServer) -> None:
    verdict = consumable(fake_apiserver)  # no slices; the fake answers dryRun with 400
    assert verdict.status is Status.WARN and verdict.message.startswith("cannot tell")


# --- node: CDI in the runtime ------------------------------------------------------------------------

CRI_1X = '[plugins."io.containerd.grpc.v1.cri"]\n  sandbox_image = "pause:3.9"\n'


@pytest.mark.parametrize(("text", "status", "words"), [
    ("version = 3\n", Status.OK, "CDI is on by default"),
    ('version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n  enable_cdi = true\n', Status.OK, "enable_cdi = true"),
    ("version = 2\n" + CRI_1X, Status.FAIL, "does not enable CDI"),
    ('version = 3\n[plugins."io.containerd.cri.v1.runtime"]\n  enable_cdi = false\n', Status.FAIL,
     "sets enable_cdi = false"),
    ('version = 3\n[plugins."io.containerd.cri.v1.runtime"]\n  cdi_spec_dirs = ["/etc/cdi"]\n', Status.FAIL,
     "not /var/run/cdi"),
    ("version = = 3\n", Status.FAIL, "is not valid TOML"),
])
def test_containerd_config(tmp_path: Path, text: str, status: Status, words: str) -> None:
    (tmp_path / "config.toml").write_text(text)
    verdict = doctor.cdi_verdict(tmp_path / "config.toml", tmp_path / "crio" / "crio.conf",
                                 str(tmp_path / "no-containerd-binary"))  # as in the plugin pod
    assert verdict.status is status and words in verdict.message


def test_crio_is_cdi_capable_unless_its_spec_dirs_leave_ours_out(tmp_path: Path) -> None:
    (tmp_path / "crio" / "crio.conf.d").mkdir(parents=True)
    (tmp_path / "crio" / "crio.conf.d" / "10-crun.conf").write_text('[crio.runtime]\ndefault_runtime = "crun"\n')
    verdict = doctor.cdi_verdict(tmp_path / "absent.toml", tmp_path / "crio" / "crio.conf")
    assert verdict.status is Status.OK and "CRI-O" in verdict.message
    (tmp_path / "crio" / "crio.conf").write_text('[crio.runtime]\ncdi_spec_dirs = ["/etc/cdi"]\n')
    assert doctor.cdi_verdict(tmp_path / "absent.toml", tmp_path / "crio" / "crio.conf").status is Status.FAIL


def test_no_runtime_config_found_warns(tmp_path: Path) -> None:
    verdict = doctor.cdi_verdict(tmp_path / "absent.toml", tmp_path / "crio" / "crio.conf")
    assert verdict.status is Status.WARN and "--containerd-config" in verdict.fix


# --- node: NVIDIA driver -----------------------------------------------------------------------------

def test_nvml_lists_the_gpus(fake_nvml: FakeNvml) -> None:
    fake_nvml.use("rtx3080-homelab")
    verdict = doctor.nvml_verdict()
    assert verdict.status is Status.OK
    assert verdict.message == "driver 550.54.15, 1 GPU(s) (0: NVIDIA GeForce RTX 3080)"


def test_no_driver_fails_with_nvmls_reason(fake_nvml: FakeNvml) -> None:
    fake_nvml.use(None, fail_init="DRIVER_NOT_LOADED")
    verdict = doctor.nvml_verdict()
    assert verdict.status is Status.FAIL and "driver not loaded" in verdict.message and "nvidia-smi" in verdict.fix


# --- node: plugin registration -----------------------------------------------------------------------

@pytest.fixture
def short_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="vgpu-doc-"))  # AF_UNIX paths are short
    yield path
    shutil.rmtree(path, ignore_errors=True)


def serve_registration(registrar: Path, endpoint: Path, name: str = DRIVER_NAME) -> grpc.Server:
    registrar.mkdir(parents=True, exist_ok=True)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_RegistrationServicer_to_server(RegistrationService(name, str(endpoint)), server)
    server.add_insecure_port(f"unix://{registrar / f'{DRIVER_NAME}-reg.sock'}")
    server.start()
    return server


def test_a_registered_plugin_answers_get_info(short_dir: Path) -> None:
    endpoint = short_dir / "dra.sock"
    endpoint.touch()
    server = serve_registration(short_dir / "registry", endpoint)
    try:
        verdict = doctor.registration_verdict(short_dir / "registry")
    finally:
        server.stop(None)
    assert verdict.status is Status.OK and f"DRA endpoint {endpoint}" in verdict.message
    assert "v1.DRAPlugin" in verdict.message


def test_registration_failures(short_dir: Path) -> None:
    registry = short_dir / "registry"
    registry.mkdir()
    assert "not running here" in doctor.registration_verdict(registry).message
    server = serve_registration(registry, short_dir / "missing-dra.sock")
    try:
        verdict = doctor.registration_verdict(registry)
    finally:
        server.stop(None)
    assert verdict.status is Status.FAIL and "does not exist" in verdict.message
    # The plugin died and left its socket behind: nobody answers.
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(registry / f"{DRIVER_NAME}-reg.sock"))
    verdict = doctor.registration_verdict(registry)
    assert verdict.status is Status.FAIL and "does not answer GetInfo" in verdict.message


def test_a_socket_answering_for_another_driver_fails(short_dir: Path) -> None:
    server = serve_registration(short_dir / "registry", short_dir / "dra.sock", name="gpu.nvidia.com")
    try:
        verdict = doctor.registration_verdict(short_dir / "registry")
    finally:
        server.stop(None)
    assert verdict.status is Status.FAIL and "'gpu.nvidia.com'" in verdict.message


# --- node: the shim ----------------------------------------------------------------------------------

def install(state_dir: Path, library: Path | bytes, version: str = "0.1.0-0123456789abcdef") -> Path:
    target = state_dir / "shim" / version / "libvgpu.so"
    target.parent.mkdir(parents=True)
    if isinstance(library, bytes):
        target.write_bytes(library)
    else:
        shutil.copyfile(library, target)
    return target


def test_the_installed_shim_loads(built: None, tmp_path: Path) -> None:
    installed = install(tmp_path, PROD_SHIM)
    verdict = doctor.shim_verdict(tmp_path)
    assert verdict.status is Status.OK and str(installed) in verdict.message


def test_no_installed_shim_fails(tmp_path: Path) -> None:
    verdict = doctor.shim_verdict(tmp_path)
    assert verdict.status is Status.FAIL and "no libvgpu.so installed" in verdict.message


def test_a_shim_needing_a_newer_glibc_fails(tmp_path: Path) -> None:
    # This interpreter is a real ELF file that needs a glibc newer than 2.17.
    needed = checks.glibc_versions_needed(Path(sys.executable).resolve().read_bytes())
    if not needed or needed[-1] <= (2, 17):
        pytest.skip("this Python binary needs no glibc newer than 2.17")
    install(tmp_path, Path(sys.executable).resolve())
    verdict = doctor.shim_verdict(tmp_path)
    assert verdict.status is Status.FAIL and "needs GLIBC_" in verdict.message


def test_the_real_shim_needs_nothing_newer_than_2_17(built: None) -> None:
    needed = checks.glibc_versions_needed(PROD_SHIM.read_bytes())
    assert needed and needed[-1] <= (2, 17)  # it names GLIBC_2.34 as a string, which must not count


def test_a_shim_that_does_not_load_fails(tmp_path: Path) -> None:
    (tmp_path / "dep.c").write_text("int dep(void) { return 1; }\n")
    (tmp_path / "lib.c").write_text("int dep(void);\nint f(void) { return dep(); }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(tmp_path / "libdep.so"), str(tmp_path / "dep.c")], check=True)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(tmp_path / "broken.so"), str(tmp_path / "lib.c"),
                    f"-L{tmp_path}", "-ldep"], check=True)
    install(tmp_path / "state", tmp_path / "broken.so")  # libdep.so is not on the loader's path
    verdict = doctor.shim_verdict(tmp_path / "state")
    assert verdict.status is Status.FAIL and "does not load" in verdict.message and "libdep.so" in verdict.message


def test_a_file_that_is_not_a_library_fails(tmp_path: Path) -> None:
    install(tmp_path, b"#!/bin/sh\n")
    verdict = doctor.shim_verdict(tmp_path)
    assert verdict.status is Status.FAIL and "not a shared library" in verdict.message


# --- node: /etc/ld.so.preload ------------------------------------------------------------------------

def test_ld_so_preload_of_the_shim_warns() -> None:
    verdict = checks.check_ld_so_preload("/usr/local/lib/vgpu-dra/libvgpu.so\n", "/etc/ld.so.preload")
    assert verdict.status is Status.WARN and "every process" in verdict.message
    assert "remove /usr/local/lib/vgpu-dra/libvgpu.so" in verdict.fix


@pytest.mark.parametrize(("content", "words"), [
    (None, "no /etc/ld.so.preload"), ("", "is empty"), ("# comment\n/lib/libsnoopy.so\n", "libsnoopy.so"),
])
def test_ld_so_preload_without_the_shim_is_fine(content: str | None, words: str) -> None:
    verdict = checks.check_ld_so_preload(content, "/etc/ld.so.preload")
    assert verdict.status is Status.OK and words in verdict.message


# --- the command -------------------------------------------------------------------------------------

def healthy_node(root: Path, endpoint: Path) -> list[str]:
    (root / "containerd").mkdir()
    (root / "containerd" / "config.toml").write_text("version = 3\n")
    install(root / "state", PROD_SHIM)
    endpoint.touch()
    return ["--containerd-config", str(root / "containerd" / "config.toml"), "--crio-config",
            str(root / "crio" / "crio.conf"), "--state-dir", str(root / "state"), "--registrar-dir",
            str(root / "registry"), "--ld-so-preload", str(root / "ld.so.preload")]


def test_a_healthy_node_and_cluster_pass(built: None, short_dir: Path, fake_nvml: FakeNvml,
                                         fake_apiserver: FakeApiServer) -> None:
    options = healthy_node(short_dir, short_dir / "dra.sock")
    add_node(fake_apiserver, "n1", [gpu(0)])
    kubeconfig = write_kubeconfig(fake_apiserver, short_dir / "kubeconfig")
    server = serve_registration(short_dir / "registry", short_dir / "dra.sock")
    try:
        result = vgpu_dra("doctor", *options, "--kubeconfig", str(kubeconfig), env=fake_nvml.env("rtx3080-homelab"))
    finally:
        server.stop(None)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[:2] for line in lines[:8]] == [
        ["ok", "dra-api"], ["ok", "hami-pods"], ["ok", "consumable-capacity"], ["ok", "cdi-runtime"],
        ["ok", "nvidia-driver"], ["ok", "plugin-registered"], ["ok", "shim-installed"], ["ok", "ld-so-preload"]]
    assert lines[-1] == "8 checks: 8 ok, 0 warning(s), 0 failed"


def test_one_failure_makes_exit_1_and_json_names_it(built: None, short_dir: Path, fake_nvml: FakeNvml) -> None:
    options = healthy_node(short_dir, short_dir / "dra.sock")
    (short_dir / "ld.so.preload").write_text("/usr/lib/vgpu-dra/libvgpu.so\n")  # a warning only
    server = serve_registration(short_dir / "registry", short_dir / "dra.sock")
    try:
        result = vgpu_dra("doctor", "--node-only", *options, "-o", "json",
                          env=fake_nvml.env(None, fail_init="DRIVER_NOT_LOADED"))
    finally:
        server.stop(None)
    assert result.returncode == 1
    document = json.loads(result.stdout)
    statuses = {check["check"]: check["status"] for check in document["checks"]}
    assert statuses == {"cdi-runtime": "ok", "nvidia-driver": "fail", "plugin-registered": "ok",
                        "shim-installed": "ok", "ld-so-preload": "warn"}
    assert document["failed"] == 1


def test_node_only_with_only_a_warning_exits_0(built: None, short_dir: Path, fake_nvml: FakeNvml) -> None:
    options = healthy_node(short_dir, short_dir / "dra.sock")
    (short_dir / "ld.so.preload").write_text("/usr/lib/vgpu-dra/libvgpu.so\n")
    server = serve_registration(short_dir / "registry", short_dir / "dra.sock")
    try:
        result = vgpu_dra("doctor", "--node-only", *options, env=fake_nvml.env("rtx3080-homelab"))
    finally:
        server.stop(None)
    assert result.returncode == 0
    assert "WARN  ld-so-preload" in result.stdout and "fix: remove /usr/lib/vgpu-dra/libvgpu.so" in result.stdout


@pytest.mark.parametrize(("reported", "status"), [
    ("containerd github.com/containerd/containerd/v2 v2.0.2 c507a0257ea6462fbd6f5ba4f5c74facb04021f4", Status.OK),
    ("containerd containerd.io 1.7.22 7f7fdf5fed64eb6a7caf99b3e12efcf9d60e311c", Status.FAIL),
])
def test_a_version_2_config_is_judged_by_the_running_containerd(tmp_path: Path, reported: str,
                                                                 status: Status) -> None:
    (tmp_path / "config.toml").write_text("version = 2\n" + CRI_1X)
    binary = tmp_path / "containerd"
    binary.write_text(f"#!/bin/sh\necho '{reported}'\n")
    binary.chmod(0o755)
    verdict = doctor.cdi_verdict(tmp_path / "config.toml", tmp_path / "crio" / "crio.conf", str(binary))
    assert verdict.status is status
    assert ("containerd 2.0: CDI is on by default" if status is Status.OK else "containerd 1.7") in verdict.message


def test_host_root_reads_the_hosts_files_from_a_pod(built: None, short_dir: Path, fake_nvml: FakeNvml) -> None:
    host = short_dir / "host"
    (host / "etc" / "containerd").mkdir(parents=True)
    (host / "etc" / "containerd" / "config.toml").write_text('version = 2\n[plugins."x"]\n  enable_cdi = false\n')
    (host / "etc" / "ld.so.preload").write_text("/opt/libvgpu.so\n")
    install(short_dir / "state", PROD_SHIM)
    result = vgpu_dra("doctor", "--node-only", "--host-root", str(host), "--state-dir", str(short_dir / "state"),
                      "--registrar-dir", str(short_dir / "registry"), "-o", "json", env=fake_nvml.env("mixed-node"))
    verdicts = {check["check"]: check for check in json.loads(result.stdout)["checks"]}
    assert verdicts["cdi-runtime"]["message"] == f"{host}/etc/containerd/config.toml sets enable_cdi = false"
    assert verdicts["ld-so-preload"]["status"] == "warn" and str(host / "etc/ld.so.preload") in \
        verdicts["ld-so-preload"]["message"]
