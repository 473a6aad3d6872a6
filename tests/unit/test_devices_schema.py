"""The OpenAPI validator the slice tests rely on (tests/fakes/openapi_schema.py) catches what a
real API server would reject, and names the failing field."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.openapi_schema import SchemaError, errors, validate
from vgpu_dra.driver.devices import build_slices
from vgpu_dra.driver.inventory_file import load_inventory

SLICE = "io.k8s.api.resource.v1.ResourceSlice"
HOMELAB = load_inventory(Path(__file__).resolve().parents[1] / "fakes" / "inventories" / "rtx3080-homelab.yaml")


def _good_slice() -> dict[str, Any]:
    (spec,) = build_slices(HOMELAB, generation=1, allow_multiple_allocations=True)
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": "homelab-vgpu.dra.dev-0", "creationTimestamp": "2026-11-24T23:00:00Z",
                     "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": "homelab", "uid": "u-1"}]},
        "spec": spec,
    }


def test_a_valid_slice_passes() -> None:
    validate(_good_slice(), SLICE)
    assert errors(_good_slice(), SLICE) == []


@pytest.mark.parametrize(
    ("path", "value", "problem"),
    [
        (("spec", "devices", 0, "atributes"), {}, "$.spec.devices[0]: Additional properties are not allowed ('atributes' was unexpected)"),
        (("spec", "devices", 0, "capacity", "memory", "value"), "10 GiB", "$.spec.devices[0].capacity.memory.value: '10 GiB' is not a 'quantity'"),
        (("spec", "devices", 0, "attributes", "index", "int"), "0", "$.spec.devices[0].attributes.index.int: '0' is not of type 'integer'"),
        (("spec", "pool", "generation"), 2**63, "$.spec.pool.generation: 9223372036854775808 is not a 'int64'"),
        (("metadata", "creationTimestamp"), "yesterday", "$.metadata.creationTimestamp: 'yesterday' is not a 'date-time'"),
        (("spec", "devices", 0, "allowMultipleAllocations"), "true", "$.spec.devices[0].allowMultipleAllocations: 'true' is not of type 'boolean'"),
    ],
)
def test_mistakes_are_reported_with_their_json_path(path: tuple[Any, ...], value: Any, problem: str) -> None:
    obj = _good_slice()
    target = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value

    assert errors(obj, SLICE) == [problem]
    with pytest.raises(SchemaError, match="ResourceSlice is invalid"):
        validate(obj, SLICE)


def test_missing_required_field_is_reported() -> None:
    obj = _good_slice()
    del obj["spec"]["pool"]["resourceSliceCount"]

    assert errors(obj, SLICE) == ["$.spec.pool: 'resourceSliceCount' is a required property"]


def test_list_map_keys_must_be_unique() -> None:
    obj = _good_slice()
    obj["metadata"]["ownerReferences"].append(copy.deepcopy(obj["metadata"]["ownerReferences"][0]))

    assert errors(obj, SLICE) == [
        "$.metadata.ownerReferences: duplicate entry with {'uid': 'u-1'} in a list keyed by ['uid']"
    ]


def test_maps_and_raw_extensions_stay_open() -> None:
    """additionalProperties maps (labels) and RawExtension (opaque config) accept any key."""
    obj = _good_slice()
    obj["metadata"]["labels"] = {"anything.example.com/x": "y"}
    validate(obj, SLICE)
    claim = {
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim", "metadata": {"name": "c", "namespace": "d"},
        "spec": {"devices": {
            "requests": [{"name": "gpu", "exactly": {"deviceClassName": "vgpu.dra.dev",
                                                     "capacity": {"requests": {"memory": "2Gi"}}}}],
            "config": [{"opaque": {"driver": "vgpu.dra.dev",
                                   "parameters": {"apiVersion": "vgpu.dra.dev/v1alpha1", "kind": "VgpuConfig", "cores": 25}}}],
        }},
    }
    validate(claim, "io.k8s.api.resource.v1.ResourceClaim")


def test_schemas_of_other_groups_resolve_too() -> None:
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "w"},
                  "spec": {"selector": {"matchLabels": {"app": "w"}}, "replicas": 1,
                           "strategy": {"rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}},
                           "template": {"metadata": {"labels": {"app": "w"}},
                                        "spec": {"containers": [{"name": "c", "image": "i"}]}}}}
    validate(deployment, "io.k8s.api.apps.v1.Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = ["Always"]
    assert "$.spec.template.spec.containers[0].imagePullPolicy: ['Always'] is not of type 'string'" in errors(
        deployment, "io.k8s.api.apps.v1.Deployment")


def test_unknown_schema_key_is_an_error() -> None:
    with pytest.raises(KeyError, match="no schema 'io.k8s.api.resource.v1.ResourceSlise'"):
        validate({}, "io.k8s.api.resource.v1.ResourceSlise")
