"""docs/quotas.md stays true: its links exist, and the ResourceQuota it shows is one the API server
accepts and the controller reads as the budget the page says (20 GiB, one and a half GPUs)."""
from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.deploy.chart import schema_key
from tests.examples.test_docs import test_every_link_and_repository_path_on_the_page_exists
from tests.fakes.openapi_schema import validate
from vgpu_dra.driver.namespace_quota import Limit, quota_from_objects

PAGE = Path(__file__).resolve().parents[2] / "docs" / "quotas.md"


def test_the_pages_links_and_paths_exist():
    test_every_link_and_repository_path_on_the_page_exists(PAGE)


def test_the_quota_on_the_page_is_valid_and_means_what_the_page_says():
    (quota,) = [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", PAGE.read_text(), flags=re.S)]
    key = schema_key(quota)
    assert key is not None
    validate(quota, key)
    read = quota_from_objects("team-a", [quota])
    assert read is not None and read.problem is None
    assert (read.memory, read.cores) == (Limit(20 << 30, "team-gpu"), Limit(150, "team-gpu"))
