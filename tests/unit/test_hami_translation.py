"""HAMi's vocabulary translated into claims: each resource and annotation, containers of every kind,
workload kinds, untouched pods and refusals (driver/hami_translation.py, driver/hami_manifests.py)."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fakes.openapi_schema import validate
from vgpu_dra.api.config import parse_config
from vgpu_dra.driver.hami_manifests import migrate_document, migrate_documents
from vgpu_dra.driver.hami_translation import (
    TRANSLATION_ANNOTATION, HamiTranslationError, claim_name, translate_pod_template,
)
from vgpu_dra.driver.selectors import compile_selectors

SEED = Path(__file__).resolve().parents[1] / "data" / "seed-hami"


def _container(name: str = "main", limits: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"name": name, "image": "busybox"}
    if limits is not None:
        container["resources"] = {"limits": limits}
    container.update(extra)
    return container


def _translate(containers: list[dict[str, Any]], annotations: dict[str, str] | None = None,
               allocator: str = "controller", **spec: Any):
    metadata = {"annotations": annotations} if annotations else {}
    return translate_pod_template(metadata, {"containers": containers, **spec}, namespace="team-a",
                                  allocator=allocator)  # type: ignore[arg-type]


def _params(template: dict[str, Any]) -> dict[str, Any]:
    [config] = template["spec"]["spec"]["devices"]["config"]
    return config["opaque"]["parameters"]


def _exactly(template: dict[str, Any]) -> dict[str, Any]:
    [request] = template["spec"]["spec"]["devices"]["requests"]
    return request["exactly"]


def test_percentage_and_cores_become_a_vgpu_config_and_the_hami_resources_go():
    result = _translate([_container(limits={"nvidia.com/gpu": "1", "nvidia.com/gpumem-percentage": "20",
                                            "nvidia.com/gpucores": "25", "cpu": "2"})])
    [template] = result.templates
    assert _params(template) == {"apiVersion": "vgpu.dra.dev/v1alpha1", "kind": "VgpuConfig",
                                 "memoryPercent": 20, "cores": 25}
    parse_config(_params(template))  # the project's own validator accepts it
    assert template["metadata"]["namespace"] == "team-a"
    [container] = result.spec["containers"]
    assert container["resources"] == {"limits": {"cpu": "2"}, "claims": [{"name": "vgpu-main"}]}
    assert result.spec["resourceClaims"] == [{"name": "vgpu-main",
                                              "resourceClaimTemplateName": template["metadata"]["name"]}]
    assert "memoryPercent 20, cores 25" in result.metadata["annotations"][TRANSLATION_ANNOTATION]


def test_gpumem_is_mib_per_gpu_and_wins_over_the_percentage_as_in_hami():
    result = _translate([_container(limits={"nvidia.com/gpu": 1, "nvidia.com/gpumem": "3000",
                                            "nvidia.com/gpumem-percentage": "50"})])
    [template] = result.templates
    assert _params(template) == {"apiVersion": "vgpu.dra.dev/v1alpha1", "kind": "VgpuConfig", "memory": "3000Mi"}
    assert any("wins over" in note for note in result.notes)


def test_requests_count_when_limits_are_absent_and_must_equal_limits_when_both_are_set():
    result = translate_pod_template({}, {"containers": [{"name": "c", "resources": {
        "requests": {"nvidia.com/gpu": "1", "nvidia.com/gpucores": "30"}}}]}, namespace=None)
    assert _params(result.templates[0])["cores"] == 30
    assert "namespace" not in result.templates[0]["metadata"]
    with pytest.raises(HamiTranslationError, match="requests '20' and limits '30'"):
        translate_pod_template({}, {"containers": [{"name": "c", "resources": {
            "requests": {"nvidia.com/gpucores": "20"}, "limits": {"nvidia.com/gpucores": "30"}}}]}, namespace=None)


def test_counts_are_read_as_hami_reads_quantities():
    result = _translate([_container(limits={"nvidia.com/gpu": "1", "nvidia.com/gpumem": "2k"})])
    assert _params(result.templates[0])["memory"] == "2000Mi"


def test_gpu_alone_is_the_whole_gpu_without_a_cap_and_gpumem_alone_implies_one_gpu():
    whole = _translate([_container(limits={"nvidia.com/gpu": "1"})])
    assert "config" not in whole.templates[0]["spec"]["spec"]["devices"]
    assert _exactly(whole.templates[0]) == {"deviceClassName": "vgpu.dra.dev"}
    implied = _translate([_container(limits={"nvidia.com/gpumem": "1024"})])
    assert _params(implied.templates[0])["memory"] == "1024Mi"
    assert "count" not in _exactly(implied.templates[0])


def test_two_gpus_is_a_count_of_two_with_the_share_on_each():
    result = _translate([_container(limits={"nvidia.com/gpu": "2", "nvidia.com/gpumem-percentage": "40"})])
    [template] = result.templates
    assert _exactly(template)["count"] == 2 and _exactly(template)["allocationMode"] == "ExactCount"
    assert template["metadata"]["name"].startswith("hami-2gpus-mem40pct-")


def test_each_gpu_container_gets_its_own_claim_and_the_same_shape_shares_a_template():
    limits = {"nvidia.com/gpu": "1", "nvidia.com/gpumem": "2048"}
    result = _translate([_container("a", limits), _container("b", dict(limits)), _container("sidecar")])
    assert [c["name"] for c in result.spec["resourceClaims"]] == ["vgpu-a", "vgpu-b"]
    assert len(result.templates) == 1
    assert {c["resourceClaimTemplateName"] for c in result.spec["resourceClaims"]} == {
        result.templates[0]["metadata"]["name"]}
    assert "resources" not in result.spec["containers"][2]


def test_a_plain_init_container_reuses_the_claim_of_an_app_container_of_its_shape_a_sidecar_does_not():
    limits = {"nvidia.com/gpu": "1", "nvidia.com/gpumem-percentage": "10"}
    result = _translate([_container("app", limits)],
                        initContainers=[_container("warmup", dict(limits)),
                                        _container("proxy", dict(limits), restartPolicy="Always"),
                                        _container("other", {"nvidia.com/gpu": "1", "nvidia.com/gpucores": "5"})])
    claims = {c["name"]: c["resources"]["claims"] for c in result.spec["initContainers"]}
    assert claims == {"warmup": [{"name": "vgpu-app"}], "proxy": [{"name": "vgpu-proxy"}],
                      "other": [{"name": "vgpu-other"}]}
    assert [c["name"] for c in result.spec["resourceClaims"]] == ["vgpu-app", "vgpu-proxy", "vgpu-other"]


def test_gpu_type_annotations_are_case_insensitive_substring_selectors_as_in_hami():
    result = _translate([_container(limits={"nvidia.com/gpu": "1"})],
                        {"nvidia.com/use-gputype": "A100,rtx 3080", "nvidia.com/nouse-gputype": "3080 Ti, SXM4"})
    expressions = [s["cel"]["expression"] for s in _exactly(result.templates[0])["selectors"]]
    match = compile_selectors(expressions)

    class Gpu:
        def __init__(self, product: str):
            self.driver = "vgpu.dra.dev"
            self.attributes = {"productName": product, "uuid": "GPU-1"}
            self.capacity: dict[str, int] = {}

    assert match(Gpu("NVIDIA GeForce RTX 3080"))
    assert match(Gpu("NVIDIA A100-PCIE-40GB"))
    assert not match(Gpu("NVIDIA A100-SXM4-40GB"))
    assert not match(Gpu("NVIDIA GeForce RTX 3080 Ti"))
    assert not match(Gpu("NVIDIA L40S"))


def test_uuid_annotations_select_and_exclude_gpus():
    result = _translate([_container(limits={"nvidia.com/gpu": "1"})],
                        {"nvidia.com/use-gpuuuid": "GPU-aaa, GPU-bbb", "nvidia.com/nouse-gpuuuid": "GPU-bbb"})
    expressions = [s["cel"]["expression"] for s in _exactly(result.templates[0])["selectors"]]
    match = compile_selectors(expressions)

    class Gpu:
        def __init__(self, uuid: str):
            self.driver = "vgpu.dra.dev"
            self.attributes = {"productName": "x", "uuid": uuid}
            self.capacity: dict[str, int] = {}

    assert [match(Gpu(u)) for u in ("GPU-aaa", "GPU-bbb", "GPU-ccc")] == [True, False, False]


def test_scheduler_policy_annotations_become_the_claims_placement_annotations():
    result = _translate([_container(limits={"nvidia.com/gpu": "1"})],
                        {"hami.io/node-scheduler-policy": "spread", "hami.io/gpu-scheduler-policy": "binpack"})
    assert result.templates[0]["spec"]["metadata"]["annotations"] == {
        "vgpu.dra.dev/node-policy": "spread", "vgpu.dra.dev/gpu-policy": "binpack"}


def test_hami_scheduler_becomes_the_default_scheduler_and_other_schedulers_stay():
    mapped = _translate([_container()], schedulerName="hami-scheduler")
    assert mapped.changed and mapped.spec["schedulerName"] == "default-scheduler" and not mapped.templates
    assert "hami-scheduler -> default-scheduler" in mapped.summary
    other = _translate([_container(limits={"nvidia.com/gpu": "1"})], schedulerName="volcano")
    assert other.spec["schedulerName"] == "volcano"


def test_a_pod_without_hami_requests_is_returned_as_it_was():
    spec = {"containers": [_container(limits={"cpu": "1", "example.com/fpga": "1"})]}
    result = translate_pod_template({"annotations": {"nvidia.com/use-gputype": "A100"}}, spec, namespace="x")
    assert not result.changed and result.spec == spec and not result.templates
    assert TRANSLATION_ANNOTATION not in result.metadata.get("annotations", {})


def test_priority_is_dropped_with_a_note_and_gpu_zero_books_nothing():
    result = _translate([_container(limits={"nvidia.com/gpu": "0", "nvidia.com/priority": "1"})])
    assert not result.templates and result.spec["containers"][0]["resources"] == {}
    assert any("priority" in note for note in result.notes)


def test_the_scheduler_allocator_uses_capacity_requests_and_refuses_a_percentage():
    result = _translate([_container(limits={"nvidia.com/gpu": "1", "nvidia.com/gpumem": "2048",
                                            "nvidia.com/gpucores": "30"})], allocator="scheduler")
    assert _exactly(result.templates[0])["capacity"] == {"requests": {"memory": "2048Mi", "cores": "30"}}
    assert "config" not in result.templates[0]["spec"]["spec"]["devices"]
    with pytest.raises(HamiTranslationError, match="needs the controller allocator"):
        _translate([_container(limits={"nvidia.com/gpumem-percentage": "20"})], allocator="scheduler")


@pytest.mark.parametrize(("limits", "annotations", "message"), [
    ({"nvidia.com/gpumem-percentage": "150"}, {}, r"gpumem-percentage = '150' is out of range; expected an integer from 1 to 100"),
    ({"nvidia.com/gpucores": "101"}, {}, r"gpucores = '101' is out of range"),
    ({"nvidia.com/gpumem": "2Gi"}, {}, r"gpumem = '2Gi' has a binary suffix, but HAMi counts it in plain units; "
                                       r"expected a positive integer \(MiB"),
    ({"nvidia.com/gpumem": "1.5"}, {}, r"gpumem = '1.5' is not a whole number"),
    ({"nvidia.com/gpumem": "lots"}, {}, r"gpumem = 'lots' is not a whole number"),
    ({"nvidia.com/gpu": "-1"}, {}, r"nvidia.com/gpu = '-1' is out of range"),
    ({"nvidia.com/gpu": "1"}, {"hami.io/gpu-scheduler-policy": "topology"}, r"expected 'binpack' or 'spread'"),
    ({"nvidia.com/gpu": "1"}, {"nvidia.com/use-gpuuuid": "0"}, r"'0' is not a GPU UUID"),
    ({"nvidia.com/gpu": "1"}, {"nvidia.com/use-gputype": " , "}, r"use-gputype is empty"),
])
def test_bad_values_are_one_line_naming_the_container_the_field_and_the_accepted_form(limits, annotations, message):
    with pytest.raises(HamiTranslationError, match=message) as caught:
        _translate([_container("trainer", limits)], annotations)
    assert "container trainer" in str(caught.value) and "\n" not in str(caught.value)


def test_template_names_are_deterministic_and_differ_per_shape():
    first = _translate([_container(limits={"nvidia.com/gpu": "1", "nvidia.com/gpucores": "25"})]).templates[0]
    again = _translate([_container("x", limits={"nvidia.com/gpucores": "25", "nvidia.com/gpu": 1})]).templates[0]
    other = _translate([_container(limits={"nvidia.com/gpu": "1", "nvidia.com/gpucores": "26"})]).templates[0]
    typed = _translate([_container(limits={"nvidia.com/gpu": "1", "nvidia.com/gpucores": "25"})],
                       {"nvidia.com/use-gputype": "A100"}).templates[0]
    assert first["metadata"]["name"] == again["metadata"]["name"]
    assert len({first["metadata"]["name"], other["metadata"]["name"], typed["metadata"]["name"]}) == 3


def test_claim_names_stay_dns_labels_and_avoid_existing_claims():
    long = claim_name("c" * 63, set())
    assert len(long) <= 63 and long.startswith("vgpu-c")
    assert claim_name("main", {"vgpu-main"}) != "vgpu-main"


@pytest.mark.parametrize(("kind", "wrap"), [
    ("Deployment", lambda t: {"replicas": 1, "selector": {"matchLabels": {"a": "b"}}, "template": t}),
    ("StatefulSet", lambda t: {"serviceName": "s", "selector": {"matchLabels": {"a": "b"}}, "template": t}),
    ("Job", lambda t: {"template": t}),
    ("CronJob", lambda t: {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": t}}}),
])
def test_every_workload_kind_has_its_pod_template_rewritten(kind, wrap):
    template = {"metadata": {"labels": {"a": "b"}},
                "spec": {"restartPolicy": "Never",
                         "containers": [_container(limits={"nvidia.com/gpu": "1", "nvidia.com/gpucores": "10"})]}}
    api = "batch/v1" if kind in ("Job", "CronJob") else "apps/v1"
    document = {"apiVersion": api, "kind": kind, "metadata": {"name": "w", "namespace": "ml"},
                "spec": wrap(copy.deepcopy(template))}
    migrated = migrate_document(document)
    assert migrated.changed
    holder = migrated.document["spec"]
    holder = holder["jobTemplate"]["spec"]["template"] if kind == "CronJob" else holder["template"]
    assert holder["spec"]["resourceClaims"][0]["resourceClaimTemplateName"].startswith("hami-cores10-")
    assert migrated.translation is not None and migrated.translation.templates[0]["metadata"]["namespace"] == "ml"
    if kind in ("Deployment", "Job"):
        validate(migrated.document, f"io.k8s.api.{'apps' if kind == 'Deployment' else 'batch'}.v1.{kind}")


def test_the_users_two_files_migrate_to_valid_manifests_with_their_shares():
    documents = [(str(p), d) for p in sorted(SEED.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text())]
    migration = migrate_documents(documents)
    assert migration.translated == ("Deployment gpu-worker-a", "Deployment gpu-worker-b")
    shares = [(_params(t)["memoryPercent"], _params(t)["cores"]) for t in migration.templates]
    assert shares == [(20, 25), (30, 40)]
    for document in migration.output():
        key = {"ResourceClaimTemplate": "io.k8s.api.resource.v1.ResourceClaimTemplate",
               "Deployment": "io.k8s.api.apps.v1.Deployment"}[document["kind"]]
        validate(document, key)


def test_a_bad_document_names_its_file_and_object():
    document = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "w"}, "spec": {"template": 3}}
    with pytest.raises(HamiTranslationError, match=r"^f.yaml: Deployment w: spec.template must be a mapping$"):
        migrate_documents([("f.yaml", document)])
