"""`vgpu-dra plan` as a user runs it: the built-in demo, JSON output, exit codes, clear input errors."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from vgpu_dra.cli.main import main

REPO = Path(__file__).resolve().parents[2]
MIXED = REPO / "tests" / "fakes" / "inventories" / "mixed-node.yaml"


def test_without_arguments_it_plans_the_examples_on_the_rtx_3080(capsys):
    assert main(["plan"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    gpu_row = next(line for line in lines if line.startswith("homelab"))
    assert gpu_row.split()[:5] == ["homelab", "gpu-0", "NVIDIA", "GeForce", "RTX"]
    assert "4.9 GiB (49 %)" in gpu_row and "4.9 GiB of 9.8 GiB" in gpu_row
    assert "65 %" in gpu_row and "35 %" in gpu_row and "worker-a-0, worker-b-0" in gpu_row
    assert any("default/worker-a-0-gpu" in line and "1999Mi" in line and "25 %" in line for line in lines)
    assert any("default/worker-b-0-gpu" in line and "2999Mi" in line and "40 %" in line for line in lines)
    assert lines[-1].startswith("2 of 2 pods placed")
    assert "Refused" not in out


def test_json_output_shape(capsys):
    assert main(["plan", "--output", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["policy"] == {"node": "binpack", "gpu": "binpack"}
    assert (data["placed"], data["refused"]) == (2, 0)
    (gpu,) = data["gpus"]
    assert gpu["memory"] == {"capacityBytes": 9997 << 20, "usedBytes": 4998 << 20, "freeBytes": 4999 << 20}
    assert gpu["cores"] == {"capacity": 100, "used": 65, "free": 35}
    assert [(s["claim"], s["memoryBytes"], s["cores"], s["pods"]) for s in gpu["shares"]] == [
        ("default/worker-a-0-gpu", 1999 << 20, 25, ["default/worker-a-0"]),
        ("default/worker-b-0-gpu", 2999 << 20, 40, ["default/worker-b-0"])]
    assert [(p["name"], p["placed"], p["node"], p["refusal"]) for p in data["pods"]] == [
        ("worker-a-0", True, "homelab", None), ("worker-b-0", True, "homelab", None)]


def test_refusals_are_printed_and_exit_1(tmp_path, capsys):
    shutil.copytree(REPO / "examples" / "claims", tmp_path / "claims")
    workload = (REPO / "examples" / "workloads" / "worker-b.yaml").read_text().replace("replicas: 1", "replicas: 3")
    (tmp_path / "worker-b.yaml").write_text(workload)
    assert main(["plan", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    refused = out.split("Refused\n", 1)[1]
    assert "worker-b-2" in refused and "no GPU has 30 % of GPU memory and 40 % cores free" in refused
    assert "where the memory fits, the most cores free is 20 % (on homelab gpu-0)" in refused


def test_inventory_folder_and_policies(tmp_path, capsys):
    (tmp_path / "nodes").mkdir()
    shutil.copy(MIXED, tmp_path / "nodes" / "mixed.yaml")
    shutil.copy(REPO / "examples" / "inventory" / "rtx3080.yaml", tmp_path / "nodes" / "homelab.yaml")
    assert main(["plan", str(REPO / "examples" / "claims"), str(REPO / "examples" / "workloads"),
                 "--inventory", str(tmp_path / "nodes"), "--node-policy", "spread", "-o", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert sorted({gpu["node"] for gpu in data["gpus"]}) == ["homelab", "mixed-node"]
    assert data["policy"]["node"] == "spread"
    # Spread: the second worker goes to the node the first one left emptier ...
    assert [p["node"] for p in data["pods"]] == ["homelab", "mixed-node"]
    # ... binpack: it joins the first one.
    assert main(["plan", str(REPO / "examples" / "claims"), str(REPO / "examples" / "workloads"),
                 "--inventory", str(tmp_path / "nodes"), "-o", "json"]) == 0
    assert [p["node"] for p in json.loads(capsys.readouterr().out)["pods"]] == ["homelab", "homelab"]


def test_bad_yaml_is_a_clear_error_with_exit_2(tmp_path, capsys):
    (tmp_path / "broken.yaml").write_text(textwrap.dedent("""
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: broken
        """))
    assert main(["plan", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("vgpu-dra plan: error: ")
    assert "broken.yaml: not valid YAML at line" in captured.err
    assert "Traceback" not in captured.err


def test_bad_object_and_bad_inventory_name_the_culprit(tmp_path, capsys):
    (tmp_path / "claim.yaml").write_text(textwrap.dedent("""
        apiVersion: resource.k8s.io/v1
        kind: ResourceClaimTemplate
        metadata: {name: too-many-cores}
        spec:
          spec:
            devices:
              requests: [{name: gpu, exactly: {deviceClassName: vgpu.dra.dev}}]
              config:
                - opaque: {driver: vgpu.dra.dev, parameters: {apiVersion: vgpu.dra.dev/v1alpha1, kind: VgpuConfig, cores: 150}}
        """))
    assert main(["plan", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "claim.yaml (document 1): ResourceClaimTemplate default/too-many-cores" in err
    assert "'cores'" in err
    assert main(["plan", str(REPO / "examples" / "claims"), "--inventory", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml: no such inventory file or folder" in capsys.readouterr().err


def test_the_console_script_runs_as_a_process():
    result = subprocess.run([sys.executable, "-m", "vgpu_dra.cli.main", "plan", "-o", "json"],
                            capture_output=True, text=True, check=False, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["placed"] == 2


def _typo_template(exactly: str) -> str:
    return textwrap.dedent(f"""
        apiVersion: resource.k8s.io/v1
        kind: ResourceClaimTemplate
        metadata: {{name: pair}}
        spec:
          spec:
            devices:
              requests:
                - name: gpu
                  exactly: {exactly}
        """)


def test_unknown_fields_anywhere_in_a_claim_are_errors(tmp_path, capsys):
    """`cuont: 2` used to plan one GPU; now every level of a claim is checked against the API."""
    cases = {
        "{deviceClassName: vgpu.dra.dev, cuont: 2}":
            "spec.spec.devices.requests[0].exactly: unknown field 'cuont' (did you mean 'count'?)",
        "{deviceClassName: vgpu.dra.dev, capacity: {request: {memory: 1Gi}}}":
            "spec.spec.devices.requests[0].exactly.capacity: unknown field 'request' (did you mean 'requests'?)",
        "{deviceClassName: vgpu.dra.dev, selectors: [{cel: {expresion: 'true'}}]}":
            "a selector must be {cel: {expression: <string>}}",
        "{deviceClassName: vgpu.dra.dev, tolerations: [{key: a, operater: Exists}]}":
            "spec.spec.devices.requests[0].exactly.tolerations[0]: unknown field 'operater' (did you mean 'operator'?)",
    }
    for exactly, message in cases.items():
        (tmp_path / "claim.yaml").write_text(_typo_template(exactly))
        assert main(["plan", str(tmp_path / "claim.yaml")]) == 2
        captured = capsys.readouterr()
        assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
        assert "claim.yaml (document 1): ResourceClaimTemplate default/pair: " in captured.err
        assert message in captured.err, captured.err
    (tmp_path / "claim.yaml").write_text(textwrap.dedent("""
        apiVersion: resource.k8s.io/v1
        kind: ResourceClaim
        metadata: {name: c, lables: {a: b}}
        spec: {devices: {requests: [{name: gpu, exactly: {deviceClassName: vgpu.dra.dev}}]}}
        """))
    assert main(["plan", str(tmp_path / "claim.yaml")]) == 2
    assert "metadata: unknown field 'lables' (did you mean 'labels'?)" in capsys.readouterr().err


def test_empty_and_odd_paths_are_errors_that_say_what_they_are(tmp_path, capsys):
    (tmp_path / "empty.yaml").write_text("# nothing here\n")
    (tmp_path / "empty-folder").mkdir()
    (tmp_path / "inventory.yaml").write_bytes(b"apiVersion: vgpu.dra.dev/v1alpha1\nkind: NodeInventory\n"
                                              b"nodeName: caf\xe9\n")
    examples = [str(REPO / "examples" / "claims"), str(REPO / "examples" / "workloads")]
    cases = [
        ([str(tmp_path / "empty.yaml")], "empty.yaml: no Kubernetes objects in the file (it is empty or only comments)"),
        ([str(tmp_path / "empty-folder")], "empty-folder: no manifest files (*.yaml, *.yml, *.json) in the folder"),
        (["/dev/null"], "/dev/null: is a character device, not a file or folder (plan reads YAML files, and "
                        "folders of them)"),
        ([*examples, "--inventory", str(tmp_path / "inventory.yaml")],
         "inventory.yaml: not UTF-8 text (byte 0xe9 on line 3); an inventory is a YAML file of NodeInventory "
         "documents"),
        ([*examples, "--inventory", "/dev/null"], "/dev/null: is a character device, not a file or folder"),
        ([*examples, "--inventory", str(tmp_path / "empty-folder")], "empty-folder: no inventory files"),
    ]
    for arguments, message in cases:
        assert main(["plan", *arguments]) == 2, arguments
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1 and "Traceback" not in captured.err
        assert captured.err.startswith("vgpu-dra plan: error: ") and message in captured.err, captured.err


def test_plan_places_first_available_claims_by_the_controllers_rules(tmp_path, capsys):
    (tmp_path / "app.yaml").write_text(textwrap.dedent("""
        apiVersion: resource.k8s.io/v1
        kind: ResourceClaimTemplate
        metadata: {name: flexible}
        spec:
          spec:
            devices:
              requests:
                - name: gpu
                  firstAvailable:
                    - {name: big, deviceClassName: vgpu.dra.dev, capacity: {requests: {memory: 16Gi}}}
                    - {name: small, deviceClassName: vgpu.dra.dev, capacity: {requests: {memory: 3Gi, cores: "30"}}}
        ---
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: app}
        spec:
          replicas: 4
          template:
            spec:
              resourceClaims: [{name: gpu, resourceClaimTemplateName: flexible}]
              containers: [{name: c, resources: {claims: [{name: gpu}]}}]
        """))
    assert main(["plan", str(tmp_path), "-o", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert [(s["request"], s["memoryBytes"], s["cores"]) for s in data["gpus"][0]["shares"]] == [
        ("gpu/small", 3 << 30, 30)] * 3
    (refused,) = [p for p in data["pods"] if not p["placed"]]
    assert refused["refusal"]["reason"].startswith("no combination of the firstAvailable alternatives of gpu fits")
