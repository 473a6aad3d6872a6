"""The chart's usage watchdog values reach the plugin as flags the real CLI accepts, with the host
PID namespace and the Event permission it needs, and nothing of it when it is off."""
from __future__ import annotations

import pytest

from tests.deploy.chart import NAMESPACE, render
from tests.deploy.test_chart_behaviour import _container, _parsed_cli, _rules


def _plugin(values: dict | None = None):  # noqa: ANN202
    rendered = render(values)
    daemonset = rendered.one("DaemonSet")
    return rendered, daemonset, _parsed_cli(_container(daemonset, "kubelet-plugin"))


def test_default_watchdog_reports_every_five_seconds_with_host_pids_and_event_rights():
    rendered, daemonset, args = _plugin()
    assert (args.watchdog_seconds, args.watchdog_enforcement) == (5.0, "report")
    assert (args.watchdog_tolerance, args.watchdog_tolerance_percent) == ("64Mi", 5.0)
    assert daemonset["spec"]["template"]["spec"]["hostPID"] is True
    role = rendered.one("ClusterRole", "-watchdog-events")
    assert _rules(role) == [("", "events", "create")]
    binding = rendered.one("ClusterRoleBinding", "-watchdog-events")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "vgpu-dra-kubelet-plugin",
                                    "namespace": NAMESPACE}]


def test_kill_enforcement_and_tolerances_pass_through():
    _, _, args = _plugin({"kubeletPlugin": {"watchdog": {"enforcement": "kill", "intervalSeconds": 2,
                                                         "tolerance": "128Mi", "tolerancePercent": 10}}})
    assert (args.watchdog_seconds, args.watchdog_enforcement) == (2.0, "kill")
    assert (args.watchdog_tolerance, args.watchdog_tolerance_percent) == ("128Mi", 10.0)


def test_a_disabled_watchdog_gets_neither_host_pids_nor_event_rights():
    rendered, daemonset, args = _plugin({"kubeletPlugin": {"watchdog": {"enabled": False}}})
    assert args.watchdog_seconds == 0
    assert "hostPID" not in daemonset["spec"]["template"]["spec"]
    assert not any(r["metadata"]["name"].endswith("-watchdog-events") for r in rendered.of_kind("ClusterRole"))


@pytest.mark.parametrize("bad", [{"enforcement": "terminate"}, {"intervalSeconds": 0}, {"tolerance": "lots"},
                                 {"frequency": 5}])
def test_bad_watchdog_values_are_refused_by_the_schema(bad):
    with pytest.raises(Exception, match="watchdog"):
        render({"kubeletPlugin": {"watchdog": bad}})
