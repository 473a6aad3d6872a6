"""The chart renders with Helm's engine for every supported configuration, and every object it
renders is one a Kubernetes 1.36 API server accepts (shape checked against its OpenAPI schema)."""
from __future__ import annotations

import helm_python
import pytest

from tests.deploy.chart import CHART_DIR, render, schema_key
from tests.fakes.openapi_schema import validate

# Values a platform team would plausibly change all at once.
NON_DEFAULT = {
    "image": {"repository": "registry.example.com/gpu/vgpu-dra", "tag": "1.2.3", "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "regcred"}],
    "logFormat": "console",
    "controller": {
        "replicas": 3, "nodePolicy": "spread", "gpuPolicy": "spread", "workers": 8,
        "leaderElection": {"leaseName": "my-lease", "leaseDurationSeconds": 30},
        "podDisruptionBudget": {"minAvailable": 2},
        "nodeSelector": {"node-role.kubernetes.io/control-plane": ""},
        "tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}],
        "podAnnotations": {"example.com/team": "gpu"},
        "extraArgs": ["--retry-refused-after=10"],
    },
    "kubeletPlugin": {
        "kubeletDir": "/var/snap/microk8s/common/var/lib/kubelet", "stateDir": "/opt/vgpu-dra",
        "metricsPort": 9999, "nodeSelector": {"gpu": "yes"}, "affinity": {},
        "extraArgs": ["--resync-seconds=30"],
    },
    "nvidia": {"driverRoot": "/run/nvidia/driver"},
    "deviceClasses": {"sizes": {"small": {"memory": None, "memoryPercent": 10, "cores": 5},
                                "medium": {"memory": "6Gi"}, "large": {"memory": "12Gi", "cores": 100}}},
    "serviceAccounts": {"annotations": {"example.com/owner": "platform"}},
    "metrics": {"serviceMonitor": {"enabled": True, "interval": "15s", "labels": {"release": "prometheus"}}},
    "grafana": {"dashboards": {"enabled": True}},
}

CONFIGURATIONS = {
    "controller-defaults": {},
    "scheduler-defaults": {"allocator": "scheduler"},
    "controller-non-default": NON_DEFAULT,
    "scheduler-non-default": {**NON_DEFAULT, "allocator": "scheduler",
                              "nvidia": {"driverRoot": "", "runtimeClassName": "nvidia"}},
    "controller-hami-webhook": {"hamiWebhook": {"enabled": True}},
    "scheduler-hami-webhook-cert-manager": {"allocator": "scheduler", "hamiWebhook": {
        "enabled": True, "replicas": 1, "tls": {"certManager": {"enabled": True}}}},
    "controller-minimal": {"controller": {"replicas": 1, "leaderElection": {"enabled": False}},
                           "admissionPolicy": {"enabled": False}, "deviceClasses": {"create": False},
                           "metrics": {"service": {"enabled": False}}},
}

# Kinds no core API server serves; their shape is checked against the objects they point at.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("cert-manager.io/v1", "Certificate"),
             ("cert-manager.io/v1", "Issuer")}


@pytest.mark.parametrize("values", CONFIGURATIONS.values(), ids=CONFIGURATIONS.keys())
def test_every_rendered_object_matches_the_api_schema(values):
    rendered = render(values)
    assert rendered.objects
    for obj in rendered.objects:
        key = schema_key(obj)
        if key is None:
            assert (obj["apiVersion"], obj["kind"]) in CRD_KINDS, (
                f"{obj['apiVersion']} {obj['kind']} has no schema in tests/data/openapi: "
                "add the kind to KEPT in tests/data/refresh_openapi.py and refresh")
            continue
        validate(obj, key)


@pytest.mark.parametrize("values", CONFIGURATIONS.values(), ids=CONFIGURATIONS.keys())
def test_rendered_names_are_unique_per_kind_and_namespaced_objects_sit_in_the_release_namespace(values):
    rendered = render(values)
    seen = set()
    for obj in rendered.objects:
        ident = (obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"])
        assert ident not in seen, f"{ident} rendered twice"
        seen.add(ident)
    namespaced = {"ServiceAccount", "Deployment", "DaemonSet", "Service", "Role", "RoleBinding",
                  "PodDisruptionBudget", "ConfigMap", "ServiceMonitor", "Certificate", "Issuer"}
    for obj in rendered.objects:
        if obj["kind"] in namespaced and obj["metadata"]["name"].endswith("-node-events"):
            # The plugin's Node events go where the kubelet puts them, not into the release namespace.
            assert obj["metadata"]["namespace"] == "default"
        elif obj["kind"] in namespaced:
            assert obj["metadata"]["namespace"] == "gpu-system", obj["metadata"]["name"]
        else:
            assert "namespace" not in obj["metadata"], f"cluster-scoped {obj['kind']} carries a namespace"


def test_service_monitors_select_a_rendered_metrics_service_and_name_its_port():
    rendered = render(NON_DEFAULT)
    monitors = rendered.of_kind("ServiceMonitor")
    assert {m["metadata"]["name"] for m in monitors} == {"vgpu-dra-controller", "vgpu-dra-kubelet-plugin"}
    services = rendered.of_kind("Service")
    for monitor in monitors:
        assert monitor["metadata"]["labels"]["release"] == "prometheus"  # what the operator selects on
        wanted = monitor["spec"]["selector"]["matchLabels"]
        matching = [s for s in services if wanted.items() <= s["metadata"]["labels"].items()]
        assert len(matching) == 1, f"{monitor['metadata']['name']} selects {len(matching)} services"
        ports = {p["name"] for p in matching[0]["spec"]["ports"]}
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
        assert monitor["spec"]["namespaceSelector"]["matchNames"] == ["gpu-system"]
        assert all(e["interval"] == "15s" and e["honorLabels"] for e in monitor["spec"]["endpoints"])


def test_metrics_services_select_the_pods_that_serve_metrics():
    rendered = render()
    workloads = {w["metadata"]["labels"]["app.kubernetes.io/component"]: w
                 for w in rendered.of_kind("Deployment") + rendered.of_kind("DaemonSet")}
    for service in rendered.of_kind("Service"):
        component = service["metadata"]["labels"]["app.kubernetes.io/component"]
        pod = workloads[component]["spec"]["template"]
        assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        container_ports = {(p["name"], p["containerPort"]) for c in pod["spec"]["containers"] for p in c["ports"]}
        for port in service["spec"]["ports"]:
            assert (port["targetPort"], port["port"]) in container_ports


@pytest.mark.parametrize("allocator", ["controller", "scheduler"])
def test_helm_lint_finds_no_warning_or_error(allocator):
    report = helm_python.lint(CHART_DIR, {"allocator": allocator}, strict=True, namespace="gpu-system",
                              kube_version="v1.34.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 1 = info ("icon is recommended")
    assert problems == [] and report["errors"] == []
