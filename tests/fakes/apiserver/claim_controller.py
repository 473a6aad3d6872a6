"""What kube-controller-manager's resourceclaim controller does, for tests that want a cluster
that behaves like one without running it (k/k pkg/controller/resourceclaim):

- a pod naming a ResourceClaimTemplate gets a claim generated from it (owned by the pod,
  annotated with the pod's claim name) and `status.resourceClaimStatuses` pointing at it;
- `reservedFor` entries of pods that are gone, replaced (other uid) or finished are dropped;
- a claim left unreserved that carries `resource.kubernetes.io/delete-protection` (the
  scheduler's finalizer) is deallocated and loses that finalizer.

Generated claims go away with their pod through the fake's ownerReference garbage collection.
It runs on its own thread and writes through the store as "system:kube-controller-manager".
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

from .errors import ApiError
from .resources import resource_named
from .store import WriteRecord

USER = "system:kube-controller-manager"
POD_CLAIM_NAME_ANNOTATION = "resource.kubernetes.io/pod-claim-name"
DELETE_PROTECTION_FINALIZER = "resource.kubernetes.io/delete-protection"
_MERGE = "application/merge-patch+json"


class ResourceClaimControllerEmulator:
    """Start with `start()` after the server; `stop()` before it (or use as a context manager)."""

    def __init__(self, server: Any) -> None:
        self._server = server
        self._store = server.store
        self._pods = resource_named("Pod")
        self._claims = resource_named("ResourceClaim")
        self._templates = resource_named("ResourceClaimTemplate")
        self._queue: queue.Queue[tuple[str, str, str] | threading.Event | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        # Failures the emulator could not resolve by retrying, for tests to assert on.
        self.errors: list[str] = []

    def start(self) -> "ResourceClaimControllerEmulator":
        """Subscribe to writes, queue what exists already, start the worker."""
        self._store.add_observer(self._observe)
        for pod in self._store.snapshot(self._pods):
            self._queue.put(("pod", pod["metadata"]["namespace"], pod["metadata"]["name"]))
        for claim in self._store.snapshot(self._claims):
            self._queue.put(("claim", claim["metadata"]["namespace"], claim["metadata"]["name"]))
        self._thread = threading.Thread(target=self._run, name="fake-kube-controller-manager", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the worker and unsubscribe."""
        self._store.remove_observer(self._observe)
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> "ResourceClaimControllerEmulator":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Block until the queue is drained, including work its own writes queued."""
        deadline = time.monotonic() + timeout
        while True:
            done = threading.Event()
            self._queue.put(done)
            if not done.wait(max(0.0, deadline - time.monotonic())):
                raise TimeoutError("the claim controller emulator did not catch up")
            if self._queue.empty():
                return

    # Runs under the store lock: only queue work here.
    def _observe(self, record: WriteRecord) -> None:
        meta = record.obj["metadata"]
        if record.resource is self._pods:
            self._queue.put(("pod", meta["namespace"], meta["name"]))
            if record.type == "DELETED" or (record.obj.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                for claim in self._store.snapshot(self._claims):
                    if claim["metadata"]["namespace"] == meta["namespace"] and any(
                            r.get("uid") == meta["uid"] for r in (claim.get("status") or {}).get("reservedFor") or []):
                        self._queue.put(("claim", meta["namespace"], claim["metadata"]["name"]))
        elif record.resource is self._claims and record.type != "DELETED":
            self._queue.put(("claim", meta["namespace"], meta["name"]))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            kind, namespace, name = item
            for _ in range(5):  # conflicts with other writers: re-read and retry
                try:
                    if kind == "pod":
                        self._sync_pod(namespace, name)
                    else:
                        self._sync_claim(namespace, name)
                    break
                except ApiError as exc:
                    if exc.code == 404:
                        break
                    if exc.code != 409:
                        self.errors.append(f"{kind} {namespace}/{name}: {exc.message}")
                        break
            else:
                self.errors.append(f"{kind} {namespace}/{name}: still conflicting after 5 tries")

    def _sync_pod(self, namespace: str, name: str) -> None:
        pod = self._store.get(self._pods, namespace, name)
        if pod["metadata"].get("deletionTimestamp"):
            return
        statuses = list((pod.get("status") or {}).get("resourceClaimStatuses") or [])
        known = {s.get("name") for s in statuses}
        added = False
        for entry in (pod.get("spec") or {}).get("resourceClaims") or []:
            template_name = entry.get("resourceClaimTemplateName")
            if not template_name or entry["name"] in known:
                continue
            template = self._store.get(self._templates, namespace, template_name)
            claim_name = self._existing_claim(pod, entry["name"]) or self._create_claim(pod, entry["name"], template)
            statuses.append({"name": entry["name"], "resourceClaimName": claim_name})
            added = True
        if added:
            self._store.patch(self._pods, namespace, name, _MERGE, {
                "metadata": {"resourceVersion": pod["metadata"]["resourceVersion"]},
                "status": {"resourceClaimStatuses": statuses}}, "status", user=USER)

    def _existing_claim(self, pod: dict[str, Any], pod_claim_name: str) -> str | None:
        uid = pod["metadata"]["uid"]
        for claim in self._store.snapshot(self._claims):
            meta = claim["metadata"]
            if (meta.get("annotations") or {}).get(POD_CLAIM_NAME_ANNOTATION) == pod_claim_name and any(
                    r.get("uid") == uid for r in meta.get("ownerReferences") or []):
                return meta["name"]
        return None

    def _create_claim(self, pod: dict[str, Any], pod_claim_name: str, template: dict[str, Any]) -> str:
        pod_meta = pod["metadata"]
        template_meta = (template.get("spec") or {}).get("metadata") or {}
        claim = {
            "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
            "metadata": {
                "generateName": f"{pod_meta['name']}-{pod_claim_name}-"[:57],
                "labels": dict(template_meta.get("labels") or {}),
                "annotations": {**(template_meta.get("annotations") or {}),
                                POD_CLAIM_NAME_ANNOTATION: pod_claim_name},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": pod_meta["name"],
                                     "uid": pod_meta["uid"], "controller": True, "blockOwnerDeletion": True}],
            },
            "spec": (template.get("spec") or {}).get("spec") or {},
        }
        created = self._store.create(self._claims, pod_meta["namespace"], claim, user=USER)
        return created["metadata"]["name"]

    def _pod_still_uses(self, namespace: str, ref: dict[str, Any]) -> bool:
        if ref.get("resource") != "pods" or ref.get("apiGroup"):
            return True  # not ours to judge
        try:
            pod = self._store.get(self._pods, namespace, ref.get("name", ""))
        except ApiError:
            return False
        if pod["metadata"]["uid"] != ref.get("uid"):
            return False
        return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")

    def _sync_claim(self, namespace: str, name: str) -> None:
        claim = self._store.get(self._claims, namespace, name)
        status = claim.get("status") or {}
        reserved = status.get("reservedFor") or []
        keep = [r for r in reserved if self._pod_still_uses(namespace, r)]
        rv = claim["metadata"]["resourceVersion"]
        finalizers = claim["metadata"].get("finalizers") or []
        deallocate = not keep and status.get("allocation") and DELETE_PROTECTION_FINALIZER in finalizers
        if len(keep) != len(reserved) or deallocate:
            new_status: dict[str, Any] = {"reservedFor": keep or None}
            if deallocate:
                new_status.update({"allocation": None, "devices": None})
            claim = self._store.patch(self._claims, namespace, name, _MERGE,
                                      {"metadata": {"resourceVersion": rv}, "status": new_status}, "status",
                                      user=USER)
        if deallocate:
            self._store.patch(self._claims, namespace, name, _MERGE, {"metadata": {
                "resourceVersion": claim["metadata"]["resourceVersion"],
                "finalizers": [f for f in finalizers if f != DELETE_PROTECTION_FINALIZER]}}, user=USER)
