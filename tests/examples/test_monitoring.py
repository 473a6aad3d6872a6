"""examples/monitoring: the ServiceMonitors scrape the metrics Services the chart really renders
for the install in docs/install.md, and ask for what the chart's own ServiceMonitors ask for."""
from __future__ import annotations

from pathlib import Path

import yaml

from tests.deploy.chart import render

REPO = Path(__file__).resolve().parents[2]
MONITORS = REPO / "examples" / "monitoring" / "servicemonitors.yaml"
INSTALL = {"release": "vgpu-dra", "namespace": "vgpu-dra"}  # docs/install.md's helm install


def test_each_service_monitor_selects_one_rendered_metrics_service_and_names_its_port():
    rendered = render(**INSTALL)
    monitors = [d for d in yaml.safe_load_all(MONITORS.read_text()) if d]
    assert {m["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] for m in monitors} == \
        {"controller", "kubelet-plugin"}
    services = rendered.of_kind("Service")
    for monitor in monitors:
        assert monitor["metadata"]["namespace"] == INSTALL["namespace"]
        assert monitor["spec"]["namespaceSelector"]["matchNames"] == [INSTALL["namespace"]]
        wanted = monitor["spec"]["selector"]["matchLabels"]
        matching = [s for s in services if wanted.items() <= s["metadata"]["labels"].items()
                    and s["metadata"]["namespace"] == INSTALL["namespace"]]
        assert len(matching) == 1, f"{monitor['metadata']['name']} selects {len(matching)} services"
        ports = {p["name"] for p in matching[0]["spec"]["ports"]}
        assert all(e["port"] in ports and e["honorLabels"] for e in monitor["spec"]["endpoints"])


def test_they_match_the_service_monitors_the_chart_renders():
    chart = render({"metrics": {"serviceMonitor": {"enabled": True}}}, **INSTALL).of_kind("ServiceMonitor")
    mine = {m["metadata"]["name"]: m for m in yaml.safe_load_all(MONITORS.read_text()) if m}
    assert set(mine) == {m["metadata"]["name"] for m in chart}
    for rendered in chart:
        assert mine[rendered["metadata"]["name"]]["spec"] == rendered["spec"]
