"""`vgpu-dra migrate` as a GitOps user runs it: the user's two HAMi files in, DRA manifests out that
validate and that `vgpu-dra plan` places with the same limits HAMi gave; bad input is one line."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.fakes.openapi_schema import validate
from vgpu_dra.cli.main import main

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "tests" / "data" / "seed-hami"
RTX3080 = REPO / "examples" / "inventory" / "rtx3080.yaml"
SCHEMAS = {"ResourceClaimTemplate": "io.k8s.api.resource.v1.ResourceClaimTemplate",
           "Deployment": "io.k8s.api.apps.v1.Deployment"}


def test_the_users_files_migrate_to_manifests_that_validate_and_plan_to_their_hami_limits(tmp_path, capsys):
    assert main(["migrate", str(SEED)]) == 0
    out = capsys.readouterr().out
    documents = [d for d in yaml.safe_load_all(out) if d]
    assert [d["kind"] for d in documents] == ["ResourceClaimTemplate"] * 2 + ["Deployment"] * 2
    for document in documents:
        validate(document, SCHEMAS[document["kind"]])
    # The user's training script comes through as the block they wrote.
    original = yaml.safe_load((SEED / "gpu_worker_a.yaml").read_text())
    worker_a = documents[2]["spec"]["template"]["spec"]["containers"][0]
    assert worker_a["args"] == original["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "args:\n        - |" in out

    migrated = tmp_path / "dra.yaml"
    migrated.write_text(out)
    assert main(["plan", str(migrated), "--inventory", str(RTX3080), "-o", "json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    [gpu] = plan["gpus"]
    usable = gpu["memory"]["capacityBytes"]
    mib = 1 << 20
    shares = sorted((s["workloads"][0], s["memoryBytes"], s["cores"]) for s in gpu["shares"])
    assert shares == [("Deployment default/gpu-worker-a", usable * 20 // 100 // mib * mib, 25),
                      ("Deployment default/gpu-worker-b", usable * 30 // 100 // mib * mib, 40)]


def test_a_folder_without_anything_hami_is_printed_unchanged_with_a_note(tmp_path, capsys):
    plain = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "b"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(plain))
    assert main(["migrate", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert [d for d in yaml.safe_load_all(captured.out) if d] == [plain]
    assert "nothing asks for HAMi resources" in captured.err


@pytest.mark.parametrize(("content", "message"), [
    ("kind: [", "not valid YAML at line 1"),
    ("", "no Kubernetes objects in the file"),
    ("- a\n- b\n", "expected a Kubernetes object (a mapping), got list"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n    - name: c\n      resources:\n"
     "        limits: {nvidia.com/gpucores: '250'}\n",
     "Pod p: container c: nvidia.com/gpucores = '250' is out of range; expected an integer from 0 to 100"),
])
def test_bad_input_is_one_line_with_exit_status_2_never_a_traceback(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    done = subprocess.run([sys.executable, "-m", "vgpu_dra.cli.main", "migrate", str(path)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith(f"vgpu-dra migrate: error: {path}") and message in line, line


def test_a_missing_path_is_one_line(capsys):
    assert main(["migrate", "/nonexistent/hami"]) == 2
    assert capsys.readouterr().err == "vgpu-dra migrate: error: /nonexistent/hami: no such file or folder\n"
