"""The end-to-end scenario on a real cluster: examples/ applied, the real kube-scheduler binding.

This process plays two parts of vgpu-dra: the allocation controller (`ControllerService`) and the
kubelet plugin of one node (`KubeletPlugin`, GPUs from the fake NVML). It then plays the kubelet of
that node: NodePrepareResources over the plugin's socket for every bound pod's claims, checking the
CDI spec and the limits written for the shim, then NodeUnprepareResources.

Everything is created under a fresh namespace ``vgpu-e2e-<random>`` (DeviceClasses are cluster
wide: the ones that did not exist are created and removed again) and cleaned up at the end; with
fake nodes, a Node named ``e2e-<random>`` is created and deleted.
"""
from __future__ import annotations

import copy
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from vgpu_dra.api.names import SCHEDULING_GATE
from vgpu_dra.controller.allocation_term import TermSettings
from vgpu_dra.controller.kubeapi import (DEVICE_CLASSES, NODES, PODS, RESOURCE_CLAIMS, RESOURCE_SLICES, ApiError,
                                         KubeApi, Resource)
from vgpu_dra.controller.service import ControllerService, LeaderSettings

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
NAMESPACES = Resource("", "v1", "namespaces", False)
CLAIM_TEMPLATES = Resource("resource.k8s.io", "v1", "resourceclaimtemplates", True)
UNHEALTHY_NODE_TOLERATIONS = [
    {"key": key, "operator": "Exists", "effect": effect}
    for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")
    for effect in ("NoSchedule", "NoExecute")
]


def wait_until(condition: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.5) -> Any:
    """The first truthy value of `condition()`, or AssertionError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(interval_s)


def load_documents(folder: Path) -> list[dict[str, Any]]:
    """Every YAML document of the folder's files, sorted by file name."""
    documents = []
    for path in sorted(folder.glob("*.yaml")):
        documents += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return documents


def pod_from_workload(workload: dict[str, Any], namespace: str, node: str, *, tolerate_unhealthy: bool) -> dict[str, Any]:
    """The pod a Deployment of examples/workloads would create, pinned to the e2e node and held by
    the controller's scheduling gate (so kube-scheduler's first look is after the allocation)."""
    template = copy.deepcopy(workload["spec"]["template"])
    spec = template["spec"]
    spec["nodeSelector"] = {**(spec.get("nodeSelector") or {}), "kubernetes.io/hostname": node}
    spec["schedulingGates"] = [{"name": SCHEDULING_GATE}]
    spec["terminationGracePeriodSeconds"] = 0
    if tolerate_unhealthy:
        spec["tolerations"] = [*(spec.get("tolerations") or []), *UNHEALTHY_NODE_TOLERATIONS]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{workload['metadata']['name']}-e2e", "namespace": namespace,
                         "labels": template.get("metadata", {}).get("labels", {})},
            "spec": spec}


def fake_node(name: str) -> dict[str, Any]:
    """A Node object standing for a GPU node whose kubelet this test plays."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    resources = {"cpu": "16", "memory": "64Gi", "pods": "110"}
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                                  "vgpu.dra.dev/e2e": "true"}},
            "status": {"capacity": resources, "allocatable": resources,
                       "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                       "message": "vgpu-dra e2e node (the test plays its kubelet)",
                                       "lastHeartbeatTime": now, "lastTransitionTime": now}]}}


@dataclass
class E2ECluster:
    """What the scenario created, for checks and cleanup."""

    kube: KubeApi
    namespace: str
    node: str
    created_classes: list[str] = field(default_factory=list)
    created_node: bool = False
    pods: list[str] = field(default_factory=list)

    def claims_of(self, pod_name: str) -> list[dict[str, Any]]:
        """The ResourceClaims a pod uses (template claims through its status)."""
        pod = self.kube.get(PODS, pod_name, self.namespace)
        names = [s["resourceClaimName"] for s in (pod.get("status") or {}).get("resourceClaimStatuses") or []
                 if s.get("resourceClaimName")]
        names += [c["resourceClaimName"] for c in pod["spec"].get("resourceClaims") or [] if c.get("resourceClaimName")]
        return [self.kube.get(RESOURCE_CLAIMS, name, self.namespace) for name in names]


def _ignore_missing(action: Callable[[], Any]) -> None:
    try:
        action()
    except ApiError as exc:
        if not exc.not_found:
            raise


@contextmanager
def e2e_cluster(kube: KubeApi, *, node: str | None, make_fake_node: bool) -> Iterator[E2ECluster]:
    """Namespace, DeviceClasses, claim templates and (optionally) a fake node; removed afterwards."""
    suffix = uuid.uuid4().hex[:6]
    namespace = f"vgpu-e2e-{suffix}"
    cluster = E2ECluster(kube, namespace, node or f"e2e-{suffix}")
    kube.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    try:
        if make_fake_node:
            created = kube.create(NODES, fake_node(cluster.node))
            cluster.created_node = True
            # Some API servers drop status on create: set it through the status subresource too.
            kube.update(NODES, {**created, "status": fake_node(cluster.node)["status"]}, subresource="status")
        for device_class in load_documents(EXAMPLES / "deviceclasses"):
            name = device_class["metadata"]["name"]
            try:
                kube.get(DEVICE_CLASSES, name)
            except ApiError as exc:
                if not exc.not_found:
                    raise
                kube.create(DEVICE_CLASSES, device_class)
                cluster.created_classes.append(name)
        for template in load_documents(EXAMPLES / "claims"):
            template["metadata"]["namespace"] = namespace
            kube.create(CLAIM_TEMPLATES, template, namespace)
        yield cluster
    finally:
        cleanup(cluster)


def cleanup(cluster: E2ECluster, timeout_s: float = 120.0) -> None:
    """Delete what the scenario made; claims go first while the controller still runs (its
    finalizer must come off), then the namespace, classes and node."""
    kube = cluster.kube
    for pod in cluster.pods:
        _ignore_missing(lambda pod=pod: kube.delete(PODS, pod, cluster.namespace, grace_period_s=0))
    try:
        wait_until(lambda: not kube.list(RESOURCE_CLAIMS, cluster.namespace).get("items"), timeout_s,
                   "the scenario's claims to be deleted (generated claims go with their pods)")
    finally:
        _ignore_missing(lambda: kube.delete(NAMESPACES, cluster.namespace))
        for name in cluster.created_classes:
            _ignore_missing(lambda name=name: kube.delete(DEVICE_CLASSES, name))
        if cluster.created_node:
            for item in kube.list(RESOURCE_SLICES).get("items") or []:
                if (item.get("spec") or {}).get("nodeName") == cluster.node:
                    _ignore_missing(lambda item=item: kube.delete(RESOURCE_SLICES, item["metadata"]["name"]))
            _ignore_missing(lambda: kube.delete(NODES, cluster.node))


@contextmanager
def controller_running(api_client: Any, *, leader_elect: bool) -> Iterator[ControllerService]:
    """The allocation controller on a thread of this process."""
    # Campaign for the deployed controller's Lease when there is one (VGPU_E2E_LEASE_NAMESPACE /
    # _NAME), so the two never both allocate.
    lease = LeaderSettings(enabled=leader_elect, identity=f"vgpu-e2e-{uuid.uuid4().hex[:6]}",
                           namespace=os.environ.get("VGPU_E2E_LEASE_NAMESPACE", "kube-system"),
                           name=os.environ.get("VGPU_E2E_LEASE_NAME", "vgpu-dra-controller"))
    service = ControllerService(api_client, TermSettings(retry_refused_after_s=5.0, watch_timeout_s=30), lease)
    stop = threading.Event()
    thread = threading.Thread(target=service.run, args=(stop,), name="e2e-controller", daemon=True)
    thread.start()
    try:
        yield service
    finally:
        stop.set()
        thread.join(timeout=30)
