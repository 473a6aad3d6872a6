"""Publishes this node's GPUs as ResourceSlices and keeps them published.

One pool named after the node, owned by the Node object (so slices go away with the node),
split into slices by ``driver/devices.build_slices``. Slice names are deterministic
(``<node>-<driver>-<index>``), so a restart updates instead of duplicating. The pool generation
goes up on every publish that changes anything; a watch on the node's slices republishes when
something else (the kubelet wiping slices at its start, an admin) deletes or edits them.

A server with consumable capacity disabled silently drops ``allowMultipleAllocations`` and the
capacity request policies: the publisher notices in the server's answer, logs it once, and goes
on publishing plain devices (the controller allocator works without them).
"""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

import structlog
from kubernetes import client
from kubernetes.client.rest import ApiException

from vgpu_dra.driver.devices import build_slices
from vgpu_dra.driver.inventory import NodeInventory
from vgpu_dra.kubeletplugin.node_object import read_node

log = structlog.get_logger(__name__)

JsonObject = dict[str, Any]


class PublishError(RuntimeError):
    """The slices could not be written; the message names the slice and the server's reason."""


@dataclass
class _Published:
    desired: list[JsonObject]
    generation: int
    resource_versions: dict[str, str]


def dropped_fields(sent: JsonObject, stored: JsonObject) -> list[str]:
    """Fields of our devices that the server did not keep (feature gate off on the server)."""
    stored_devices = {d.get("name"): d for d in (stored.get("devices") or ())}
    dropped: set[str] = set()
    for device in sent.get("devices") or ():
        kept = stored_devices.get(device["name"], {})
        if device.get("allowMultipleAllocations") and not kept.get("allowMultipleAllocations"):
            dropped.add("allowMultipleAllocations")
        for name, capacity in (device.get("capacity") or {}).items():
            kept_capacity = (kept.get("capacity") or {}).get(name)
            if kept_capacity is None:
                dropped.add("capacity")
            elif capacity.get("requestPolicy") and not kept_capacity.get("requestPolicy"):
                dropped.add("capacity.requestPolicy")
    return sorted(dropped)


def taints_dropped(sent: JsonObject, stored: JsonObject) -> bool:
    """Whether the server kept none of the taints we sent on some device (DRADeviceTaints off)."""
    stored_devices = {d.get("name"): d for d in (stored.get("devices") or ())}
    return any(device.get("taints") and not (stored_devices.get(device["name"]) or {}).get("taints")
               for device in sent.get("devices") or ())


class SlicePublisher:
    """Reconciles the node's ResourceSlices with its inventory."""

    def __init__(self, api_client: client.ApiClient, node_name: str, driver_name: str,
                 inventory: NodeInventory, *, max_devices_per_slice: int = 128,
                 allow_multiple_allocations: bool = True, request_timeout: float = 10.0):
        self._api = client.ResourceV1Api(api_client)
        self._api_client = api_client
        self.node_name = node_name
        self.driver_name = driver_name
        self._inventory = inventory
        self._max = max_devices_per_slice
        self.allow_multiple_allocations = allow_multiple_allocations
        self._timeout = request_timeout
        self._lock = threading.RLock()
        self._published: _Published | None = None
        self._node_uid: str | None = None
        self._warned_dropped = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watch_response: Any = None
        self._list_version = ""
        self._taints: dict[str, list[JsonObject]] = {}
        self._warned_taints = False

    @property
    def field_selector(self) -> str:
        """Selects this node's slices of this driver."""
        return f"spec.nodeName={self.node_name},spec.driver={self.driver_name}"

    def slice_name(self, index: int) -> str:
        """Deterministic slice name."""
        return f"{self.node_name}-{self.driver_name}-{index}"

    def set_inventory(self, inventory: NodeInventory) -> None:
        """Use a new inventory; the next sync publishes it if it changed anything."""
        with self._lock:
            self._inventory = inventory

    def set_taints(self, taints: dict[str, list[JsonObject]]) -> None:
        """Device taints to publish (device name → ``taints[]``); the next sync writes them."""
        with self._lock:
            self._taints = {name: list(entries) for name, entries in taints.items()}

    # ---- reconcile -----------------------------------------------------------------------------
    def _owner(self) -> JsonObject:
        if self._node_uid is None:
            self._node_uid = read_node(self._api_client, self.node_name, self._timeout)["metadata"]["uid"]
        return {"apiVersion": "v1", "kind": "Node", "name": self.node_name, "uid": self._node_uid,
                "controller": True}

    def _existing(self) -> tuple[dict[str, JsonObject], str]:
        response = self._api.list_resource_slice(field_selector=self.field_selector, _preload_content=False,
                                                 _request_timeout=self._timeout)
        listed = json.loads(response.data)
        items = {item["metadata"]["name"]: item for item in listed.get("items") or ()}
        return items, listed.get("metadata", {}).get("resourceVersion", "")

    def _desired(self, generation: int) -> list[JsonObject]:
        return build_slices(self._inventory, generation=generation,
                            allow_multiple_allocations=self.allow_multiple_allocations,
                            max_devices_per_slice=self._max, taints=self._taints)

    def sync(self) -> bool:
        """Publish if anything differs from what we last wrote; True when slices were written."""
        with self._lock:
            existing, version = self._existing()
            # The watch starts from this list, before our writes: a deletion racing with the
            # publish is then still seen as an event (our own writes are recognised and ignored).
            self._list_version = version
            desired = self._desired(0)
            published = self._published
            if published is not None and _same(published.desired, desired) and \
                    set(existing) == set(published.resource_versions) and \
                    all(existing[n]["metadata"].get("resourceVersion") == rv
                        for n, rv in published.resource_versions.items()):
                return False
            known = [int((s.get("spec", {}).get("pool") or {}).get("generation", 0)) for s in existing.values()]
            generation = max([published.generation if published else 0, *known]) + 1
            self._publish(existing, generation)
            return True

    def _publish(self, existing: dict[str, JsonObject], generation: int) -> None:
        desired = self._desired(generation)
        owner = self._owner()
        versions: dict[str, str] = {}
        for index, spec in enumerate(desired):
            name = self.slice_name(index)
            body = {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
                    "metadata": {"name": name, "ownerReferences": [owner]}, "spec": spec}
            stored = self._write(name, body, existing.get(name))
            versions[name] = stored["metadata"]["resourceVersion"]
            dropped = dropped_fields(spec, stored.get("spec") or {})
            if taints_dropped(spec, stored.get("spec") or {}) and not self._warned_taints:
                self._warned_taints = True
                log.warning("the API server dropped the device taints of our ResourceSlice: DRADeviceTaints is off "
                            "there, so neither kube-scheduler nor the vgpu-dra controller sees that the GPU is unhealthy; "
                            "enable the feature gate on the API server",
                            slice=name)
            if dropped and self.allow_multiple_allocations:
                if not self._warned_dropped:
                    log.warning("the API server dropped fields of our ResourceSlice: consumable capacity is off "
                                "there; publishing plain devices (controller allocation keeps working)",
                                slice=name, dropped=dropped)
                    self._warned_dropped = True
                self.allow_multiple_allocations = False
                # Write again without the fields, so what is stored is exactly what we mean.
                return self._publish(self._existing()[0], generation + 1)
        for name in sorted(set(existing) - set(versions)):
            try:
                self._api.delete_resource_slice(name, _request_timeout=self._timeout)
            except ApiException as exc:
                if exc.status != 404:
                    raise PublishError(f"cannot delete stale slice {name}: HTTP {exc.status} {exc.reason}") from None
        self._published = _Published(desired=self._desired(0), generation=generation, resource_versions=versions)
        log.info("published resource slices", node=self.node_name, generation=generation, slices=len(desired),
                 devices=sum(len(s["devices"]) for s in desired))

    def _write(self, name: str, body: JsonObject, current: JsonObject | None) -> JsonObject:
        try:
            if current is None:
                response = self._api.create_resource_slice(body, _preload_content=False,
                                                           _request_timeout=self._timeout)
            else:
                body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                response = self._api.replace_resource_slice(name, body, _preload_content=False,
                                                            _request_timeout=self._timeout)
        except ApiException as exc:
            raise PublishError(f"cannot write slice {name}: HTTP {exc.status} {_reason(exc)}") from None
        return json.loads(response.data)

    # ---- keep published ------------------------------------------------------------------------
    def start(self, retry_seconds: float = 2.0, watch_seconds: int = 60) -> None:
        """Publish, then watch this node's slices in a thread and republish when needed."""
        self._thread = threading.Thread(target=self._run, args=(retry_seconds, watch_seconds),
                                        name="slice-publisher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the watch thread (the slices stay: the kubelet removes them when the plugin is gone)."""
        self._stop.set()
        response = self._watch_response
        if response is not None:
            try:
                response.shutdown() if hasattr(response, "shutdown") else response.close()
            except Exception:  # noqa: BLE001 - closing a socket another thread reads
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self, retry_seconds: float, watch_seconds: int) -> None:
        while not self._stop.is_set():
            try:
                self.sync()
                self._watch(watch_seconds)
            except Exception as exc:  # noqa: BLE001 - keep publishing whatever went wrong
                if self._stop.is_set():
                    return
                log.warning("resource slice publishing failed; retrying", error=str(exc))
                self._stop.wait(retry_seconds)

    def _watch(self, watch_seconds: int) -> None:
        version = self._list_version
        response = self._api.list_resource_slice(
            field_selector=self.field_selector, watch=True, resource_version=version,
            allow_watch_bookmarks=True, timeout_seconds=watch_seconds, _preload_content=False,
            _request_timeout=watch_seconds + 10)
        self._watch_response = response
        buffer = b""
        try:
            for chunk in response.stream(4096, decode_content=False):
                if self._stop.is_set():
                    return
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip() and self._handle(json.loads(line)):
                        return  # resync: list again, then watch from the new version
        finally:
            self._watch_response = None
            response.release_conn()

    def _handle(self, event: JsonObject) -> bool:
        kind = event.get("type")
        if kind == "ERROR":
            return True
        if kind == "BOOKMARK":
            return False
        obj = event.get("object") or {}
        name = (obj.get("metadata") or {}).get("name")
        with self._lock:
            published = self._published
            ours = published.resource_versions if published else {}
            if kind == "DELETED" or (kind in ("ADDED", "MODIFIED")
                                     and ours.get(name) != obj.get("metadata", {}).get("resourceVersion")):
                log.info("resource slice changed by someone else; republishing", slice=name, event=kind)
                self.sync()
        return False


def _same(a: list[JsonObject], b: list[JsonObject]) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _reason(exc: ApiException) -> str:
    try:
        return json.loads(exc.body).get("message", exc.reason)
    except (TypeError, ValueError):
        return str(exc.reason)
