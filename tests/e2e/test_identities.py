"""The chart's RBAC and admission policy, enforced by the real API server on the identities the
components really have (ServiceAccount tokens bound to their pods)."""
from __future__ import annotations

import base64

import pytest

from tests.cluster.real_cluster import wait_until
from tests.e2e.install import NAMESPACE, Installation
from vgpu_dra.controller.kubeapi import RESOURCE_CLAIMS, RESOURCE_SLICES, ApiError, KubeApi, Resource

SECRETS = Resource("", "v1", "secrets", True)

pytestmark = pytest.mark.e2e


def _slice(node: str, name: str) -> dict:
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice", "metadata": {"name": name},
            "spec": {"driver": "vgpu.dra.dev", "nodeName": node, "pool": {"name": node, "generation": 1,
                                                                          "resourceSliceCount": 1},
                     "devices": []}}


def _as(installation: Installation, token: str, name: str) -> KubeApi:
    return KubeApi(installation.cluster.api_client(installation.cluster.kubeconfig_with_token(token, name)))


def _plugin_token(installation: Installation, node: str, *, bound: bool = True) -> str:
    daemonset = installation.workload("DaemonSet")
    account = daemonset["spec"]["template"]["spec"]["serviceAccountName"]
    pod = installation.plugin_pod(node) if bound else None
    return installation.cluster.service_account_token(NAMESPACE, account, bound_pod=pod)


def _refusal(action) -> ApiError:  # noqa: ANN001
    with pytest.raises(ApiError) as caught:
        action()
    return caught.value


def test_a_plugin_may_write_only_its_own_nodes_slices(installation: Installation) -> None:
    kube = _as(installation, _plugin_token(installation, "gpu-node-a"), "plugin-a-test")
    error = _refusal(lambda: kube.create(RESOURCE_SLICES, _slice("gpu-node-b", "forged-for-b")))
    assert error.status in (403, 422), error
    assert "the vgpu-dra kubelet plugin on node gpu-node-a may not modify ResourceSlices of node gpu-node-b" \
        in error.message, error.message
    [theirs] = installation.published("gpu-node-b")
    error = _refusal(lambda: kube.delete(RESOURCE_SLICES, theirs["metadata"]["name"]))
    assert "may not modify ResourceSlices of node gpu-node-b" in error.message, error.message
    own = kube.create(RESOURCE_SLICES, _slice("gpu-node-a", "extra-for-a"))
    kube.delete(RESOURCE_SLICES, own["metadata"]["name"])


def _legacy_token(installation: Installation) -> str:
    """A long-lived token Secret of the plugin's ServiceAccount: such tokens carry no extras at all."""
    account = installation.workload("DaemonSet")["spec"]["template"]["spec"]["serviceAccountName"]
    name = f"{account}-legacy-test"
    cluster = installation.cluster
    try:
        cluster.kube.create(SECRETS, {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
                                      "metadata": {"name": name, "annotations": {
                                          "kubernetes.io/service-account.name": account}}}, NAMESPACE)
    except ApiError as exc:
        if not exc.conflict:
            raise
    secret = wait_until(lambda: (cluster.kube.get(SECRETS, name, NAMESPACE).get("data") or {}).get("token"), 30,
                        "the token controller to fill the legacy token Secret")
    return base64.b64decode(secret).decode()


@pytest.mark.parametrize("kind", ["unbound", "legacy"])
def test_a_plugin_token_that_names_no_node_gets_the_policys_own_message(installation: Installation, kind: str) -> None:
    token = _plugin_token(installation, "gpu-node-a", bound=False) if kind == "unbound" else _legacy_token(installation)
    kube = _as(installation, token, f"plugin-{kind}-test")
    error = _refusal(lambda: kube.create(RESOURCE_SLICES, _slice("gpu-node-a", "from-nowhere")))
    assert "token names no node" in error.message, error.message
    assert "fails to evaluate" not in error.message


def _unallocated_claim(installation: Installation, name: str) -> dict:
    return installation.cluster.kube.create(RESOURCE_CLAIMS, {
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim", "metadata": {"name": name},
        "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "vgpu.dra.dev"}}]}}},
        "default")


def test_the_plugin_cannot_allocate_and_the_controller_cannot_publish(installation: Installation) -> None:
    # The plugin may patch claims' status (status.devices, the limits in force), but never write an
    # allocation: the 1.36 API server wants resourceclaims/binding for that, which it lacks.
    plugin = _as(installation, _plugin_token(installation, "gpu-node-a"), "plugin-a-rbac")
    claim = _unallocated_claim(installation, "plugin-may-not-allocate")
    allocation = {"devices": {"results": [{"request": "gpu", "driver": "vgpu.dra.dev", "pool": "gpu-node-a",
                                           "device": "gpu-0"}]},
                  "nodeSelector": {"nodeSelectorTerms": [{"matchFields": [
                      {"key": "metadata.name", "operator": "In", "values": ["gpu-node-a"]}]}]}}
    try:
        error = _refusal(lambda: plugin.patch(RESOURCE_CLAIMS, claim["metadata"]["name"],
                                              {"status": {"allocation": allocation}}, "default", subresource="status"))
        # The API server answers with a field error: status.allocation Forbidden, naming the missing
        # resourceclaims/binding permission.
        assert error.status in (403, 422) and "resourceclaims/binding" in error.message, error
        stored = installation.cluster.kube.get(RESOURCE_CLAIMS, claim["metadata"]["name"], "default")
        assert not (stored.get("status") or {}).get("allocation")
    finally:
        installation.cluster.kube.delete(RESOURCE_CLAIMS, claim["metadata"]["name"], "default")
    if installation.allocator != "controller":
        return  # scheduler mode deploys no controller, so there is no controller identity to check
    account = installation.workload("Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    controller = _as(installation, installation.cluster.service_account_token(NAMESPACE, account), "ctl-rbac")
    error = _refusal(lambda: controller.create(RESOURCE_SLICES, _slice("gpu-node-a", "controller-forged")))
    assert error.status == 403, error
