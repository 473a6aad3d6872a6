"""docs/metrics.md is the reference of every metric the code exposes: name, type and labels."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.dashboard.code_metrics import ExposedMetric, exposed_metrics

REPO = Path(__file__).resolve().parents[2]
METRICS_DOC = REPO / "docs" / "metrics.md"
_ROW = re.compile(r"^\| `(?P<name>vgpu_dra_\w+)` \| (?P<type>\w+) \|(?P<labels>[^|]*)\|(?P<meaning>[^|]+)\|$")


@dataclass(frozen=True)
class DocumentedMetric:
    name: str
    type: str
    labels: frozenset[str]
    meaning: str


def documented() -> dict[str, DocumentedMetric]:
    """The rows of the metric tables; a labels cell reading ``same`` repeats the row above."""
    rows: dict[str, DocumentedMetric] = {}
    previous: frozenset[str] = frozenset()
    for line in METRICS_DOC.read_text().splitlines():
        match = _ROW.match(line.strip())
        if not match:
            continue
        cell = match["labels"].strip()
        # Label names are the backticked words outside parentheses (inside them: example values).
        labels = previous if cell == "same" else frozenset(re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", cell)))
        assert match["name"] not in rows, f"{match['name']} is documented twice"
        rows[match["name"]] = DocumentedMetric(match["name"], match["type"], labels, match["meaning"].strip())
        previous = labels
    return rows


def as_queried(metric: ExposedMetric) -> str:
    """The name a user types: counters with their ``_total``."""
    return f"{metric.name}_total" if metric.type == "counter" else metric.name


@pytest.fixture(scope="module")
def metrics(tmp_path_factory) -> list[ExposedMetric]:
    found = exposed_metrics(tmp_path_factory.mktemp("claims"))
    # prometheus_client's *_created timestamps are implementation detail, not documented metrics.
    return [m for m in found.values() if not (m.name.endswith("_created") and m.name[:-len("_created")] in found)]


def test_every_metric_the_code_exposes_is_documented_with_its_type_and_labels(metrics):
    docs = documented()
    for metric in metrics:
        name = as_queried(metric)
        assert name in docs, f"docs/metrics.md does not list {name} ({metric.component})"
        row = docs[name]
        assert row.type == metric.type, f"{name}: documented as {row.type}, the code exposes a {metric.type}"
        assert row.labels == metric.labels, \
            f"{name}: documented labels {sorted(row.labels)}, the code's {sorted(metric.labels)}"
        assert len(row.meaning) > 10, f"{name}: say what it means"


def test_the_docs_list_no_metric_the_code_lacks(metrics):
    assert set(documented()) - {as_queried(m) for m in metrics} == set()


def test_the_alert_queries_in_the_docs_read_metrics_and_labels_the_code_exposes(metrics):
    from tests.dashboard.promql import reads

    blocks = re.findall(r"```promql\n(.*?)```", METRICS_DOC.read_text(), flags=re.S)
    assert len(blocks) >= 5
    by_series = {series: m for m in metrics for series in m.series}
    for block in blocks:
        expr = "\n".join(line for line in block.splitlines() if not line.startswith("#")).strip()
        read = reads(expr)
        labels_seen: set[str] = set()
        for name, labels in read.selectors:
            assert name in by_series, f"docs/metrics.md queries {name}, which the code does not expose"
            own = set(by_series[name].labels) | ({"le"} if name.endswith("_bucket") else set())
            assert labels <= own, f"{name} has no label(s) {sorted(labels - own)}"
            labels_seen |= own
        assert read.grouping <= labels_seen, f"groups by {sorted(read.grouping - labels_seen)}: {expr}"
