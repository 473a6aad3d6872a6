"""The newcomer's pages stay true: every file and folder they point at exists, the claim in the
README is one the API server accepts and the planner places, and the commands name real examples."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.deploy.chart import schema_key
from tests.fakes.openapi_schema import validate
from vgpu_dra.api.config import parse_config
from vgpu_dra.driver.inventory_file import load_inventories
from vgpu_dra.driver.manifests import load_manifests
from vgpu_dra.driver.placement_policy import PlacementPolicy
from vgpu_dra.driver.planner import plan

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", REPO / "docs" / "troubleshooting.md", REPO / "docs" / "security.md",
         REPO / "docs" / "metrics.md", REPO / "docs" / "docker.md", REPO / "examples" / "sharing-demo" / "README.md"]
_LINK = re.compile(r"\]\((?P<target>[^)#\s]+)(#[^)]*)?\)")
_REPO_PATH = re.compile(r"(?<![\w./-])(?P<path>(?:examples|docs|deployments|tests)/[\w./-]*[\w/])")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_link_and_repository_path_on_the_page_exists(page):
    text = page.read_text()
    for match in _LINK.finditer(text):
        target = match["target"]
        if re.match(r"^[a-z]+://", target):
            continue
        assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"
    for match in _REPO_PATH.finditer(text):
        path = match["path"]
        assert (REPO / path).exists() or (page.parent / path).exists(), f"{page.name} names {path}, which does not exist"


def test_the_readme_claim_is_valid_and_plans_on_the_home_lab_gpu(tmp_path):
    blocks = re.findall(r"```yaml\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    (template,) = [yaml.safe_load(block) for block in blocks]
    validate(template, schema_key(template))
    parameters = template["spec"]["spec"]["devices"]["config"][0]["opaque"]["parameters"]
    config = parse_config(parameters)
    assert (config.memory, config.cores) == (2 << 30, 25)
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "my-pod"},
           "spec": {"resourceClaims": [{"name": "gpu", "resourceClaimTemplateName": "my-share"}],
                    "containers": [{"name": "main", "image": "busybox", "resources": {"claims": [{"name": "gpu"}]}}]}}
    (tmp_path / "claim.yaml").write_text(yaml.safe_dump_all([template, pod]))
    classes = [r.raw for r in load_manifests([REPO / "examples" / "deviceclasses"]).device_classes]
    result = plan(load_manifests([tmp_path]), load_inventories(REPO / "examples" / "inventory" / "rtx3080.yaml"),
                  PlacementPolicy(), default_classes=classes)
    ((share,),) = [gpu.shares for gpu in result.gpus]
    assert (share.memory_bytes, share.cores) == (2 << 30, 25)


def test_the_readme_builds_the_image_tag_the_chart_installs_by_default():
    chart = yaml.safe_load((REPO / "deployments" / "helm" / "vgpu-dra" / "Chart.yaml").read_text())
    readme = (REPO / "README.md").read_text()
    tags = set(re.findall(r"docker (?:build -t|push) \$REGISTRY/vgpu-dra:(\S+)", readme))
    assert tags == {chart["appVersion"]}, "without --set image.tag the chart pulls its appVersion"
    assert "helm install vgpu-dra deployments/helm/vgpu-dra" in readme


_CONFLICT = re.compile(r"^(<{7} |={7}$|>{7} )", re.M)
_SOURCE_SUFFIXES = {".md", ".py", ".c", ".h", ".yaml", ".yml", ".tpl", ".proto", ".toml", ".json", ".txt"}
_NOT_OURS = {".git", ".venv", "node_modules", "__pycache__", "out", "build", "vgpu_dra.egg-info"}


def test_no_file_keeps_a_merge_conflict_marker():
    # A merge resolved in a hurry once left both sides of README.md's tables (and a C comment) in
    # place; nothing else reads those lines, so only this notices.
    kept = []
    for path in REPO.rglob("*"):
        if _NOT_OURS.intersection(path.relative_to(REPO).parts) or not path.is_file():
            continue
        if path.suffix in _SOURCE_SUFFIXES or path.name in ("Makefile", "Dockerfile"):
            text = path.read_text(errors="replace")
            kept += [f"{path.relative_to(REPO)}:{text.count(chr(10), 0, m.start()) + 1}" for m in _CONFLICT.finditer(text)]
    assert not kept, f"merge conflict markers left in: {', '.join(kept)}"
