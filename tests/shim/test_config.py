"""Claim configuration: none = pass-through, invalid = fail closed, and one language for C and Python."""

import subprocess
from pathlib import Path

import pytest

from tests.shim.harness import GPU0, MiB, PROD_SHIM, SHIM_OUT, Node
from vgpu_dra.driver.claimconfig import ClaimConfigError, parse

CUDA_ERROR_NOT_PERMITTED = 800


def test_without_a_claims_directory_everything_passes_through(node: Node) -> None:
    result = node.run("init", "ctx", "0", "alloc", str(20 << 30), "alloc", str(8 << 30), "info")
    assert result.rcs() == [0, 0, 2, 0, 0]  # 20 GiB: the fake device's own 16 GiB refuse it
    assert int(result.lines[4]["total"]) == 16 << 30
    assert result.stderr == ""


def test_an_invalid_config_fails_closed_with_one_clear_line(node: Node) -> None:
    claim = node.claims_root / "claim-x"
    claim.mkdir(parents=True)
    (claim / "config").write_text(f"version=1\nclaim=claim-x\ngpu uuid={GPU0} memory=2Gi cores=0 policy=soft\n")
    result = node.run("init", "ctx", "0", "alloc", str(MiB), "info")
    # cuInit is refused, so the driver itself refuses everything after (unwrapped calls included).
    assert result.rc(0) == CUDA_ERROR_NOT_PERMITTED
    assert all(rc != 0 for rc in result.rcs())
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "claim-x/config" in lines[0] and "line 3" in lines[0] and "memory='2Gi'" in lines[0]
    assert "fail closed" in lines[0]


def test_launches_are_refused_when_failing_closed(node: Node) -> None:
    claim = node.claims_root / "claim-x"
    claim.mkdir(parents=True)
    (claim / "config").write_text("version=1\n")
    result = node.run("launchall")
    codes = {k: v for k, v in result.lines[0].items() if k.startswith("cu")}
    assert len(codes) == 8 and set(codes.values()) == {str(CUDA_ERROR_NOT_PERMITTED)}


def test_a_region_of_another_layout_or_claim_fails_closed(node: Node) -> None:
    region = node.add_claim("claim-a", {GPU0: MiB})
    data = bytearray(region.read_bytes())
    data[8:12] = (99).to_bytes(4, "little")  # layout_version
    region.write_bytes(bytes(data))
    result = node.run("init")
    assert result.rcs() == [CUDA_ERROR_NOT_PERMITTED]
    assert "unknown layout" in result.stderr
    other = node.add_claim("claim-b", {"GPU-11111111-2222-3333-4444-555555555555": MiB})
    (node.claims_root / "claim-a").rename(node.root / "old-a")
    (node.claims_root / "claim-b" / "config").write_text(
        f"version=1\nclaim=claim-c\ngpu uuid={GPU0} memory=1 cores=0 policy=soft\n"
    )
    assert other.exists()
    result = node.run("init")
    assert result.rcs() == [CUDA_ERROR_NOT_PERMITTED]
    assert "belongs to claim claim-b" in result.stderr


def test_a_claim_directory_without_config_fails_closed(node: Node) -> None:
    (node.claims_root / "claim-y").mkdir(parents=True)
    result = node.run("init")
    assert result.rcs() == [CUDA_ERROR_NOT_PERMITTED]
    assert "cannot read claim config" in result.stderr


def test_one_gpu_in_two_claims_is_enforced_with_both_walls(node: Node) -> None:
    # Used to fail closed; now the process holds both shares (tests/shim/test_shared_gpu.py).
    node.add_claim("claim-1", {GPU0: MiB})
    node.add_claim("claim-2", {GPU0: MiB})
    result = node.run("init", "ctx", "0", "alloc", str(MiB), "alloc", str(MiB), "alloc", "1")
    assert result.rcs() == [0, 0, 0, 0, 2]
    assert "vgpu:" not in result.stderr  # no fail-closed line


def test_one_gpu_twice_in_one_claim_still_fails_closed(node: Node) -> None:
    directory = node.claims_root / "claim-1"
    directory.mkdir(parents=True)
    (directory / "config").write_text(
        f"version=1\nclaim=claim-1\ngpu uuid={GPU0} memory=1 cores=0 policy=soft\n"
        f"gpu uuid={GPU0} memory=2 cores=0 policy=soft\n"
    )
    result = node.run("init")
    assert result.rcs() == [CUDA_ERROR_NOT_PERMITTED]
    assert "appears twice" in result.stderr


def test_an_unwritable_region_fails_closed_instead_of_running_unlimited(node: Node) -> None:
    node.add_claim("claim-a", {GPU0: MiB})
    region = node.claims_root / "claim-a" / "region"
    region.unlink()
    region.mkdir()  # cannot be opened as a file, whatever the privileges
    result = node.run("init", "ctx", "0", "alloc", str(2 * MiB))
    assert result.rc(0) == CUDA_ERROR_NOT_PERMITTED
    assert all(rc != 0 for rc in result.rcs())
    assert "cannot open region" in result.stderr


def test_a_missing_or_zero_filled_region_is_created_by_the_first_process(node: Node) -> None:
    node.add_claim("claim-a", {GPU0: 4 * MiB})
    region = node.claims_root / "claim-a" / "region"
    region.unlink()
    assert node.run("init", "ctx", "0", "alloc", str(5 * MiB)).rcs() == [0, 0, 2]
    region.write_bytes(b"\0" * 4096)
    assert node.run("init", "ctx", "0", "alloc", str(3 * MiB), "alloc", str(2 * MiB)).rcs() == [0, 0, 0, 2]
    assert node.region("claim-a").gpu(GPU0).limit_bytes == 4 * MiB


def test_production_build_ignores_the_test_override(node: Node) -> None:
    node.add_claim("claim-a", {GPU0: MiB})
    # The production library only reads /var/run/vgpu-dra/claims; the env var must change nothing.
    result = node.run("init", "ctx", "0", "alloc", str(8 * MiB), shim=PROD_SHIM)
    assert result.rcs() == [0, 0, 0]
    strings = subprocess.run(["strings", str(PROD_SHIM)], capture_output=True, text=True, check=True).stdout
    assert "VGPU_CLAIMS_ROOT" not in strings
    assert "/var/run/vgpu-dra/claims" in strings


CORPUS = [
    f"version=1\nclaim=c\ngpu uuid={GPU0} memory=1 cores=0 policy=soft\n",
    f"# c\n\n  gpu\tpolicy=hard cores=100 memory=9223372036854775807 uuid=MIG-1-2 \r\nclaim=a.b_c-d\nversion=1",
    f"version=1\nclaim=c\ngpu uuid={GPU0} memory=9223372036854775808 cores=0 policy=soft\n",
    f"version=1\nclaim=c\ngpu uuid={GPU0} memory=1 cores=0 policy=soft x=1\n",
    f"version=1\nclaim=c\ngpu uuid={GPU0} memory=1 cores=0 policy=soft\ngpu uuid={GPU0} memory=1 cores=0 policy=soft\n",
    f"version=01\nclaim=c\ngpu uuid={GPU0} memory=1 cores=0 policy=soft\n",
    f"version=1\nclaim=-c\ngpu uuid={GPU0} memory=1 cores=0 policy=soft\n",
    f"version=1\nclaim=c\ngpu uuid={GPU0} memory=+1 cores=0 policy=soft\n",
    f"version=1\nclaim=c\ngpu uuid={GPU0} memory=1 cores=0 policy=soft\x0c\n",
    f"version=1\nclaim=c\ngpu uuid=GPU- memory=1 cores=0 policy=soft\n",
    f"version=1\nclaim=c\ngpu  uuid={GPU0}  memory=0x10 cores=0 policy=soft\n",
    "version=1\nclaim=c\n" + "".join(f"gpu uuid=GPU-{i} memory=1 cores=0 policy=soft\n" for i in range(16)),
    "version=1\nclaim=c\n" + "".join(f"gpu uuid=GPU-{i} memory=1 cores=0 policy=soft\n" for i in range(17)),
    "version=1\nclaim=c\ngpu\n",
    "version=1\nclaim=c\nversion=1\n",
    "claim=c\n",
    "",
]


@pytest.mark.parametrize("text", CORPUS)
def test_shim_and_python_accept_the_same_configs(tmp_path: Path, text: str) -> None:
    path = tmp_path / "config"
    path.write_bytes(text.encode("latin-1"))
    out = subprocess.run([str(SHIM_OUT / "vgpu-configcheck"), str(path)], capture_output=True, text=True)
    try:
        config = parse(text)
    except ClaimConfigError:
        assert out.stdout.startswith("error "), out.stdout
        return
    assert out.stdout.startswith("ok "), out.stdout
    words = out.stdout.split()
    assert words[1] == config.claim_uid
    assert int(words[2]) == len(config.gpus)
    policy = {"soft": 0, "hard": 1}
    expected = [f"{g.uuid}:{g.memory_bytes}:{g.cores}:{policy[g.policy]}" for g in config.gpus]
    assert words[3:] == expected
