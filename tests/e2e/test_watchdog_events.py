"""The usage watchdog's Events, written the way the plugin writes them, under the plugin's own
ServiceAccount token against the real API server with the chart's RBAC: on claims and pods in a
tenant's namespace (not only where Node events go), and nothing beyond creating Events."""
from __future__ import annotations

import pytest

from tests.e2e.install import NAMESPACE, Installation
from tests.e2e.test_identities import _as, _plugin_token, _refusal
from vgpu_dra.controller.kubeapi import Resource
from vgpu_dra.kubeletplugin.object_events import ObjectRef, post_event

pytestmark = pytest.mark.e2e
EVENTS = Resource("", "v1", "events", True)
TENANT = "team-watchdog"


def test_the_plugins_token_may_write_watchdog_events_on_a_tenants_claim_and_pod(installation: Installation) -> None:
    if installation.allocator == "scheduler":
        pytest.skip("the plugin's RBAC is the same in both allocator modes; checked in controller mode")
    cluster = installation.cluster
    cluster.kubectl("create", "namespace", TENANT, check=False)
    token = _plugin_token(installation, "gpu-node-a")
    api = cluster.api_client(cluster.kubeconfig_with_token(token, "plugin-a-watchdog"))
    claim = ObjectRef("resource.k8s.io/v1", "ResourceClaim", TENANT, "worker-claim", "6c3a9e2e-0000-4000-8000-1")
    pod = ObjectRef("v1", "Pod", TENANT, "worker-pod", "6c3a9e2e-0000-4000-8000-2")
    for regarding in (claim, pod):
        assert post_event(api, "gpu-node-a", regarding, "GpuMemoryOverWall", "claim uses more than its wall")
    stored = cluster.kubectl("get", "events", "-n", TENANT, "-o",
                             "jsonpath={range .items[*]}{.involvedObject.kind}/{.reason};{end}").stdout
    assert stored.count("ResourceClaim/GpuMemoryOverWall") == 1 and stored.count("Pod/GpuMemoryOverWall") == 1
    kube = _as(installation, token, "plugin-a-watchdog-reader")
    error = _refusal(lambda: kube.list(EVENTS, namespace=TENANT))
    assert error.status == 403, error  # create only: it never reads other components' Events
    assert NAMESPACE != TENANT
