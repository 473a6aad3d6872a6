"""`vgpu-dra cdi` with a real CDI consumer: Podman applies the share's spec with its own CDI library.

1. `podman create` + `podman init` with ``--device vgpu.dra.dev/claim=NAME``: the OCI config.json
   Podman wrote carries exactly the edits the plugin's spec builder meant (preload, shim, the
   claim's files, device nodes), and runc accepts it.
2. A container started with the share (and a stand-in for NVIDIA's generated spec that supplies
   the GPU and the fake driver library) runs the project's fake CUDA program and hits the wall.

Needs podman, runc and root; skips without them, except in CI (VGPU_REQUIRE_CLUSTER=1 or CI set),
where it fails instead.
"""
from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli import podman_host
from tests.cli.conftest import HOMELAB_GPU, PROD_SHIM, vgpu_dra
from tests.cli.podman_host import Podman, make_char_device, rootfs_tarball, shared_objects
from tests.shim.harness import CUDAPROG, FAKES_OUT, parse_lines
from vgpu_dra.driver.region import read_region

MiB = 1 << 20
IMAGE = "localhost/vgpu-dra-cdi-test:1"
SHARE = "worker-a"
RWM = "rwm"
# Device numbers of a real NVIDIA node: the GPUs and nvidiactl on 195, nvidia-uvm on a dynamic major.
DEVICE_NODES = {"nvidia0": (195, 0), "nvidiactl": (195, 255), "nvidia-uvm": (510, 0), "nvidia-uvm-tools": (510, 1)}


@pytest.fixture(scope="session")
def podman_tools() -> None:
    """Podman, runc and root, checked before anything is built (session scope: it runs first)."""
    problem = podman_host.missing()
    if problem is not None:
        if podman_host.required():
            pytest.fail(f"the podman CDI tests must run in CI: {problem}")
        pytest.skip(problem)


@pytest.fixture
def podman(podman_tools: None, tmp_path: Path) -> Iterator[Podman]:
    cdi_dir = tmp_path / "cdi"
    cdi_dir.mkdir()
    runner = Podman(Path(tempfile.mkdtemp(prefix="vgpu-podman-")), cdi_dir)
    try:
        yield runner
    finally:
        runner.close()


@pytest.fixture
def dev(tmp_path: Path) -> Path:
    """The host's NVIDIA device nodes, made with the real numbers in a directory of the test."""
    directory = tmp_path / "dev"
    directory.mkdir()
    for name, (major, minor) in DEVICE_NODES.items():
        make_char_device(directory / name, major, minor)
    return directory


@pytest.fixture
def image(podman: Podman, tmp_path: Path, machine_env: dict[str, str]) -> dict[str, str]:
    """A local image with the fake CUDA program and the libraries it and the shim load (no
    registry): ``podman import`` of a rootfs tarball. Returns the image path of the C library's
    directory, where NVIDIA's spec would put libcuda."""
    libraries = shared_objects(CUDAPROG, PROD_SHIM, FAKES_OUT / "libcuda.so.1", env=machine_env)
    files = {"/cudaprog": CUDAPROG}
    files |= {str(lib): lib for lib in libraries if FAKES_OUT not in lib.parents}
    podman.ok("import", str(rootfs_tarball(tmp_path / "rootfs.tar", files)), IMAGE)
    libc = next(lib for lib in libraries if lib.name.startswith("libc.so"))
    return {"libdir": str(libc.parent)}


def create_share(tmp_path: Path, podman: Podman, dev: Path, env: dict[str, str], *args: str) -> dict:
    result = vgpu_dra("cdi", "create", SHARE, "--memory", "64Mi", "--cores", "25", "--state-dir",
                      str(tmp_path / "state"), "--cdi-dir", str(podman.cdi_dir), "--dev-dir", str(dev),
                      "--shim", str(PROD_SHIM), "-o", "json", *args, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_podman_writes_the_oci_config_the_spec_builder_intended(podman_tools, podman, dev, image,  # noqa: ANN001
                                                                machine_env, tmp_path: Path) -> None:
    share = create_share(tmp_path, podman, dev, machine_env)
    assert share["deviceIds"] == [f"vgpu.dra.dev/claim={SHARE}"]
    podman.ok("create", "--name", "a", "--device", share["deviceIds"][0], *Podman.ulimits(), IMAGE, "/cudaprog")
    podman.ok("init", "a")  # the runtime accepted the devices and mounts, not only Podman
    config = podman.oci_config("a")

    record = json.loads((tmp_path / "state" / "shares" / f"{SHARE}.json").read_text())
    claim_dir = Path(record["claim_dir"])
    ro, rw = ["ro", "nosuid", "nodev", "bind"], ["rw", "nosuid", "nodev", "bind"]
    expected = {
        "/usr/lib/vgpu-dra/libvgpu.so": (record["shim_host_path"], ro),
        "/etc/ld.so.preload": (record["preload_host_path"], ro),
        f"/var/run/vgpu-dra/claims/{SHARE}/config": (str(claim_dir / "config"), ro),
        f"/var/run/vgpu-dra/claims/{SHARE}/region": (str(claim_dir / "region"), rw),
    }
    ours = {m["destination"]: (m["source"], m["options"]) for m in config["mounts"]
            if m["source"].startswith(str(tmp_path / "state"))}
    assert ours == expected
    assert Path(record["shim_host_path"]).read_bytes() == PROD_SHIM.read_bytes()
    assert Path(record["preload_host_path"]).read_text() == "/usr/lib/vgpu-dra/libvgpu.so\n"
    assert read_region(claim_dir / "region").gpu(HOMELAB_GPU).limit_bytes == 64 * MiB

    env = config["process"]["env"]
    assert "NVIDIA_VISIBLE_DEVICES=void" in env
    assert not any(e.startswith("LD_PRELOAD=") for e in env)  # ld.so.preload, as in the plugin's pods

    devices = {(d["path"], d["type"], d["major"], d["minor"]) for d in config["linux"]["devices"]}
    assert devices == {(f"/dev/{n}", "c", major, minor) for n, (major, minor) in DEVICE_NODES.items()}
    allowed = {(r["type"], r["major"], r["minor"], r["access"]) for r in config["linux"]["resources"]["devices"]
               if r.get("allow")}
    assert {("c", major, minor, RWM) for major, minor in DEVICE_NODES.values()} <= allowed

    # And nothing the spec asks for was dropped on the way (the runtime's view of the spec itself).
    spec = json.loads(Path(share["spec"]).read_text())
    spec_mounts = [m for e in (spec["containerEdits"], spec["devices"][0]["containerEdits"]) for m in e["mounts"]]
    assert {m["containerPath"]: (m["hostPath"], m["options"]) for m in spec_mounts} == ours


def fake_nvidia_spec(podman: Podman, dev: Path, libdir: str) -> None:
    """What `nvidia-ctk cdi generate` writes, reduced to this host: GPU 0 by index, the control
    nodes and the driver library (here the project's fake libcuda.so.1)."""
    spec = {
        "cdiVersion": "0.5.0", "kind": "nvidia.com/gpu",
        "devices": [{"name": "0", "containerEdits": {
            "deviceNodes": [{"path": "/dev/nvidia0", "hostPath": str(dev / "nvidia0")}]}}],
        "containerEdits": {
            "deviceNodes": [{"path": f"/dev/{n}", "hostPath": str(dev / n)}
                            for n in ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools")],
            "mounts": [{"hostPath": str(FAKES_OUT / "libcuda.so.1"), "containerPath": f"{libdir}/libcuda.so.1",
                        "options": ["ro", "nosuid", "nodev", "bind"]}]},
    }
    (podman.cdi_dir / "nvidia.json").write_text(json.dumps(spec))


def test_a_container_started_with_the_share_hits_its_wall(podman_tools, podman, dev, image,  # noqa: ANN001
                                                          machine_env, tmp_path: Path) -> None:
    fake_nvidia_spec(podman, dev, image["libdir"])
    share = create_share(tmp_path, podman, dev, machine_env)
    assert share["deviceIds"] == ["nvidia.com/gpu=0", f"vgpu.dra.dev/claim={SHARE}"]
    state = tmp_path / "fake-cuda"
    state.mkdir()
    program = ["/cudaprog", "link", "init", "ctx", "0", "alloc", str(48 * MiB), "alloc", str(48 * MiB), "info"]
    fake_driver = ["-e", f"FAKE_CUDA_DEVICES={HOMELAB_GPU}={10240 * MiB}", "-e", "FAKE_CUDA_STATE=/fake/state",
                   "-e", "FAKE_CUDA_CTX_BYTES=0", "-v", f"{state}:/fake"]

    def run(*devices: str) -> list[dict[str, str]]:
        flags = [f for d in devices for f in ("--device", d)]
        out = podman.ok("run", "--rm", *flags, *fake_driver, *Podman.ulimits(), IMAGE, *program)
        return parse_lines(out)

    # Without the share, the same container gets the whole card.
    unlimited = run("nvidia.com/gpu=0")
    assert [line["rc"] for line in unlimited if line["cmd"] == "alloc"] == ["0", "0"]

    walled = run(*share["deviceIds"])
    assert [line["rc"] for line in walled if line["cmd"] == "alloc"] == ["0", "2"]  # 2 = CUDA_ERROR_OUT_OF_MEMORY
    assert [int(line["total"]) for line in walled if line["cmd"] == "info"] == [64 * MiB]
    usage = read_region(tmp_path / "state" / "claims" / SHARE / "region").gpu(HOMELAB_GPU)
    assert (usage.rejected_allocations, usage.peak_bytes) == (1, 48 * MiB)
    listed = json.loads(vgpu_dra("cdi", "list", "-o", "json", "--state-dir", str(tmp_path / "state"),
                                 env=machine_env).stdout)
    assert listed["shares"][0]["usage"][0]["rejectedAllocations"] == 1
