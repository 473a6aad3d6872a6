"""Loader hygiene of the built library and behaviour for programs that never use CUDA."""

import re
import subprocess

from tests.shim.harness import CUDAPROG, FAKES_OUT, GPU0, MiB, PLAIN, PROD_SHIM, TEST_SHIM, Node

GLIBC_BASELINE = (2, 17)


def _dynamic_symbols(lib) -> str:
    return subprocess.run(["objdump", "-T", str(lib)], capture_output=True, text=True, check=True).stdout


def test_no_glibc_symbol_newer_than_2_17_and_nothing_private() -> None:
    for lib in (PROD_SHIM, TEST_SHIM):
        table = _dynamic_symbols(lib)
        versions = set(re.findall(r"GLIBC_([0-9.]+)", table))
        assert versions, "expected versioned glibc references"
        too_new = sorted(v for v in versions if tuple(int(x) for x in v.split(".")[:2]) > GLIBC_BASELINE)
        assert too_new == [], f"{lib.name} needs glibc {too_new}"
        assert "GLIBC_PRIVATE" not in table


def test_only_the_intercepted_api_is_exported() -> None:
    table = _dynamic_symbols(PROD_SHIM)
    exported = {line.split()[-1] for line in table.splitlines() if " DF .text" in line}
    assert "dlsym" in exported and "cuMemAlloc_v2" in exported and "nvmlDeviceGetMemoryInfo" in exported
    internal = {name for name in exported if not re.match(r"^(cu[A-Z]|nvml[A-Z]|dlsym$)", name)}
    assert internal == set()


def test_no_hard_dependency_on_the_driver_or_nvml() -> None:
    dynamic = subprocess.run(["readelf", "-d", str(PROD_SHIM)], capture_output=True, text=True, check=True).stdout
    needed = re.findall(r"NEEDED.*\[(.+)\]", dynamic)
    assert needed and not any("cuda" in n or "nvidia" in n for n in needed)


def test_release_build_is_stripped() -> None:
    sections = subprocess.run(["readelf", "-S", str(PROD_SHIM)], capture_output=True, text=True, check=True).stdout
    assert ".symtab" not in sections and ".debug" not in sections


def test_a_program_that_never_uses_cuda_is_unaffected(node: Node) -> None:
    node.add_claim("claim-a", {GPU0: MiB})
    env = node.env()
    plain = [str(PLAIN), "alpha", "beta", "gamma"]
    without = subprocess.run(plain, capture_output=True, text=True, env={**env, "LD_PRELOAD": ""})
    with_shim = subprocess.run(plain, capture_output=True, text=True, env=env)
    assert with_shim.returncode == without.returncode == 0
    assert with_shim.stdout == without.stdout == "plain sum=4934 next=found\nplain done\n"
    assert with_shim.stderr == ""
    # It never attached to the claim: no process slot was taken.
    assert node.region("claim-a").processes == ()


def test_invalid_config_does_not_touch_non_cuda_programs(node: Node) -> None:
    claim = node.claims_root / "claim-x"
    claim.mkdir(parents=True)
    (claim / "config").write_text("garbage\n")
    result = subprocess.run([str(PLAIN), "x"], capture_output=True, text=True, env=node.env())
    assert result.returncode == 0 and result.stderr == ""


def test_shim_loads_without_any_driver_installed(tmp_path) -> None:
    # No libcuda.so.1 anywhere on the search path: a CUDA program then fails to start on its own,
    # but a plain program under the preload runs unchanged.
    result = subprocess.run(
        [str(PLAIN), "x"], capture_output=True, text=True, env={"LD_PRELOAD": str(PROD_SHIM), "PATH": "/usr/bin:/bin"}
    )
    assert result.returncode == 0 and result.stdout.startswith("plain sum=1")
    assert not (FAKES_OUT / "libcuda.so").exists()


def test_works_from_etc_ld_so_preload(node: Node, tmp_path) -> None:
    """The production way in: /etc/ld.so.preload, in a private mount namespace over an overlay of /etc."""
    node.add_claim("claim-a", {GPU0: MiB})
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         f"mount -t overlay overlay -o lowerdir=/etc,upperdir={upper},workdir={work} /etc && echo mounted"],
        capture_output=True, text=True,
    )
    if probe.stdout.strip() != "mounted":
        import pytest

        pytest.skip(f"needs a private mount namespace with overlayfs (CAP_SYS_ADMIN): {probe.stderr.strip()}")
    env = {k: v for k, v in node.env().items() if k != "LD_PRELOAD"}
    script = (
        f"mount -t overlay overlay -o lowerdir=/etc,upperdir={upper},workdir={work} /etc && "
        f"echo {TEST_SHIM} > /etc/ld.so.preload && "
        f"exec {CUDAPROG} link init ctx 0 alloc {2 * MiB} alloc {MiB // 2}"
    )
    result = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script], capture_output=True, text=True, env=env
    )
    assert [line.split()[1] for line in result.stdout.splitlines()] == ["rc=0", "rc=0", "rc=2", "rc=0"], result


def test_rtld_next_keeps_its_meaning_for_other_interposers(node: Node) -> None:
    # libnext.so (preloaded after us) finds the real puts with dlsym(RTLD_NEXT): our dlsym must
    # resolve it relative to libnext.so, not to itself, or libnext would call itself forever.
    node.add_claim("claim-a", {GPU0: MiB})
    env = node.env()
    env["LD_PRELOAD"] = f"{TEST_SHIM}:{FAKES_OUT / 'progs' / 'libnext.so'}"
    result = subprocess.run([str(PLAIN), "x"], capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[nextlib] plain done"
