"""docs/api.md stays true: its schema is the code's, its examples plan, its refusal lines are real."""
from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from vgpu_dra.api.config import json_schema
from vgpu_dra.driver.inventory_file import load_inventories
from vgpu_dra.driver.manifests import load_manifests
from vgpu_dra.driver.planner import plan

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "api.md").read_text()


def test_the_schema_in_the_docs_is_the_generated_one():
    block = re.search(r"<!-- BEGIN VgpuConfig schema -->\n```json\n(.*?)```\n<!-- END VgpuConfig schema -->", DOC, re.S)
    assert block is not None
    assert json.loads(block.group(1)) == json_schema()


def test_the_claim_examples_in_the_docs_plan_as_described(tmp_path):
    blocks = [yaml.safe_load(text) for text in re.findall(r"```yaml\n(.*?)```", DOC, re.S)]
    templates = [block for block in blocks if isinstance(block, dict) and block.get("kind") == "ResourceClaimTemplate"]
    assert len(templates) == 2
    documents = []
    for template in templates:
        name = template["metadata"]["name"]
        documents += [template, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                                 "spec": {"resourceClaims": [{"name": "gpu", "resourceClaimTemplateName": name}],
                                          "containers": [{"name": "c", "resources": {"claims": [{"name": "gpu"}]}}]}}]
    (tmp_path / "docs.yaml").write_text(yaml.safe_dump_all(documents))
    classes = [c.raw for c in load_manifests([REPO / "examples" / "deviceclasses"]).device_classes]
    result = plan(load_manifests([tmp_path]), load_inventories(REPO / "examples" / "inventory" / "rtx3080.yaml"),
                  default_classes=classes)
    shares = {share.claim: (share.memory_bytes >> 20, share.cores) for share in result.gpus[0].shares}
    assert shares == {"default/inference-small-gpu": (2048, 25), "default/worker-a-gpu": (1999, 25)}
