"""The chart's HAMi webhook: which pods its match conditions send to it (evaluated as CEL), its
failure policies, and that its Deployment, RBAC and configuration name the same objects."""
from __future__ import annotations

import re
from typing import Any

import celpy
import pytest

from tests.deploy.chart import NAMESPACE, render
from vgpu_dra.driver.hami_translation import HAMI_RESOURCES

ENABLED = {"hamiWebhook": {"enabled": True}}


def _condition(webhook: dict[str, Any]) -> Any:
    [condition] = webhook["matchConditions"]
    environment = celpy.Environment()
    program = environment.program(environment.compile(condition["expression"]))
    return lambda pod: bool(program.evaluate({"object": celpy.json_to_cel(pod)}))


def _pod(*containers: dict[str, Any], init: tuple[dict[str, Any], ...] = (), scheduler: str | None = None) -> dict:
    spec: dict[str, Any] = {"containers": list(containers)}
    if init:
        spec["initContainers"] = list(init)
    if scheduler:
        spec["schedulerName"] = scheduler
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec}


def _c() -> dict[str, Any]:
    return {"name": "c", "image": "busybox"}


def _gpu(section: str = "limits", name: str = "nvidia.com/gpu") -> dict[str, Any]:
    return {"name": "g", "image": "busybox", "resources": {section: {name: "1"}}}


def _webhooks(values: dict[str, Any] = ENABLED) -> dict[str, dict[str, Any]]:
    config = render(values).one("MutatingWebhookConfiguration")
    return {w["name"]: w for w in config["webhooks"]}


def test_disabled_by_default():
    assert not render().of_kind("MutatingWebhookConfiguration")


@pytest.mark.parametrize("resource", HAMI_RESOURCES)
@pytest.mark.parametrize("section", ["limits", "requests"])
def test_every_hami_resource_in_limits_or_requests_of_any_container_is_sent_to_the_gpu_webhook(resource, section):
    matches = _condition(_webhooks()["translate-hami-gpu.vgpu.dra.dev"])
    assert matches(_pod(_c(), _gpu(section, resource)))
    assert matches(_pod(_c(), init=(_gpu(section, resource),)))


def test_pods_asking_for_none_of_it_are_never_sent_to_the_gpu_webhook():
    matches = _condition(_webhooks()["translate-hami-gpu.vgpu.dra.dev"])
    plain = {"name": "c", "image": "busybox", "resources": {"limits": {"cpu": "1", "example.com/gpu": "1"},
                                                            "requests": {"memory": "1Gi"}}}
    assert not matches(_pod(plain))
    assert not matches(_pod(_c(), init=(_c(),)))
    assert not matches(_pod({"name": "c", "image": "busybox", "resources": {}}))
    assert not matches(_pod(_c(), scheduler="hami-scheduler"))


def test_a_hami_scheduler_pod_without_gpu_goes_to_the_fail_open_webhook_only():
    hooks = _webhooks()
    scheduler_only = _condition(hooks["translate-hami-scheduler.vgpu.dra.dev"])
    assert scheduler_only(_pod(_c(), scheduler="hami-scheduler"))
    assert not scheduler_only(_pod(_gpu(), scheduler="hami-scheduler"))  # the GPU webhook has it
    assert not scheduler_only(_pod(_c(), scheduler="default-scheduler"))
    assert not scheduler_only(_pod(_c()))
    assert hooks["translate-hami-gpu.vgpu.dra.dev"]["failurePolicy"] == "Fail"
    assert hooks["translate-hami-scheduler.vgpu.dra.dev"]["failurePolicy"] == "Ignore"


def test_the_chart_lists_exactly_the_resources_the_translation_removes():
    expression = _webhooks()["translate-hami-gpu.vgpu.dra.dev"]["matchConditions"][0]["expression"]
    lists = set(re.findall(r"k in \[([^\]]*)\]", expression))
    assert lists == {", ".join(f"'{r}'" for r in HAMI_RESOURCES)}


def test_configuration_deployment_and_rbac_name_the_same_objects():
    rendered = render(ENABLED)
    [deployment] = [d for d in rendered.of_kind("Deployment") if d["metadata"]["name"].endswith("-hami-webhook")]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    args = dict(a.removeprefix("--").split("=", 1) for a in container["args"][1:])
    config = rendered.one("MutatingWebhookConfiguration")
    service = rendered.one("Service", "-hami-webhook")
    for webhook in config["webhooks"]:
        assert webhook["clientConfig"]["service"] == {"name": service["metadata"]["name"], "namespace": NAMESPACE,
                                                      "path": "/mutate-hami", "port": 443}
        assert "caBundle" not in webhook["clientConfig"]  # the webhook publishes it
        assert webhook["rules"] == [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                                     "resources": ["pods"], "scope": "Namespaced"}]
        assert webhook["sideEffects"] == "NoneOnDryRun"
    assert args["webhook-config"] == config["metadata"]["name"]
    assert args["service-name"] == service["metadata"]["name"] and args["namespace"] == NAMESPACE
    assert service["spec"]["ports"][0]["targetPort"] == "webhook"
    assert container["ports"][0] == {"name": "webhook", "containerPort": int(args["port"]), "protocol": "TCP"}
    role = rendered.one("Role", "-hami-webhook-tls")
    assert {"apiGroups": [""], "resources": ["secrets"], "resourceNames": [args["tls-secret"]],
            "verbs": ["get", "update", "patch"]} in role["rules"]
    cluster_role = rendered.one("ClusterRole", "-hami-webhook")
    assert {"apiGroups": ["admissionregistration.k8s.io"], "resources": ["mutatingwebhookconfigurations"],
            "resourceNames": [config["metadata"]["name"]], "verbs": ["get", "patch"]} in cluster_role["rules"]
    assert args["allocator"] == "controller"


def test_cert_manager_mode_mounts_its_certificate_and_injects_the_ca():
    rendered = render({"hamiWebhook": {"enabled": True, "tls": {"certManager": {"enabled": True}}}})
    config = rendered.one("MutatingWebhookConfiguration")
    certificate = rendered.one("Certificate")
    assert config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == (
        f"{NAMESPACE}/{certificate['metadata']['name']}")
    [deployment] = [d for d in rendered.of_kind("Deployment") if d["metadata"]["name"].endswith("-hami-webhook")]
    spec = deployment["spec"]["template"]["spec"]
    assert "--tls-dir=/tls" in spec["containers"][0]["args"]
    assert not any(a.startswith("--webhook-config") for a in spec["containers"][0]["args"])
    assert {"name": "tls", "secret": {"secretName": certificate["spec"]["secretName"]}} in spec["volumes"]
    assert not rendered.of_kind("Role") or not any(r["metadata"]["name"].endswith("-tls") for r in rendered.of_kind("Role"))
