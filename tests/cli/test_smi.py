"""`vgpu-dra smi`: the plugin's checkpoint joined with live regions the real shim writes."""
from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest

from tests.cli.conftest import vgpu_dra
from tests.shim.harness import GPU0, GPU_A, MiB, Node, read_until, stop
from vgpu_dra.cli import smi
from vgpu_dra.driver.checkpoint import Checkpoint, CheckpointStore, PreparedClaim, PreparedDevice


def device(uuid: str, memory: int, cores: int = 0, index: int = 0) -> PreparedDevice:
    return PreparedDevice(request="gpu", pool="node-a", device=f"gpu-{index}", share_id="share-1", gpu_uuid=uuid,
                          gpu_index=index, gpu_minor=index, memory_bytes=memory, cores=cores, core_policy="soft",
                          nvidia_cdi_device=None, cdi_device_ids=("k8s.vgpu.dra.dev/claim=x",))


def prepared(uid: str, name: str, *devices: PreparedDevice, pods: tuple[str, ...] = ("web-1",)) -> PreparedClaim:
    return PreparedClaim(uid=uid, namespace="team-a", name=name, state="prepared", devices=devices,
                         shim_host_path="/var/lib/vgpu-dra/shim/libvgpu.so", pods=pods)


def write_checkpoint(state_dir: Path, *claims: PreparedClaim) -> None:
    CheckpointStore(state_dir / "checkpoint.json").save(Checkpoint(boot_id="b", claims={c.uid: c for c in claims}))


def smi_args(state_dir: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    smi.register(parser.add_subparsers())
    return parser.parse_args(["smi", "--state-dir", str(state_dir), *extra])


@pytest.fixture
def node(built: None, tmp_path: Path) -> Node:
    return Node(root=tmp_path, devices={GPU0: 16 << 30, GPU_A: 16 << 30})


def test_a_live_process_shows_its_usage_against_the_limit(node: Node) -> None:
    node.add_claim("uid-web", {GPU0: 64 * MiB}, cores=25)
    write_checkpoint(node.root, prepared("uid-web", "web", device(GPU0, 64 * MiB, cores=25)),
                     prepared("uid-idle", "idle", device(GPU_A, 32 * MiB, index=1), pods=()))
    # uid-web's process allocates, is refused once past the wall, and stays alive holding 40 MiB.
    # uid-idle is in the checkpoint but has no claim directory (e.g. removed by hand).
    holder = node.start("init", "ctx", "0", "alloc", str(40 * MiB), "alloc", str(40 * MiB), "sleep", "30000")
    try:
        read_until(holder, "alloc")
        assert read_until(holder, "alloc")[-1]["rc"] == "2"  # the second one, refused at the wall
        out = io.StringIO()
        assert smi.run(smi_args(node.root, "-o", "json"), out=out) == 0
        rows = {row["claim"]: row for row in json.loads(out.getvalue())["claims"]}
        web = rows["web"]
        assert (web["memoryLimitBytes"], web["memoryUsedBytes"], web["memoryPeakBytes"]) == (
            64 * MiB, 40 * MiB, 40 * MiB)
        assert web["rejectedAllocations"] == 1
        assert web["liveProcesses"] == 1 and web["coreCap"] == 25 and web["pods"] == ["web-1"]
        assert rows["idle"]["regionReadable"] is False  # its directory is gone: shown, not guessed

        table = io.StringIO()
        assert smi.run(smi_args(node.root), out=table) == 0
        lines = table.getvalue().splitlines()
        assert lines[0].split()[:4] == ["CLAIM", "PODS", "GPU", "LIMIT"]
        idle_line = next(line for line in lines if line.startswith("team-a/idle"))
        web_line = next(line for line in lines if line.startswith("team-a/web"))
        assert web_line.split()[:6] == ["team-a/web", "web-1", "gpu-0", "64", "MiB", "40"]
        assert "25 % soft" in web_line
        assert idle_line.split()[1:5] == ["-", "gpu-1", "32", "MiB"] and idle_line.rstrip().endswith("-")
    finally:
        stop(holder)
    out = io.StringIO()
    smi.run(smi_args(node.root, "-o", "json"), out=out)
    web = next(row for row in json.loads(out.getvalue())["claims"] if row["claim"] == "web")
    assert web["liveProcesses"] == 0 and web["memoryUsedBytes"] == 0  # the killed process's bytes don't count


def test_no_prepared_claims(tmp_path: Path) -> None:
    out = io.StringIO()
    assert smi.run(smi_args(tmp_path), out=out) == 0
    assert out.getvalue() == "No claims prepared on this node.\n"


def test_not_a_node_is_one_clear_line(tmp_path: Path) -> None:
    result = vgpu_dra("smi", "--state-dir", str(tmp_path / "absent"))
    assert result.returncode == 1
    assert result.stderr == (f"vgpu-dra smi: error: {tmp_path / 'absent'} does not exist: is the vgpu-dra kubelet "
                             "plugin running on this node? (--state-dir names another place)\n")


def test_a_corrupt_checkpoint_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "checkpoint.json").write_text('{"version": 1, "claims": {}}')
    result = vgpu_dra("smi", "--state-dir", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.startswith(f"vgpu-dra smi: error: {tmp_path / 'checkpoint.json'} is corrupt (checksum")
    assert "Traceback" not in result.stderr


def test_watch_prints_again_until_interrupted(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, prepared("uid-1", "one", device(GPU0, 64 * MiB)))
    naps: list[float] = []

    def sleep(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == 1:  # the claim goes away between two draws
            write_checkpoint(tmp_path)
        else:
            raise KeyboardInterrupt

    out = io.StringIO()
    assert smi.run(smi_args(tmp_path, "--watch", "0.5", "-o", "json"), out=out, sleep=sleep) == 0
    documents = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [len(document["claims"]) for document in documents] == [1, 0]
    assert naps == [0.5, 0.5]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_watch_on_a_terminal_redraws_the_table_in_place(tmp_path: Path) -> None:
    write_checkpoint(tmp_path, prepared("uid-1", "one", device(GPU0, 64 * MiB)))
    naps: list[float] = []

    def sleep(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == 2:
            raise KeyboardInterrupt

    out = Terminal()
    assert smi.run(smi_args(tmp_path, "--watch"), out=out, sleep=sleep) == 0
    frames = out.getvalue().split("\x1b[H\x1b[2J")[1:]  # each draw starts by clearing the screen
    assert len(frames) == 2 and all("team-a/one" in frame and "every 2 s" in frame for frame in frames)
    assert naps == [2.0, 2.0]


def test_watch_needs_a_positive_interval(tmp_path: Path) -> None:
    result = vgpu_dra("smi", "--state-dir", str(tmp_path), "--watch", "0")
    assert result.returncode == 1 and "--watch SECONDS must be more than 0" in result.stderr
