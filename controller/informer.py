"""A watch-backed cache of one resource type: list, then watch from the list's resourceVersion.

Like client-go's reflector + store: a full list fills the store (reporting adds, updates and
deletes against what was there), then a watch applies events; a 410 Gone, or any broken stream
that cannot resume, triggers a relist. Handlers run on the informer's thread, in event order.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from .kubeapi import ApiError, JsonObject, KubeApi, Resource

log = structlog.get_logger(__name__)

Handler = Callable[[str, JsonObject | None, JsonObject | None], None]
"""Called with (key, old, new): add = (None, obj), update = (old, new), delete = (old, None)."""


def object_key(obj: JsonObject) -> str:
    """``namespace/name`` or ``name`` for cluster-scoped objects."""
    meta = obj.get("metadata", {})
    namespace = meta.get("namespace")
    return f"{namespace}/{meta['name']}" if namespace else meta["name"]


def _resource_version(obj: JsonObject) -> int:
    try:
        return int(obj.get("metadata", {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


@dataclass
class Informer:
    """Keeps `store` equal to the server's view of `resource`; call `run` on a thread."""

    api: KubeApi
    resource: Resource
    handler: Handler
    name: str = ""
    namespace: str | None = None
    """One namespace of a namespaced resource (None: all namespaces)."""
    label_selector: str | None = None
    field_selector: str | None = None
    watch_timeout_s: int = 60
    page_size: int = 500
    transform: Callable[[JsonObject], JsonObject] | None = None
    """Applied to every object before it is cached (e.g. to keep only the fields the controller
    reads, so a large cluster's pods do not fill memory)."""
    store: dict[str, JsonObject] = field(default_factory=dict)
    synced: threading.Event = field(default_factory=threading.Event)
    lock: threading.RLock = field(default_factory=threading.RLock)
    relists: int = 0
    _resource_version: str = ""
    _response: object | None = None

    def get(self, key: str) -> JsonObject | None:
        """The cached object under `key`."""
        with self.lock:
            return self.store.get(key)

    def snapshot(self) -> dict[str, JsonObject]:
        """A copy of the key → object map."""
        with self.lock:
            return dict(self.store)

    def items(self) -> list[JsonObject]:
        """A snapshot of every cached object."""
        with self.lock:
            return list(self.store.values())

    def observe(self, obj: JsonObject) -> None:
        """Feed an object this process just wrote (the write's answer), so readers see it before
        the watch echoes it. Older versions than the cached one are ignored. A write that removed
        the last finalizer of an object being deleted answers with the object as it went: that is
        its deletion (had the watch's DELETED come first, caching the answer would bring it back)."""
        metadata = obj.get("metadata") or {}
        if metadata.get("deletionTimestamp") and not metadata.get("finalizers"):
            self._apply("DELETED", obj)
            return
        self._apply("MODIFIED", obj)

    def run(self, stop: threading.Event) -> None:
        """List and watch until `stop` is set."""
        backoff = 0.2
        while not stop.is_set():
            try:
                if not self._resource_version:
                    self._relist()
                    backoff = 0.2
                self._watch(stop)
            except ApiError as exc:
                if stop.is_set():
                    return
                if exc.gone:
                    log.info("watch expired, relisting", resource=self.resource.plural)
                    self._resource_version = ""
                    continue
                log.warning("list/watch failed", resource=self.resource.plural, error=str(exc))
                if exc.status not in (0, 500, 503, 504, 429):
                    self._resource_version = ""
                stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def _relist(self) -> None:
        items: dict[str, JsonObject] = {}
        version = ""
        for page in self.api.pages(self.resource, self.namespace, label_selector=self.label_selector,
                                   field_selector=self.field_selector, limit=self.page_size):
            for obj in page.get("items") or []:
                kind = page.get("kind", "").removesuffix("List")
                obj.setdefault("kind", kind)
                obj.setdefault("apiVersion", page.get("apiVersion"))
                items[object_key(obj)] = self.transform(obj) if self.transform else obj
            version = page.get("metadata", {}).get("resourceVersion", "")
        with self.lock:
            old = self.store
            for key, obj in items.items():
                # A write this process made (see `observe`) may be newer than the list.
                mine = old.get(key)
                if mine is not None and mine["metadata"].get("uid") == obj["metadata"].get("uid") and \
                        _resource_version(mine) > _resource_version(obj):
                    items[key] = mine
            self.store = dict(items)
            self._resource_version = version
            self.relists += 1
        for key, obj in items.items():
            before = old.get(key)
            if before is None or before.get("metadata", {}).get("resourceVersion") != \
                    obj.get("metadata", {}).get("resourceVersion"):
                self._notify(key, before, obj)
        for key, before in old.items():
            if key not in items:
                self._notify(key, before, None)
        self.synced.set()

    def close(self) -> None:
        """End the current watch at once (used when stopping; `run` then sees its stop event)."""
        response = self._response
        if response is not None:
            try:
                response.shutdown() if hasattr(response, "shutdown") else response.close()
            except Exception:  # noqa: BLE001 - already closed
                pass

    def _opened(self, response: object) -> None:
        self._response = response

    def _watch(self, stop: threading.Event) -> None:
        for event in self.api.watch(self.resource, self._resource_version, namespace=self.namespace,
                                    timeout_seconds=self.watch_timeout_s,
                                    label_selector=self.label_selector, field_selector=self.field_selector,
                                    on_open=self._opened):
            obj = event.get("object") or {}
            version = obj.get("metadata", {}).get("resourceVersion")
            if event["type"] != "BOOKMARK":
                self._apply(event["type"], obj)
            if version:
                self._resource_version = version
            if stop.is_set():
                return

    def _apply(self, event_type: str, obj: JsonObject) -> None:
        if self.transform is not None:
            obj = self.transform(obj)
        key = object_key(obj)
        with self.lock:
            before = self.store.get(key)
            if event_type == "DELETED":
                if before is None:
                    return
                del self.store[key]
                new = None
            else:
                if before is not None and _resource_version(before) >= _resource_version(obj) and \
                        before["metadata"].get("uid") == obj["metadata"].get("uid"):
                    return  # already have this version (or a newer one we wrote ourselves)
                self.store[key] = obj
                new = obj
        self._notify(key, before, new)

    def _notify(self, key: str, old: JsonObject | None, new: JsonObject | None) -> None:
        try:
            self.handler(key, old, new)
        except Exception:  # a handler bug must not kill the watch loop
            log.exception("informer handler failed", resource=self.resource.plural, key=key)
