"""Two backends for the controller tier's scenarios: the project's fake API server and a real one.

A scenario written against `FakeApiServer`'s test-side methods (`create`, `get`, `delete`,
`update_status`, `events`) runs unchanged on `RealBackend`, which does the same through the real
API server of the real-cluster tier (tests/cluster) with an admin client, so what the fake lets
through but a real server refuses fails a test. Differences a real cluster has and the fake does
not are real behaviour, not something to paper over: kube-scheduler binds pods once the gate is
lifted, kube-controller-manager creates template claims and clears reservations of finished pods,
Nodes need heartbeats (RealBackend keeps the Nodes it creates Ready).

After each scenario `clean()` removes everything it created, so the next one starts from an empty
cluster (default namespace, DeviceClasses, Nodes, ResourceSlices).
"""
from __future__ import annotations

from typing import Any

from tests.cluster.real_cluster import RealCluster, wait_until
from tests.fakes.apiserver.server import RecordedEvent
from vgpu_dra.controller.kubeapi import (DEVICE_CLASSES, EVENTS, NODES, PODS, RESOURCE_CLAIMS, RESOURCE_QUOTAS,
                                         RESOURCE_SLICES, ApiError, Resource)

TEMPLATES = Resource("resource.k8s.io", "v1", "resourceclaimtemplates", True)
_BY_KIND = {"Pod": PODS, "ResourceClaim": RESOURCE_CLAIMS, "ResourceSlice": RESOURCE_SLICES,
            "DeviceClass": DEVICE_CLASSES, "Node": NODES, "ResourceClaimTemplate": TEMPLATES, "Event": EVENTS,
            "ResourceQuota": RESOURCE_QUOTAS}


class RealBackend:
    """The real API server behind the fake's test-side interface."""

    name = "real"

    def __init__(self, cluster: RealCluster):
        self.cluster = cluster
        self.kube = cluster.kube
        self._nodes: set[str] = set()

    def client(self, user: str | None = None) -> Any:
        """An ApiClient for a component (the admin's identity: RBAC is the chart tests' concern)."""
        del user
        return self.cluster.api_client()

    def create(self, obj: dict[str, Any], user: str = "test", **_: Any) -> dict[str, Any]:
        """Create `obj`; a Node is created Ready and kept Ready; status in `obj` is written too,
        as the fake stores it on create."""
        del user
        kind = obj["kind"]
        if kind == "Node":
            meta = obj["metadata"]
            self.cluster.nodes.add(meta["name"], meta.get("labels") or {}, taints=(obj.get("spec") or {}).get("taints"))
            self._nodes.add(meta["name"])
            return self.kube.get(NODES, meta["name"])
        resource = _BY_KIND[kind]
        namespace = obj["metadata"].get("namespace", "default") if resource.namespaced else None
        created = self.kube.create(resource, obj, namespace)
        if obj.get("status") and kind in ("ResourceClaim", "Pod"):
            created = self.kube.patch(resource, created["metadata"]["name"], {"status": obj["status"]}, namespace,
                                      subresource="status")
        return created

    def get(self, kind: str, name: str, namespace: str = "") -> dict[str, Any] | None:
        """The object, or None."""
        resource = _BY_KIND[kind]
        try:
            return self.kube.get(resource, name, (namespace or "default") if resource.namespaced else None)
        except ApiError as exc:
            if exc.not_found:
                return None
            raise

    def objects(self, kind: str, namespace: str | None = None, **_: Any) -> list[dict[str, Any]]:
        """Every object of `kind` (in `namespace`)."""
        resource = _BY_KIND[kind]
        return self.kube.list(resource, namespace if resource.namespaced else None).get("items") or []

    def update_status(self, obj: dict[str, Any], user: str = "test") -> dict[str, Any]:
        """PUT the status subresource, as another component (kube-scheduler) would."""
        del user
        resource = _BY_KIND[obj["kind"]]
        return self.kube.update(resource, obj, subresource="status")

    def delete(self, kind: str, name: str, namespace: str = "", user: str = "test") -> None:
        """Delete (pods at once, as their kubelet would confirm)."""
        del user
        resource = _BY_KIND[kind]
        try:
            self.kube.delete(resource, name, (namespace or "default") if resource.namespaced else None,
                             grace_period_s=0 if kind == "Pod" else None)
        except ApiError as exc:
            if not exc.not_found:
                raise

    def events(self) -> list[RecordedEvent]:
        """Events of the default namespace, oldest first, reduced like the fake's."""
        items = self.kube.list(EVENTS, "default").get("items") or []
        out = []
        for obj in sorted(items, key=lambda e: int(e["metadata"]["resourceVersion"])):
            ref = obj.get("involvedObject") or {}
            out.append(RecordedEvent(obj.get("type", ""), obj.get("reason", ""), obj.get("message", ""),
                                     ref.get("kind", ""), ref.get("name", ""), ref.get("namespace", ""),
                                     obj.get("reportingComponent") or (obj.get("source") or {}).get("component", ""),
                                     int(obj.get("count") or 1)))
        return out

    def clean(self) -> None:
        """Remove what the scenarios create: pods, claims (finalizers first), templates and events
        of the default namespace, DeviceClasses, ResourceSlices and the Nodes made here."""
        kube = self.kube
        for item in kube.list(PODS, "default").get("items") or []:
            self.delete("Pod", item["metadata"]["name"], "default")
        for item in kube.list(RESOURCE_CLAIMS, "default").get("items") or []:
            name = item["metadata"]["name"]
            if item["metadata"].get("finalizers"):
                self._drop_finalizers(name)
            _ignore_missing(lambda name=name: kube.delete(RESOURCE_CLAIMS, name, "default"))
        for resource, namespace in ((TEMPLATES, "default"), (EVENTS, "default"), (RESOURCE_QUOTAS, "default"),
                                    (DEVICE_CLASSES, None),
                                    (RESOURCE_SLICES, None)):
            for item in kube.list(resource, namespace).get("items") or []:
                _ignore_missing(lambda item=item, resource=resource, namespace=namespace: kube.delete(
                    resource, item["metadata"]["name"], namespace))
        for name in sorted(self._nodes):
            self.cluster.nodes.remove(name)
        self._nodes.clear()
        wait_until(lambda: not (kube.list(PODS, "default").get("items") or kube.list(RESOURCE_CLAIMS, "default").get("items")),
                   60, "the scenario's pods and claims gone")


    def _drop_finalizers(self, name: str) -> None:
        # This client sent the claim (json.dumps spacing): a PUT of it re-encodes those bytes,
        # where a patch would re-encode them compact and be refused as a spec change.
        for _ in range(10):
            item = self.get("ResourceClaim", name, "default")
            if item is None or not item["metadata"].get("finalizers"):
                return
            item["metadata"]["finalizers"] = None
            try:
                self.kube.update(RESOURCE_CLAIMS, item)
                return
            except ApiError as exc:
                if not exc.conflict:
                    raise
        raise AssertionError(f"could not remove the finalizers of claim {name}")


def _ignore_missing(action: Any) -> None:
    try:
        action()
    except ApiError as exc:
        if not exc.not_found:
            raise


def client_for(server: Any, user: str | None = None) -> Any:
    """An ApiClient for `server` (either backend)."""
    if isinstance(server, RealBackend):
        return server.client(user)
    from tests.fakes.kubeconfig import api_client_for
    return api_client_for(server, user=user)

