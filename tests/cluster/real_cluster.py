"""The real cluster a test of this tier talks to, and what a test needs from it.

Either the control plane started here (`control_plane.ControlPlane`) or a user's cluster named by a
kubeconfig. Tests reach it through the real `kubernetes` client (`kube`, raw JSON as the product
does) and the real `kubectl`, and get credentials the way the product's components do: tokens of
ServiceAccounts (TokenRequest, optionally bound to a pod, which makes a node-bound identity) and
node client certificates.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import config as kube_config

from tests.controller.waiting import wait_for
from vgpu_dra.controller.informer import Informer
from vgpu_dra.controller.kubeapi import NODES, PODS, ApiError, JsonObject, KubeApi, Resource

from .control_plane import ControlPlane, write_kubeconfig

NAMESPACES = Resource("", "v1", "namespaces", False)
NODE_LEASES = Resource("coordination.k8s.io", "v1", "leases", True)
SERVICE_ACCOUNTS = Resource("", "v1", "serviceaccounts", True)
NODE_LEASE_NAMESPACE = "kube-node-lease"
HEARTBEAT_S = 10.0
POD_SWEEP_S = 2.0


def now_rfc3339(micro: bool = False) -> str:
    """The current time as the API server writes it."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


def wait_until(condition: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.2) -> Any:
    """The first truthy value of `condition()`; AssertionError naming `what` after `timeout_s`."""
    return wait_for(condition, timeout_s=timeout_s, interval_s=interval_s, what=what)


def node_object(name: str, labels: Mapping[str, str], taints: Iterable[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """A Ready Node that no kubelet runs (the test tier plays its kubelet)."""
    stamp = now_rfc3339()
    resources = {"cpu": "16", "memory": "64Gi", "pods": "250"}
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                                  "kubernetes.io/arch": "amd64", "vgpu.dra.dev/test-node": "true",
                                                  **labels}},
            "spec": {"taints": [dict(t) for t in taints]} if taints else {},
            "status": {"capacity": resources, "allocatable": resources,
                       "conditions": [_ready(stamp, stamp)]}}


def _ready(heartbeat: str, transition: str) -> dict[str, str]:
    return {"type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "vgpu-dra test node: the test tier plays its kubelet",
            "lastHeartbeatTime": heartbeat, "lastTransitionTime": transition}


class NodeKeeper:
    """Plays the kubelets of the test's Nodes: creates them, renews each node's Lease and Ready
    condition every 10 s (so the node lifecycle controller never marks them unreachable), and
    removes deleted pods bound to them, as a kubelet does once their containers stopped.

    Bound pods are watched, as kubelets watch theirs, not listed: a list of every pod twice a
    second cost the API server and this process (whose threads time the benchmarks) more than
    anything the tests measure, and grew with every pod a test created."""

    def __init__(self, kube: KubeApi):
        self.kube = kube
        self._nodes: dict[str, str] = {}  # name → Ready's lastTransitionTime
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pods = Informer(kube, PODS, self._on_pod, name="node-keeper-pods", field_selector="spec.nodeName!=",
                              transform=_reap_view)
        self._pod_thread = threading.Thread(target=self._pods.run, args=(self._stop,), name="node-keeper-pods",
                                            daemon=True)
        self._pod_thread.start()
        self._thread = threading.Thread(target=self._run, name="node-keeper", daemon=True)
        self._thread.start()

    def add(self, name: str, labels: Mapping[str, str] | None = None,
            taints: Iterable[Mapping[str, Any]] | None = None) -> None:
        """Create Node `name` (Ready, with `taints`) and its Lease; replaces a leftover of the same name."""
        try:
            self.kube.delete(NODES, name)
        except ApiError as exc:
            if not exc.not_found:
                raise
        wait_until(lambda: self._gone(name), 30, f"old node {name} gone")
        # A Lease left by an earlier Node of this name is owned by that Node and will be garbage
        # collected; renewing it would leave the new Node without a heartbeat (tainted unreachable).
        self._delete_lease(name)
        created = self.kube.create(NODES, node_object(name, labels or {}, taints or ()))
        status = node_object(name, labels or {})["status"]
        self.kube.patch(NODES, name, {"status": status}, subresource="status")
        # The API server's admission taints a new Node not-ready until the node lifecycle
        # controller sees it Ready (seconds later); a kubelet-run node is Ready from its first
        # status, so drop the taint now as that controller would.
        self.kube.patch(NODES, name, {"spec": {"taints": [dict(t) for t in taints or ()] or None}})
        with self._lock:
            self._nodes[name] = status["conditions"][0]["lastTransitionTime"]
        self._renew(name, created)

    def _gone(self, name: str) -> bool:
        try:
            self.kube.get(NODES, name)
        except ApiError as exc:
            if exc.not_found:
                return True
            raise
        return False

    def remove(self, name: str) -> None:
        """Stop keeping `name` and delete it with its Lease."""
        with self._lock:
            self._nodes.pop(name, None)
        try:
            self.kube.delete(NODES, name)
        except ApiError as exc:
            if not exc.not_found:
                raise
        self._delete_lease(name)

    def _delete_lease(self, name: str) -> None:
        try:
            self.kube.delete(NODE_LEASES, name, NODE_LEASE_NAMESPACE)
        except ApiError as exc:
            if not exc.not_found:
                raise

    def _renew(self, name: str, node: Mapping[str, Any] | None = None) -> None:
        with self._lock:
            transition = self._nodes.get(name)
        if transition is None:
            return
        stamp = now_rfc3339()
        self.kube.patch(NODES, name, {"status": {"conditions": [_ready(stamp, transition)]}},
                        subresource="status", patch_type="application/strategic-merge-patch+json")
        lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                 "metadata": {"name": name, "namespace": NODE_LEASE_NAMESPACE},
                 "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now_rfc3339(True)}}
        try:
            self.kube.patch(NODE_LEASES, name, {"spec": lease["spec"]}, NODE_LEASE_NAMESPACE)
        except ApiError as exc:
            if not exc.not_found:
                raise
            if node is not None:
                lease["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "Node", "name": name,
                                                         "uid": node["metadata"]["uid"]}]
            self.kube.create(NODE_LEASES, lease, NODE_LEASE_NAMESPACE)

    def _run(self) -> None:
        last_beat = time.monotonic()
        while not self._stop.wait(POD_SWEEP_S):
            # The watch handler finishes pods as they are deleted; the sweep catches a pod deleted
            # before its node was added here, or whose delete failed.
            for pod in self._pods.items():
                self._finish_if_deleted(pod)
            if time.monotonic() - last_beat < HEARTBEAT_S:
                continue
            last_beat = time.monotonic()
            with self._lock:
                names = list(self._nodes)
            for name in names:
                try:
                    self._renew(name)
                except ApiError:
                    pass  # the next beat tries again; a test that needs the node notices its taint

    def _on_pod(self, key: str, old: JsonObject | None, new: JsonObject | None) -> None:
        if new is not None:
            self._finish_if_deleted(new)

    def _finish_if_deleted(self, pod: JsonObject) -> None:
        """What a kubelet does for a deleted pod once its containers stopped: remove it for good
        (without a kubelet a bound pod would stay Terminating forever)."""
        meta = pod["metadata"]
        with self._lock:
            ours = pod["spec"].get("nodeName") in self._nodes
        if not (meta.get("deletionTimestamp") and ours):
            return
        try:
            self.kube.delete(PODS, meta["name"], meta["namespace"], grace_period_s=0)
        except ApiError:
            pass  # gone already (404), or the next sweep tries again

    def stop(self) -> None:
        """Stop the heartbeats and the pod watch (the nodes stay)."""
        self._stop.set()
        self._pods.close()
        self._thread.join(timeout=5)
        self._pod_thread.join(timeout=5)


def _reap_view(pod: JsonObject) -> JsonObject:
    """What the keeper reads of a pod (a test's thousands of pods stay small here)."""
    meta = pod.get("metadata") or {}
    return {"metadata": {k: meta[k] for k in ("name", "namespace", "resourceVersion", "deletionTimestamp", "uid")
                         if k in meta},
            "spec": {"nodeName": (pod.get("spec") or {}).get("nodeName")}}


@dataclass
class RealCluster:
    """A real API server, with an admin client, kubectl, and node heartbeats."""

    kubeconfig: Path
    kubectl_path: Path
    folder: Path
    control_plane: ControlPlane | None = None
    kube: KubeApi = field(init=False)
    nodes: NodeKeeper = field(init=False)

    def __post_init__(self) -> None:
        self.kube = KubeApi(self.api_client())
        self.nodes = NodeKeeper(self.kube)
        # Pods are refused until kube-controller-manager made the namespace's default ServiceAccount.
        wait_until(lambda: self._exists(SERVICE_ACCOUNTS, "default", "default"), 60,
                   "the default namespace's ServiceAccount")

    def api_client(self, kubeconfig: Path | None = None) -> Any:
        """A `kubernetes` ApiClient for `kubeconfig` (default: the admin's)."""
        client = kube_config.new_client_from_config(config_file=str(kubeconfig or self.kubeconfig))
        client.configuration.connection_pool_maxsize = 32
        return client

    @property
    def server(self) -> str:
        return self.api_client().configuration.host

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                kubeconfig: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl; on failure (with `check`) raise with its output."""
        result = subprocess.run([str(self.kubectl_path), "--kubeconfig", str(kubeconfig or self.kubeconfig), *args],
                                input=input, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}")
        return result

    def create_namespace(self, name: str) -> None:
        """Create namespace `name` (and wait for its default ServiceAccount, which pods need)."""
        self.kube.create(NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        wait_until(lambda: self._exists(SERVICE_ACCOUNTS, "default", name), 30, f"default ServiceAccount in {name}")

    def _exists(self, resource: Resource, name: str, namespace: str | None = None) -> bool:
        try:
            self.kube.get(resource, name, namespace)
        except ApiError as exc:
            if exc.not_found:
                return False
            raise
        return True

    def delete_namespace(self, name: str) -> None:
        """Delete namespace `name` without waiting."""
        try:
            self.kube.delete(NAMESPACES, name)
        except ApiError as exc:
            if not exc.not_found:
                raise

    def service_account_token(self, namespace: str, name: str, *, bound_pod: Mapping[str, Any] | None = None,
                              seconds: int = 3600) -> str:
        """A token of ServiceAccount namespace/name from the TokenRequest API, as a projected
        volume gives a pod. Bound to `bound_pod` (a pod object) the token carries the pod's node
        as `authentication.kubernetes.io/node-name`: the identity the kubelet plugin has."""
        spec: dict[str, Any] = {"audiences": [], "expirationSeconds": seconds}
        if bound_pod is not None:
            spec["boundObjectRef"] = {"kind": "Pod", "apiVersion": "v1", "name": bound_pod["metadata"]["name"],
                                      "uid": bound_pod["metadata"]["uid"]}
        answer = self.kube._request("POST", SERVICE_ACCOUNTS.path(namespace, name, "token"),
                                    body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                          "spec": spec})
        return answer["status"]["token"]

    def kubeconfig_with_token(self, token: str, name: str) -> Path:
        """A kubeconfig file for this cluster that authenticates with `token`."""
        client = self.api_client()
        ca = client.configuration.ssl_ca_cert
        path = self.folder / f"{name}.kubeconfig"
        return write_kubeconfig(path, client.configuration.host, Path(ca) if ca else Path(""), token=token, user=name)

    def node_kubeconfig(self, node: str) -> Path:
        """A kubeconfig with node `node`'s own identity (user system:node:<node>, group
        system:nodes), as its kubelet has; only with the control plane started here."""
        if self.control_plane is None:
            raise RuntimeError("node identities need the control plane started by the tests")
        pki = self.control_plane.pki
        cert = pki.client_cert(f"node-{node}", f"system:node:{node}", ("system:nodes",))
        return write_kubeconfig(self.folder / f"node-{node}.kubeconfig", self.control_plane.server, pki.ca,
                                cert=cert, user=f"system:node:{node}")

    def delete_all(self, resource: Resource, names: Iterable[str], namespace: str | None = None) -> None:
        """Delete each named object, ignoring those already gone."""
        for name in names:
            try:
                self.kube.delete(resource, name, namespace, grace_period_s=0)
            except ApiError as exc:
                if not exc.not_found:
                    raise

    def close(self) -> None:
        """Stop heartbeats and, when started here, the control plane."""
        self.nodes.stop()
        if self.control_plane is not None:
            self.control_plane.stop()
        if not os.environ.get("VGPU_KEEP_CLUSTER_LOGS"):
            shutil.rmtree(self.folder, ignore_errors=True)
