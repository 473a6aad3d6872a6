"""Manifest loading: files and folders, every kind the planner uses, clear errors naming file and object."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from vgpu_dra.driver.manifests import ManifestError, load_manifests

TEMPLATE = """
apiVersion: resource.k8s.io/v1
kind: ResourceClaimTemplate
metadata: {name: small, namespace: team}
spec:
  spec:
    devices:
      requests:
        - name: gpu
          exactly: {deviceClassName: vgpu.dra.dev, capacity: {requests: {memory: 1Gi}}}
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def test_folders_are_read_recursively_in_name_order_with_every_kind(tmp_path):
    write(tmp_path, "b/claims.yaml", TEMPLATE)
    write(tmp_path, "a/app.yaml", """
        apiVersion: apps/v1
        kind: StatefulSet
        metadata: {name: db, namespace: team}
        spec:
          replicas: 3
          template:
            spec:
              resourceClaims: [{name: gpu, resourceClaimTemplateName: small}]
              containers: [{name: c, resources: {claims: [{name: gpu}]}}]
        ---
        apiVersion: batch/v1
        kind: Job
        metadata: {name: batch}
        spec:
          parallelism: 2
          template: {spec: {containers: [{name: c}]}}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: ignored}
        """)
    write(tmp_path, "c/notes.txt", "not a manifest")
    manifests = load_manifests([tmp_path])
    assert [(w.kind, w.namespace, w.name, w.replicas) for w in manifests.workloads] == [
        ("StatefulSet", "team", "db", 3), ("Job", "default", "batch", 2)]
    assert manifests.workloads[0].pod.claims[0].template_name == "small"
    assert [t.key for t in manifests.claim_templates] == ["team/small"]
    assert len(manifests.skipped) == 1 and manifests.skipped[0].endswith("(document 3): Service")


def test_beta_requests_are_rewritten_to_the_v1_exactly_form(tmp_path):
    write(tmp_path, "claim.yaml", """
        apiVersion: resource.k8s.io/v1beta1
        kind: ResourceClaim
        metadata: {name: old}
        spec:
          devices:
            requests:
              - {name: gpu, deviceClassName: vgpu.dra.dev, count: 2}
        """)
    claim = load_manifests([tmp_path]).claims[0]
    assert claim.raw["spec"]["devices"]["requests"][0] == {
        "name": "gpu", "exactly": {"deviceClassName": "vgpu.dra.dev", "count": 2}}


def test_list_items_are_objects_of_their_own(tmp_path):
    write(tmp_path, "list.yaml", """
        apiVersion: v1
        kind: List
        items:
          - {apiVersion: v1, kind: Pod, metadata: {name: p}, spec: {containers: [{name: c}]}}
        """)
    assert [w.label for w in load_manifests([tmp_path]).workloads] == ["Pod default/p"]


@pytest.mark.parametrize("text, message", [
    ("kind: Pod\nmetadata: {name: [unclosed\n", r"bad\.yaml: not valid YAML at line \d+, column \d+"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {}\nspec: {}\n", r"bad\.yaml \(document 1\): Pod has no metadata.name"),
    ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec: {replicas: two, template: {spec: {}}}\n",
     r"Deployment default/d: spec.replicas must be a non-negative integer, got 'two'"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: c, resources: {claims: [{name: gpu}]}}]\n",
     r"Pod default/p: container 'c' uses claim 'gpu', which spec.resourceClaims does not declare"),
    ("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  resourceClaims: [{name: gpu}]\n",
     r"Pod default/p spec.resourceClaims\[0\] 'gpu': set exactly one of resourceClaimName"),
    ("apiVersion: resource.k8s.io/v1\nkind: ResourceClaim\nmetadata: {name: c}\nspec: {devices: {requests: []}}\n",
     r"ResourceClaim default/c: spec.devices.requests is empty"),
    ("apiVersion: resource.k8s.io/v1\nkind: ResourceClaim\nmetadata: {name: c}\n"
     "spec: {devices: {requests: [{name: gpu, exactly: {deviceClassName: x, count: 0}}]}}\n",
     r"ResourceClaim default/c request\[0\] 'gpu': exactly.count must be a positive integer, got 0"),
    ("apiVersion: v1/resource\nkind: DeviceClass\nmetadata: {name: x}\n",
     r"DeviceClass x: apiVersion 'v1/resource' is not resource.k8s.io/v1"),
    ("- just\n- a list\n", r"expected a Kubernetes object \(a mapping\), got list"),
])
def test_bad_input_names_the_file_and_the_object(tmp_path, text, message):
    write(tmp_path, "bad.yaml", text)
    with pytest.raises(ManifestError, match=message):
        load_manifests([tmp_path / "bad.yaml"])


def test_the_same_object_twice_is_an_error_naming_both_places(tmp_path):
    write(tmp_path, "one.yaml", TEMPLATE)
    write(tmp_path, "two.yaml", TEMPLATE)
    with pytest.raises(ManifestError, match=r"two\.yaml \(document 1\): ResourceClaimTemplate team/small is also "
                                            r"defined in .*one\.yaml \(document 1\)"):
        load_manifests([tmp_path])


def test_a_missing_path_is_named(tmp_path):
    with pytest.raises(ManifestError, match=r"nowhere: no such file or folder"):
        load_manifests([tmp_path / "nowhere"])
