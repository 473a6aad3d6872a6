"""The rendered MutatingAdmissionPolicies: which pods get the scheduling gate and which claims the
finalizer (their match conditions, evaluated as the API server does); the mutations themselves run
on the real API server in tests/e2e/test_admission_shortcuts.py."""
from __future__ import annotations

from typing import Any

import celpy
import pytest

from tests.deploy.chart import render

ENV = celpy.Environment()


def _matches(policy: dict[str, Any], obj: dict[str, Any]) -> bool:
    activation = {"object": celpy.json_to_cel(obj)}
    return all(bool(ENV.program(ENV.compile(c["expression"])).evaluate(activation))
               for c in policy["spec"]["matchConditions"])


def _policy(suffix: str, values: dict[str, Any] | None = None) -> dict[str, Any]:
    return render(values).one("MutatingAdmissionPolicy", suffix)


def _pod(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "main", "image": "x"}], **spec}}


def _claim(*requests: dict[str, Any], finalizers: list[str] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "c"}
    if finalizers is not None:
        metadata["finalizers"] = finalizers
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim", "metadata": metadata,
            "spec": {"devices": {"requests": list(requests)}}}


CLAIMS = [{"name": "gpu", "resourceClaimTemplateName": "t"}]


@pytest.mark.parametrize(("spec", "gated"), [
    ({"resourceClaims": CLAIMS}, True),
    ({"resourceClaims": CLAIMS, "schedulingGates": [{"name": "example.com/hold"}]}, True),
    ({"resourceClaims": CLAIMS, "schedulingGates": [{"name": "vgpu.dra.dev/allocation"}]}, False),
    ({"resourceClaims": CLAIMS, "nodeName": "n1"}, False),  # a bound pod cannot get gates
    ({"resourceClaims": []}, False),
    ({}, False),
])
def test_the_gate_goes_on_every_unbound_pod_with_claims_and_only_those(spec: dict[str, Any], gated: bool) -> None:
    assert _matches(_policy("-scheduling-gate"), _pod(**spec)) is gated


@pytest.mark.parametrize(("requests", "finalizers", "wanted"), [
    ([{"name": "gpu", "exactly": {"deviceClassName": "vgpu.dra.dev"}}], None, True),
    ([{"name": "gpu", "exactly": {"deviceClassName": "small.vgpu.dra.dev"}}], ["example.com/x"], True),
    ([{"name": "gpu", "firstAvailable": [{"name": "a", "deviceClassName": "gpu.example.com"},
                                         {"name": "b", "deviceClassName": "large.vgpu.dra.dev"}]}], None, True),
    ([{"name": "nic", "exactly": {"deviceClassName": "nic.example.com"}},
      {"name": "gpu", "exactly": {"deviceClassName": "vgpu.dra.dev"}}], None, True),
    ([{"name": "gpu", "exactly": {"deviceClassName": "vgpu.dra.dev"}}], ["vgpu.dra.dev/allocation"], False),
    ([{"name": "gpu", "exactly": {"deviceClassName": "gpu.nvidia.com"}}], None, False),
    ([{"name": "gpu", "exactly": {"deviceClassName": "notvgpu.dra.dev"}}], None, False),
])
def test_the_finalizer_goes_on_claims_of_this_drivers_classes(requests: list[dict[str, Any]],
                                                              finalizers: list[str] | None, wanted: bool) -> None:
    assert _matches(_policy("-claim-finalizer"), _claim(*requests, finalizers=finalizers)) is wanted


def test_both_fail_open_and_exist_only_where_a_controller_lifts_the_gate() -> None:
    rendered = render()
    policies = rendered.of_kind("MutatingAdmissionPolicy")
    assert {p["spec"]["failurePolicy"] for p in policies} == {"Ignore"}
    assert {b["spec"]["policyName"] for b in rendered.of_kind("MutatingAdmissionPolicyBinding")} == \
        {p["metadata"]["name"] for p in policies}
    assert not render({"allocator": "scheduler"}).of_kind("MutatingAdmissionPolicy")
    assert not render({"controller": {"admissionShortcuts": {"enabled": False}}}).of_kind("MutatingAdmissionPolicy")


def test_the_gate_can_be_kept_to_some_namespaces() -> None:
    selector = {"matchLabels": {"gpu-team": "true"}}
    policy = _policy("-scheduling-gate", {"controller": {"admissionShortcuts": {"namespaceSelector": selector}}})
    assert policy["spec"]["matchConstraints"]["namespaceSelector"] == selector
    assert "namespaceSelector" not in _policy("-scheduling-gate")["spec"]["matchConstraints"]
