"""The Dockerfile, read as Docker reads it (no Docker here): the stages, what the image runs, and
that the paths it uses are the ones the chart and the code expect. Its glibc check runs for real
against the shim built in this checkout."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest

from tests.deploy.chart import REPO, render
from vgpu_dra.kubeletplugin.settings import DEFAULT_SHIM_SOURCE

DOCKERFILE = REPO / "Dockerfile"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


@dataclass(frozen=True)
class Instruction:
    stage: str
    keyword: str
    args: str


def parse(text: str) -> tuple[dict[str, str], list[Instruction]]:
    """Global ARG defaults and the instructions, each tagged with its stage name."""
    logical: list[str] = []
    pending = ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue  # a comment inside a continued instruction
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    global_args: dict[str, str] = {}
    instructions: list[Instruction] = []
    stage = ""
    for line in logical:
        keyword, _, args = line.strip().partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.match(r"(\S+)\s+AS\s+(\S+)", args.strip(), re.IGNORECASE)
            assert match, f"every stage is named: {line!r}"
            stage = match.group(2)
        elif keyword == "ARG" and not stage:
            name, _, default = args.strip().partition("=")
            global_args[name] = default
        instructions.append(Instruction(stage, keyword, args.strip()))
    return global_args, instructions


GLOBAL_ARGS, INSTRUCTIONS = parse(DOCKERFILE.read_text())


def _in(stage: str, keyword: str) -> list[Instruction]:
    return [i for i in INSTRUCTIONS if i.stage == stage and i.keyword == keyword]


def _copies(stage: str) -> list[tuple[str | None, list[str], str]]:
    """(from-stage or None, sources, destination) of each COPY in `stage`."""
    found = []
    for instruction in _in(stage, "COPY"):
        words = shlex.split(instruction.args)
        source_stage = next((w.split("=", 1)[1] for w in words if w.startswith("--from=")), None)
        paths = [w for w in words if not w.startswith("--")]
        found.append((source_stage, paths[:-1], paths[-1]))
    return found


def _expand(text: str) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: GLOBAL_ARGS[m.group(1)], text)


def test_three_stages_end_in_a_slim_python_runtime():
    stages = [re.match(r"(\S+)\s+AS\s+(\S+)", i.args, re.IGNORECASE).groups() for i in INSTRUCTIONS if i.keyword == "FROM"]
    assert [name for _, name in stages] == ["shim", "python", "runtime"]
    bases = {name: _expand(image) for image, name in stages}
    assert re.fullmatch(r"python:3\.\d+-slim-\w+", bases["runtime"])
    assert bases["python"] == bases["runtime"]  # the venv's interpreter links to the runtime's
    requires = PYPROJECT["project"]["requires-python"]
    assert requires == f">={GLOBAL_ARGS['PYTHON_VERSION']}"
    # No compiler reaches the runtime: it only copies finished files from the other stages.
    assert _in("runtime", "RUN") == []
    assert {src for src, _, _ in _copies("runtime")} == {"python", "shim"}


def test_the_image_runs_the_vgpu_dra_command():
    (entrypoint,) = _in("runtime", "ENTRYPOINT")
    assert json.loads(entrypoint.args) == ["vgpu-dra"]  # exec form: signals reach the process
    assert "vgpu-dra" in PYPROJECT["project"]["scripts"]
    (env,) = _in("runtime", "ENV")
    assert "PATH=/opt/vgpu-dra/bin:$PATH" in env.args
    (user,) = _in("runtime", "USER")
    assert not user.args.startswith("0") and user.args != "root"


def test_the_shim_lands_where_the_plugin_and_the_init_container_take_it_from():
    (shim_copy,) = [c for c in _copies("runtime") if c[0] == "shim"]
    _, sources, destination = shim_copy
    assert sources == ["/src/shim/out/libvgpu.so"]
    assert PurePosixPath(destination) == PurePosixPath(DEFAULT_SHIM_SOURCE)
    daemonset = render().one("DaemonSet")
    spec = daemonset["spec"]["template"]["spec"]
    for container in spec["initContainers"] + spec["containers"]:
        assert f"--shim={destination}" in container["args"], container["name"]
    assert any("make -C shim out/libvgpu.so" in i.args for i in _in("shim", "RUN"))


def test_the_python_stage_installs_every_package_folder_and_the_region_header():
    copied = {src.rstrip("/") for _, sources, _ in _copies("python") for src in sources}
    package_folders = {folder.split("/")[0] for folder in PYPROJECT["tool"]["setuptools"]["package-dir"].values()}
    assert package_folders <= copied
    assert {"pyproject.toml", PYPROJECT["project"]["readme"]} <= copied
    # The wheel carries the region header through the driver/vgpu_region.h symlink, whose target
    # must be in the build context next to driver/ when pip builds the wheel.
    header_link = REPO / "driver" / "vgpu_region.h"
    assert header_link.is_symlink() and header_link.resolve() == REPO / "shim" / "include" / "vgpu_region.h"
    assert "shim/include" in copied
    assert "vgpu_region.h" in PYPROJECT["tool"]["setuptools"]["package-data"]["vgpu_dra.driver"]
    assert any("kubeletplugin/protos.mk" in i.args for i in _in("python", "RUN"))


def _dockerignore_includes(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    included = True
    patterns = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.lstrip("!").rstrip("/")
        regex = re.escape(glob).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        if any(re.fullmatch(regex, c) for c in candidates):
            included = negate
    return included


def test_the_build_context_holds_what_the_dockerfile_copies_and_no_build_output():
    for stage in ("shim", "python"):
        for source_stage, sources, _ in _copies(stage):
            if source_stage is None:
                for source in sources:
                    assert _dockerignore_includes(source.rstrip("/") + "/x" if source.endswith("/") else source), source
    for excluded in (".venv/bin/python", ".git/HEAD", "shim/out/libvgpu.so", "tests/fakes/out/libnvidia-ml.so.1",
                     "kubeletplugin/proto/dra_v1_pb2.py", "driver/__pycache__/x.pyc"):
        assert not _dockerignore_includes(excluded), excluded


# --------------------------------------------------------------------------- the glibc check


def _glibc_check() -> str:
    (check,) = [i.args for i in _in("shim", "RUN") if "objdump -T" in i.args]
    return check


@pytest.fixture(scope="session")
def built_shim() -> Path:
    subprocess.run(["make", "--no-print-directory", "-s", "-C", str(REPO / "shim"), "out/libvgpu.so"], check=True)
    return REPO / "shim" / "out" / "libvgpu.so"


def _run_check(workdir: Path, library: Path) -> subprocess.CompletedProcess:
    (workdir / "shim" / "out").mkdir(parents=True)
    (workdir / "shim" / "out" / "libvgpu.so").write_bytes(library.read_bytes())
    return subprocess.run(["/bin/sh", "-c", _glibc_check()], cwd=workdir, capture_output=True, text=True, timeout=60)


def test_glibc_check_passes_the_shim_built_here(tmp_path: Path, built_shim: Path):
    result = _run_check(tmp_path, built_shim)
    assert result.returncode == 0, result.stderr
    needed = re.search(r"needs glibc (\S+)", result.stdout).group(1)
    assert tuple(map(int, needed.split("."))) <= (2, 17)


def test_glibc_check_fails_a_library_needing_a_newer_glibc(tmp_path: Path):
    source = tmp_path / "newer.c"
    # dlopen's default version is GLIBC_2.34 on current glibc; unpinned it binds there.
    source.write_text("#include <dlfcn.h>\nvoid *open_it(void) { return dlopen(\"x\", RTLD_NOW); }\n")
    library = tmp_path / "newer.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(library), str(source), "-ldl"], check=True)
    versions = subprocess.run(["objdump", "-T", str(library)], capture_output=True, text=True, check=True).stdout
    if "GLIBC_2.34" not in versions:
        pytest.skip("this machine's glibc predates 2.34; no newer symbol to link against")
    result = _run_check(tmp_path / "ctx", library)
    assert result.returncode != 0
    assert "newer than 2.17" in result.stderr
