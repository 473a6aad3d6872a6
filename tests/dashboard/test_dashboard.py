"""The Grafana dashboard (examples/grafana/vgpu-dra.json, shipped in the chart) loads as a Grafana
dashboard and every query in it reads metrics and labels the code really exposes."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.dashboard.code_metrics import exposed_metrics, series_names
from tests.dashboard.promql import reads

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "examples" / "grafana" / "vgpu-dra.json"
CHART_DASHBOARD = REPO / "deployments" / "helm" / "vgpu-dra" / "dashboards" / "vgpu-dra.json"
GRID_WIDTH = 24
# Labels Prometheus puts on every scraped series (target labels), usable in any query.
TARGET_LABELS = {"job", "instance", "pod", "namespace", "service", "endpoint", "container"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def metrics(tmp_path_factory):
    return exposed_metrics(tmp_path_factory.mktemp("claims"))


def panels(dashboard: dict) -> list[dict]:
    """Every panel, rows' collapsed children included."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+), (?P<label>\w+)\)$")


def queries(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable; a variable's Grafana
    ``label_values(selector, label)`` becomes the PromQL that reads the same: ``group by (label) (selector)``."""
    found = [(f"panel {p['title']!r} target {t['refId']}", t["expr"])
             for p in panels(dashboard) for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            match = LABEL_VALUES.match(variable["query"]["query"])
            assert match, f"variable {variable['name']}: expected label_values(<selector>, <label>)"
            found.append((f"variable {variable['name']}", f"group by ({match['label']}) ({match['selector']})"))
    return found


def test_the_chart_ships_the_same_dashboard():
    assert CHART_DASHBOARD.read_bytes() == DASHBOARD.read_bytes(), \
        "copy examples/grafana/vgpu-dra.json to deployments/helm/vgpu-dra/dashboards/ (Helm reads only chart files)"


def test_dashboard_has_what_grafana_needs_to_import_it(dashboard):
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] == "vgpu-dra" and dashboard["title"]
    assert "id" not in dashboard or dashboard["id"] is None, "a fixed id clashes with existing dashboards on import"
    assert dashboard["time"]["from"].startswith("now-")
    assert panels(dashboard)


def test_datasource_node_and_namespace_variables(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("node", "namespace"):
        variable = variables[name]
        assert variable["type"] == "query" and variable["datasource"] == DATASOURCE
        assert variable["includeAll"] and variable["multi"] and variable["allValue"] == ".*"
        assert LABEL_VALUES.match(variable["query"]["query"])["label"] == name
    exprs = " ".join(expr for _, expr in queries(dashboard))
    assert '$node"' in exprs and '$namespace"' in exprs


def test_panel_ids_are_unique_and_panels_tile_the_grid_without_overlap(dashboard):
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    boxes = []
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in ("h", "w", "x", "y")), panel["title"]
        assert grid["w"] > 0 and grid["h"] > 0 and 0 <= grid["x"] and grid["x"] + grid["w"] <= GRID_WIDTH, panel["title"]
        for other_title, (x, y, w, h) in boxes:
            overlaps = grid["x"] < x + w and x < grid["x"] + grid["w"] and grid["y"] < y + h and y < grid["y"] + grid["h"]
            assert not overlaps, f"{panel['title']!r} overlaps {other_title!r}"
        boxes.append((panel["title"], (grid["x"], grid["y"], grid["w"], grid["h"])))


def test_every_panel_queries_the_chosen_datasource(dashboard):
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel.get("description"), f"panel {panel['id']} needs a title and a description"
        assert panel["datasource"] == DATASOURCE, panel["title"]
        targets = panel["targets"]
        assert targets, f"{panel['title']!r} has no query"
        assert len({t["refId"] for t in targets}) == len(targets), panel["title"]
        for target in targets:
            assert target["datasource"] == DATASOURCE and target["expr"].strip(), panel["title"]


def test_every_query_is_valid_promql_over_metrics_and_labels_the_code_exposes(dashboard, metrics):
    by_series = series_names(metrics)
    for where, expr in queries(dashboard):
        try:
            read = reads(expr)
        except ValueError as exc:
            pytest.fail(f"{where}: not valid PromQL: {exc}\n  {expr}")
        assert read.selectors, f"{where} reads no metric"
        available: set[str] = set()
        for name, labels in read.selectors:
            assert name in by_series, f"{where}: {name} is not a metric the code exposes"
            metric = by_series[name]
            own = set(metric.labels) | ({"le"} if name.endswith("_bucket") else set())
            unknown = labels - own - TARGET_LABELS
            assert not unknown, f"{where}: {name} has no label(s) {sorted(unknown)} (it has {sorted(own)})"
            available |= own
        unknown = read.grouping - available - TARGET_LABELS
        assert not unknown, f"{where}: groups by {sorted(unknown)}, which none of its metrics has"


def test_claim_panels_honour_both_variables(dashboard, metrics):
    """A claim series shown while the node or namespace filter is set must be filtered by both."""
    by_series = series_names(metrics)
    for where, expr in queries(dashboard):
        for name, labels in reads(expr).selectors:
            metric = by_series[name]
            for variable in ("node", "namespace"):
                if variable in metric.labels and where.startswith("panel") and variable not in labels:
                    pytest.fail(f"{where}: {name} is not filtered by ${variable}")


def test_the_dashboard_covers_the_operations_a_platform_team_watches(dashboard, metrics):
    """Per GPU allocation vs usage, per claim usage vs limit, throttling, prepare latency, refusals,
    allocation latency, pending claims."""
    read = {name for _, expr in queries(dashboard) for name, _ in reads(expr).selectors}
    for wanted in ("vgpu_dra_gpu_memory_allocated_bytes", "vgpu_dra_gpu_memory_used_bytes",
                   "vgpu_dra_gpu_cores_allocated_percent", "vgpu_dra_gpu_claims", "vgpu_dra_gpu_utilization_percent",
                   "vgpu_dra_claim_memory_used_bytes", "vgpu_dra_claim_memory_peak_bytes",
                   "vgpu_dra_claim_memory_limit_bytes", "vgpu_dra_claim_rejected_allocations_total",
                   "vgpu_dra_claim_sm_throttled_seconds_total", "vgpu_dra_claim_core_limit_percent",
                   "vgpu_dra_prepare_duration_seconds_bucket", "vgpu_dra_unprepare_duration_seconds_bucket",
                   "vgpu_dra_controller_refusals_total", "vgpu_dra_controller_allocation_duration_seconds_bucket",
                   "vgpu_dra_controller_pending_claims"):
        assert wanted in read, f"no panel shows {wanted}"
    histograms = [name for name, m in metrics.items() if m.type == "histogram"]
    quantiles = " ".join(expr for _, expr in queries(dashboard) if "histogram_quantile" in expr)
    for name in histograms:
        if name in {n.removesuffix("_bucket") for n in read}:
            assert f"{name}_bucket" in quantiles, f"{name} is shown without a quantile"


def test_the_chart_renders_the_dashboard_into_a_configmap_for_grafanas_sidecar():
    from tests.deploy.chart import render

    rendered = render({"grafana": {"dashboards": {"enabled": True}}})
    configmap = rendered.one("ConfigMap", "-dashboards")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["vgpu-dra.json"]) == json.loads(DASHBOARD.read_text())
    assert not render().of_kind("ConfigMap"), "dashboards are opt-in"


CORE_PANEL_TYPES = {"row", "timeseries", "stat", "table", "bargauge", "gauge", "text", "heatmap"}


def test_panels_use_core_panel_types_and_their_field_overrides_match_a_series(dashboard):
    for panel in panels(dashboard):
        assert panel["type"] in CORE_PANEL_TYPES, f"{panel['title']!r}: {panel['type']} needs a plugin"
        if panel["type"] == "row":
            continue
        assert set(panel["fieldConfig"]) == {"defaults", "overrides"}, panel["title"]
        legends = [re.sub(r"\{\{\w+\}\}", "x", t["legendFormat"]) for t in panel["targets"]]
        for override in panel["fieldConfig"]["overrides"]:
            matcher = override["matcher"]
            if matcher["id"] == "byRegexp" and panel["type"] == "timeseries":
                assert any(re.fullmatch(matcher["options"], legend) for legend in legends), \
                    f"{panel['title']!r}: override {matcher['options']!r} matches none of its series {legends}"


def test_table_columns_name_the_queries_that_fill_them(dashboard):
    for panel in panels(dashboard):
        if panel["type"] != "table":
            continue
        ref_ids = {t["refId"] for t in panel["targets"]}
        assert all(t.get("format") == "table" and t.get("instant") for t in panel["targets"]), panel["title"]
        ids = [step["id"] for step in panel.get("transformations", [])]
        assert ids[:1] == ["merge"], f"{panel['title']!r}: one row per series needs the merge transformation"
        for step in panel["transformations"]:
            for key in step["options"].get("renameByName", {}):
                match = re.fullmatch(r"Value #(\w+)", key)
                assert match is None or match[1] in ref_ids, f"{panel['title']!r}: {key} names no query"
